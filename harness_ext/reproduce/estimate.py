"""Disk, GPU memory and time of each stage of the plan (:func:`estimate`), from the model's shape
(:func:`model_shape`) and the printed :class:`Assumptions`. What an unlearning method costs comes
from what it declares in the method registry (retain batches, reference forwards), not from its
name. No torch, no hub.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import MuseQuantError

#: MUSE's target and retrain models on the hub, per corpus
HUB = {"news": ("muse-bench/MUSE-News_target", "muse-bench/MUSE-News_retrain"),
       "books": ("muse-bench/MUSE-Books_target", "muse-bench/MUSE-Books_retrain")}

#: Known model shapes (no hub access needed). MUSE's targets/retrains are Llama-2-7B fine-tunes.
LLAMA2_7B = {"params": 6.74e9, "hidden": 4096, "layers": 32, "vocab": 32000}
KNOWN_MODELS = {repo: LLAMA2_7B for pair in HUB.values() for repo in pair}

#: Forget-set size in tokens, used when the text is not on this machine: NEWS is MUSE's
#: raw/forget.json (3.28 M characters at ~4 characters per Llama-2 token); BOOKS is an assumption
#: of the same order (MUSE's Harry Potter forget set).
FORGET_TOKENS = {"news": 0.82e6, "books": 1.1e6}
CHARS_PER_TOKEN = 4.0
#: Evaluation per corpus (100 items per MUSE file): prompt tokens prefilled, tokens generated.
EVAL_ITEMS = {"verbmem": (100, 1000, 128), "knowmem": (200, 400, 32), "privleak": (200, 2000, 0)}


# ------------------------------------------------------------------------------ estimates
@dataclass
class EvalCosts:
    """Seconds per token measured by ``benchmarks/eval_profile.py --costs FILE`` (on the hardware
    and batch size the sweep will use) for a model of ``params`` parameters."""

    params: float
    prefill: float   # per prompt token prefilled (VerbMem, KnowMem)
    decode: float    # per generated token, at the profiled batch size
    logprob: float   # per PrivLeak token scored
    source: str = ""


def load_eval_costs(path: str) -> EvalCosts:
    """The costs file written by the profile (JSON); clear errors for anything else."""
    fix = "write it with: python benchmarks/eval_profile.py --model DIR --costs FILE"
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        costs = EvalCosts(**{k: float(data[k]) for k in ("params", "prefill", "decode",
                                                         "logprob")}, source=str(path))
    except FileNotFoundError:
        raise MuseQuantError(f"--eval_costs {path}: no such file", fix) from None
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise MuseQuantError(f"--eval_costs {path}: not a per-token costs file ({exc})",
                             fix) from None
    if costs.params <= 0 or min(costs.prefill, costs.decode, costs.logprob) < 0:
        raise MuseQuantError(f"--eval_costs {path}: params must be > 0 and costs >= 0", fix)
    return costs


@dataclass
class Assumptions:
    """What the estimates assume; printed with the plan."""

    tflops: float = 400.0      # sustained bf16 TFLOP/s (H100 SXM ~40% of 989 peak; A100: ~150)
    hbm_tbs: float = 2.0       # sustained GPU memory bandwidth, TB/s (H100 3.35 peak)
    gpu_gb: float = 80.0       # memory of one GPU, GB
    eval_batch: int = 8
    calib_minutes_7b: float = 10.0  # GPTQ / AWQ calibration of a 7B model
    #: measured per-token costs (``--eval_costs``); None: the FLOP / bandwidth formula
    eval_costs: EvalCosts | None = None

    def lines(self) -> list[str]:
        c = self.eval_costs
        evaluation = (
            "evaluation: prefill 2 x params FLOPs per prompt token; decoding reads all weights "
            f"once per step at batch {self.eval_batch}; quantization here is simulated (weights "
            "stay bf16), so every scheme costs what bf16 costs; GPTQ/AWQ add "
            f"{self.calib_minutes_7b:g} min calibration per 7B params") if c is None else (
            f"evaluation: per-token costs measured by benchmarks/eval_profile.py ({c.source}): "
            f"prefill {c.prefill:.3g} s/token, decode {c.decode:.3g} s/token, PrivLeak log-probs "
            f"{c.logprob:.3g} s/token on a {c.params:.3g}-parameter model, scaled by parameter "
            "count (attention's context-length cost is not rescaled); GPTQ/AWQ add "
            f"{self.calib_minutes_7b:g} min calibration per 7B params")
        return [
            f"throughput {self.tflops:g} TFLOP/s sustained bf16 (--tflops; H100 ~400, A100 ~150),"
            f" memory bandwidth {self.hbm_tbs:g} TB/s (--hbm_tbs), one GPU of {self.gpu_gb:g} GB",
            "training FLOPs = 6 x params per trained token (forward+backward) + 2 x params per "
            "token of a frozen reference forward; retain batches are as large as forget batches",
            "training memory = params x bytes/param (bf16: weights 2 + grads 2 + AdamW 4 [states "
            "in the weight dtype]; fp32: 16) + reference model (2 or 4 bytes/param, NPO/KLR) + "
            "activations 34 x hidden x layers x batch x max_len bytes per live graph (no "
            "recomputation; GDR/KLR keep forget and retain graphs) + fp32 logits 12 x vocab x "
            "batch x max_len bytes; rough, +10% allocator overhead",
            "gradient checkpointing keeps one hidden state per layer (2 x hidden x layers x "
            "batch x max_len bytes) plus one layer's activations, and recomputes the trained "
            "forwards (+2 x params FLOPs per trained token); FSDP on N GPUs divides weights, "
            "grads, AdamW states and the (sharded) reference model by N, plus two layers' "
            "gathered weights; DDP keeps everything on every GPU, plus its gradient buckets "
            "(a second copy of the gradients); SURE's saliency pass runs before FSDP shards the "
            "model (weights + gradients + reference, unsharded); time is GPU-hours "
            "(communication not counted)",
            evaluation,
            "the sweep loads models in their stored dtype (the unlearning delta is saved in it); "
            "the estimates assume bf16 storage; "
            "disk: bf16 = 2 bytes/param (7B Llama-2 ~13.5 GB); unlearning keeps a resume "
            "checkpoint (trainable weights + AdamW states) until it finishes, then writes a "
            "delta (theta_u - theta_o) of the tensors it changed",
        ]


@dataclass
class Estimate:
    disk_gb: float
    gpu_gb: float
    hours: float


def estimate(kind: str, shape: dict, a: Assumptions, *, method: str = "", corpus: str = "news",
             epochs: int = 10, batch_size: int = 4, max_len: int = 2048,
             precision: str = "bf16", forget_tokens: float = 0.0, limit: int | None = None,
             sure_threshold: float = 90.0, scheme: str = "none",
             checkpointing: bool = False, gpus: int = 1, strategy: str = "single") -> Estimate:
    """Disk (GB), peak GPU memory (GB) and hours of one stage; formulas in :class:`Assumptions`.

    ``kind``: ``fetch`` (download a model), ``unlearn`` (one method), ``eval`` (one scheme of a
    sweep), ``leaderboard`` (copy results, hash a checkpoint). ``unlearn`` on ``gpus`` GPUs
    (``strategy`` single | ddp | fsdp): the peak memory of one GPU, the hours of all of them.
    """
    p, gb = shape["params"], 1e9
    if kind == "fetch":
        return Estimate(2 * p / gb, 0.0, 2 * p / gb / 100 / 3600)  # ~100 MB/s
    if kind == "leaderboard":
        return Estimate(0.001, 0.0, 2 * p / gb / 0.5 / 3600)  # sha256 at ~0.5 GB/s
    h, layers, vocab = shape["hidden"], shape["layers"], shape["vocab"]
    if kind == "unlearn":
        from ..unlearning import get_method_class

        declared = get_method_class(method)  # what the method needs, from the registry
        retain, ref, sure = declared.needs_retain, declared.needs_reference, declared.sure
        per_param = {"bf16": 8, "bf16-mixed": 16, "fp32": 16}[precision]
        w_bytes = 4 if precision == "fp32" else 2
        graphs = 2 if retain else 1
        per_token = (2 * h * layers + 34 * h) if checkpointing else 34 * h * layers
        act = graphs * (per_token + 12 * vocab) * batch_size * max_len
        states, reference = per_param * p, (w_bytes * p if ref else 0)
        if strategy == "fsdp":  # sharded; each GPU gathers a layer (and prefetches the next)
            states, reference = states / gpus, reference / gpus + 2 * w_bytes * p / layers
        elif strategy == "ddp":  # DDP's reducer holds a second copy of the gradients
            states += w_bytes * p
        gpu = (states + reference + act) * 1.1
        if sure and strategy == "fsdp":  # the saliency pass runs before sharding (full grads)
            forget_only = (per_token + 12 * vocab) * batch_size * max_len
            gpu = max(gpu, (2 * w_bytes * p + (w_bytes * p if ref else 0) + forget_only) * 1.1)
        # FLOPs per forget token: forget fwd+bwd (+ recomputed fwd), retain the same, reference
        # forwards
        flops_tok = (6 + 2 * checkpointing) * p * (1 + retain) + \
            2 * p * declared.reference_forwards()
        flops = forget_tokens * epochs * flops_tok
        if sure:
            flops += 6 * p * forget_tokens  # saliency: one gradient pass over the forget set
        trained = 1.0 - sure_threshold / 100.0 if sure else 1.0
        disk = (per_param - 2) * p * trained + w_bytes * p * trained  # resume ckpt + delta
        return Estimate(disk / gb, gpu / gb, flops / (a.tflops * 1e12) / 3600)
    if kind == "eval":
        prefill = gen = 0.0
        for n, prompt, new in EVAL_ITEMS.values():
            n = min(n, limit) if limit else n
            prefill += n * prompt
            gen += n * new
        if a.eval_costs is None:
            seconds = 2 * p * prefill / (a.tflops * 1e12) + \
                (gen / a.eval_batch) * (2 * p) / (a.hbm_tbs * 1e12)
        else:  # measured per-token costs, scaled by parameter count
            c = a.eval_costs
            n, prompt, _ = EVAL_ITEMS["privleak"]
            scored = (min(n, limit) if limit else n) * prompt
            seconds = p / c.params * ((prefill - scored) * c.prefill + gen * c.decode +
                                      scored * c.logprob)
        from ..quantizers import describe_scheme

        if describe_scheme(scheme).needs_calibration:
            seconds += a.calib_minutes_7b * 60 * p / 6.74e9
        kv = a.eval_batch * 4096 * 2 * layers * h * 2  # bf16 K and V, 4096-token context
        logits = a.eval_batch * 4096 * vocab * 4
        return Estimate(0.001, (2 * p + kv + logits) * 1.1 / gb, seconds / 3600)
    raise ValueError(kind)


def model_shape(pretrained: str) -> dict:
    """Parameter count etc. from the table, or from a local folder's config.json."""
    if pretrained in KNOWN_MODELS:
        return dict(KNOWN_MODELS[pretrained])
    config = Path(pretrained) / "config.json"
    if not config.is_file():
        raise MuseQuantError(f"--pretrained {pretrained}: not a known model and no config.json "
                             "there to count its parameters",
                             f"pass a local model folder or one of {', '.join(KNOWN_MODELS)}")
    try:
        c = json.loads(config.read_text(encoding="utf-8"))
        h, layers, vocab = int(c["hidden_size"]), int(c["num_hidden_layers"]), int(c["vocab_size"])
        inter = int(c.get("intermediate_size", 4 * h))
        heads = int(c.get("num_attention_heads", 1))
        kv = int(c.get("num_key_value_heads", heads))
    except (KeyError, TypeError, ValueError, json.JSONDecodeError) as exc:
        raise MuseQuantError(f"{config}: cannot read the model shape ({exc})",
                             "pass a Llama-style model folder with a complete config.json") \
            from None
    head_dim = int(c.get("head_dim") or h // heads)
    attn = h * head_dim * (2 * heads + 2 * kv)
    per_layer = attn + 3 * h * inter + 2 * h
    emb = vocab * h * (1 if c.get("tie_word_embeddings") else 2)
    return {"params": float(layers * per_layer + emb + h), "hidden": h, "layers": layers,
            "vocab": vocab}

