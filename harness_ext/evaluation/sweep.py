"""Load once, quantize many: one lm-eval results JSON per quantization scheme.

:func:`run_sweep` loads the float model once (``muse_quant`` with ``keep_float_weights=True``:
unlearned checkpoint applied, a CPU copy of the float weights kept), then for every scheme
restores the float weights, quantizes and runs the tasks in-process with
``lm_eval.simple_evaluate``. Each scheme's results are written to
``<output_path>/<results.scheme_filename(scheme)>`` (``rtn:4:g128`` -> ``rtn_4_g128.json``) with
the content ``lm_eval --output_path`` would write for ``--model muse_quant --model_args
...,quant=<scheme>`` (``config.muse_quant.quantization`` records the scheme), written atomically.

Beside each results file, ``<stem>.samples.jsonl`` holds every document's score, from which
every aggregate of the results file is recomputed exactly (:mod:`.samples`).

* Provenance: ``<output_path>/provenance.json`` records what produced the folder (model args,
  the unlearned checkpoint's content hash, tasks, limit, metadata, data, package versions;
  :mod:`.provenance`). A sweep adds to a folder only when the record matches; otherwise it stops
  before loading anything and lists what differs (results files without a record are refused
  too).
* Resume: a scheme whose file exists (and records that scheme) is skipped; an existing file is
  never overwritten.
* Locks: a sweep holds ``<output_path>/.<stem>.lock`` (``O_CREAT | O_EXCL``; pid and host)
  for each scheme it evaluates, so a second sweep asking for one of them refuses to start; the
  provenance check and the lock taking happen together under ``.sweep.lock``. Sweeps of other
  schemes into the same folder (with the same provenance) may run at the same time, as the
  per-scheme SLURM cells of ``muse-quant reproduce`` do. A lock whose process died on this host
  is taken over. Every file is written atomically under a unique temporary name.
* Failures: a scheme that fails is reported and written to ``<output_path>/errors.json``; the
  other schemes go on. ``errors.json`` lists the failures of the last sweep and of sweeps that
  ran at the same time; it is removed once a later run has no failures.
* Parsing: ``--quant`` is a comma-separated list of schemes (schemes never contain commas);
  ``--model_args`` is lm-eval's ``k=v,k=v``. A ``quant=`` inside ``model_args`` is refused (its
  commas would be read as further model args).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import MuseQuantError
from ..io import (acquire_lock, file_lock, load_results, lock_is_held, parse_kv, recorded_scheme,
                  release_lock, scheme_filename, write_json)
from . import provenance
from . import samples as samples_file

log = logging.getLogger(__name__)

ERRORS_FILE = "errors.json"
FOLDER_LOCK = ".sweep.lock"
#: seconds to wait for another sweep's brief hold of FOLDER_LOCK
FOLDER_LOCK_WAIT = 60.0
#: model_args the sweep sets itself
RESERVED_MODEL_ARGS = ("quant", "keep_float_weights")


@dataclass
class SweepResult:
    output_path: Path
    written: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, dict] = field(default_factory=dict)
    load_seconds: float | None = None
    #: scheme -> {"quantize_seconds", "evaluate_seconds"}
    timings: dict[str, dict] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.failed


def parse_scheme_list(text) -> list[str]:
    """``"none,bnb-fp4,rtn:4:g128"`` -> validated scheme strings (errors before any loading)."""
    from ..quantizers import describe_scheme

    items = text if isinstance(text, (list, tuple)) else str(text or "").split(",")
    schemes = [s.strip() for s in items if s and s.strip()]
    if not schemes:
        raise MuseQuantError("no quantization schemes given",
                             "pass --quant with a comma-separated list, e.g. none,bnb-fp4,gptq:4")
    for scheme in schemes:
        describe_scheme(scheme)
        scheme_filename(scheme)
    dupes = sorted({s for s in schemes if schemes.count(s) > 1})
    if dupes:
        raise MuseQuantError(f"--quant lists {', '.join(dupes)} more than once",
                             "list every scheme once")
    return schemes


def parse_model_args(text) -> dict:
    """lm-eval's ``k=v,k=v`` (:func:`harness_ext.io.parse_kv`); refuses ``quant=`` and needs
    ``pretrained=``."""
    args = parse_kv(text, "--model_args",
                    "model_args are comma-separated key=value pairs; pass the quantization "
                    "schemes with --quant a,b,c, not inside --model_args")
    reserved = [k for k in RESERVED_MODEL_ARGS if k in args]
    if reserved:
        raise MuseQuantError(f"--model_args sets {', '.join(reserved)}, which the sweep sets "
                             "itself", "pass the schemes with --quant a,b,c and drop "
                             f"{', '.join(reserved)}= from --model_args")
    if not args.get("pretrained"):
        raise MuseQuantError("--model_args has no pretrained=", "e.g. --model_args "
                             "pretrained=DIR_OR_HUB_ID,unlearned=CKPT")
    return args


def parse_metadata(text) -> dict:
    """``--metadata`` as lm-eval 0.4.13 takes it: a JSON object or ``k=v,k=v``."""
    if not text:
        return {}
    if isinstance(text, dict):
        return dict(text)
    text = str(text).strip()
    if text.startswith("{"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise MuseQuantError(f"--metadata is not valid JSON ({exc})",
                                 "pass a JSON object or k=v,k=v") from None
        if not isinstance(data, dict):
            raise MuseQuantError("--metadata must be a JSON object", "e.g. muse_data=embedded")
        return data
    from lm_eval.utils import simple_parse_args_string

    return simple_parse_args_string(text)


def _existing(path: Path, scheme: str) -> str | None:
    """None when ``path`` holds results for ``scheme``; otherwise why it cannot be reused."""
    try:
        data = load_results(path)
    except MuseQuantError as err:
        return err.problem
    found = recorded_scheme(data)
    if found != scheme:
        return f"{path} exists but records scheme {found!r}, not {scheme!r}"
    return None


def _scan_builtins(tasks: list[str]) -> bool:
    """Scan lm-eval's ~14k built-in tasks only when a non-MUSE task is asked for (as ``eval``)."""
    return os.environ.get("MUSE_QUANT_SCAN_BUILTINS") == "1" or \
        not all(t.startswith("muse_") for t in tasks)


