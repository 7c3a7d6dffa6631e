"""Retain regularizers: a ``<name>_gdr`` and a ``<name>_klr`` variant of every forget method.

MUSE (Shi et al. 2024, "MUSE: Machine Unlearning Six-Way Evaluation for Language Models", Sec. 4
/ App. "Unlearning methods") adds to GA and NPO a term on the retain set, weighted by alpha
(``--alpha``, MUSE default 1):

* **GDR** (gradient descent on retain): alpha * L_NLL(theta; D_retain), the token-mean NLL of
  the retain batch.
* **KLR** (KL on retain): alpha * KL(p_ref || p_theta) on retain tokens, a true KL between the
  target's and the model's next-token distributions averaged over real tokens
  (:func:`.losses.kl_to_reference`; MUSE's code applies ``kl_div`` to raw logits instead).
  ``--klr_reduction`` (the method's ``klr_reduction``): ``mean`` (default) = per real token;
  ``sum`` = summed over tokens and divided by the batch rows, the scale of the paper's
  ``kl_div(..., reduction="batchmean")``, with which the paper's alpha means what it meant there.

A variant's loss is ``forget_loss + alpha * term(retain batch)``, in that order; it needs a
retain batch, and the frozen reference when the forget loss or the term does.
:func:`register_regularized_variants` generates them for every registered method that has no
retain term of its own (not a SURE or regularized variant, ``needs_retain`` False); nobody lists
them by hand.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from .base import METHODS, UnlearningMethod
from .losses import kl_to_reference, nll


@dataclass(frozen=True)
class Regularizer:
    suffix: str  # appended to the method's registered name
    label: str  # appended to the class name (GA -> GA_GDR)
    summary: str  # "<METHOD> + <summary>" in `muse-quant unlearn --list`
    needs_reference: bool  # the term reads the frozen target (one reference forward)
    term: Callable  # term(model, ref_model, retain_batch, **options) -> scalar
    #: method attributes passed to ``term`` by name (each is an UnlearnConfig field / option)
    options: tuple[str, ...] = ()


def _retain_nll(model, ref_model, retain_batch):
    return nll(model, retain_batch)


def _retain_kl(model, ref_model, retain_batch, klr_reduction="mean"):
    return kl_to_reference(model, ref_model, retain_batch, reduction=klr_reduction)


REGULARIZERS = (
    Regularizer("_gdr", "GDR", "alpha * NLL(retain)", False, _retain_nll),
    Regularizer("_klr", "KLR", "alpha * KL(p_ref || p_theta) on retain tokens", True,
                _retain_kl, options=("klr_reduction",)),
)


def make_regularized_variant(name: str, base: type[UnlearningMethod],
                             reg: Regularizer) -> type[UnlearningMethod]:
    """``base`` (registered as ``name``) plus ``alpha * reg.term`` on the retain batch."""

    def loss(self, model, ref_model, forget_batch, retain_batch):
        return (self.forget_loss(model, ref_model, forget_batch)
                + self.alpha * reg.term(model, ref_model, retain_batch,
                                        **{k: getattr(self, k) for k in reg.options}))

    attrs = {"regularizer": reg, "needs_retain": True, "loss": loss,
             "needs_reference": base.needs_reference or reg.needs_reference,
             "reference_forwards": classmethod(
                 lambda cls: base.reference_forwards() + int(reg.needs_reference)),
             "summary": f"{name.upper()} + {reg.summary}",
             "__doc__": f"{base.__name__} + {reg.label}: its forget loss plus {reg.summary} "
                        f"(see harness_ext.unlearning.regularizers).\n\n{base.__doc__ or ''}",
             "__module__": base.__module__}
    if base.forget_loss is UnlearningMethod.forget_loss:  # the base writes only loss()
        attrs["forget_loss"] = lambda self, model, ref_model, forget_batch: base.loss(
            self, model, ref_model, forget_batch, None)
    return type(f"{base.__name__}_{reg.label}", (base,), attrs)


def register_regularized_variants() -> None:
    """Register ``<name>_gdr`` / ``<name>_klr`` for every method without a retain term."""
    for name, cls in METHODS.items():
        if cls.sure or cls.regularizer is not None or cls.needs_retain:
            continue
        for reg in REGULARIZERS:
            if f"{name}{reg.suffix}" not in METHODS:
                METHODS.register(f"{name}{reg.suffix}")(make_regularized_variant(name, cls, reg))
