"""The unlearning-method interface, its registry, and the loss terms the methods share.

A method is one class in one file of this package::

    @METHODS.register("my_method")
    class MyMethod(UnlearningMethod):
        summary = "one line for `muse-quant unlearn --list`"
        def loss(self, model, ref_model, forget_batch, retain_batch):
            return -nll(model, forget_batch)

Class attributes tell the trainer what to build: ``needs_retain`` (a retain batch is passed,
else ``retain_batch`` is None) and ``needs_reference`` (a frozen copy of the target is passed as
``ref_model``, else None). Batches are dicts with ``input_ids``, ``attention_mask`` and ``labels``
(-100 on padding), as :meth:`harness_ext.training.TokenizedTexts.batch` builds them.

SURE variants (``<name>_sure``) of every registered method are generated automatically
(:mod:`.sure`); they train with the same ``loss``. For the SURE saliency a method needs its forget
term alone: :meth:`UnlearningMethod.forget_loss`, which by default is ``loss`` with no retain
batch; methods that need a retain batch override it.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from ..errors import MuseQuantError
from ..recipes import MUSE_LR
from ..registry import Registry

METHODS: Registry[type["UnlearningMethod"]] = Registry("unlearning method")


class UnlearningMethod:
    """One unlearning objective. Subclasses implement :meth:`loss` (a scalar to *minimize*)."""

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
    #: the registered name; set by the registry decorator's caller or :func:`method_name`
    name: ClassVar[str] = ""

    def __init__(self, alpha: float = 1.0, beta: float = 0.1):
        #: weight of the retain term (``_GDR`` / ``_KLR``); MUSE default 1
        self.alpha = float(alpha)
        #: NPO's inverse temperature; MUSE default 0.1
        self.beta = float(beta)

    def loss(self, model, ref_model, forget_batch, retain_batch) -> torch.Tensor:
        raise NotImplementedError

    def forget_loss(self, model, ref_model, forget_batch) -> torch.Tensor:
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
