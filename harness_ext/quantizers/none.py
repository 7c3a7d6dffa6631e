"""``none``: full precision (the weights are left untouched)."""

from __future__ import annotations

from .base import QUANTIZERS, Quantizer


@QUANTIZERS.register("none")
class NoQuantization(Quantizer):
    usage = "none"
    summary = "full precision; no module is changed"

    def quantized_weights(self, model, module_names, calibration=None):
        return iter(())
