"""Gradient ascent (GA) and its regularized variants GA_GDR and GA_KLR.

As defined in MUSE (Shi et al. 2024, "MUSE: Machine Unlearning Six-Way Evaluation for Language
Models", Sec. 4 / App. "Unlearning methods"):

* **GA** minimizes  -L_NLL(theta; D_forget), the negated token-mean NLL of the forget batch
  (gradient ascent on the language-modelling loss; Jang et al. 2023, "Knowledge Unlearning").
* **GA_GDR** adds alpha * L_NLL(theta; D_retain)  (gradient descent on retain, "GDR").
* **GA_KLR** adds alpha * KL(p_ref || p_theta) on retain tokens ("KLR"), a true KL between the
  target's and the model's next-token distributions averaged over real tokens
  (:func:`.base.kl_to_reference`; MUSE's code applies ``kl_div`` to raw logits instead).
"""

from __future__ import annotations

from ..base import METHODS, UnlearningMethod
from ..losses import kl_to_reference, nll


@METHODS.register("ga")
class GA(UnlearningMethod):
    summary = "gradient ascent: minimize -NLL(forget)"

    def forget_loss(self, model, ref_model, forget_batch):
        return -nll(model, forget_batch)

    def loss(self, model, ref_model, forget_batch, retain_batch):
        return self.forget_loss(model, ref_model, forget_batch)


@METHODS.register("ga_gdr")
class GA_GDR(GA):
    summary = "GA + alpha * NLL(retain)"
    needs_retain = True

    def loss(self, model, ref_model, forget_batch, retain_batch):
        return (self.forget_loss(model, ref_model, forget_batch)
                + self.alpha * nll(model, retain_batch))


@METHODS.register("ga_klr")
class GA_KLR(GA):
    summary = "GA + alpha * KL(p_ref || p_theta) on retain tokens"
    needs_retain = True
    needs_reference = True

    def loss(self, model, ref_model, forget_batch, retain_batch):
        return (self.forget_loss(model, ref_model, forget_batch)
                + self.alpha * kl_to_reference(model, ref_model, retain_batch))
