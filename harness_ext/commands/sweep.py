"""Load the model once and evaluate many quantization schemes, one results JSON per scheme.

  muse-quant sweep --model_args pretrained=DIR,unlearned=CKPT \\
      --quant none,bnb-int8,bnb-fp4,rtn:4:g128,gptq:4,awq:4 \\
      --tasks muse_news_quant --output_path OUT [--muse_data embedded] \\
      [--limit N] [--device cpu] [--batch_size 8] [--target TARGET_SWEEP_DIR]

Writes OUT/<scheme>.json (":" becomes "_": OUT/rtn_4_g128.json), each what
`muse-quant eval --model muse_quant --model_args ...,quant=<scheme> --output_path` would
write, plus OUT/<scheme>.samples.jsonl (every document's score) and OUT/provenance.json (what
produced the folder). Schemes whose file exists are skipped (run again to resume) when the
model, checkpoint, tasks, limit, metadata, data and packages match OUT/provenance.json;
otherwise the sweep stops before loading anything. A scheme another sweep is evaluating is
locked. A failing scheme is listed in OUT/errors.json and the exit status is 1, the others are
kept. Calibration model args (calib=, calib_samples=, quant_cache_dir=, ...) go in
--model_args.

With --target DIR (the target's sweep folder) it ends with the table of muse-quant compare DIR
OUT: retained knowledge, utility kept and the verdict.
"""

from __future__ import annotations

NAME = "sweep"
HELP = "load once, evaluate many quantization schemes (one results JSON each)"


def add_arguments(parser) -> None:
    parser.add_argument("--model_args", default=None,
                        help="muse_quant model args without quant=, e.g. pretrained=DIR,"
                             "unlearned=CKPT")
    parser.add_argument("--pretrained", default=None, metavar="DIR",
                        help="the same as pretrained=DIR in --model_args")
    parser.add_argument("--quant", required=True,
                        help="comma-separated schemes, e.g. none,bnb-fp4,rtn:4:g128,gptq:4")
    parser.add_argument("--tasks", required=True, help="comma-separated lm-eval tasks/groups")
    parser.add_argument("--output_path", required=True, help="directory for <scheme>.json files")
    parser.add_argument("--metadata", default=None,
                        help="task metadata as k=v,k=v or JSON, e.g. muse_data=embedded "
                             "($MUSE_DATA is used when muse_data is not given)")
    parser.add_argument("--muse_data", default=None, metavar="SOURCE",
                        help="the same as --metadata muse_data=SOURCE: embedded, hub or a folder "
                             "in MUSE's layout")
    parser.add_argument("--limit", default=None, help="documents per task (as lm_eval)")
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--batch_size", default=None,
                        help="as lm_eval: an integer or auto (default 1)")
    parser.add_argument("--target", default=None, metavar="DIR",
                        help="the target's sweep folder: print muse-quant compare DIR "
                             "OUTPUT_PATH at the end")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="also show lm-eval's known-harmless warnings")


def run(args) -> int:
    import sys

    from ..io import scheme_filename
    from ..evaluation.sweep import run_sweep
    from ..quantizers.compat import quiet_lm_eval

    target = None
    if args.target:  # read before anything is loaded: a wrong folder fails now
        from ..evaluation.compare import load_run

        target = load_run(args.target)
    quiet_lm_eval(args.verbose)
    model_args, metadata = args.model_args, args.metadata
    if args.pretrained is not None:  # the model as the other subcommands name it
        model_args = ",".join(x for x in (f"pretrained={args.pretrained}", model_args) if x)
    if args.muse_data is not None:  # the data source as the other subcommands name it
        from ..evaluation.sweep import parse_metadata

        metadata = {**parse_metadata(metadata), "muse_data": args.muse_data}
    batch = args.batch_size
    batch = int(batch) if batch is not None and str(batch).isdigit() else batch
    result = run_sweep(model_args, args.quant, args.tasks, args.output_path,
                       metadata=metadata, limit=args.limit, device=args.device,
                       batch_size=batch)
    for scheme in result.skipped:
        print(f"skipped (already done): {scheme}")
    for scheme in result.written:
        t = result.timings.get(scheme, {})
        print(f"written: {result.output_path / scheme_filename(scheme)} "
              f"(quantize {t.get('quantize_seconds', 0):.1f} s, "
              f"evaluate {t.get('evaluate_seconds', 0):.1f} s)")
    if result.load_seconds is not None:
        print(f"model loaded once in {result.load_seconds:.1f} s")
    for scheme, err in result.failed.items():
        print(f"FAILED: {scheme}: {err['message']}", file=sys.stderr)
        if err.get("fix"):
            print(f"  fix: {err['fix']}", file=sys.stderr)
    if result.failed:
        print(f"errors written to {result.output_path / 'errors.json'}", file=sys.stderr)
    if target is not None and (result.written or result.skipped):
        from ..evaluation.compare import compare, format_table

        print()
        print(format_table(compare(target, [result.output_path])))
    return 1 if result.failed else 0