def check_tasks(tasks: list[str]) -> None:
    """Fail before loading anything when a task name is unknown."""
    from lm_eval.tasks import TaskManager

    from ..plugin import tasks_dir

    known = set(TaskManager(include_path=tasks_dir(),
                            include_defaults=_scan_builtins(tasks)).all_tasks)
    unknown = [t for t in tasks if t not in known]
    if unknown:
        raise MuseQuantError(f"unknown task(s): {', '.join(unknown)}",
                             "e.g. --tasks muse_news_quant (muse-quant tasks-dir lists the "
                             "MUSE task files)")


def _lm_eval_results(lm, scheme: str, model_args: dict, tasks: list[str], metadata: dict,
                     limit, device, batch_size) -> dict:
    """``simple_evaluate`` plus what ``lm_eval --output_path`` adds before writing."""
    import lm_eval
    from lm_eval.loggers import EvaluationTracker
    from lm_eval.tasks import TaskManager

    from ..plugin import tasks_dir

    scheme_args = {**model_args, "quant": scheme}
    task_manager = TaskManager(include_path=tasks_dir(), include_defaults=_scan_builtins(tasks),
                               metadata={**scheme_args, **metadata})
    tracker = EvaluationTracker()
    results = lm_eval.simple_evaluate(
        model=lm, model_args=scheme_args, tasks=tasks, task_manager=task_manager, limit=limit,
        device=device, batch_size=batch_size, log_samples=True, evaluation_tracker=tracker)
    if results is None:  # non-zero rank
        return {}
    logged = results.pop("samples", None) or {}
    results["config"]["model"] = "muse_quant"  # what `--model muse_quant` records
    general = tracker.general_config_tracker
    general.model_source = "muse_quant"
    general.log_end_time()
    results["task_hashes"] = {}
    results.update(dataclasses.asdict(general))
    results["muse_quant_samples"] = samples_file.compact_samples(logged, results)
    return results


