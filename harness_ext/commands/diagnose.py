"""How much of an unlearning update survives each quantization scheme (weights only, no generation).

  muse-quant diagnose --pretrained TARGET --unlearned CKPT --quant rtn:4,bnb-fp4,gptq:4 \\
      [--out DIR] [--calib generic|forget|retain|FILE] [--dtype auto]

Per quantized module, per transformer block and overall: ||θu − θo||, ||Q(θu) − Q(θo)||, their
ratio, the fraction of weights whose quantized value flips, the share of ||θu − θo||² carried by
weights that moved less than half a quantization step, and the fraction of weights that did not
change at all (definitions in harness_ext/evaluation/diagnostics.py). Prints the overall table; with --out
writes DIR/diagnose.json and DIR/survival.png (survival ratio per block and scheme).
"""

from __future__ import annotations

NAME = "diagnose"
HELP = "update-survival diagnostic: does the unlearning update survive quantization?"


def add_arguments(parser) -> None:
    parser.add_argument("--pretrained", required=True, help="target (original) model dir or id")
    parser.add_argument("--unlearned", required=True,
                        help="unlearned model dir, .safetensors delta or PEFT adapter dir")
    parser.add_argument("--quant", required=True, help="comma-separated schemes")
    parser.add_argument("--out", default=None, help="directory for diagnose.json + plot")
    parser.add_argument("--plot_format", default="png", choices=["png", "svg"])
    parser.add_argument("--dtype", default="auto", help="auto (checkpoint's), float32, bfloat16")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quant_lm_head", action="store_true")
    parser.add_argument("--allow_pickle", action="store_true")
    parser.add_argument("--calib", default="generic",
                        help="GPTQ/AWQ calibration: generic, forget, retain or a file")
    parser.add_argument("--calib_samples", type=int, default=128)
    parser.add_argument("--calib_seqlen", type=int, default=512)
    parser.add_argument("--calib_corpus", default="news", choices=["news", "books"])
    parser.add_argument("--calib_data", default=None,
                        help="embedded, hub or a MUSE-layout dir (default $MUSE_DATA, else "
                             "embedded)")


def run(args) -> int:
    from ..evaluation.diagnostics import print_table, run_diagnose
    from ..evaluation.sweep import parse_scheme_list

    schemes = parse_scheme_list(args.quant)
    report = run_diagnose(args.pretrained, args.unlearned, schemes, args.out, dtype=args.dtype,
                          device=args.device, include_lm_head=args.quant_lm_head,
                          allow_pickle=args.allow_pickle, plot_format=args.plot_format,
                          calib=args.calib, calib_samples=args.calib_samples,
                          calib_seqlen=args.calib_seqlen, calib_corpus=args.calib_corpus,
                          calib_data=args.calib_data)
    print(f"dtype: {report['dtype']}; unlearned: {report['unlearned']['kind']} "
          f"({report['unlearned']['tensors_changed']} tensors changed)")
    print(print_table(report))
    if args.out:
        print(f"written: {args.out}/diagnose.json, {args.out}/survival.{args.plot_format}")
    return 0
