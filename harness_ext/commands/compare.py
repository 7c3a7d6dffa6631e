"""Does the unlearning survive quantization? The target against one or more unlearned models.

  muse-quant compare TARGET UNLEARNED [UNLEARNED ...] [--json FILE] [--markdown FILE]

Each argument is a muse-quant sweep --output_path folder (one <scheme>.json per scheme), an
lm_eval --output_path folder, or one results JSON. For every scheme both have: VerbMem_f,
KnowMem_f, KnowMem_r, PrivLeak; retained knowledge % = 100 * VerbMem_f(unlearned) /
VerbMem_f(target) and utility kept % = 100 * KnowMem_r(unlearned) / KnowMem_r(target), at the
same precision; the change from full precision; and a verdict per model:

  utility lost  utility kept < {gate:g}% at full precision
  recovers      at a 4-bit scheme, retained rises by >= {points:g} points over full precision
                (which must be <= {forgotten:g}%: something was forgotten)
  robust        otherwise (n/a when nothing was forgotten or a precision is missing)

Confidence intervals: {level:g}% paired bootstrap over documents ({resamples} resamples, fixed
seed) of each retained % and each change, from per-document values (lm_eval --log_samples files
next to the results); "n/a" without them. Definitions: harness_ext/evaluation/verdict.py.
"""

from __future__ import annotations

from ..evaluation import verdict as _verdict

__doc__ = __doc__.format(gate=_verdict.UTILITY_GATE, points=_verdict.RECOVERY_POINTS,
                         forgotten=100 - _verdict.RECOVERY_POINTS,
                         level=100 * _verdict.BOOTSTRAP_CONFIDENCE,
                         resamples=_verdict.BOOTSTRAP_RESAMPLES)

NAME = "compare"
HELP = "the verdict: does an unlearned model's forgetting survive quantization?"


def add_arguments(parser) -> None:
    parser.add_argument("target", metavar="TARGET",
                        help="results of the model before unlearning (folder or results JSON)")
    parser.add_argument("unlearned", metavar="UNLEARNED", nargs="+",
                        help="results of an unlearned model (folder or results JSON)")
    parser.add_argument("--json", metavar="FILE", help="also write the comparison as JSON")
    parser.add_argument("--markdown", metavar="FILE", help="also write it as Markdown")


def run(args) -> int:
    from ..evaluation.compare import compare, format_markdown, format_table
    from ..io import write_bytes, write_json

    report = compare(args.target, args.unlearned)
    print(format_table(report))
    if args.json:
        write_json(args.json, report)
        print(f"written: {args.json}")
    if args.markdown:
        write_bytes(args.markdown, format_markdown(report).encode("utf-8"))
        print(f"written: {args.markdown}")
    return 0
