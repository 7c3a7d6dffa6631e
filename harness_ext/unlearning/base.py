"""The unlearning-method interface and its registry.

A method is its forget loss, one class in one file of :mod:`.methods`::

    @METHODS.register("my_method")
    class MyMethod(UnlearningMethod):
        summary = "one line for `muse-quant unlearn --list`"
        def forget_loss(self, model, ref_model, forget_batch):
            return -nll(model, forget_batch)

Class attributes tell the trainer what to build: ``needs_retain`` (a retain batch is passed,
else ``retain_batch`` is None) and ``needs_reference`` (a frozen copy of the target is passed as
``ref_model``, else None). Batches are dicts with ``input_ids``, ``attention_mask`` and ``labels``
(-100 on padding), as :meth:`harness_ext.data.tokenized.TokenizedTexts.batch` builds them.

Variants are generated, nobody lists them by hand: ``<name>_gdr`` / ``<name>_klr`` (the forget
loss plus a retain regularizer, :mod:`.regularizers`) for every method without a retain term,
then ``<name>_sure`` (:mod:`.sure`) for every method. A method that writes its own retain term
overrides :meth:`UnlearningMethod.loss` (and sets ``needs_retain``); SURE's saliency uses
:meth:`UnlearningMethod.forget_loss` alone.

Nothing here imports torch: the registry (names, what each method needs) is read by the CLI and
by ``muse-quant reproduce``'s estimates without it.
"""

from __future__ import annotations

from typing import ClassVar

from ..errors import MuseQuantError
from ..recipes import MUSE_LR, NPO_BETA
from ..registry import Registry

METHODS: Registry[type["UnlearningMethod"]] = Registry("unlearning method")


class UnlearningMethod:
    """One unlearning objective: :meth:`forget_loss`, or :meth:`loss` (a scalar to *minimize*)."""

    #: one line shown by ``muse-quant unlearn --list``
    summary: ClassVar[str] = ""
    #: the trainer passes a retain batch (``retain_batch``) when True, else None
    needs_retain: ClassVar[bool] = False
    #: the trainer passes the frozen target (``ref_model``) when True, else None
    needs_reference: ClassVar[bool] = False
    #: learning rate used when ``--lr`` is not given (MUSE: 1e-5)
    default_lr: ClassVar[float] = MUSE_LR
    #: True for the generated ``<name>_sure`` variants (see :mod:`.sure`)
    sure: ClassVar[bool] = False
    #: the retain regularizer of a generated ``<name>_gdr`` / ``<name>_klr`` variant, else None
    regularizer: ClassVar[object] = None
    #: the registered name; set by the registry decorator's caller or :func:`method_name`
    name: ClassVar[str] = ""

    def __init__(self, alpha: float = 1.0, beta: float = NPO_BETA, klr_reduction: str = "mean"):
        #: weight of the retain term (``_GDR`` / ``_KLR``); MUSE default 1
        self.alpha = float(alpha)
        #: NPO's inverse temperature; MUSE default 0.1
        self.beta = float(beta)
        #: how the ``_KLR`` term reduces over tokens: mean (per token) | sum (the paper's scale)
        self.klr_reduction = klr_reduction

    @classmethod
    def reference_forwards(cls) -> int:
        """Forward passes of the frozen reference per training micro-batch (cost estimates)."""
        return int(cls.needs_reference)

    def loss(self, model, ref_model, forget_batch, retain_batch):
        """The scalar the trainer minimizes; by default the forget term alone."""
        if type(self).forget_loss is UnlearningMethod.forget_loss:
            raise NotImplementedError(f"{type(self).__name__} defines neither loss() nor "
                                      "forget_loss()")
        return self.forget_loss(model, ref_model, forget_batch)

    def forget_loss(self, model, ref_model, forget_batch):
        """The forget term L_forget alone (used for SURE's saliency at theta_o)."""
        if self.needs_retain:
            raise MuseQuantError(
                f"method {self.name!r} needs a retain batch and does not define forget_loss(), "
                "so SURE cannot compute its saliency",
                f"define forget_loss(model, ref_model, forget_batch) in {type(self).__name__}",
            )
        return self.loss(model, ref_model, forget_batch, None)

    def hyperparameters(self) -> dict:
        """The method's own settings, for the run card."""
        return {"alpha": self.alpha, "beta": self.beta}
