"""SURE's saliency (eq. (5)) and mask (eq. (6)): which units train; see :mod:`.sure`."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ..errors import MuseQuantError
from .base import UnlearningMethod
from .config import GRANULARITIES
from .sure import Threshold


# --------------------------------------------------------------------------------------
# Saliency and mask
# --------------------------------------------------------------------------------------

def compute_saliency(model, method: UnlearningMethod, ref_model, batches: list[dict],
                     granularity: str, progress: bool = True, autocast=None,
                     n_batches: int | None = None, reduce=None) -> dict[str, torch.Tensor]:
    """s_i at the model's current weights (theta_o), over all ``batches`` of the forget set.

    Several processes: each passes its share of the ``n_batches`` batches and ``reduce(model)``,
    which sums the gradients over the processes before the scores are taken.

    Returns ``{parameter name: scores}``: a 0-d tensor per tensor (``module``), or one score per
    output row for 2-D tensors and a 1-element tensor for 1-D tensors (``neuron``). float32.
    """
    from contextlib import nullcontext

    from tqdm.auto import tqdm

    if granularity not in GRANULARITIES:
        raise MuseQuantError(f"unknown --sure_granularity {granularity!r}",
                             f"use one of {', '.join(GRANULARITIES)}")
    params = dict(model.named_parameters())
    saved = {n: p.requires_grad for n, p in params.items()}
    for p in params.values():
        p.requires_grad_(True)
        p.grad = None
    try:
        for batch in tqdm(batches, desc="SURE saliency", disable=not progress, leave=False):
            with autocast() if autocast else nullcontext():
                loss = method.forget_loss(model, ref_model, batch) / (n_batches or len(batches))
            loss.backward()
        if reduce is not None:
            reduce(model)
        scores = {}
        for name, p in params.items():
            g = p.grad.float() if p.grad is not None else torch.zeros_like(p, dtype=torch.float32)
            if granularity == "neuron" and g.dim() >= 2:
                scores[name] = g.reshape(g.shape[0], -1).norm(dim=1).cpu()
            elif granularity == "neuron":
                scores[name] = g.norm().reshape(1).cpu()
            else:
                scores[name] = g.norm().cpu()
    finally:
        for name, p in params.items():
            p.grad = None
            p.requires_grad_(saved[name])
    return scores


@dataclass
class SureMask:
    """The saliency mask: which parameter tensors (or rows of them) are trained."""

    granularity: str
    threshold: Threshold
    gamma: float
    scores: dict[str, torch.Tensor]
    mask: dict[str, torch.Tensor] = field(default_factory=dict)  # bool, same shape as scores

    @classmethod
    def from_scores(cls, scores: dict[str, torch.Tensor], threshold: Threshold,
                    granularity: str) -> "SureMask":
        flat = np.concatenate([s.reshape(-1).double().numpy() for s in scores.values()])
        if threshold.kind == "percentile":
            gamma = float(np.percentile(flat, threshold.value))
            # percentile() interpolates in float64; compare in float64 too, so that 100 selects
            # the maximum and 0 the minimum exactly.
        else:
            gamma = threshold.value
        mask = {n: torch.from_numpy(np.asarray(s.double().numpy() >= gamma))
                for n, s in scores.items()}
        n_selected = sum(int(m.sum()) for m in mask.values())
        if n_selected == 0:
            raise MuseQuantError(
                f"--sure_threshold {threshold.text} selects nothing: gamma = {gamma:.4g} is above "
                f"every saliency score (the largest is {flat.max():.4g})",
                "lower the threshold (a percentile such as 90, or a smaller abs: value)")
        return cls(granularity, threshold, gamma, scores, mask)

    # -- applying the mask ------------------------------------------------------------
    def selected(self, name: str) -> bool:
        return bool(self.mask[name].any())

    def row_masked(self, name: str) -> bool:
        """True when only some rows of this tensor train (neuron granularity)."""
        m = self.mask[name]
        return self.granularity == "neuron" and m.numel() > 1 and not bool(m.all())

    def freeze_unselected(self, model) -> list[str]:
        """requires_grad=False on every tensor with no selected unit; returns the trained names."""
        trained = []
        for name, p in model.named_parameters():
            keep = self.selected(name)
            p.requires_grad_(keep)
            if keep:
                trained.append(name)
        return trained

    def _row_mask(self, name: str, p: torch.Tensor) -> torch.Tensor:
        """The bool row mask, shaped to broadcast over ``p`` (rows, 1, ...)."""
        return self.mask[name].to(p.device).reshape(-1, *([1] * (p.dim() - 1)))

    @torch.no_grad()
    def mask_gradients(self, model) -> None:
        """Zero the gradients of unselected rows (neuron granularity); call before every step."""
        if self.granularity != "neuron":
            return
        for name, p in model.named_parameters():
            if p.grad is not None and self.row_masked(name):
                p.grad.masked_fill_(~self._row_mask(name, p), 0.0)

    @torch.no_grad()
    def decay_rows(self, model, lr: float, weight_decay: float) -> None:
        """AdamW's decoupled weight decay (p *= 1 - lr*wd) on the selected rows only.

        With neuron granularity the optimizer runs without weight decay and this is called
        right before its step, which is where AdamW applies the decay.
        """
        if self.granularity != "neuron" or not weight_decay:
            return
        for name, p in model.named_parameters():
            if self.selected(name):
                p.copy_(torch.where(self._row_mask(name, p), p * (1 - lr * weight_decay), p))

    # -- recording ----------------------------------------------------------------------
    def summary(self) -> str:
        if self.granularity == "module":
            n = sum(int(m) for m in self.mask.values())
            return f"{n}/{len(self.mask)} modules selected (gamma {self.gamma:.4g})"
        n = sum(int(m.sum()) for m in self.mask.values())
        total = sum(m.numel() for m in self.mask.values())
        return (f"{n}/{total} rows selected in {sum(self.selected(k) for k in self.mask)} "
                f"tensors (gamma {self.gamma:.4g})")

    def run_card(self) -> dict:
        """``sure`` entry of the run card.

        module: ``scores`` {tensor: s_i}, ``mask`` {tensor: true/false}. neuron: ``scores``
        {tensor: its largest row score}, ``mask`` {tensor: number of selected rows}; the per-row
        scores and mask are in ``sure_rows.safetensors`` next to the run card.
        """
        if self.granularity == "module":
            scores = {n: float(s) for n, s in self.scores.items()}
            mask = {n: bool(m) for n, m in self.mask.items()}
        else:
            scores = {n: float(s.max()) for n, s in self.scores.items()}
            mask = {n: int(m.sum()) for n, m in self.mask.items()}
        return {"granularity": self.granularity, "threshold": self.threshold.text,
                "gamma": self.gamma, "scores": scores, "mask": mask}

    def tensors(self) -> dict[str, torch.Tensor]:
        """Per-unit scores and mask as tensors (``<name>.scores`` / ``<name>.mask``, uint8)."""
        out = {}
        for n in self.scores:
            out[f"{n}.scores"] = self.scores[n].reshape(-1).contiguous()
            out[f"{n}.mask"] = self.mask[n].reshape(-1).to(torch.uint8).contiguous()
        return out

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], threshold: Threshold,
                     granularity: str, gamma: float) -> "SureMask":
        names = [k[:-len(".scores")] for k in tensors if k.endswith(".scores")]
        scores, mask = {}, {}
        for n in names:
            s, m = tensors[f"{n}.scores"], tensors[f"{n}.mask"].bool()
            if granularity == "module":
                s, m = s.reshape(()), m.reshape(())
            scores[n], mask[n] = s, m
        return cls(granularity, threshold, gamma, scores, mask)
