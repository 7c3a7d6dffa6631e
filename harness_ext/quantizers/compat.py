"""The one place that works around bugs and quirks of pinned third-party libraries. Keep it small.

Every workaround below says which library and version it is for, and why; remove one when the
library no longer needs it.

llmcompressor 0.14.0.1, AWQ without an accelerator (:func:`patch_llmcompressor_pin_memory`)
    ``AWQModifier._apply_smoothing`` calls ``IntermediatesCache.pin_memory`` for every cached
    batch, unconditionally. ``Tensor.pin_memory()`` raises ``RuntimeError: Cannot access
    accelerator device when none is available`` on a CPU-only torch, so AWQ cannot run on CPU.
    Pinned (page-locked) host memory only speeds up host-to-accelerator copies, which never
    happen without an accelerator, so there the call is made a no-op. With an accelerator
    (CUDA, XPU, MPS, ...) nothing is changed. Remove this when llmcompressor checks itself.

lm-eval 0.4.13, built-in models vanish (:func:`load_lm_eval_builtin_models`)
    ``lm_eval.api.registry.get_model`` imports ``lm_eval.models`` (which registers ``hf`` and
    the other built-ins) only when the model registry is *empty*; registering ``muse_quant``
    first would leave ``--model hf`` unknown. The built-ins are imported before registering
    (importing ``HFLM`` from ``lm_eval.models.huggingface`` does so too; this says it outright).

lm-eval 0.4.13, data parallel on CPU (:func:`adopt_cpu_data_parallel`)
    ``HFLM`` keeps the Accelerator of a multi-process launch but sets ``_rank`` /
    ``_world_size`` only when it counts more than one GPU, so on CPU every process believes it
    is rank 0 of 1 and evaluates every document. The rank is taken from accelerate.

lm-eval 0.4.13, ``delta=`` with tied weights (:func:`refuse_lm_eval_delta`)
    ``HFLM``'s ``delta=`` adds the delta to every entry of the state dict, so tied weights (the
    LM head and the input embedding) get it twice. ``muse_quant`` refuses it and applies deltas
    itself (``unlearned=<file>.safetensors``).

lm-eval 0.4.13, model info of a local folder (:func:`local_model_info`)
    ``HFLM.get_model_info`` asks the Hugging Face hub for the model's SHA even when
    ``pretrained`` is a local folder (a network round trip, or a wait offline, for nothing).
    For local folders the info is computed without the hub.

lm-eval 0.4.13, task discovery (:func:`install_task_manager`)
    lm-eval has no plugin discovery for tasks, and every ``TaskManager`` scans its ~14k built-in
    task YAMLs. ``muse-quant eval`` replaces ``lm_eval.tasks.TaskManager`` by a subclass that
    always includes the MUSE task folder and skips the built-ins when only MUSE tasks are asked
    for.

lm-eval 0.4.13, command line (:func:`run_lm_eval_cli`)
    ``lm_eval.__main__.cli_evaluate()`` takes no arguments and parses ``sys.argv``; it is run
    with ``sys.argv`` swapped for the given arguments (and restored afterwards).

lm-eval 0.4.13, which model a task is built for (:func:`model_being_evaluated`)
    A task's dataset builder is not told which model will run it. ``simple_evaluate`` loads the
    model and then builds the tasks, before running any request; the model is read from its
    frame so that a task the model cannot score is refused before generating anything
    (:mod:`harness_ext.evaluation.task_check`).

lm-eval 0.4.13, known-harmless messages (:func:`quiet_lm_eval`)
    Every run logs, per custom-dataset task, "Custom kwargs can be passed to `--metadata`" (the
    MUSE tasks already take theirs from ``--metadata``); for the ``muse_<corpus>_quant`` groups,
    "Higher_is_better values for metric ... are not consistent" (KnowMem is lower-is-better on
    the forget set and higher-is-better on the retain set, and the group aggregates nothing);
    and ``git describe`` prints "fatal: not a git repository" outside a checkout (the results
    still record ``git_hash``, computed the same way). ``-v`` / ``--verbose`` shows them again.

lm-eval 0.4.13, constants in the printed table (:func:`hide_constants_in_table`)
    Every value a task's ``process_results`` returns is printed as a metric. The retrain AUC
    that PrivLeak is relative to (``privleak_retrain_auc``) stays in the results JSON for the
    record, but ``muse-quant eval`` prints it as a note under the table, not as a metric row.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------ llmcompressor
def accelerator_available() -> bool:
    """True when torch sees any accelerator (CUDA/ROCm, XPU, MPS, ...)."""
    import torch

    accelerator = getattr(torch, "accelerator", None)
    if accelerator is not None and hasattr(accelerator, "is_available"):
        return bool(accelerator.is_available())
    if torch.cuda.is_available():
        return True
    for backend in ("xpu", "mps"):
        module = getattr(torch, backend, None) or getattr(torch.backends, backend, None)
        if module is not None and getattr(module, "is_available", lambda: False)():
            return True
    return False


def _no_pin_memory(self, batch_index, input_names=None):
    """No-op replacement (see the module docstring): no accelerator, nothing to pin for."""


def patch_llmcompressor_pin_memory() -> bool:
    """Make ``IntermediatesCache.pin_memory`` a no-op when no accelerator exists.

    Returns True when the no-op is (now) in place. Idempotent; call it before running AWQ.
    """
    if accelerator_available():
        return False
    from llmcompressor.pipelines.cache import IntermediatesCache

    if IntermediatesCache.pin_memory is not _no_pin_memory:
        IntermediatesCache.pin_memory = _no_pin_memory
        log.info("compat: llmcompressor IntermediatesCache.pin_memory is a no-op "
                 "(no accelerator available)")
    return True


# ------------------------------------------------------------------------------ lm-eval model
def load_lm_eval_builtin_models() -> None:
    """Import lm-eval's built-in models before registering ours, so ``hf`` stays registered."""
    import lm_eval.models  # noqa: F401


