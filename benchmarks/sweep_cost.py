"""Benchmark: a K-scheme sweep costs at most one model load plus K times (quantize + evaluate).

One process, one tiny random Llama (hidden 256, 4 layers), the embedded corpus. Two ways to
evaluate K schemes:

* separate runs: per scheme, load the model with ``quant=<scheme>`` (load + quantize) and run the
  tasks, as K ``muse-quant eval`` runs would (in-process, so without their interpreter start-up
  and imports: a baseline in favour of separate runs);
* the sweep: load once with ``keep_float_weights=True``, then per scheme
  :func:`harness_ext.evaluation.sweep.evaluate_scheme` (restore the float weights, quantize, run the tasks):
  the code ``muse-quant sweep`` runs for every scheme.

On a shared machine timings drift by large factors within minutes, so the two are interleaved
scheme by scheme (a separate run, then the sweep step of the same scheme) for ``--repeats``
rounds, and the fastest time of each is kept (noise only adds time). The process's CPU time
(``time.process_time``, much less sensitive to other processes) is compared too. Then

  ratio = (sweep's load + sum of sweep steps) / (one load + sum of (quantize + evaluate) of the
  separate runs)

should be <= 1 (the goal; 10% allowed for noise). It also prints the ratio to K separate runs and
the per-scheme quantization times, and finally runs ``run_sweep`` end to end once (wall time;
not used in the ratio because it cannot be interleaved).

  python benchmarks/sweep_cost.py [--schemes none,bnb-int8,bnb-fp4,rtn:4:g128,gptq:4,awq:4]
      [--tasks muse_news_quant] [--limit 2] [--calib_samples 16] [--calib_seqlen 128]
      [--repeats 3] [--threads 2]
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
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1),
                        help="torch threads (1 is steadier on a loaded machine)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from harness_ext.evaluation import sweep
    from harness_ext.lm import MuseQuantLM
    from harness_ext.toy.tiny import build_tiny_llama

    schemes = sweep.parse_scheme_list(args.schemes)
    tasks = args.tasks.split(",")
    metadata = {"muse_data": "embedded"}
    calib = dict(calib=args.calib, calib_samples=args.calib_samples,
                 calib_seqlen=args.calib_seqlen)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "tiny"
        build_tiny_llama(model_dir, seed=0)
        model_args = {"pretrained": str(model_dir), **calib}
        common = dict(model_args=model_args, tasks=tasks, metadata=metadata, limit=args.limit,
                      device="cpu", batch_size=args.batch_size)

        start, cpu = time.perf_counter(), time.process_time()
        swept = MuseQuantLM(**model_args, keep_float_weights=True, device="cpu",
                            batch_size=args.batch_size)
        sweep_load, sweep_load_cpu = time.perf_counter() - start, time.process_time() - cpu
        sweep._lm_eval_results(swept, "none", **common)  # warm-up: imports, first calls
        import llmcompressor  # noqa: F401

        best: dict[str, dict] = {}
        for repeat in range(args.repeats):
            for scheme in schemes:
                start, cpu0 = time.perf_counter(), time.process_time()
                lm = MuseQuantLM(**model_args, quant=scheme, device="cpu",
                                 batch_size=args.batch_size)
                loaded, cpu1 = time.perf_counter(), time.process_time()
                sweep._lm_eval_results(lm, scheme, **common)
                done, cpu2 = time.perf_counter(), time.process_time()
                quantize = lm.muse_info["quantization"]["total_seconds"]
                del lm
                cpu3 = time.process_time()
                _, step = sweep.evaluate_scheme(swept, scheme, **common)
                cpu4 = time.process_time()
                run = {"load": loaded - start - quantize, "quantize": quantize,
                       "evaluate": done - loaded, "separate": done - start,
                       "sweep_quantize": step["quantize_seconds"],
                       "sweep_evaluate": step["evaluate_seconds"],
                       "sweep_step": step["quantize_seconds"] + step["evaluate_seconds"],
                       # CPU time of this process: far less sensitive to other processes
                       "cpu_load_quantize": cpu1 - cpu0, "cpu_evaluate": cpu2 - cpu1,
                       "cpu_sweep_step": cpu4 - cpu3}
                print(f"[{repeat + 1}] {scheme:<11} separate: load {run['load']:5.1f} s, "
                      f"quantize {quantize:6.1f} s, evaluate {run['evaluate']:6.1f} s | sweep "
                      f"step: quantize {run['sweep_quantize']:6.1f} s, evaluate "
                      f"{run['sweep_evaluate']:6.1f} s", flush=True)
                kept = best.setdefault(scheme, run)
                for key, value in run.items():
                    kept[key] = min(kept[key], value)

        start = time.perf_counter()
        result = sweep.run_sweep(model_args, schemes, tasks, Path(tmp) / "sweep",
                                 metadata=metadata, limit=args.limit, device="cpu",
                                 batch_size=args.batch_size, progress=False)
        end_to_end = time.perf_counter() - start
        if not result.ok:
            raise SystemExit(f"sweep failed: {result.failed}")

    one_load = min(v["load"] for v in best.values())
    bound = one_load + sum(v["quantize"] + v["evaluate"] for v in best.values())
    t_sweep = sweep_load + sum(v["sweep_step"] for v in best.values())
    t_separate = sum(v["separate"] for v in best.values())
    print(f"\nfastest of {args.repeats} per scheme; K = {len(schemes)}, tasks {args.tasks}, "
          f"--limit {args.limit}, calibration {args.calib_samples} x {args.calib_seqlen} tokens, "
          f"{args.threads} threads, load average {os.getloadavg()[0]:.1f} on "
          f"{os.cpu_count()} CPUs")
    print(f"{'scheme':<12}{'quantize: sweep':>16}{'separate':>10}"
          f"{'evaluate: sweep':>17}{'separate':>10}")
    for scheme, v in best.items():
        print(f"{scheme:<12}{v['sweep_quantize']:>14.2f} s{v['quantize']:>8.2f} s"
              f"{v['sweep_evaluate']:>15.2f} s{v['evaluate']:>8.2f} s")
    print(f"sweep: load once (keeping the float copy) {sweep_load:.2f} s + K steps = "
          f"{t_sweep:.1f} s")
    print(f"one load ({one_load:.2f} s) + K x (quantize + evaluate), separate runs: {bound:.1f} s")
    print(f"K separate runs: {t_separate:.1f} s")
    cpu_sweep = sweep_load_cpu + sum(v["cpu_sweep_step"] for v in best.values())
    cpu_separate = sum(v["cpu_load_quantize"] + v["cpu_evaluate"] for v in best.values())
    print(f"CPU time of the process: sweep {cpu_sweep:.1f} s (load {sweep_load_cpu:.2f} s) vs "
          f"K separate runs (load + quantize + evaluate) {cpu_separate:.1f} s; ratio "
          f"{cpu_sweep / cpu_separate:.3f}")
    ratio = t_sweep / bound
    print(f"overhead ratio sweep / (one load + K x (quantize + evaluate)) = {ratio:.3f}")
    print(f"sweep / K separate runs = {t_sweep / t_separate:.3f}")
    print("goal (ratio <= 1, 10% timing noise allowed):", "met" if ratio <= 1.1 else "NOT met")
    print(f"end-to-end run_sweep once (not interleaved, load {result.load_seconds:.2f} s): "
          f"{end_to_end:.1f} s; its quantization times: " +
          ", ".join(f"{s} {t['quantize_seconds']:.2f} s" for s, t in result.timings.items()))


if __name__ == "__main__":
    main()
