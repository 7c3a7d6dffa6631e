"""``none``: full precision (the weights are left untouched)."""

from __future__ import annotations

from ..base import QUANTIZERS, Quantizer


@QUANTIZERS.register("none")
class NoQuantization(Quantizer):
    usage = "none"
    summary = "full precision; no module is changed"
    family = "full precision"
    label = "full"
    modules = "nothing"
    bits = None  # the weights keep their dtype

    def quantized_weights(self, model, module_names, calibration=None):
        return iter(())

    def quantize_weight(self, weight):
        return weight.clone()

    def quantization_step(self, weight):
        """No grid: Delta = 0, so no update is below half a step."""
        import torch

        return torch.zeros(weight.shape, dtype=torch.float32)
