"""Gradient ascent (GA).

As defined in MUSE (Shi et al. 2024, "MUSE: Machine Unlearning Six-Way Evaluation for Language
Models", Sec. 4 / App. "Unlearning methods"): **GA** minimizes -L_NLL(theta; D_forget), the
negated token-mean NLL of the forget batch (gradient ascent on the language-modelling loss; Jang
et al. 2023, "Knowledge Unlearning"). GA_GDR and GA_KLR add a retain term
(:mod:`..regularizers`).
"""

from __future__ import annotations

from ..base import METHODS, UnlearningMethod
from ..losses import nll


@METHODS.register("ga")
class GA(UnlearningMethod):
    summary = "gradient ascent: minimize -NLL(forget)"

    def forget_loss(self, model, ref_model, forget_batch):
        return -nll(model, forget_batch)
