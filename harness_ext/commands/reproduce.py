"""The paper's setup at full scale (the GPU path): MUSE target -> unlearn -> sweep -> leaderboard.

  muse-quant reproduce --corpus news --dry_run            print the plan, run nothing
  muse-quant reproduce --corpus news                      run it here, stage by stage (resumes)
  muse-quant reproduce --corpus news --emit_slurm DIR     write SLURM job arrays, run nothing

Stages, each an existing command, skipped when its output exists:
  1. hf download muse-bench/MUSE-<Corpus>_target and _retrain into OUT/models/
  2. muse-quant unlearn for every method (ga ga_gdr ga_klr npo npo_gdr npo_klr and their _sure
     variants) at the paper's settings: NEWS 10 epochs, BOOKS 5 (alpha 100 for GA_GDR, 2 for
     NPO_KLR), lr 1e-5, alpha 1, bf16; SURE lr 1e-4, threshold 99 (GA_GDR, alpha 400) / 90
     (NPO_KLR, alpha 20; the other SURE variants: 90 and their base alpha); --save delta
  3. muse-quant sweep --quant none,bnb-int8-real,bnb-fp4,gptq:4,awq:4 for target, retrain and every
     method: OUT/results/<model>/<scheme>.json
  4. muse-quant leaderboard add: one full-scale entry per model (slugs full-<corpus>-<model>)

--dry_run also prints the expected disk, peak GPU memory and time of every stage, with the
assumptions (throughput: --tflops, --hbm_tbs). --gpus N --gpu_mem GB fits every unlearning stage
to N GPUs of that memory (batch, accumulation, gradient checkpointing, DDP or FSDP through
`accelerate launch`), or says which stage cannot fit and why (docs/scale.md). The evaluation can also run data-parallel under
`ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes N -m harness_ext.cli eval ...`
(on GPUs without ACCELERATE_USE_CPU; see docs/scale.md).
"""

from __future__ import annotations

from ..recipes import PAPER_SCHEMES

NAME = "reproduce"
HELP = "the paper's full-scale setup: unlearn MUSE's 7B target, sweep, leaderboard (GPU)"


def add_arguments(parser) -> None:
    parser.add_argument("--corpus", required=True, help="news or books")
    parser.add_argument("--methods", default="all",
                        help="comma-separated unlearning methods (default: every registered one)")
    parser.add_argument("--quant", default=",".join(PAPER_SCHEMES),
                        help="comma-separated schemes for the sweep")
    parser.add_argument("--limit", type=int, default=None,
                        help="evaluate only N documents per task (quick checks)")
    parser.add_argument("--out", default=None, help="output folder (default reproduce_<corpus>)")
    parser.add_argument("--muse_data", default="hub",
                        help="hub | DIR in MUSE's layout (default hub)")
    parser.add_argument("--pretrained", default=None,
                        help="the target: hub id or local folder (default MUSE's target)")
    parser.add_argument("--retrain", default=None,
                        help="the retrain model: hub id or local folder (default MUSE's)")
    parser.add_argument("--sure_threshold", default=None,
                        help="SURE percentile for every *_sure method (default: the paper's, "
                             "99 for ga_gdr_sure, 90 otherwise)")
    parser.add_argument("--save", default="delta", choices=["delta", "full"],
                        help="unlearning checkpoint format (default delta)")
    parser.add_argument("--precision", default="bf16", choices=["bf16", "bf16-mixed", "fp32"],
                        help="unlearning precision (default bf16, as MUSE)")
    parser.add_argument("--batch_size", type=int, default=4, help="unlearning micro-batch")
    parser.add_argument("--grad_accum", type=int, default=8, help="unlearning accumulation")
    parser.add_argument("--eval_batch_size", type=int, default=8, help="sweep batch size")
    parser.add_argument("--leaderboard_root", default="leaderboard")
    parser.add_argument("--slug_prefix", default="full")
    parser.add_argument("--submitted_by", default=None)
    parser.add_argument("--tflops", type=float, default=400.0,
                        help="assumed sustained bf16 TFLOP/s for the time estimates")
    parser.add_argument("--hbm_tbs", type=float, default=2.0,
                        help="assumed GPU memory bandwidth in TB/s for the estimates")
    parser.add_argument("--gpus", default=None,
                        help="GPUs per job (one node): fit every unlearning stage to them "
                             "(batch size, accumulation, gradient checkpointing, DDP or FSDP "
                             "through accelerate launch); default: one GPU, unfitted")
    parser.add_argument("--gpu_mem", "--gpu_gb", dest="gpu_mem", default=None,
                        help="memory of one GPU, GB (default 80)")
    parser.add_argument("--eval_costs", default=None, metavar="FILE",
                        help="evaluation time from measured per-token costs (written by "
                             "benchmarks/eval_profile.py --costs FILE on the evaluation hardware) "
                             "instead of --tflops/--hbm_tbs")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--dry_run", action="store_true",
                      help="print the plan and the estimates; run nothing")
    mode.add_argument("--emit_slurm", metavar="DIR",
                      help="write SLURM job-array scripts into DIR (new or empty); run nothing")


