"""Per-document scores beside each results file, and every aggregate recomputed from them.

A sweep writes, beside ``<output_path>/<scheme file>.json``, the file
``<output_path>/<scheme file stem>.samples.jsonl`` (:func:`samples_path`; ``rtn_4_g128.json`` ->
``rtn_4_g128.samples.jsonl``): the value each document contributed to each metric, which is all
that is needed to recompute every aggregate of the results file (:func:`recompute_aggregates`,
:func:`aggregate_mismatches`) or to resample documents (bootstrap confidence intervals).

Format (UTF-8 JSON Lines, :data:`FORMAT` version :data:`VERSION`):

* line 1, the header::

    {"format": "muse-quant-samples", "version": 1, "bootstrap_iters": 100000,
     "float_sum": "neumaier"}

  ``bootstrap_iters`` is lm-eval's (``config.bootstrap_iters``; 0: no standard errors).
  ``float_sum`` is how Python's ``sum`` added floats where the file was written: ``"naive"``
  (left to right, Python < 3.12) or ``"neumaier"`` (compensated, Python >= 3.12). lm-eval's
  ``mean`` is ``sum(arr) / len(arr)``, so recomputing a mean bit for bit needs the same
  summation; :func:`float_sum` implements both.
* one line per task and filter::

    {"task": "muse_news_privleak", "filter": "none", "doc_id": [0, 1, 2, 3],
     "metrics": {"privleak": {"aggregation": "agg_privleak",
                              "values": [[3.1, 0, 0.4772], [2.7, 1, 0.4772], ...]},
                 "mink40_auc": {"aggregation": "agg_mink40_auc", "values": [[3.1, 0], ...]},
                 "privleak_retrain_auc": {"aggregation": "mean", "values": [0.4772, ...]}}}

  ``values[i]`` is what the task's ``process_results`` returned for document ``doc_id[i]``
  (tuples as JSON lists): the ROUGE-L F1 / recall (x 100) of each VerbMem / KnowMem document,
  ``(Min-K% score, label)`` and ``(score, label, retrain AUC)`` of each PrivLeak text. The order
  is the order lm-eval aggregated them in (document order; with several processes, rank by
  rank), which float sums depend on. ``aggregation`` is ``"mean"`` (lm-eval's ``mean``, standard
  error ``mean_stderr``) or the name of an ``agg_*`` function of ``muse_quant_tasks.utils``
  (lm-eval gives these no standard error: ``"N/A"``).

:func:`recompute_aggregates` returns ``{task: {"<metric>,<filter>": value,
"<metric>_stderr,<filter>": value or "N/A", "sample_len": n}}`` computed with the same float
operations as lm-eval 0.4.13 and the task's aggregation functions, so it equals the results
file's numbers exactly (given the ``scikit-learn`` the file was written with, for the AUC).
Whoever checks a results file with it must also check that each ``aggregation`` is the one the
task's YAML names: the samples file is data, and a consistent forgery of the samples
themselves is only caught by re-running the evaluation.
"""

from __future__ import annotations

import json
import math
import numbers
import re
import sys
from pathlib import Path

from ..errors import MuseQuantError

FORMAT, VERSION = "muse-quant-samples", 1
SUFFIX = ".samples.jsonl"
FLOAT_SUMS = ("naive", "neumaier")


def samples_path(results_path: str | Path) -> Path:
    """``OUT/rtn_4_g128.json`` -> ``OUT/rtn_4_g128.samples.jsonl``."""
    path = Path(results_path)
    return path.with_name(path.name[:-len(".json")] + SUFFIX if path.name.endswith(".json")
                          else path.name + SUFFIX)


def python_float_sum() -> str:
    """The summation this Python's built-in ``sum`` uses for floats."""
    return "neumaier" if sys.version_info >= (3, 12) else "naive"


# ------------------------------------------------------------------------------ writing
def _aggregation_names(config: dict) -> dict[str, str]:
    """``{metric: aggregation name}`` from a results file's ``configs[task]``: ``"mean"``, or
    the name of the function whose source lm-eval recorded."""
    names = {}
    for item in config.get("metric_list") or []:
        agg = item.get("aggregation")
        if isinstance(agg, str):
            found = re.match(r"\s*def\s+(\w+)\s*\(", agg)
            names[item.get("metric")] = found.group(1) if found else agg
    return names


def _plain(value):
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, numbers.Integral):  # bool too: sums of bools and of ints are equal
        return int(value)
    return float(value)


