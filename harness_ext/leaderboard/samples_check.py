"""Aggregates are recomputed, not trusted: each submitted ``results/<scheme>.json`` comes with
``results/<scheme>.samples.jsonl``, the per-document scores ``muse-quant sweep`` writes beside it
(:mod:`harness_ext.evaluation.samples`), and every aggregate of the results file must equal the
one recomputed from them, exactly.

The samples file is data too: each ``aggregation`` must be the one the task's YAML names (``mean``
or its ``agg_*`` function), each per-document value must have the shape that aggregation takes
and lie within the metric's unit. A consistent forgery of the per-document scores themselves
(and the aggregates computed from them) is not detectable from the files: only
``muse-quant leaderboard check --reproduce SLUG``, which re-runs the evaluation, catches it.
"""

from __future__ import annotations

import copy
import hashlib
from pathlib import Path

from ..errors import MuseQuantError
from ..evaluation import samples as samples_file

from .bounds import METRIC_UNITS, is_number
from .loading import MAX_SAMPLES_BYTES, plain_problems, read_text

SAMPLES_SUFFIX = SUFFIX = samples_file.SUFFIX
ONLY_REPRODUCE = ("a consistent forgery of the per-document scores themselves is caught only by "
                  "`muse-quant leaderboard check --reproduce`")
MISSING = "(its per-document scores) is missing"
#: said once per entry that lacks samples files
MISSING_HELP = (f"every results file comes with the <scheme>{SUFFIX} file `muse-quant sweep` "
                f"writes beside it, from which the validator recomputes every aggregate; re-run "
                f"the sweep with this version of muse-quant and add its output folder with "
                f"`muse-quant leaderboard add` (it copies both)")
#: per-document Min-K% scores (mean negative log-probability of the lowest tokens): finite and
#: far below this
MAX_SCORE = 1e6


_RECOMPUTED: dict[str, dict] = {}  # sha256 of a samples file's text -> its aggregates


def recomputed_aggregates(text: str, samples: dict) -> dict:
    """:func:`~harness_ext.evaluation.samples.recompute_aggregates` of ``samples`` (parsed from
    ``text``), remembered by the text's sha256: a board often holds files with equal scores, and
    the AUCs are the slow part (scikit-learn)."""
    key = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
    if key not in _RECOMPUTED:
        if len(_RECOMPUTED) >= 256:
            _RECOMPUTED.clear()
        _RECOMPUTED[key] = samples_file.recompute_aggregates(samples)
    return copy.deepcopy(_RECOMPUTED[key])


def samples_name(results_name: str) -> str:
    """``rtn_4_g64.json`` -> ``rtn_4_g64.samples.jsonl``."""
    return samples_file.samples_path(results_name).name


def _value_problem(value, aggregation: str, metric: str) -> str | None:
    """Why one per-document value cannot be aggregated by ``aggregation``, or None."""
    if aggregation == "mean":
        low, high = METRIC_UNITS.get(metric, (-MAX_SCORE, MAX_SCORE))
        if not is_number(value) or not low <= value <= high:
            return f"a value {value!r:.40} outside {low:g} to {high:g}"
        return None
    width = {"agg_mink40_auc": 2, "agg_privleak": 3}.get(aggregation)
    if not isinstance(value, list) or len(value) != width:
        return f"a value {value!r:.40} that is not a list of {width} numbers"
    score, label = value[0], value[1]
    if not is_number(score) or abs(score) > MAX_SCORE or label not in (0, 1) or \
            isinstance(label, bool) or isinstance(label, float):
        return f"a value {value!r:.40}: need [score, label 0|1, ...]"
    if width == 3 and not (is_number(value[2]) and 0 < value[2] <= 1):
        return f"a value {value!r:.40} whose retrain AUC is not in (0, 1]"
    return None


def _shape_problems(samples: dict, tasks: set[str], aggregations: dict, where: str) -> list[str]:
    problems = []
    for line in samples["tasks"]:
        task = line["task"]
        if task not in tasks:
            problems.append(f"{where}: per-document scores of {task!r}, which is not a task of "
                            f"this results file")
            continue
        if len(set(map(repr, line["doc_id"]))) != len(line["doc_id"]) or \
                not all(isinstance(d, int) and not isinstance(d, bool) for d in line["doc_id"]):
            problems.append(f"{where}: {task}: doc_id must be distinct integers")
        expected = aggregations.get(task, {})
        for metric, entry in line["metrics"].items():
            if expected.get(metric) != entry["aggregation"]:
                problems.append(f"{where}: {task} {metric}: aggregation "
                                f"{entry['aggregation']!r:.60}, but the task YAML aggregates "
                                f"it with {expected.get(metric, '<not a metric of the task>')!r}")
                continue
            bad = next((p for v in entry["values"]
                        if (p := _value_problem(v, entry["aggregation"], metric))), None)
            if bad:
                problems.append(f"{where}: {task} {metric}: {bad}")
            refs = {v[2] for v in entry["values"] if isinstance(v, list) and len(v) == 3}
            if not bad and entry["aggregation"] == "agg_privleak" and len(refs) > 1:
                problems.append(f"{where}: {task} {metric}: the retrain AUC differs between "
                                f"documents")
    return problems


def samples_problems(results: dict, results_path: Path, where: str, aggregations: dict) \
        -> list[str]:
    """Problems of the samples file beside ``results_path`` and of the aggregates of ``results``
    recomputed from it; ``where`` names the results file in messages."""
    name = samples_name(results_path.name)
    path = results_path.with_name(name)
    at = f"{where.rpartition('/')[0]}/{name}"
    if not path.is_file() or path.is_symlink():
        return [f"{where}: {name} {MISSING}"]
    text, problems = read_text(path, at, MAX_SAMPLES_BYTES)
    if problems:
        return problems
    try:
        samples = samples_file.loads(text, at)
    except MuseQuantError as exc:
        return [exc.problem]
    except (ValueError, RecursionError) as exc:  # an integer of more than 4300 digits
        return [f"{at}: not JSON Lines ({str(exc)[:100]})"]
    problems = plain_problems(samples["tasks"], at)
    tasks = {t for t, v in results["results"].items()
             if isinstance(v, dict) and any("," in k for k in v)}
    problems = problems or _shape_problems(samples, tasks, aggregations, at)
    if problems:
        return problems
    try:
        mismatches = samples_file.aggregate_mismatches(
            results, samples, recomputed_aggregates(text, samples))
    except MuseQuantError as exc:
        return [f"{at}: {exc.problem}"]
    except (ArithmeticError, ValueError, TypeError) as exc:
        return [f"{at}: the aggregates cannot be recomputed ({type(exc).__name__}: "
                f"{str(exc)[:100]})"]
    if not mismatches:
        return []
    return [f"{where}: {m}" for m in mismatches] + [
        f"{where}: {len(mismatches)} aggregate(s) differ from those recomputed from {name}: "
        f"submit the files `muse-quant sweep` wrote, unedited (the check recomputes every "
        f"aggregate; {ONLY_REPRODUCE})"]
