"""Negative Preference Optimization (NPO).

Zhang, Lin, Bai, Mei 2024, "Negative Preference Optimization: From Catastrophic Collapse to
Effective Unlearning", eq. (3):

    L_NPO = -(2/beta) * E_{(x,y) in D_forget} [ log sigma(-beta * (log p_theta(y|x)
                                                              - log p_ref(y|x))) ]

where log p(y|x) is the SEQUENCE log-likelihood (the sum of the token log-probabilities of a
batch row, :func:`..losses.sequence_logprob`), the expectation is the mean over the batch rows,
and ref is the frozen target model. (MUSE's and the quantization paper's code plug raw logits
into this formula instead of log-likelihoods.) NPO_GDR and NPO_KLR add a retain term
(:mod:`..regularizers`).
"""

from __future__ import annotations

from ..base import METHODS, UnlearningMethod
from ..losses import reference_sequence_logprob, sequence_logprob


def npo_loss(model, ref_model, batch, beta: float):
    """Eq. (3) of the NPO paper on one batch (mean over its rows)."""
    import torch.nn.functional as F

    log_ratio = sequence_logprob(model, batch) - reference_sequence_logprob(ref_model, batch)
    return -(2.0 / beta) * F.logsigmoid(-beta * log_ratio).mean()


@METHODS.register("npo")
class NPO(UnlearningMethod):
    summary = "negative preference optimization (sequence log-likelihoods, frozen reference)"
    needs_reference = True

    def forget_loss(self, model, ref_model, forget_batch):
        return npo_loss(model, ref_model, forget_batch, self.beta)