def compact_samples(logged: dict[str, list[dict]], results: dict) -> dict:
    """The samples file's content from lm-eval's ``log_samples`` output (``results["samples"]``)
    and the results it belongs to."""
    tasks = []
    for task, rows in logged.items():
        aggregations = _aggregation_names((results.get("configs") or {}).get(task) or {})
        blocks: dict[str, dict] = {}
        for row in rows:
            block = blocks.setdefault(row.get("filter", "none"), {"doc_id": [], "metrics": {}})
            block["doc_id"].append(row["doc_id"])
            for metric in row["metrics"]:
                entry = block["metrics"].setdefault(
                    metric, {"aggregation": aggregations.get(metric, "mean"), "values": []})
                entry["values"].append(_plain(row[metric]))
        tasks += [{"task": task, "filter": name, **block} for name, block in blocks.items()]
    bootstrap = (results.get("config") or {}).get("bootstrap_iters", 100000)
    return {"header": {"format": FORMAT, "version": VERSION,
                       "bootstrap_iters": int(bootstrap or 0), "float_sum": python_float_sum()},
            "tasks": tasks}


def dumps(samples: dict) -> str:
    lines = [samples["header"], *samples["tasks"]]
    return "".join(json.dumps(line, separators=(",", ":"), ensure_ascii=False) + "\n"
                   for line in lines)


def write(path: str | Path, samples: dict) -> Path:
    from ..io import write_bytes

    return write_bytes(path, dumps(samples).encode("utf-8"))


# ------------------------------------------------------------------------------ reading
def loads(text: str, where: str = "samples") -> dict:
    """Parse and check the structure of a samples file (any problem: :class:`MuseQuantError`)."""
    fix = "use the .samples.jsonl file `muse-quant sweep` wrote beside the results"
    try:
        lines = [json.loads(line) for line in text.splitlines() if line.strip()]
    except (json.JSONDecodeError, RecursionError) as exc:
        raise MuseQuantError(f"{where}: not JSON Lines ({type(exc).__name__})", fix) from None
    header = lines[0] if lines else None
    if not isinstance(header, dict) or header.get("format") != FORMAT or \
            header.get("version") != VERSION:
        raise MuseQuantError(f"{where}: the first line is not a {FORMAT} version {VERSION} "
                             "header", fix)
    if type(header.get("bootstrap_iters")) is not int or \
            header.get("float_sum") not in FLOAT_SUMS:
        raise MuseQuantError(f"{where}: the header needs an integer bootstrap_iters and a "
                             f"float_sum in {FLOAT_SUMS}", fix)
    seen = set()
    for n, line in enumerate(lines[1:], start=2):
        at = f"{where} line {n}"
        if not isinstance(line, dict) or not isinstance(line.get("task"), str) or \
                not isinstance(line.get("filter"), str) or \
                not isinstance(line.get("doc_id"), list) or \
                not isinstance(line.get("metrics"), dict):
            raise MuseQuantError(f"{at}: expected {{task, filter, doc_id, metrics}}", fix)
        if (line["task"], line["filter"]) in seen:
            raise MuseQuantError(f"{at}: {line['task']} ({line['filter']}) appears twice", fix)
        seen.add((line["task"], line["filter"]))
        for metric, entry in line["metrics"].items():
            if not isinstance(entry, dict) or not isinstance(entry.get("aggregation"), str) or \
                    not isinstance(entry.get("values"), list) or \
                    len(entry["values"]) != len(line["doc_id"]):
                raise MuseQuantError(f"{at}: metric {metric!r} needs an aggregation name and "
                                     "one value per doc_id", fix)
            if not all(_is_value(v) for v in entry["values"]):
                raise MuseQuantError(f"{at}: metric {metric!r} has a value that is not a "
                                     "number or a list of numbers", fix)
    return {"header": header, "tasks": lines[1:]}


def _is_value(value) -> bool:
    if isinstance(value, list):
        return 0 < len(value) <= 8 and all(is_number(v) for v in value)
    return is_number(value)


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def read(path: str | Path) -> dict:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise MuseQuantError(f"{path}: not a readable UTF-8 file ({type(exc).__name__})",
                             "use the .samples.jsonl file `muse-quant sweep` wrote") from None
    return loads(text, str(path))


