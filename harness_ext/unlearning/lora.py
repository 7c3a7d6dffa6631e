"""LoRA unlearning: train low-rank adapters on a method's loss, then merge them.

Abitante et al. 2026, "Quantization-Robust LLM Unlearning via Low-Rank Adaptation"
(arXiv 2602.13151): freeze the target, put the whole unlearning update into LoRA adapters
(W + (alpha/r) * B A, Hu et al. 2021), merge them (``merge_and_unload``) and quantize the merged
model; the concentrated update is large enough to survive 4-bit rounding.

``--lora r=8[,alpha=16][,dropout=0][,targets=q_proj+v_proj]``; ``targets`` defaults to
``all-linear`` (every ``nn.Linear`` in the blocks, not the LM head; PEFT's shorthand).
The frozen reference of NPO/KLR is the same network with the adapters disabled, so no second
copy of the model is held.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from ..errors import MuseQuantError

LORA_LR = 1e-4
USAGE = "--lora r=8[,alpha=16][,dropout=0][,targets=all-linear|q_proj+v_proj+...]"


@dataclass(frozen=True)
class LoraSpec:
    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: str = "all-linear"

    def target_modules(self):
        return "all-linear" if self.targets == "all-linear" else self.targets.split("+")

    def run_card(self) -> dict:
        return asdict(self)


def parse_lora(text: str | None) -> LoraSpec | None:
    """``"r=8,alpha=16,targets=q_proj+v_proj"`` -> :class:`LoraSpec` (None for None/"")."""
    if text is None or str(text).strip() == "":
        return None
    values: dict = {}
    for part in str(text).split(","):
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep or key not in ("r", "alpha", "dropout", "targets") or key in values:
            raise MuseQuantError(f"bad --lora {text!r}: {part!r} is not one of r=, alpha=, "
                                 "dropout=, targets= (each at most once)", f"use {USAGE}")
        values[key] = value.strip()
    try:
        spec = LoraSpec(r=int(values.get("r", 8)), alpha=float(values.get("alpha", 16)),
                        dropout=float(values.get("dropout", 0)),
                        targets=values.get("targets", "all-linear"))
    except ValueError as exc:
        raise MuseQuantError(f"bad --lora {text!r}: {exc}", f"use {USAGE}") from None
    if spec.r < 1 or not 0 <= spec.dropout < 1 or not spec.targets:
        raise MuseQuantError(f"bad --lora {text!r}: need r >= 1, 0 <= dropout < 1 and targets",
                             f"use {USAGE}")
    return spec


def wrap(model, spec: LoraSpec):
    """The PEFT model with fresh adapters (only the adapters train). Seeded by the caller."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=spec.r, lora_alpha=spec.alpha, lora_dropout=spec.dropout,
                        target_modules=spec.target_modules(), bias="none", task_type="CAUSAL_LM")
    try:
        return get_peft_model(model, config)
    except ValueError as exc:
        raise MuseQuantError(f"--lora targets={spec.targets}: {exc}",
                             "name modules of the model, e.g. targets=q_proj+v_proj, or use "
                             "targets=all-linear") from None


class AdaptersDisabled:
    """Call the PEFT model's base network (adapters off) as the frozen reference model."""

    def __init__(self, peft_model):
        self.peft_model = peft_model

    def __call__(self, *args, **kwargs):
        with self.peft_model.disable_adapter(), torch.no_grad():
            return self.peft_model(*args, **kwargs)


def merge(peft_model):
    """Merge the adapters into the weights and return the plain model."""
    return peft_model.merge_and_unload()
