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


def ratio(numerator, denominator):
    """``100 * mean(numerator) / mean(denominator)``; nan when the denominator's mean is 0.
    Sequences give a float; numpy arrays give one value per row (the last axis is documents)."""
    if not hasattr(denominator, "ndim"):
        den = sum(denominator)
        return math.nan if den == 0 else 100.0 * sum(numerator) / den
    import numpy as np

    num, den = np.sum(numerator, axis=-1), np.sum(denominator, axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den == 0, np.nan, 100.0 * num / np.where(den == 0, 1.0, den))


def paired_ci(statistic: Callable[..., float], columns: Sequence[Sequence[float]],
              resamples: int = BOOTSTRAP_RESAMPLES, confidence: float = BOOTSTRAP_CONFIDENCE,
              seed: int = BOOTSTRAP_SEED) -> tuple[float, float] | None:
    """Percentile interval of ``statistic(*resampled columns)`` (module docstring). The
    statistic is called once, on ``(resamples, n)`` arrays (one row per resample), and returns
    one value per resample, as :func:`ratio` does."""
    import numpy as np

    data = np.asarray(columns, dtype=float)
    if data.ndim != 2 or data.shape[1] == 0:
        return None
    n = data.shape[1]
    rng = np.random.default_rng(seed)
    # all resamples at once: the same indices as drawing them one resample after the other;
    # the statistic gets (resamples, n) arrays and returns one value per resample
    picked = data[:, rng.integers(0, n, size=(resamples, n))]
    values = np.asarray(statistic(*picked), dtype=float).reshape(-1)
    values = values[np.isfinite(values)]
    if not values.size:
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