def evaluate_scheme(lm, scheme: str, model_args: dict, tasks: list[str], metadata: dict, limit,
                    device, batch_size) -> tuple[dict, dict]:
    """One sweep step on a loaded ``keep_float_weights`` model: restore the float weights,
    quantize with ``scheme``, run the tasks (re-using what does not depend on the weights, see
    :mod:`harness_ext.evaluation.reuse`). Returns ``(results, timing)``; ``results`` carries
    the per-document samples under the key ``muse_quant_samples`` (not written to the results
    file)."""
    from .reuse import environment_described_once

    start = time.perf_counter()
    lm.requantize(scheme)
    quantized = time.perf_counter()
    with environment_described_once():  # datasets and token ids are reused as well (reuse.py)
        results = _lm_eval_results(lm, scheme, model_args, tasks, metadata, limit, device,
                                   batch_size)
    evaluated = time.perf_counter()
    return results, {"quantize_seconds": round(quantized - start, 4),
                     "evaluate_seconds": round(evaluated - quantized, 4)}


def run_sweep(model_args, schemes, tasks, output_path, metadata=None, limit=None,
              device: str | None = None, batch_size=None, progress: bool = True) -> SweepResult:
    """Evaluate every scheme on one loaded model; see the module docstring."""
    schemes = parse_scheme_list(schemes)
    model_args = parse_model_args(model_args)
    metadata = parse_metadata(metadata)
    if os.environ.get("MUSE_DATA") and "muse_data" not in metadata:
        metadata["muse_data"] = os.environ["MUSE_DATA"]
    tasks = [t.strip() for t in (tasks if isinstance(tasks, (list, tuple))
                                 else str(tasks or "").split(",")) if t and t.strip()]
    if not tasks:
        raise MuseQuantError("no tasks given", "e.g. --tasks muse_news_quant")
    check_tasks(tasks)
    # device / batch_size may come from the flags or from model_args (not both)
    for key, value in (("device", device), ("batch_size", batch_size)):
        if key in model_args and value is not None:
            raise MuseQuantError(f"{key} is given both as --{key} and in --model_args",
                                 f"pass it once, as --{key}")
    device = device if device is not None else model_args.pop("device", None)
    if batch_size is None:  # lm-eval's `auto` on a GPU when not given (evaluation/defaults.py)
        from .defaults import default_batch_size

        batch_size = model_args.pop("batch_size", None) or default_batch_size(device)
    if limit is not None:
        limit = float(limit)
        limit = int(limit) if limit.is_integer() else limit
    from ..quantizers import describe_scheme

    if any(describe_scheme(s).needs_calibration for s in schemes):
        from ..quantizers.calibration import validate_calib

        validate_calib(**{k: v for k, v in model_args.items() if k.startswith("calib")})
    out = Path(output_path).expanduser()
    if out.exists() and not out.is_dir():
        raise MuseQuantError(f"--output_path {out} is a file", "pass a directory")
    from ..checkpoints import check_pretrained, detect_checkpoint_kind

    check_pretrained(model_args["pretrained"])
    if model_args.get("unlearned") not in (None, "", "None"):
        detect_checkpoint_kind(str(model_args["unlearned"]))
    record = provenance.build(model_args, tasks, limit, metadata)
    result = SweepResult(output_path=out)
    started = time.time()
    # under `accelerate launch`, rank 0 alone checks, locks and writes
    primary = os.environ.get("RANK", "0") in ("", "0")
    claims: dict[Path, dict] = {}
    try:
        with _folder_lock(out, primary):
            if primary:
                _check_provenance(out, record)
            todo = _plan(out, schemes, result)
            for scheme in todo if primary else ():  # a second sweep asking for one refuses
                path = _scheme_lock(out, scheme)
                claims[path] = acquire_lock(path, f"scheme {scheme}")
        if result.skipped:
            log.info("sweep: %d scheme(s) already done: %s", len(result.skipped),
                     ", ".join(result.skipped))
        if todo:
            _evaluate_all(result, todo, model_args, tasks, metadata, limit, device, batch_size,
                          progress)
        with _folder_lock(out, primary):
            if primary:
                _write_errors(out, result, started)
    finally:
        for path, holder in claims.items():
            release_lock(path, holder)
    return result