# ------------------------------------------------------------------------------ recomputing
def float_sum(values, how: str):
    """``sum(values)`` as Python's built-in computes it, ``how`` = ``"naive"`` (Python < 3.12)
    or ``"neumaier"`` (Python >= 3.12), whichever Python this runs on. Integers are summed
    exactly (as ``sum`` does); floats and integers are not mixed."""
    values = list(values)
    if all(isinstance(v, int) for v in values):
        return sum(values)
    if not all(isinstance(v, float) for v in values):
        raise MuseQuantError("per-document values mix integers and floats",
                             "write the samples with `muse-quant sweep`")
    if how not in FLOAT_SUMS:
        raise MuseQuantError(f"unknown float_sum {how!r}", f"one of {FLOAT_SUMS}")
    if not values:
        return 0
    total = 0 + values[0]  # `sum` starts from the integer 0 (which turns -0.0 into 0.0)
    if how == "naive":
        for x in values[1:]:
            total += x
        return total
    compensation = 0.0
    for x in values[1:]:  # CPython's Neumaier loop (Python/bltinmodule.c, builtin_sum_impl)
        t = total + x
        if abs(total) >= abs(x):
            compensation += (total - t) + x
        else:
            compensation += (x - t) + total
        total = t
    if compensation and math.isfinite(compensation):
        total += compensation
    return total


def _mean(values, how):  # lm_eval.api.metrics.mean
    return float_sum(values, how) / len(values)


def _mean_stderr(values, how):  # lm_eval.api.metrics.mean_stderr / sample_stddev
    mu = _mean(values, how)
    stddev = math.sqrt(float_sum([(x - mu) ** 2 for x in values], how) / (len(values) - 1))
    return stddev / math.sqrt(len(values))


def _task_aggregation(name: str):
    if not re.fullmatch(r"agg_\w+", name):
        raise MuseQuantError(f"aggregation {name!r} cannot be recomputed",
                             "the MUSE tasks aggregate with mean or an agg_* function of "
                             "muse_quant_tasks.utils")
    import muse_quant_tasks.utils as task_utils

    fn = getattr(task_utils, name, None)
    if not callable(fn):
        raise MuseQuantError(f"aggregation {name!r} is not a function of muse_quant_tasks.utils",
                             "the samples file names the aggregation its task YAML uses")
    return fn


def recompute_aggregates(samples: dict) -> dict[str, dict]:
    """Every task's aggregates from its per-document values (see the module docstring)."""
    header = samples["header"]
    how, iters = header["float_sum"], header["bootstrap_iters"]
    out: dict[str, dict] = {}
    for line in samples["tasks"]:
        task = out.setdefault(line["task"], {"sample_len": 0})
        for metric, entry in line["metrics"].items():
            items = [tuple(v) if isinstance(v, list) else v for v in entry["values"]]
            key = f"{metric},{line['filter']}"
            stderr = "N/A"
            if not items:
                raise MuseQuantError(f"{line['task']}: metric {metric} has no documents",
                                     "a results file aggregates at least one document")
            if entry["aggregation"] == "mean":
                task[key] = _mean(items, how)
                if iters > 0 and len(items) > 1:
                    stderr = _mean_stderr(items, how)
            else:
                task[key] = _task_aggregation(entry["aggregation"])(items)
            task[f"{metric}_stderr,{line['filter']}"] = stderr
            task["sample_len"] = max(task["sample_len"], len(items))
    return out


def _same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


def aggregate_mismatches(results: dict, samples: dict, recomputed: dict | None = None) \
        -> list[str]:
    """Where a results file's aggregates differ from those recomputed from ``samples`` (empty
    when every aggregate, standard error and sample count matches exactly). ``recomputed``:
    :func:`recompute_aggregates` of ``samples`` when the caller has it already."""
    recomputed = recompute_aggregates(samples) if recomputed is None else recomputed
    reported = results.get("results") or {}
    problems = []
    for task, values in reported.items():
        metrics = {k for k in values if "," in k} if isinstance(values, dict) else set()
        if metrics and task not in recomputed:
            problems.append(f"{task}: no per-document scores in the samples file")
    for task, values in recomputed.items():
        got = reported.get(task)
        if not isinstance(got, dict):
            problems.append(f"{task}: in the samples file but not in the results")
            continue
        for key, value in values.items():
            if key not in got:
                problems.append(f"{task}: {key} is missing from the results")
            elif not _same(got[key], value):
                problems.append(f"{task}: {key} is {got[key]!r} in the results, "
                                f"{value!r} recomputed from the per-document scores")
        extra = sorted(k for k in got if "," in k and k not in values)
        if extra:
            problems.append(f"{task}: {', '.join(extra)} cannot be recomputed (no "
                            "per-document scores)")
        effective = ((results.get("n-samples") or {}).get(task) or {}).get("effective")
        if effective is not None and effective != values["sample_len"]:
            problems.append(f"{task}: n-samples.effective is {effective!r}, the samples file "
                            f"has {values['sample_len']} documents")
    return problems
