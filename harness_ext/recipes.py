"""The published settings this project reproduces, in one place: MUSE's and the paper's.

Data only (no torch, no imports of the registries): the demo, ``muse-quant reproduce`` and
``muse-quant leaderboard check --reproduce`` read their defaults from here, so a setting is
written once. Method and scheme names appear here the way they appear in a paper's table.

Sources:
* MUSE (Shi et al. 2024): lr 1e-5, 10 epochs on NEWS and 5 on BOOKS, alpha 1 except on BOOKS
  (GA_GDR 100, NPO_KLR 2), NPO beta 0.1.
* Zhang et al. (ICLR 2025), Sec. 5: SURE with lr 1e-4; the 90th saliency percentile with alpha 20
  (NPO_KLR) and the 99th with alpha 400 (GA_GDR); the other SURE variants keep their base alpha
  and this project's default threshold (90).
"""

from __future__ import annotations

CORPORA = ("news", "books")

#: MUSE's unlearning settings
MUSE_LR = 1e-5
MUSE_EPOCHS = {"news": 10, "books": 5}
MUSE_ALPHA = {"news": {}, "books": {"ga_gdr": 100.0, "npo_klr": 2.0}}  # default 1
NPO_BETA = 0.1

#: SURE (the paper's fix)
SURE_SUFFIX = "_sure"
SURE_LR = 1e-4
SURE_DEFAULT_THRESHOLD = "90"
SURE_PAPER = {"ga_gdr": {"sure_threshold": "99", "alpha": 400.0},
              "npo_klr": {"sure_threshold": "90", "alpha": 20.0}}

#: the quantization schemes of the paper's tables (``reproduce`` evaluates these by default)
PAPER_SCHEMES = ("none", "bnb-int8-real", "bnb-fp4", "gptq:4", "awq:4")
#: every leaderboard entry must have results at these (full precision, 8-bit, 4-bit)
REQUIRED_SCHEMES = ("none", "bnb-int8-real", "bnb-fp4")


def base_method(method: str) -> str:
    """``npo_klr_sure`` -> ``npo_klr``."""
    return method[:-len(SURE_SUFFIX)] if method.endswith(SURE_SUFFIX) else method


def paper_hyperparameters(corpus: str, method: str, sure_threshold: str | None = None) -> dict:
    """The unlearning settings of the paper / MUSE for one method (see the printed plan)."""
    base = base_method(method)
    hp = {"epochs": MUSE_EPOCHS[corpus], "lr": MUSE_LR,
          "alpha": MUSE_ALPHA[corpus].get(base, 1.0)}
    if method.endswith(SURE_SUFFIX):
        hp["lr"] = SURE_LR
        paper = SURE_PAPER.get(base, {})
        hp["sure_threshold"] = paper.get("sure_threshold", SURE_DEFAULT_THRESHOLD)
        hp["alpha"] = paper.get("alpha", hp["alpha"])
        if sure_threshold is not None:
            hp["sure_threshold"] = str(sure_threshold)
    if base.endswith(KLR_SUFFIX):
        hp["klr_reduction"] = PAPER_KLR_REDUCTION
    return hp


# ---------------------------------------------------------------- scheme lists (display, demo)
#: full precision (no quantization)
FULL_PRECISION = "none"
#: the paper's 4-bit: bitsandbytes FP4 (the leaderboard sorts by it, the demo reports it)
PAPER_4BIT = "bnb-fp4"
#: the leaderboard's main table: retained knowledge at these precisions, in display order,
#: as (scheme, column label); 8-bit is LLM.int8 as the paper ran it (``bnb-int8-real``)
LEADERBOARD_PRECISIONS = (("none", "full"), ("bnb-int8-real", "8-bit"), ("bnb-fp4", "4-bit FP4"),
                          ("gptq:4", "GPTQ-4"), ("awq:4", "AWQ-4"))
#: the leaderboard's 4-bit columns (retained knowledge compared with full precision)
LEADERBOARD_4BIT = ("bnb-fp4", "gptq:4", "awq:4")
#: the deployment formats the demo and the leaderboard report next to the paper's schemes:
#: (scheme, label): the GGUF file most people download (Q4_K_M), GGUF 8-bit and vLLM's FP8
#: (weights only)
DEMO_DEPLOYMENT_SCHEMES = LEADERBOARD_DEPLOYMENT = (
    ("gguf:q4_k_m", "GGUF Q4_K_M"), ("gguf:q8_0", "GGUF Q8_0"), ("fp8:e4m3", "FP8 E4M3"))
