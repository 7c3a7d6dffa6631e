"""What one forward pass costs on this machine, by kind: the facts that bound ``eval_speed.py``.

On VerbMem prompts (MUSE's real NEWS files when present, else MUSE-shaped embedded documents):

* **prefill**: each prompt alone (batch 1, ``logits_to_keep=1``), against the same prompts
  left-padded into one batched forward with an attention mask, and against equal-length prompts
  batched without a mask (is batching a prefill cheaper per prompt?);
* **decode**: one greedy step of a batch of B rows over a KV cache of the prompt's length, per
  generated token, for B = 1, 8, 32 (the engine's cache class, ``harness_ext.generation``), and
  the bytes of KV cache that step reads per token (float32 keys and values, every layer);
* **HF generate** at batch 1 for 128 new tokens: the batch-1 reference's cost per VerbMem prompt.

  python benchmarks/forward_costs.py [--model DIR] [--threads 2] [--prompts 8]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def seconds(fn, repeats: int = 1) -> float:
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def decode_step_seconds(model, prompt, batch: int, steps: int = 20) -> float:
    """Seconds of one decode step of ``batch`` rows over the prompt's KV cache (mean of
    ``steps``), the cache built once by a batch-1 prefill and copied into every row."""
    from harness_ext.generation import make_cache

    length = prompt.shape[1]
    one = make_cache(model, length)
    model(prompt, past_key_values=one, use_cache=True, logits_to_keep=1)
    cache = make_cache(model, length + steps + 1)
    for layer, src in zip(cache.layers, one.layers):
        layer.seed(src.keys, src.values, batch)
    mask = torch.ones((batch, length + steps + 1), dtype=torch.long)
    token = torch.ones((batch, 1), dtype=torch.long)
    filled = [length]

    def step():
        filled[0] += 1
        model(token, attention_mask=mask[:, :filled[0]],
              position_ids=torch.full((batch, 1), filled[0] - 1), past_key_values=cache,
              use_cache=True, logits_to_keep=1)
    return seconds(step, steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="a saved model (default: train eval_speed's)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--prompts", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from eval_profile import SHARED_MUSE
    from eval_speed import left_padded, model_dir_for, write_muse_shaped

    with model_dir_for(args.model) as model_dir, tempfile.TemporaryDirectory() as tmp:
        path = SHARED_MUSE / "news" / "verbmem" / "forget.json"
        data = "MUSE's NEWS VerbMem prompts"
        if not path.is_file():
            path = write_muse_shaped(Path(tmp)) / "news" / "verbmem" / "forget.json"
            data = "MUSE-shaped embedded VerbMem prompts"
        items = json.loads(path.read_text())[:args.prompts]
        tok = AutoTokenizer.from_pretrained(model_dir)
        model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
        prompts = [tok(d["prompt"], return_tensors="pt").input_ids for d in items]
        pad = tok.pad_token_id if tok.pad_token_id is not None else 0
        cfg = model.config
        lengths = [p.shape[1] for p in prompts]
        print(f"{data}: {len(prompts)} prompts of {min(lengths)}-{max(lengths)} tokens; model "
              f"hidden {cfg.hidden_size}, {cfg.num_hidden_layers} layers, "
              f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters; "
              f"{args.threads} threads, load average {os.getloadavg()[0]:.1f}")
        with torch.no_grad():
            model(prompts[0], logits_to_keep=1, use_cache=False)  # warm-up
            alone = [seconds(lambda p=p: model(p, logits_to_keep=1, use_cache=False))
                     for p in prompts]
            print(f"\nprefill, each prompt alone (batch 1): {sum(alone) / len(alone):.3f} s per "
                  f"prompt")
            for n in sorted({min(n, len(prompts)) for n in (2, 4, 8)}):
                ids, mask = left_padded(prompts[:n], pad)
                t = seconds(lambda: model(ids, attention_mask=mask, logits_to_keep=1,
                                          use_cache=False))
                print(f"prefill, {n} prompts left-padded in one forward: {t / n:.3f} s per "
                      f"prompt = {t / sum(alone[:n]):.2f}x the batch-1 prefills")
            n = min(4, len(prompts))
            width = min(lengths[:n])
            same = torch.cat([p[:, :width] for p in prompts[:n]])
            t = seconds(lambda: model(same, logits_to_keep=1, use_cache=False))
            t1 = seconds(lambda: model(same[:1], logits_to_keep=1, use_cache=False))
            print(f"prefill, {n} prompts cut to {width} tokens, one forward without a mask: "
                  f"{t / (n * t1):.2f}x {n} batch-1 prefills")
            kv = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * \
                (cfg.hidden_size // cfg.num_attention_heads) * lengths[0] * 4
            print(f"\ndecode over a {lengths[0]}-token cache ({kv / 1e6:.1f} MB of keys/values "
                  f"per row):")
            per_token = {}
            for b in (1, 8, 32):
                t = decode_step_seconds(model, prompts[0], b)
                per_token[b] = t / b
                print(f"  batch {b:>2}: {1000 * t:6.1f} ms per step = {1000 * t / b:5.2f} ms per "
                      f"token ({b * kv / t / 1e9:.1f} GB/s of keys/values read)")
            gen = seconds(lambda: model.generate(
                prompts[0], attention_mask=torch.ones_like(prompts[0]), max_new_tokens=128,
                min_new_tokens=128, do_sample=False, pad_token_id=pad))
            print(f"\nHF generate, batch 1, 128 new tokens: {gen:.3f} s per prompt (prefill "
                  f"{alone[0]:.3f} s, so {1000 * (gen - alone[0]) / 127:.1f} ms per decode step)")
            best = alone[0] + 127 * per_token[32]
            print(f"a VerbMem prompt costs the batch-1 reference {gen / alone[0]:.1f}x its "
                  f"prefill (the speed-up if decoding were free); with decoding at the batch-32 "
                  f"cost per token, prefill + 127 steps = {best:.3f} s, {gen / best:.1f}x")


if __name__ == "__main__":
    main()
