"""How much of an unlearning update survives each quantization scheme (weights only, no generation).

  muse-quant diagnose --pretrained TARGET --unlearned CKPT --quant rtn:4,bnb-fp4,gptq:4 \\
      [--out DIR] [--calib generic|forget|retain|FILE] [--dtype auto]

Per quantized module, per transformer block and overall: the size of the update and of what
survives (||θu − θo||, ||Q(θu) − Q(θo)||, their ratio), its direction (the projection
⟨ΔQ, Δθ⟩/‖Δθ‖²), the share of weights whose dequantized value changed, and for codebook and
uniform schemes the mechanism: code flips apart from scale changes, the shares of ‖ΔQ‖² from
code crossings and from scale moves, the update mass in zero/near-zero codes, and the largest
|θo| that moved next to the near-zero edge (definitions in docs/diagnostics.md). Prints the
overall tables; with --out writes DIR/diagnose.json and DIR/survival.png (survival ratio per
block and scheme).
"""

from __future__ import annotations

NAME = "diagnose"
HELP = "update-survival diagnostic: does the unlearning update survive quantization?"


def add_arguments(parser) -> None:
    from ._options import add_calib_arguments, add_model_arguments

    add_model_arguments(parser, unlearned_required=True)
    parser.add_argument("--quant", required=True, help="comma-separated schemes")
    parser.add_argument("--out", default=None, help="directory for diagnose.json + plot")
    parser.add_argument("--plot_format", default="png", choices=["png", "svg"])
    add_calib_arguments(parser)


def run(args) -> int:
    from ..evaluation.diagnostics import print_table, run_diagnose
    from ..evaluation.sweep import parse_scheme_list
    from ._options import calib_kwargs

    schemes = parse_scheme_list(args.quant)
    report = run_diagnose(args.pretrained, args.unlearned, schemes, args.out, dtype=args.dtype,
                          device=args.device, include_lm_head=args.quant_lm_head,
                          allow_pickle=args.allow_pickle, plot_format=args.plot_format,
                          **calib_kwargs(args))
    print(f"dtype: {report['dtype']}; unlearned: {report['unlearned']['kind']} "
          f"({report['unlearned']['tensors_changed']} tensors changed)")
    print(print_table(report))
    if args.out:
        print(f"written: {args.out}/diagnose.json, {args.out}/survival.{args.plot_format}")
    return 0
