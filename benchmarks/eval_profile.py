"""Profile of the MUSE suite through lm-eval: wall time per phase and, per task, a lower bound.

Phases: load (model), dataset build (lm-eval's ``TaskManager.load``: the ``custom_dataset``
functions), requests build, generation per task, log-probs (PrivLeak), scoring
(``process_results`` + aggregation), writing (the results JSON), and what remains (other).

Lower bound per task, measured in the same run right after it:

* generation: the forward passes the work needs with the same batches (length-sorted, left-padded,
  same batch size, same KV cache class): each batch's prefill, then one decode step per generated
  token for only the rows still running (``harness_ext.generation.replay_forwards``);
* log-probs: the time inside the model's forward calls of the run itself.

``actual / lower bound`` is printed per task. The fast path can go below its bound (it encodes
KnowMem's shared 10-shot context once, and on CPU prefills each prompt without padding).

``--compare`` also runs lm-eval's own ``generate_until`` (``fast_generation=False``) and checks that
every generated string and every metric is identical.

  python benchmarks/eval_profile.py [--data auto|embedded|DIR] [--corpus news] [--limit 20]
      [--batch_size 32] [--threads 2] [--model DIR] [--compare]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

#: MUSE's real files, where tests/conftest.py looks for them
SHARED_MUSE = Path(os.environ.get("MUSE_SHARED_DATA", Path(__file__).resolve().parent.parent.parent
                                  / "shared" / "muse"))


def resolve_data(data: str) -> str:
    if data != "auto":
        return data
    return str(SHARED_MUSE) if (SHARED_MUSE / "news" / "verbmem" / "forget.json").is_file() \
        else "embedded"


class Clock:
    """Accumulates wall and CPU seconds per phase."""

    def __init__(self):
        self.wall: dict[str, float] = defaultdict(float)
        self.cpu: dict[str, float] = defaultdict(float)
        self.order: list[str] = []
        self.tokens: dict[str, int] = defaultdict(int)  # prompt, generated, scored
        self.forward: dict[str, float] = defaultdict(float)  # seconds inside model forwards

    @contextmanager
    def __call__(self, phase: str):
        if phase not in self.order:
            self.order.append(phase)
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            self.wall[phase] += time.perf_counter() - wall
            self.cpu[phase] += time.process_time() - cpu


@contextmanager
def patched(obj, name, make):
    original = getattr(obj, name)
    setattr(obj, name, make(original))
    try:
        yield
    finally:
        setattr(obj, name, original)


def _timed(clock, phase):
    def make(original):
        def wrapper(*args, **kwargs):
            with clock(phase):
                return original(*args, **kwargs)
        return wrapper
    return make


def run_suite(lm, tasks, task_manager, limit, clock: Clock, bounds: dict, per_task: bool):
    """``simple_evaluate`` with every phase clocked. With a ``bounds`` dict, fills
    ``bounds[task] = (actual, lower bound, {kind: seconds inside model forwards})``; the
    replay's time is clocked apart and taken out of the total. ``per_task``: one ``generate_until`` call per task (the fast path groups by task
    anyway), else lm-eval's single call."""
    import lm_eval
    import lm_eval.evaluator as evaluator
    from lm_eval.api.task import ConfigurableTask, Task
    from lm_eval.tasks import TaskManager

    from harness_ext.generation import replay_forwards

    original_generate, original_rolling = lm.generate_until, lm.loglikelihood_rolling
    original_call = lm._model_call

    def generate_until(requests, disable_tqdm=False):
        if not per_task:  # lm-eval's own batching across tasks, untouched
            with clock("generation (all tasks)"):
                return original_generate(requests, disable_tqdm)
        by_task = defaultdict(list)
        for i, req in enumerate(requests):
            by_task[req.task_name].append(i)
        out = [None] * len(requests)
        for task, members in by_task.items():
            lm.generation_trace = []
            before = dict(getattr(lm, "generation_seconds", {"prefill": 0.0, "decode": 0.0}))
            with clock(f"generation {task}"):
                texts = original_generate([requests[i] for i in members], disable_tqdm)
            for batch in lm.generation_trace or ():  # tokens, for the per-token costs
                clock.tokens["prompt"] += sum(len(p) for p in batch.prompts)
                clock.tokens["generated"] += sum(len(g) for g in batch.generated)
            if bounds is not None:
                inside = {k: v - before[k] for k, v in lm.generation_seconds.items()}
                cpu = {"seconds": 0.0}
                with clock("(lower-bound replay, not part of the suite)"):
                    bound = replay_forwards(lm.model, lm.device, lm.tokenizer.pad_token_id,
                                            lm.generation_trace, cpu=cpu)
                # CPU seconds too: on a loaded machine wall time mostly measures the others
                bounds[task] = (clock.wall[f"generation {task}"], bound, inside,
                                clock.cpu[f"generation {task}"], cpu["seconds"])
            lm.generation_trace = None
            for i, text in zip(members, texts):
                out[i] = text
        return out

    forward = {"seconds": 0.0, "cpu": 0.0}

    def model_call(*args, **kwargs):
        start, cpu = time.perf_counter(), time.process_time()
        try:
            return original_call(*args, **kwargs)
        finally:
            forward["seconds"] += time.perf_counter() - start
            forward["cpu"] += time.process_time() - cpu

    def rolling(requests, disable_tqdm=False):
        forward["seconds"] = forward["cpu"] = 0.0
        lm._model_call = model_call
        try:
            with clock("log-probs"):
                out = original_rolling(requests, disable_tqdm)
        finally:
            lm._model_call = original_call
        clock.tokens["scored"] += sum(len(lm._encode_with_bos(r.args[0])) for r in requests)
        clock.forward["log-probs"] += forward["seconds"]
        for task in {r.task_name for r in requests} if bounds is not None else ():
            bounds[task] = (clock.wall["log-probs"], forward["seconds"],
                            {"forward": forward["seconds"]}, clock.cpu["log-probs"],
                            forward["cpu"])
        return out

    lm.generate_until, lm.loglikelihood_rolling = generate_until, rolling
    try:
        with patched(TaskManager, "load", _timed(clock, "dataset build")), \
                patched(Task, "build_all_requests", _timed(clock, "requests build")), \
                patched(ConfigurableTask, "process_results", _timed(clock, "scoring")), \
                patched(evaluator, "_process_results", _timed(clock, "scoring")), \
                clock("total"):
            results = lm_eval.simple_evaluate(model=lm, tasks=tasks, task_manager=task_manager,
                                              limit=limit, log_samples=True)
    finally:
        del lm.generate_until, lm.loglikelihood_rolling
    from harness_ext.io import write_json

    with tempfile.TemporaryDirectory() as tmp, clock("writing"):
        samples = results.pop("samples")
        write_json(Path(tmp) / "results.json", results)
        results["samples"] = samples
    replay = "(lower-bound replay, not part of the suite)"
    clock.wall["total"] += clock.wall["writing"] - clock.wall.get(replay, 0.0)
    clock.cpu["total"] += clock.cpu["writing"] - clock.cpu.get(replay, 0.0)
    return results


