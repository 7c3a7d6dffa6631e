"""The range of every number a submission holds: metrics within their units, hyperparameters
finite and in the range ``muse-quant unlearn`` accepts.

Units (the task YAMLs and :mod:`harness_ext.metrics`):

* VerbMem / KnowMem ROUGE-L F1 and recall: points, 0 to 100;
* ``mink40_auc`` and ``privleak_retrain_auc`` (the retrained model's AUC, ``r``): 0 to 1, and
  ``r`` > 0 (PrivLeak divides by it);
* PrivLeak ``(auc - r) / r * 100``: from -100 (AUC 0) to ``100 * (1 - r) / r`` (AUC 1);
* standard errors: ``"N/A"`` or a finite number >= 0; ``sample_len``: an integer >= 0.

Every check returns problems (one readable line each), never raises.
"""

from __future__ import annotations

import math

from .loading import type_name

#: lm-eval metric key (before ``,<filter>``) -> (low, high) of its unit
METRIC_UNITS = {
    "verbmem_rougeL_f1": (0.0, 100.0), "verbmem_rougeL_recall": (0.0, 100.0),
    "knowmem_rougeL_f1": (0.0, 100.0), "knowmem_rougeL_recall": (0.0, 100.0),
    "mink40_auc": (0.0, 1.0), "privleak_retrain_auc": (0.0, 1.0),
    "privleak": (-100.0, None),  # upper end: 100 * (1 - r) / r, r = privleak_retrain_auc
}
#: relative slack for float rounding at the ends of a range
_SLACK = 1e-9

#: unlearning hyperparameter -> (type, low, low included, high); the ranges of
#: :meth:`harness_ext.unlearning.config.UnlearnConfig.validate`, plus upper ends that keep a
#: ``check --reproduce`` run finite
HYPERPARAMETERS = {
    "lr": (float, 0.0, False, 1.0),
    "alpha": (float, 0.0, True, 1e6),
    "beta": (float, 0.0, False, 1e6),
    "weight_decay": (float, 0.0, True, 1e3),
    "max_grad_norm": (float, 0.0, True, 1e6),
    "epochs": (int, 1, True, 10_000),
    "max_steps": (int, 1, True, 10_000_000),
    "batch_size": (int, 1, True, 65_536),
    "grad_accum": (int, 1, True, 65_536),
    "max_len": (int, 2, True, 1_048_576),
    "seed": (int, 0, True, 2 ** 32 - 1),
    "steps": (int, 0, True, 10_000_000_000),
    "steps_per_epoch": (int, 0, True, 10_000_000_000),
}


def is_number(value) -> bool:
    """A finite int or float (not a bool)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return abs(value) < 2 ** 63 if isinstance(value, int) else math.isfinite(value)


def _within(value: float, low: float, high: float) -> bool:
    slack = _SLACK * max(1.0, abs(low), abs(high))
    return low - slack <= value <= high + slack


def task_metric_problems(values: dict, task: str, where: str) -> list[str]:
    """Types and ranges of one task's ``results[task]`` mapping (every key, shown or not)."""
    problems = []
    ref = values.get("privleak_retrain_auc,none")
    for key, value in values.items():
        at = f"{where}: results.{task}.{key}"
        metric, _, _filter = key.partition(",")
        if key in ("alias", "name"):
            if not isinstance(value, str):
                problems.append(f"{at} must be a string, got {type_name(value)}")
        elif key == "sample_len":
            if not (isinstance(value, int) and not isinstance(value, bool) and
                    0 <= value < 2 ** 63):
                problems.append(f"{at} must be an integer >= 0, got {value!r:.60}")
        elif not _filter:
            problems.append(f"{at}: unexpected key (lm-eval writes <metric>,<filter>)")
        elif metric.endswith("_stderr"):
            if value != "N/A" and not (is_number(value) and value >= 0):
                problems.append(f"{at} must be a finite number >= 0 or \"N/A\", got "
                                f"{value!r:.60}")
        elif not is_number(value):
            problems.append(f"{at} is not a finite number ({value!r:.60})")
        elif metric in METRIC_UNITS:
            low, high = METRIC_UNITS[metric]
            unit = "points" if high == 100.0 else "(an AUC)"
            if metric == "privleak":
                if not (is_number(ref) and 0 < ref <= 1):
                    continue  # reported for privleak_retrain_auc (or it is missing)
                high, unit = 100.0 * (1 - ref) / ref, f"(PrivLeak with retrain AUC {ref})"
            if not _within(value, low, high):
                problems.append(f"{at} is {value!r}, outside {low:g} to {high:g} {unit}")
            elif metric == "privleak_retrain_auc" and not value > 0:
                problems.append(f"{at} is {value!r}; the retrained model's AUC must be > 0")
    return problems


def _as_number(value, kind):
    """``value`` as ``kind``; numeric strings (``"1e-5"``, as YAML reads them) are accepted."""
    if isinstance(value, str) and len(value) <= 40:
        try:
            value = float(value) if kind is float else int(value)
        except ValueError:
            return None
    if kind is int and isinstance(value, float) and value.is_integer():
        value = int(value)
    if not is_number(value) or (kind is int and not isinstance(value, int)):
        return None
    return value


def hyperparameter_problem(key: str, value, where: str) -> str | None:
    """The problem of one known unlearning hyperparameter's value, or None (unknown keys: None;
    ``max_steps`` and ``epochs`` may be null)."""
    if key not in HYPERPARAMETERS or (value is None and key in ("max_steps", "epochs")):
        return None
    kind, low, low_ok, high = HYPERPARAMETERS[key]
    number = _as_number(value, kind)
    what = "an integer" if kind is int else "a number"
    if number is None:
        return f"{where}: {key} must be {what}, got {value!r:.60}"
    if not ((number >= low if low_ok else number > low) and number <= high):
        lower = f">= {low:g}" if low_ok else f"> {low:g}"
        return f"{where}: {key} is {number!r}; it must be finite, {lower} and <= {high:g}"
    return None


def hyperparameter_problems(hyper, where: str) -> list[str]:
    """Problems of the known keys of a ``hyperparameters`` mapping."""
    if not isinstance(hyper, dict):
        return []
    return [p for k, v in hyper.items() if (p := hyperparameter_problem(k, v, where))]


def entry_number_problems(meta: dict, where: str) -> list[str]:
    """The hyperparameters of an ``entry.yaml`` (its own and its run card's) and the run card's
    seed. Every number being finite is checked on reading (:func:`.loading.plain_problems`)."""
    problems = hyperparameter_problems(meta.get("hyperparameters"), f"{where}: hyperparameters")
    card = meta.get("run_card")
    if isinstance(card, dict):
        problems += hyperparameter_problems(card.get("hyperparameters"),
                                            f"{where}: run_card.hyperparameters")
        if card.get("seed") is not None:
            problem = hyperparameter_problem("seed", card["seed"], f"{where}: run_card")
            problems += [problem] if problem else []
    return problems
