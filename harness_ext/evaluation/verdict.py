"""The answer to "does my unlearning survive 4-bit?": definitions, the verdict rule and its
constants, in one place (``muse-quant compare``, ``sweep --target``, the demo).

At the same precision (quantization scheme) Q, with the target = the model before unlearning:

* **retained knowledge** % = 100 * VerbMem_f(unlearned, Q) / VerbMem_f(target, Q)
  (Zhang et al., ICLR 2025, the measure behind "21% -> 83%";
  :func:`harness_ext.leaderboard.scores.retained`). Lower is better: 0 = nothing of the forget
  text is reproduced any more, 100 = as much as before unlearning.
* **utility kept** % = 100 * KnowMem_r(unlearned, Q) / KnowMem_r(target, Q): how much of the
  retain-set knowledge survived the unlearning. Higher is better.
* the **full -> 4-bit change** = retained(4-bit scheme) - retained(full precision), in points.

The verdict of an unlearned model (checked in this order):

1. **utility lost**: utility kept at full precision < :data:`UTILITY_GATE` % (the model was
   damaged rather than unlearned; whatever quantization does to it is moot);
2. **recovers**: at some 4-bit scheme, retained at full precision <= 100 - :data:`RECOVERY_POINTS`
   (something was forgotten) and the full -> 4-bit change >= :data:`RECOVERY_POINTS` points
   (4-bit brings it back), the demo's recovery rule;
3. **robust**: otherwise (the forgetting survives every 4-bit scheme measured).

The verdict is "n/a" without full-precision results, without any 4-bit scheme, or when nothing
was forgotten at full precision (retained > 100 - :data:`RECOVERY_POINTS` %).
"""

from __future__ import annotations

from ..leaderboard.scores import RECOVERY_POINTS, recovered

#: utility kept (% of the target's KnowMem_r at full precision) below which utility is lost
UTILITY_GATE = 50.0
#: bootstrap confidence intervals: resamples, confidence level and the fixed seed
BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_CONFIDENCE = 0.95
BOOTSTRAP_SEED = 0

ROBUST, RECOVERS, UTILITY_LOST, NOT_MEASURED = "robust", "recovers", "utility lost", "n/a"


def recovers(retained_full: float | None, retained_4bit: float | None) -> bool:
    """The recovery rule of :func:`harness_ext.leaderboard.scores.recovered` (False when a number
    is missing)."""
    return bool(recovered(retained_full, retained_4bit))


def verdict(retained_full: float | None, retained_4bit: dict[str, float | None],
            utility_full: float | None) -> tuple[str, str]:
    """``(verdict, reason)`` from retained % at full precision, retained % per 4-bit scheme and
    utility kept % at full precision (None where not measured)."""
    if utility_full is not None and utility_full < UTILITY_GATE:
        return UTILITY_LOST, (f"utility kept {utility_full:.1f}% < {UTILITY_GATE:g}% at full "
                              "precision")
    if retained_full is None:
        return NOT_MEASURED, "no full-precision retained knowledge"
    measured = {s: v for s, v in retained_4bit.items() if v is not None}
    if not measured:
        return NOT_MEASURED, "no 4-bit results"
    if retained_full > 100 - RECOVERY_POINTS:
        return NOT_MEASURED, (f"retained {retained_full:.1f}% at full precision: nothing "
                              f"forgotten (needs <= {100 - RECOVERY_POINTS:g}%)")
    back = {s: v for s, v in measured.items() if recovers(retained_full, v)}
    if back:
        scheme = max(back, key=back.get)
        return RECOVERS, (f"{scheme}: retained {retained_full:.1f}% -> {back[scheme]:.1f}% "
                          f"(+{back[scheme] - retained_full:.1f} >= {RECOVERY_POINTS:g} points)")
    worst = max(measured, key=measured.get)
    return ROBUST, (f"largest 4-bit change {measured[worst] - retained_full:+.1f} points "
                    f"({worst}) < {RECOVERY_POINTS:g}")


def rule_text() -> str:
    """The rule in one line (printed under the table)."""
    return (f"verdict: utility lost if utility kept < {UTILITY_GATE:g}% at full precision; "
            f"else recovers if at a 4-bit scheme retained - retained(full) >= "
            f"{RECOVERY_POINTS:g} points (with retained(full) <= {100 - RECOVERY_POINTS:g}%); "
            "else robust (n/a when nothing was forgotten at full precision)")