def _plan(args):
    from ..reproduce import Assumptions, build_plan
    from ..reproduce.estimate import load_eval_costs
    from ..reproduce.fit import check_gpus

    gpu_mem = 80.0 if args.gpu_mem is None else check_gpus(1, args.gpu_mem)[1]
    costs = load_eval_costs(args.eval_costs) if args.eval_costs else None
    return build_plan(args.corpus, methods=args.methods, quant=args.quant, limit=args.limit,
                      out=args.out, muse_data=args.muse_data, pretrained=args.pretrained,
                      retrain=args.retrain, save=args.save, precision=args.precision,
                      sure_threshold=args.sure_threshold, batch_size=args.batch_size,
                      grad_accum=args.grad_accum, eval_batch_size=args.eval_batch_size,
                      leaderboard_root=args.leaderboard_root, slug_prefix=args.slug_prefix,
                      submitted_by=args.submitted_by, gpus=args.gpus,
                      assumptions=Assumptions(tflops=args.tflops, hbm_tbs=args.hbm_tbs,
                                              gpu_gb=gpu_mem,
                                              eval_batch=args.eval_batch_size,
                                              eval_costs=costs))


def _execute(stage) -> None:
    import subprocess
    import sys

    from ..errors import MuseQuantError

    if stage.kind == "fetch":  # `hf download REPO --local-dir DIR`, in-process
        from huggingface_hub import snapshot_download

        repo, folder = stage.argv[2], stage.argv[4]
        try:
            snapshot_download(repo, local_dir=folder)
        except Exception as exc:  # noqa: BLE001 - network / auth errors of many kinds
            raise MuseQuantError(f"cannot download {repo}: {type(exc).__name__}: "
                                 f"{str(exc)[:300]}",
                                 "check the network and `hf auth login`, or pass a local "
                                 "folder with --pretrained / --retrain") from None
        return
    argv = [sys.executable, "-m", "harness_ext.cli", *stage.argv[1:]]
    if stage.launch:  # accelerate launch ... -m harness_ext.cli ...
        argv = [sys.executable, "-m", "accelerate.commands.launch", *stage.full_argv[2:]]
    if stage.kind == "unlearn" and (stage.done.parent / "resume").is_dir():
        argv.append("--resume")  # an interrupted run continues bit for bit
    rc = subprocess.call(argv)
    if rc != 0:
        raise MuseQuantError(f"stage {stage.name} failed (exit status {rc}): {stage.command}",
                             "fix the error above and run the same reproduce command again "
                             "(finished stages are skipped)")


def run(args) -> int:
    from ..reproduce import emit_slurm, format_plan

    plan = _plan(args)
    if args.dry_run:
        print(format_plan(plan))
        return 0
    if args.emit_slurm:
        written = emit_slurm(plan, args.emit_slurm)
        for name, path in written.items():
            print(f"{name}: {path}")
        print(f"submit with: bash {written['submit']}")
        return 0
    for stage in plan.stages:
        if stage.is_done():
            print(f"skipped (done): {stage.name}")
            continue
        print(f"running {stage.name}: {stage.command}", flush=True)
        _execute(stage)
    print(f"all {len(plan.stages)} stages done; results under {plan.out}/results")
    return 0