def adopt_cpu_data_parallel(lm) -> None:
    """Take rank / world size from accelerate when ``lm`` (an HFLM) runs as several CPU processes.

    With the real rank, lm-eval splits the documents, gathers the per-document results to rank 0
    (gloo) and only rank 0 writes the results.
    """
    accelerator = getattr(lm, "accelerator", None)
    if accelerator is None or accelerator.num_processes <= 1 or lm._world_size > 1:
        return
    lm._rank = accelerator.process_index
    lm._world_size = accelerator.num_processes
    log.info("data parallel on %s: rank %d of %d", accelerator.device, lm._rank,
             lm._world_size)


def refuse_lm_eval_delta(model_kwargs: dict) -> None:
    """Raise when HFLM's ``delta=`` is passed (it adds tied weights twice)."""
    from ..errors import MuseQuantError

    if model_kwargs.get("delta"):
        raise MuseQuantError("muse_quant does not use lm-eval's delta= (it adds tied weights "
                             "twice)", "pass the delta as unlearned=<file>.safetensors")


def local_model_info(lm) -> dict | None:
    """HFLM's model info for a local ``pretrained`` folder without asking the hub; None when
    ``pretrained`` is not a local folder (then HFLM's own ``get_model_info`` is right)."""
    if not (isinstance(lm.pretrained, str) and os.path.isdir(lm.pretrained)):
        return None
    return {"model_num_parameters": sum(p.numel() for p in lm._model.parameters()),
            "model_dtype": str(next(lm._model.parameters()).dtype),
            "model_revision": lm.revision, "model_sha": ""}


# ------------------------------------------------------------------------------ lm-eval CLI
def install_task_manager(scan_builtins: bool) -> None:
    """Make lm-eval's TaskManager always include our tasks (and skip built-ins if asked)."""
    import lm_eval.tasks as lm_tasks

    from ..plugin import tasks_dir

    base = getattr(lm_tasks.TaskManager, "_muse_base", lm_tasks.TaskManager)

    class MuseTaskManager(base):  # type: ignore[misc, valid-type]
        _muse_base = base

        def __init__(self, *args, include_path=None, include_defaults=True, **kwargs):
            paths = [] if include_path is None else (
                [include_path] if isinstance(include_path, str) else list(include_path))
            if tasks_dir() not in paths:
                paths.append(tasks_dir())
            super().__init__(*args, include_path=paths,
                             include_defaults=include_defaults and scan_builtins, **kwargs)

    lm_tasks.TaskManager = MuseTaskManager


