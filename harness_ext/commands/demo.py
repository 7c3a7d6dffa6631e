"""The whole study on a laptop CPU, no arguments needed.

  muse-quant demo                       # NEWS-like toy: build, unlearn, quantize, leaderboard
  muse-quant demo --corpus both --out DIR
  muse-quant demo --fast                # every stage, minimal sizes (the test suite runs it)
  muse-quant demo --scale medium        # the paper's regime: width 1024, pure bf16, lr 1e-5 (~41 min)
  muse-quant demo --recovery_map [--widths 128,512 --lrs 1e-5,3e-5 --precisions bf16,fp32]

Stages (each cached under --out; a re-run skips finished work, --fresh starts over):
  1. the embedded corpus; 2. base -> target (forget + retain) and retrain (retain) models;
  3. unlearning: GA, GA_GDR, GA_KLR, NPO, NPO_GDR, NPO_KLR, GA_GDR_SURE, NPO_KLR_SURE;
  4. sweep none, bnb-int8-real (LLM.int8), bnb-fp4, gptq:4, awq:4 and the deployment formats
     gguf:q4_k_m, gguf:q8_0, fp8:e4m3 over every model (--fast adds bnb-int8 and rtn:4:g64);
  5. diagnose (update survival) and the leaderboard in OUT/leaderboard/;
  6. the summary: retained knowledge % at full precision vs 4-bit and vs the deployment formats
     (the toy's rows of 128/384 values get llama.cpp's fallback types: Q4_K -> Q5_0, Q6_K ->
     Q8_0; the summary lists them), and the GDR/KLR average.
"""

from __future__ import annotations

from pathlib import Path

NAME = "demo"
HELP = "the whole study on a toy model in minutes on a CPU (no arguments needed)"


def add_arguments(parser) -> None:
    parser.add_argument("--out", default="demo_out", help="output folder (default: demo_out)")
    parser.add_argument("--corpus", default="news", choices=["news", "books", "both"])
    parser.add_argument("--fast", action="store_true",
                        help="minimal sizes, every stage (about a minute; for tests)")
    parser.add_argument("--scale", default="small", choices=["small", "medium"],
                        help="small: the 10-minute toy (width 128, fp32, lr 1e-4); medium: the "
                             "paper's regime (width 1024, 2 layers, pure bf16 at MUSE's lr 1e-5, "
                             "240 steps; about 41 min on 2 cores, see docs/toy.md)")
    parser.add_argument("--fresh", action="store_true",
                        help="delete --out first (only a folder this command made)")
    parser.add_argument("--recovery_map", action="store_true",
                        help="sweep the unlearning lr (x precision) for two methods and plot "
                             "4-bit vs full-precision retained knowledge")
    parser.add_argument("--widths", default=None,
                        help="with --recovery_map: comma-separated model widths (hidden size, "
                             "multiples of 128; default 128,512; the demo's width reuses its "
                             "target, others train a 2-layer target once, cached)")
    parser.add_argument("--precisions", default=None,
                        help="with --recovery_map: comma-separated unlearning precisions "
                             "(fp32, bf16, bf16-mixed; default bf16,fp32)")
    parser.add_argument("--lrs", default=None,
                        help="with --recovery_map: comma-separated learning rates "
                             "(default 1e-5,3e-5)")
    parser.add_argument("--map_methods", default=None,
                        help="with --recovery_map: comma-separated methods (default ga_gdr,npo_gdr)")
    parser.add_argument("--seeds", default=None,
                        help="with --recovery_map: comma-separated unlearning seeds (default 0)")
    parser.add_argument("--jobs", type=int, default=None,
                        help="models unlearned/evaluated at once, one torch thread each "
                             "(default: 2 when the machine has 2+ cores)")
    parser.add_argument("--no_progress", action="store_true", help="no progress bars")


def run(args) -> int:
    from ..errors import MuseQuantError
    from ..demo import FAST, DemoRun, prepare_out

    from ..demo import SCALES

    if args.fast and args.scale != "small":
        raise MuseQuantError(f"--fast and --scale {args.scale} contradict each other",
                             "pass one of them")
    config = FAST if args.fast else SCALES[args.scale]
    corpora = ("news", "books") if args.corpus == "both" else (args.corpus,)
    out = Path(args.out).expanduser()
    if args.recovery_map:
        from ..demo.recovery_map import MapAxes, run_recovery_map

        axes = MapAxes.parse(config, args.widths, args.precisions, args.lrs,
                             args.map_methods, args.seeds)
    from ..demo.config import MAP_FIELDS

    prepare_out(out, config, args.fresh, fields=MAP_FIELDS if args.recovery_map else None)
    import os

    jobs = args.jobs if args.jobs is not None else min(2, os.cpu_count() or 1)
    if jobs < 1:
        raise MuseQuantError(f"--jobs {jobs} must be at least 1", "e.g. --jobs 2")
    demo = DemoRun(config, out, corpora, progress=not args.no_progress, jobs=jobs)
    if args.recovery_map:
        for corpus in corpora:
            run_recovery_map(demo, corpus, axes)
    else:
        demo.run()
    return 0