def print_phases(clocks: dict[str, Clock]) -> None:
    names = list(clocks)
    phases = []
    for clock in clocks.values():
        phases += [p for p in clock.order if p not in phases and p != "total"]
    print(f"\n{'phase':<34}" + "".join(f"{n + ' wall (cpu) s':>24}" for n in names))
    for phase in phases + ["other", "total"]:
        row = f"{phase:<34}"
        for clock in clocks.values():
            if phase == "other":  # in simple_evaluate but in none of the phases above
                inside = [p for p in phases if p in clock.wall and p != "load"
                          and not p.startswith("(")]
                wall = clock.wall["total"] - sum(clock.wall[p] for p in inside)
                cpu = clock.cpu["total"] - sum(clock.cpu[p] for p in inside)
            elif phase == "total":
                wall, cpu = clock.wall["total"] + clock.wall["load"], \
                    clock.cpu["total"] + clock.cpu["load"]
            elif phase in clock.wall:
                wall, cpu = clock.wall[phase], clock.cpu[phase]
            else:
                row += f"{'-':>24}"
                continue
            row += f"{wall:>15.2f} ({cpu:6.2f})"
        print(row)


def compare(fast: dict, plain: dict, tasks: list[str]) -> bool:
    strings = metrics = 0
    same = True
    for task in tasks:
        for a, b in zip(fast["samples"][task], plain["samples"][task], strict=True):
            strings += 1
            if a["filtered_resps"] != b["filtered_resps"]:
                same = False
                print(f"DIFFERENT output, {task} doc {a['doc_id']}: {a['filtered_resps']!r} vs "
                      f"{b['filtered_resps']!r}")
        for key, value in fast["results"][task].items():
            metrics += 1
            if plain["results"][task][key] != value and value == value:  # NaN == NaN here
                same = False
                print(f"DIFFERENT metric {task} {key}: {value!r} vs {plain['results'][task][key]!r}")
    print(f"compared {strings} generated strings/log-prob results and {metrics} metric values: "
          + ("all identical" if same else "DIFFERENCES"))
    return same


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="auto", help="auto: ../shared/muse if present, "
                        "else embedded")
    parser.add_argument("--corpus", default="news")
    parser.add_argument("--limit", type=int, default=20)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--model", default=None, help="a saved model dir (default: train the "
                        "benchmark's tiny model)")
    parser.add_argument("--costs", default=None, metavar="FILE",
                        help="write the per-token costs (JSON) that `muse-quant reproduce "
                        "--dry_run --eval_costs FILE` calibrates its estimates from")
    parser.add_argument("--compare", action="store_true",
                        help="also run lm-eval's own generate_until and compare every output")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from eval_speed import model_dir_for

    data = resolve_data(args.data)
    tasks = [f"muse_{args.corpus}_{t}" for t in ("verbmem_f", "knowmem_f", "knowmem_r",
                                                 "privleak")]
    with model_dir_for(args.model) as model_dir:
        from lm_eval.tasks import TaskManager

        from harness_ext.lm import MuseQuantLM
        from harness_ext.plugin import tasks_dir

        clocks, runs, bounds = {}, {}, {}
        for name in ["fast"] + (["plain"] if args.compare else []):
            clock = Clock()
            with clock("load"):
                lm = MuseQuantLM(pretrained=str(model_dir), device="cpu",
                                 batch_size=args.batch_size, fast_generation=name == "fast")
            tm = TaskManager(include_path=tasks_dir(), include_defaults=False,
                             metadata={"muse_data": data, "pretrained": str(model_dir)})
            runs[name] = run_suite(lm, tasks, tm, args.limit, clock,
                                   bounds if name == "fast" else {}, per_task=name == "fast")
            clock.generation_seconds = dict(getattr(lm, "generation_seconds", {}))
            params = sum(p.numel() for p in lm.model.parameters())
            clocks[name] = clock
            del lm
    print(f"\ndata {data}, corpus {args.corpus}, --limit {args.limit}, batch {args.batch_size}, "
          f"{args.threads} threads; load average {os.getloadavg()[0]:.1f} "
          f"(1 min), {os.cpu_count()} CPUs")
    print_phases(clocks)
    print(f"\n{'task':<24}{'actual s':>10}{'lower bound s':>15}{'actual / bound':>16}"
          f"{'CPU: actual / bound':>28}   of the actual time, inside model forwards")
    for task, (actual, bound, inside, cpu, cpu_bound) in bounds.items():
        split = ", ".join(f"{k} {v:.2f} s" for k, v in inside.items())
        print(f"{task:<24}{actual:>10.2f}{bound:>15.2f}{actual / bound:>15.2f}x"
              f"{cpu:>10.2f} / {cpu_bound:6.2f} ={cpu / cpu_bound:6.2f}x   {split}")
    if args.costs:
        write_costs(args.costs, clocks["fast"], params, args)
    if args.compare:
        compare(runs["fast"], runs["plain"], tasks)


def write_costs(path: str, clock: Clock, params: int, args) -> None:
    """Seconds per token of the fast run: prefill per prompt token (the shared KnowMem context
    counted in every prompt, as the estimate counts it), decode per generated token, log-probs
    per scored token; all from the time inside model forwards."""
    from harness_ext.io import write_json

    gen = getattr(clock, "generation_seconds", {"prefill": 0.0, "decode": 0.0})
    costs = {"params": params,
             "prefill": gen["prefill"] / max(clock.tokens["prompt"], 1),
             "decode": gen["decode"] / max(clock.tokens["generated"], 1),
             "logprob": clock.forward["log-probs"] / max(clock.tokens["scored"], 1),
             "tokens": dict(clock.tokens), "batch_size": args.batch_size,
             "threads": args.threads, "device": "cpu", "data": args.data, "limit": args.limit}
    write_json(Path(path), costs)
    print(f"per-token costs written to {path}: prefill {costs['prefill']:.3g} s, decode "
          f"{costs['decode']:.3g} s, log-probs {costs['logprob']:.3g} s per token "
          f"({params:,} parameters)")


if __name__ == "__main__":
    main()