def run_lm_eval_cli(argv: list[str]) -> None:
    """``lm_eval run ARGV`` in this process (``cli_evaluate`` reads ``sys.argv``)."""
    from lm_eval.__main__ import cli_evaluate

    old_argv = sys.argv
    sys.argv = ["lm-eval", "run", *argv]
    try:
        cli_evaluate()
    finally:
        sys.argv = old_argv


# ------------------------------------------------------------------------------ lm-eval tasks
def model_being_evaluated():
    """``(model, model name, requested task names)`` of the ``lm_eval.simple_evaluate`` call this
    code runs inside, or None outside one (or before it has loaded the model)."""
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_name == "simple_evaluate" and \
                frame.f_globals.get("__name__") == "lm_eval.evaluator":
            lm = frame.f_locals.get("lm")
            if lm is None:
                return None
            model = frame.f_locals.get("model")
            name = model if isinstance(model, str) else type(lm).__name__
            tasks = frame.f_locals.get("tasks")
            tasks = [tasks] if isinstance(tasks, str) else \
                [t for t in (tasks or []) if isinstance(t, str)]
            return lm, name, tasks
        frame = frame.f_back
    return None


# ------------------------------------------------------------------------------ lm-eval output
#: (logger, start of the message) of the known-harmless lm-eval messages
HARMLESS_MESSAGES = (
    ("lm_eval.api.task", "Custom kwargs can be passed to `--metadata`"),
    ("lm_eval.evaluator_utils", "Higher_is_better values for metric"),
)


class _HarmlessFilter(logging.Filter):
    def __init__(self, starts: tuple[str, ...]):
        super().__init__()
        self.starts = starts

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(start in message[:200] for start in self.starts)


def _quiet_git_commit_hash():
    """lm-eval's ``get_git_commit_hash`` with git's stderr silenced (same value)."""
    from lm_eval.loggers.utils import get_commit_from_path

    try:
        return subprocess.check_output(["git", "describe", "--always"],  # noqa: S607
                                       stderr=subprocess.DEVNULL).strip().decode()
    except (subprocess.CalledProcessError, FileNotFoundError):
        return get_commit_from_path(os.getcwd())


def quiet_lm_eval(verbose: bool = False) -> None:
    """Silence lm-eval's known-harmless messages (module docstring); ``verbose`` undoes it."""
    import lm_eval.evaluator as evaluator
    import lm_eval.loggers.utils as logger_utils

    by_logger: dict[str, tuple[str, ...]] = {}
    for name, start in HARMLESS_MESSAGES:
        by_logger[name] = by_logger.get(name, ()) + (start,)
    for name, starts in by_logger.items():
        logger = logging.getLogger(name)
        for old in [f for f in logger.filters if isinstance(f, _HarmlessFilter)]:
            logger.removeFilter(old)
        if not verbose:
            logger.addFilter(_HarmlessFilter(starts))
    evaluator.get_git_commit_hash = logger_utils.get_git_commit_hash if verbose else \
        _quiet_git_commit_hash


def hide_constants_in_table(constants: tuple[str, ...]) -> None:
    """Make lm-eval's printed table leave out ``constants`` (they stay in the results JSON) and
    name their values in a note under it."""
    import lm_eval.utils as lm_utils

    original = getattr(lm_utils.make_table, "_muse_original", lm_utils.make_table)

    def make_table(result_dict, column: str = "results", sort_results: bool = False):
        shown, notes = dict(result_dict), []
        table = {}
        for task, values in (result_dict.get(column) or {}).items():
            kept = {}
            for key, value in values.items():
                metric = key.partition(",")[0].removesuffix("_stderr")
                if metric in constants:
                    if not key.partition(",")[0].endswith("_stderr"):
                        notes.append(f"{task}: {metric} = {value}")
                    continue
                kept[key] = value
            table[task] = kept
        shown[column] = table
        text = original(shown, column, sort_results)
        return text + "".join(f"\n{note} (a constant, not a metric)" for note in notes)

    make_table._muse_original = original
    lm_utils.make_table = make_table
