"""Defaults for users who did not choose, on a GPU.

* Batch size: lm-eval's ``auto`` (the largest batch a full-length forward fits, detected once and
  used for generation and for PrivLeak's log-probs) when no batch size is given and the run is on
  CUDA; on CPU the default stays lm-eval's 1.
* Attention and dtype need no code: transformers 5 loads decoder models with SDPA attention by
  default, and HFLM's ``dtype=auto`` keeps a bf16 checkpoint in bf16 (MUSE's models are bf16).
  Pass ``dtype=...`` / ``attn_implementation=...`` in ``--model_args`` to override.
"""

from __future__ import annotations


def on_cuda(device: str | None) -> bool:
    """Whether a run with this ``--device`` (None: lm-eval's default, cuda) uses a GPU."""
    if device is not None and not str(device).startswith("cuda"):
        return False
    import torch

    return torch.cuda.is_available()


def default_batch_size(device: str | None):
    return "auto" if on_cuda(device) else 1


def _flag_value(argv: list[str], flag: str) -> str | None:
    for i, arg in enumerate(argv):
        if arg == flag and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None


def with_default_batch_size(argv: list[str]) -> list[str]:
    """``lm_eval`` arguments with ``--batch_size auto`` added on a GPU when none is given."""
    if _flag_value(argv, "--batch_size") is not None or \
            "batch_size=" in (_flag_value(argv, "--model_args") or ""):
        return argv
    if default_batch_size(_flag_value(argv, "--device")) == "auto":
        return [*argv, "--batch_size", "auto"]
    return argv