def _folder_lock(out: Path, primary: bool):
    if not primary:
        return contextlib.nullcontext()
    return file_lock(out / FOLDER_LOCK, "the sweep folder", FOLDER_LOCK_WAIT)


def _scheme_lock(out: Path, scheme: str) -> Path:
    return out / f".{Path(scheme_filename(scheme)).stem}.lock"


def _check_provenance(out: Path, record: dict) -> None:
    """Refuse a folder whose results another model/data/setting produced; record ``record``
    when the folder holds none yet (see the module docstring)."""
    found = sorted(p.name for p in out.glob("*.json")
                   if p.name not in (provenance.PROVENANCE_FILE, ERRORS_FILE)) + \
        sorted(p.name for p in out.glob("*" + samples_file.SUFFIX))
    busy = any(lock_is_held(p) for p in out.glob(".*.lock") if p.name != FOLDER_LOCK)
    provenance.check_folder(out, record, found, busy)


def _plan(out: Path, schemes: list[str], result: SweepResult) -> list[str]:
    """The schemes to evaluate; the others are skipped (done) or failed (a foreign file)."""
    todo = []
    for scheme in schemes:
        path = out / scheme_filename(scheme)
        if path.exists():
            problem = _existing(path, scheme)
            if problem is None:
                result.skipped.append(scheme)
            else:  # never overwrite a file we did not write for this scheme
                result.failed[scheme] = {"error": "ExistingFile", "message": problem,
                                         "fix": f"move {path} away and run again"}
        else:
            todo.append(scheme)
    return todo


def _evaluate_all(result, todo, model_args, tasks, metadata, limit, device, batch_size,
                  progress):
    import torch
    from tqdm.auto import tqdm

    from ..lm import MuseQuantLM

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    start = time.perf_counter()
    lm = MuseQuantLM(**model_args, quant="none", keep_float_weights=True, device=device,
                     batch_size=batch_size)
    result.load_seconds = round(time.perf_counter() - start, 4)
    bar = tqdm(todo, desc="sweep", unit="scheme", disable=not progress)
    for scheme in bar:
        bar.set_postfix_str(scheme)
        path = result.output_path / scheme_filename(scheme)
        try:
            results, timing = evaluate_scheme(lm, scheme, model_args, tasks, metadata, limit,
                                              device, batch_size)
            timing = {"load_seconds": result.load_seconds, **timing}
            if results:
                samples = results.pop("muse_quant_samples")
                results["config"].setdefault("muse_quant", {})["sweep"] = timing
                samples_file.write(samples_file.samples_path(path), samples)
                write_json(path, results)  # last: its presence marks the scheme done
            result.timings[scheme] = timing
            result.written.append(scheme)
        except KeyboardInterrupt:
            bar.close()
            raise
        except Exception as exc:  # one scheme failing must not lose the others
            entry = {"error": type(exc).__name__,
                     "message": getattr(exc, "problem", None) or str(exc),
                     "fix": getattr(exc, "fix", None)}
            if not isinstance(exc, MuseQuantError):
                entry["traceback"] = traceback.format_exc()
            result.failed[scheme] = entry
            log.error("sweep: scheme %s failed: %s", scheme, entry["message"])
    bar.close()


def _write_errors(out: Path, result: SweepResult, started: float) -> None:
    """This run's failures, plus those of sweeps that ended while it ran (other schemes)."""
    errors = out / ERRORS_FILE
    handled = set(result.written) | set(result.skipped) | set(result.failed)
    failed = {}
    try:
        previous = json.loads(errors.read_text(encoding="utf-8")).get("failed") or {}
    except (OSError, ValueError, AttributeError):
        previous = {}
    for scheme, entry in previous.items():
        if scheme not in handled and isinstance(entry, dict) and \
                isinstance(entry.get("ended"), (int, float)) and entry["ended"] >= started:
            failed[scheme] = entry
    ended = time.time()
    failed.update({scheme: {**entry, "ended": ended} for scheme, entry in result.failed.items()})
    if failed:
        write_json(errors, {"date": time.strftime("%Y-%m-%dT%H:%M:%S"), "failed": failed,
                            "written": result.written, "skipped": result.skipped})
    elif errors.exists():
        errors.unlink()
