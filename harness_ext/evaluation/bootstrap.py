"""Paired bootstrap confidence intervals over documents (``muse-quant compare``).

Every statistic here is a function of per-document values that share their documents: VerbMem_f
of the unlearned model and of the target, at full precision and at 4-bit, on the same forget
prompts. A resample draws ``n`` documents with replacement (``n`` = the number of documents all
columns have) and takes the *same* documents in every column (paired), so the uncertainty that
comes from which documents were evaluated is counted once. The interval is the percentile
interval of the resampled statistic (numpy's linear interpolation), with a fixed seed
(:data:`~harness_ext.evaluation.verdict.BOOTSTRAP_SEED`), so a run prints the same interval every
time. Resamples whose statistic is undefined (a target mean of 0 in a ratio) are left out; the
interval is None when none is left.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

from .verdict import BOOTSTRAP_CONFIDENCE, BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED


def align(columns: Sequence[dict]) -> list[list[float]]:
    """``[{doc_id: value}, ...]`` -> the values of the documents every column has, as lists in
    the same (sorted doc id) order."""
    common = set(columns[0])
    for column in columns[1:]:
        common &= set(column)
    docs = sorted(common, key=lambda d: (str(type(d)), d))
    return [[float(column[d]) for d in docs] for column in columns]


def ratio(numerator: Sequence[float], denominator: Sequence[float]) -> float:
    """``100 * mean(numerator) / mean(denominator)``; nan when the denominator's mean is 0."""
    den = sum(denominator)
    return math.nan if den == 0 else 100.0 * sum(numerator) / den


def paired_ci(statistic: Callable[..., float], columns: Sequence[Sequence[float]],
              resamples: int = BOOTSTRAP_RESAMPLES, confidence: float = BOOTSTRAP_CONFIDENCE,
              seed: int = BOOTSTRAP_SEED) -> tuple[float, float] | None:
    """Percentile interval of ``statistic(*resampled columns)`` (module docstring)."""
    import numpy as np

    data = np.asarray(columns, dtype=float)
    if data.ndim != 2 or data.shape[1] == 0:
        return None
    n = data.shape[1]
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(resamples):
        picked = data[:, rng.integers(0, n, size=n)]
        value = statistic(*picked)
        if math.isfinite(value):
            values.append(value)
    if not values:
        return None
    alpha = (1 - confidence) / 2
    low, high = np.percentile(values, [100 * alpha, 100 * (1 - alpha)])
    return float(low), float(high)


def retained_ci(unlearned: dict, target: dict, **kwargs) -> tuple[float, float] | None:
    """CI of ``100 * mean VerbMem_f(unlearned) / mean VerbMem_f(target)`` over documents."""
    columns = align([unlearned, target])
    return paired_ci(lambda u, t: ratio(u, t), columns, **kwargs)


def change_ci(unlearned_full: dict, target_full: dict, unlearned_q: dict, target_q: dict,
              **kwargs) -> tuple[float, float] | None:
    """CI of retained(Q) - retained(full), the same documents in all four columns."""
    columns = align([unlearned_full, target_full, unlearned_q, target_q])
    return paired_ci(lambda uf, tf, uq, tq: ratio(uq, tq) - ratio(uf, tf), columns, **kwargs)
