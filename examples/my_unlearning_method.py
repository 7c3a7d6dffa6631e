"""Bounded gradient ascent + GDR: a complete unlearning method in one file.
Run it: muse-quant unlearn --plugin examples/my_unlearning_method.py --method my_method ..."""
import torch

from harness_ext.unlearning import METHODS, UnlearningMethod, nll


@METHODS.register("my_method")
class BoundedGA(UnlearningMethod):
    summary = "GA that stops at NLL 15 on forget + alpha * NLL(retain)"
    needs_retain = True  # the trainer passes retain batches (needs_reference: a frozen target)

    def forget_loss(self, model, ref_model, forget_batch):  # also what my_method_sure ranks by
        return -torch.clamp(nll(model, forget_batch), max=15.0)

    def loss(self, model, ref_model, forget_batch, retain_batch):
        forget = self.forget_loss(model, ref_model, forget_batch)
        return forget + self.alpha * nll(model, retain_batch)