#: the leaderboard plot's marker per precision (it draws full precision -> 4-bit FP4)
LEADERBOARD_MARKERS = {"none": "o", "bnb-fp4": "^"}
#: the demo's sweep: the paper's schemes (full precision, LLM.int8, bitsandbytes FP4, GPTQ, AWQ),
#: then the deployment formats. Measured per model on the toy (one ``demo --fast`` run, load ~11):
#: bnb-int8-real 24.7 s, gguf:q4_k_m 15.6 s, gguf:q8_0 16.7 s, fp8:e4m3 15.3 s against 9.7-29.8 s
#: for the older schemes; the fake ``bnb-int8`` and ``rtn:4:g64`` are left to ``--fast`` so the
#: default demo stays within 10 minutes on 2 cores
DEMO_SCHEMES = (*PAPER_SCHEMES, *(scheme for scheme, _ in DEMO_DEPLOYMENT_SCHEMES))
#: ``demo --fast`` (the tests): every demo scheme plus the fake int8 and RTN, so each path runs
DEMO_FAST_SCHEMES = (*DEMO_SCHEMES, "bnb-int8", "rtn:4:g64")
#: the schemes the demo's ``diagnose`` stage reports
DEMO_DIAGNOSE_SCHEMES = ("bnb-fp4", "rtn:4:g64")
#: the recovery map: full precision and the paper's 4-bit
RECOVERY_MAP_SCHEMES = ("none", "bnb-fp4")


#: The KL retain term of MUSE's and the paper's code is ``F.kl_div(..., reduction="batchmean")``
#: on (batch, tokens, vocabulary) tensors: the KL summed over the vocabulary and the tokens,
#: divided by the batch size, about T (tokens per row, 2048 in MUSE) times the per-token mean
#: that ``--klr_reduction mean`` (the trainer's default) computes. Their alpha (1, 2 on BOOKS,
#: 20 for NPO_KLR with SURE) was tuned at that scale, so the recipes train the _klr methods with
#: ``--klr_reduction sum`` and keep alpha as published (equivalently: alpha x T with ``mean``).
KLR_SUFFIX = "_klr"
PAPER_KLR_REDUCTION = "sum"


# ---------------------------------------------------------------- the demo's methods
#: the demo: the six MUSE baselines and the paper's two SURE settings
DEMO_METHODS = ("ga", "ga_gdr", "ga_klr", "npo", "npo_gdr", "npo_klr", "ga_gdr_sure", "npo_klr_sure")
#: ``demo --fast``: one baseline and one SURE variant
DEMO_FAST_METHODS = ("ga_gdr", "npo_klr_sure")
#: the recovery map's methods (``demo --recovery_map``; ``--fast``: the first only)
RECOVERY_MAP_METHODS = ("ga_gdr", "npo_gdr")


# ---------------------------------------------------------------- the recovery map's axes
# ``muse-quant demo --recovery_map``: width x lr x precision (x method x seed). Every default
# below is chosen from a measured map (docs/recovery_map.md; the first map, 2026-11-29, 2 CPU
# cores, GA_GDR 240 steps, one seed: docs/toy.md quotes it):
#
# * precisions bf16 and fp32: MUSE unlearns in pure bf16 from a bf16 model. Measured, bf16 at lr
#   1e-5 leaves ~88-90% of the linear weights bit-identical (only |w| < 2^-8 can move: an Adam
#   step of ~lr is under half a bf16 ulp of anything larger) and 4-bit FP4 keeps ~20-27% of the
#   update's direction (projection 0.19-0.27 at widths 128, 512, 1024). fp32 moves every weight
#   and keeps 0.99 of it at any lr: the control where recovery cannot appear by construction.
# * lrs 1e-5 (MUSE's) and 3e-5: at 3e-5 bf16 moves |w| < 2^-6 (~22% of the weights) and the
#   projection rises to 0.67-0.82 (0.90 at width 512 in 80 steps, docs/recovery_map.md; 0.195 at
#   1e-5 there), so the pair brackets the edge of FP4's near-zero codes
#   (0.0859 x block absmax ~ 0.005-0.0065 here). 1e-4 and above (the demo's lr) are fp32-like
#   (projection ~1) and are left to ``--lrs``.
# * widths 128 and 512: forgetting at MUSE's setting grows with width (retained ~99.9% at 128,
#   99.8% at 512, 93-95% at 1024), and 128 / 512 targets are cheap (the demo's own / ~4 min).
#   1024 (~14 min to build on 2 cores, 110 s per 240-step unlearning) is where the measured
#   forgetting at lr 1e-5 is large enough to see 4-bit take it back: pass ``--widths 1024``.
# * width == the demo's (128) reuses the demo's own 4-layer target (and its cache). Any other
#   width is a 2-layer Llama with intermediate 3 x width and width / 64 heads, pre-trained and
#   fine-tuned with the demo's recipe (fewer layers keep 512-1024 affordable on a CPU).
RECOVERY_MAP_WIDTHS = (128, 512)
RECOVERY_MAP_LRS = (1e-5, 3e-5)
RECOVERY_MAP_PRECISIONS = ("bf16", "fp32")
#: unlearning seeds (data order); one by default (cost), ``--seeds 0,1,2`` to see the noise
RECOVERY_MAP_SEEDS = (0,)
#: the layers of a map target whose width differs from the demo's
RECOVERY_MAP_LAYERS = 2
#: intermediate size = this x width; heads = width / RECOVERY_MAP_HEAD_DIM (Llama's 64-wide heads)
RECOVERY_MAP_INTERMEDIATE = 3
RECOVERY_MAP_HEAD_DIM = 64
#: widths must be multiples of this (bitsandbytes blocks of 64, GPTQ/AWQ groups of 128)
RECOVERY_MAP_WIDTH_MULTIPLE = 128
