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
"""

from __future__ import annotations

import logging
import os
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
