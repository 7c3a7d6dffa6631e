"""The loss terms the unlearning methods (and toy training) are built from.

All are averaged the way their docstrings say. Batches are dicts with ``input_ids``,
``attention_mask`` and ``labels`` (-100 on padding), as
:meth:`harness_ext.data.tokenized.TokenizedTexts.batch` builds them. torch is imported on first
use, so the method registry (which imports this module) loads without it.
"""

from __future__ import annotations


def sequence_nll(model, batch: dict, reduction: str = "token_mean"):
    """Negative log-likelihood of each batch row's tokens 1..T-1.

    ``reduction``: ``"token_mean"`` (one scalar, mean over all real tokens: HF's loss),
    ``"sum_per_sequence"`` (a vector: the sequence NLL, -log p(y|x)).
    """
    import torch

    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    logits = out.logits[:, :-1].float()
    labels = batch["labels"][:, 1:]
    nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels, reduction="none",
                                            ignore_index=-100)
    mask = (labels != -100).float()
    if reduction == "sum_per_sequence":
        return (nll * mask).sum(dim=1)
    return (nll * mask).sum() / mask.sum().clamp(min=1)


def nll(model, batch):
    """L_NLL: token-mean negative log-likelihood over all real tokens of the batch (HF's loss)."""
    return sequence_nll(model, batch, "token_mean")


def sequence_logprob(model, batch):
    """log p(y|x) of each row: the SUM of its token log-probabilities (a vector, one per row)."""
    return -sequence_nll(model, batch, "sum_per_sequence")


def reference_sequence_logprob(ref_model, batch):
    """:func:`sequence_logprob` of the frozen reference, without gradients."""
    import torch

    with torch.no_grad():
        return sequence_logprob(ref_model, batch)


def kl_to_reference(model, ref_model, batch, reduction: str = "mean"):
    """KL(p_ref || p_theta) of the next-token distributions over the batch's real tokens.

    For each position t whose target token is real (``labels[:, t+1] != -100``, the same
    positions the NLL scores): KL_t = sum over the vocabulary of p_ref * (log p_ref - log p_theta).
    Computed from log-softmax of both models' logits (not ``kl_div`` on raw logits).

    ``reduction``:

    * ``"mean"``: sum_t KL_t / (number of real positions), the KL per token;
    * ``"sum"``: sum_t KL_t / B, with B the number of batch rows: the KL summed over the
      vocabulary and over every real token, divided by the batch size. This is what the paper's
      (and MUSE's) code computes with ``F.kl_div(logp, ref_logp, reduction="batchmean",
      log_target=True)`` on (B, T, V) tensors: ``batchmean`` sums every element and divides by
      B = the first dimension. It is about T times ``"mean"`` for rows of T real tokens, so the
      paper's alpha carries over one to one only with ``"sum"``. (Their code scores all T
      positions of a row, padding included; here only real next-token positions count.)
    """
    import torch
    import torch.nn.functional as F

    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    with torch.no_grad():
        ref_logits = ref_model(input_ids=batch["input_ids"],
                               attention_mask=batch["attention_mask"]).logits
    logp = F.log_softmax(logits[:, :-1].float(), dim=-1)
    ref_logp = F.log_softmax(ref_logits[:, :-1].float(), dim=-1)
    kl = (ref_logp.exp() * (ref_logp - logp)).sum(dim=-1)
    mask = (batch["labels"][:, 1:] != -100).float()
    if reduction == "sum":
        return (kl * mask).sum() / kl.shape[0]
    if reduction != "mean":
        raise ValueError(f"kl_to_reference: unknown reduction {reduction!r} (mean | sum)")
    return (kl * mask).sum() / mask.sum().clamp(min=1)
