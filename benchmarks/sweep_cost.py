"""Benchmark: a K-scheme sweep costs at most one model load plus K times (quantize + evaluate).

One process, one tiny random Llama (hidden 256, 4 layers), the embedded corpus:

1. baseline: for every scheme separately, load the model with ``quant=<scheme>`` (load +
   quantize) and run the tasks, as K separate ``muse-quant eval`` runs would (in-process, so
   without their interpreter start-up and imports: a baseline in favour of separate runs);
2. the sweep: ``harness_ext.sweep.run_sweep`` over the same schemes.

Both are repeated ``--repeats`` times, alternating, and the fastest time of each is used (timing
noise on a shared machine only ever adds time).

Prints per-scheme load / quantization / evaluation times of both, and the ratios

* sweep / (one load + sum over schemes of (quantize + evaluate) from the separate runs):
  the goal is <= 1 (up to timing noise on a shared machine);
* sweep / sum of the K separate runs: the saving.

  python benchmarks/sweep_cost.py [--schemes none,bnb-int8,bnb-fp4,rtn:4:g128,gptq:4,awq:4]
      [--tasks muse_news_quant] [--limit 2] [--calib_samples 16] [--calib_seqlen 128]
      [--repeats 2]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def evaluate(lm, model_dir, tasks, limit):
    import lm_eval
    from lm_eval.tasks import TaskManager

    from harness_ext.plugin import tasks_dir

    tm = TaskManager(include_path=tasks_dir(), include_defaults=False,
                     metadata={"muse_data": "embedded", "pretrained": str(model_dir)})
    return lm_eval.simple_evaluate(model=lm, tasks=tasks, task_manager=tm, limit=limit,
                                   log_samples=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--schemes", default="none,bnb-int8,bnb-fp4,rtn:4:g128,gptq:4,awq:4")
    parser.add_argument("--tasks", default="muse_news_quant")
    parser.add_argument("--limit", type=int, default=2)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--calib", default="generic")
    parser.add_argument("--calib_samples", type=int, default=16)
    parser.add_argument("--calib_seqlen", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=2,
                        help="alternate separate runs and sweeps this often; report the fastest")
    args = parser.parse_args()
    torch.set_num_threads(min(2, os.cpu_count() or 1))

    from harness_ext.lm import MuseQuantLM
    from harness_ext.sweep import parse_scheme_list, run_sweep
    from harness_ext.tiny import build_tiny_llama

    schemes = parse_scheme_list(args.schemes)
    tasks = args.tasks.split(",")
    calib = dict(calib=args.calib, calib_samples=args.calib_samples,
                 calib_seqlen=args.calib_seqlen)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "tiny"
        build_tiny_llama(model_dir, seed=0)
        common = dict(pretrained=str(model_dir), device="cpu", batch_size=args.batch_size,
                      **calib)
        # warm-up: imports and first-call costs (llmcompressor included) are paid here
        import llmcompressor  # noqa: F401

        evaluate(MuseQuantLM(**common), model_dir, tasks, 1)

        separate: dict[str, dict] = {}
        sweeps: list[tuple[float, object]] = []
        for repeat in range(args.repeats):  # alternate; keep the fastest of each (least noise)
            for scheme in schemes:
                start = time.perf_counter()
                lm = MuseQuantLM(**common, quant=scheme)
                loaded = time.perf_counter()
                evaluate(lm, model_dir, tasks, args.limit)
                done = time.perf_counter()
                quantize = lm.muse_info["quantization"]["total_seconds"]
                run = {"load": loaded - start - quantize, "quantize": quantize,
                       "evaluate": done - loaded, "total": done - start}
                del lm
                print(f"[{repeat + 1}] separate {scheme:<12} load {run['load']:6.1f} s  "
                      f"quantize {quantize:6.1f} s  evaluate {run['evaluate']:6.1f} s",
                      flush=True)
                best = separate.setdefault(scheme, run)
                for key in run:
                    best[key] = min(best[key], run[key])

            start = time.perf_counter()
            result = run_sweep(",".join(f"{k}={v}" for k, v in common.items()
                                        if k not in ("device", "batch_size")),
                               schemes, tasks, Path(tmp) / f"sweep{repeat}",
                               metadata="muse_data=embedded", limit=args.limit, device="cpu",
                               batch_size=args.batch_size, progress=False)
            t_run = time.perf_counter() - start
            if not result.ok:
                raise SystemExit(f"sweep failed: {result.failed}")
            print(f"[{repeat + 1}] sweep {t_run:.1f} s", flush=True)
            sweeps.append((t_run, result))
        t_sweep, result = min(sweeps, key=lambda item: item[0])

    one_load = sum(v["load"] for v in separate.values()) / len(separate)
    bound = one_load + sum(v["quantize"] + v["evaluate"] for v in separate.values())
    t_separate = sum(v["total"] for v in separate.values())
    print(f"\n{'scheme':<12}{'quantize (sweep)':>18}{'quantize (separate)':>21}"
          f"{'evaluate (sweep)':>18}{'evaluate (separate)':>21}")
    for scheme in schemes:
        s = result.timings[scheme]
        print(f"{scheme:<12}{s['quantize_seconds']:>16.2f} s{separate[scheme]['quantize']:>19.2f} s"
              f"{s['evaluate_seconds']:>16.2f} s{separate[scheme]['evaluate']:>19.2f} s")
    print(f"\nK = {len(schemes)} schemes, tasks {args.tasks}, --limit {args.limit}, "
          f"fastest of {args.repeats} (per scheme for separate runs)")
    print(f"sweep: {t_sweep:.1f} s (its one load: {result.load_seconds:.1f} s)")
    print(f"one load + K x (quantize + evaluate), from the separate runs: {bound:.1f} s "
          f"(mean load {one_load:.1f} s)")
    print(f"K separate runs: {t_separate:.1f} s")
    ratio = t_sweep / bound
    print(f"overhead ratio sweep / (one load + K x (quantize + evaluate)) = {ratio:.3f}")
    print(f"sweep / K separate runs = {t_sweep / t_separate:.3f}")
    print("goal (ratio <= 1, 10% timing noise allowed):", "met" if ratio <= 1.1 else "NOT met")


if __name__ == "__main__":
    main()
