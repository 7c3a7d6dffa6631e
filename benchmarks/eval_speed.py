"""Benchmark: the muse_news_quant suite through lm-eval vs the batch-1 reference loop.

Same tiny model (hidden 256, 4 layers, briefly trained on the embedded NEWS forget documents),
same embedded data, one process. Prints the speed ratio and the largest metric difference.
Goal (issue 2): >= 5x faster with every metric within 0.5 points (AUC within 0.005).

  python benchmarks/eval_speed.py [--batch_size 32]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))


def build_model(out: Path) -> None:
    from harness_ext import metrics
    from harness_ext.toy import training
    from harness_ext.data import embedded
    from harness_ext.toy.tiny import build_tiny_llama, save_model

    model, tok = build_tiny_llama(seed=0, max_position_embeddings=8192)
    files = embedded.generate(flavour="news")
    qa = files["knowmem/forget_qa.json"][:20] + files["knowmem/retain_qa.json"][:20]
    texts = files["raw/forget.json"] + [metrics.knowmem_prompt([], d["question"]) + d["answer"]
                                        for d in qa]
    training.train_causal_lm(model, tok, texts, epochs=4, lr=3e-3, batch_size=8, max_len=128,
                             progress=False)
    save_model(model, tok, out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch_size", type=int, default=32)
    args = parser.parse_args()
    torch.set_num_threads(2)

    from test_parity import reference

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "tiny"
        build_model(model_dir)
        from harness_ext.data import load_file

        n_gen = len(load_file("news", "verbmem/forget.json", "embedded"))
        n_priv = 2 * len(load_file("news", "privleak/forget.json", "embedded"))

        import lm_eval
        from lm_eval.tasks import TaskManager

        from harness_ext.lm import MuseQuantLM
        from harness_ext.plugin import tasks_dir

        lm = MuseQuantLM(pretrained=str(model_dir), device="cpu", batch_size=args.batch_size)
        tm = TaskManager(include_path=tasks_dir(), include_defaults=False,
                         metadata={"muse_data": "embedded", "pretrained": str(model_dir)})
        start = time.perf_counter()
        ours = lm_eval.simple_evaluate(model=lm, tasks=["muse_news_quant"], task_manager=tm,
                                       log_samples=False)["results"]
        t_ours = time.perf_counter() - start

        start = time.perf_counter()
        auc_ref = ours["muse_news_privleak"]["privleak_retrain_auc,none"]
        theirs = reference(lm, "news", "embedded", n_gen, n_priv, auc_ref)
        t_ref = time.perf_counter() - start

    worst_points, worst_auc = 0.0, 0.0
    print(f"{'task':<22}{'metric':<24}{'lm-eval':>10}{'batch-1':>10}")
    for task, values in theirs.items():
        for key, expected in values.items():
            got = ours[task][f"{key},none"]
            diff = abs(got - float(expected))
            if key == "mink40_auc":
                worst_auc = max(worst_auc, diff)
            else:
                worst_points = max(worst_points, diff)
            print(f"{task:<22}{key:<24}{got:>10.3f}{float(expected):>10.3f}")
    print(f"\nlm-eval suite (batch {args.batch_size}): {t_ours:.1f} s; batch-1 reference: "
          f"{t_ref:.1f} s; speed-up {t_ref / t_ours:.2f}x")
    print(f"largest metric difference: {worst_points:.4f} points; AUC {worst_auc:.5f}")
    ok = t_ref / t_ours >= 5 and worst_points <= 0.5 and worst_auc <= 0.005
    print("goal (>= 5x, <= 0.5 points, AUC <= 0.005):", "met" if ok else "NOT met")


if __name__ == "__main__":
    main()
