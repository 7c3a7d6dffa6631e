"""``gptq:N[:g<size>]``: GPTQ (Frantar et al., ICLR 2023) through llmcompressor's GPTQModifier.

Per layer, columns are rounded one block at a time to a symmetric N-bit grid with one scale per
group of input columns (compressed-tensors' min-max: scale = max|w_group| / ((2^N - 1) / 2),
integer levels -2^(N-1) .. 2^(N-1) - 1), and the not-yet-quantized columns are updated to
compensate, using the inverse Hessian H = 2 X X^T of the layer's calibration inputs (dampening
1% of mean diag(H), block 128, static activation order: llmcompressor's defaults, recorded in
the results). Symmetric as llmcompressor's
``W4A16`` preset. See :mod:`harness_ext.quantizers.calibrated` for groups, bits, calibration
and the write-back.
"""

from __future__ import annotations

from ..base import QUANTIZERS
from ..calibrated import CalibratedQuantizer


@QUANTIZERS.register("gptq")
class GPTQ(CalibratedQuantizer):
    usage = "gptq:N[:g<size>]"
    summary = ("GPTQ via llmcompressor, N in {2,3,4,8}, symmetric, group 128 (or 64/32 where "
               "128 does not divide); needs calib=")
    label = "GPTQ-{bits}"
    symmetric = True

    def _modifier(self, config_groups):
        from llmcompressor.modifiers.quantization import GPTQModifier

        return GPTQModifier(config_groups=config_groups)

    def modifiers(self, config_groups):
        return [self._modifier(config_groups)]

    def algorithm_settings(self):
        modifier = self._modifier({})
        return {"algorithm": "GPTQ", "block_size": modifier.block_size,
                "dampening_frac": modifier.dampening_frac,
                "actorder": str(getattr(modifier.actorder, "value", modifier.actorder))}
