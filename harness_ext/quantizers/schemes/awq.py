"""``awq:N[:g<size>]``: AWQ (Lin et al., MLSys 2024) through llmcompressor.

llmcompressor's AWQModifier (a transform) searches, per mapping (input norm -> q/k/v,
v -> o, post-attention norm -> gate/up, up -> down for Llama), the per-input-channel scale
s = mean|x|^a * mean|w|^-(1-a) (a on a 20-point grid, ``duo_scaling``) that minimises the block's
output error after quantization, multiplies the balance layers' columns by s and divides the
preceding layer (norm weight or Linear rows) by s; then QuantizationModifier rounds the scaled
weights to an **asymmetric** N-bit grid per group (AutoAWQ's default ``zero_point=True``):
scale = (max - min) / (2^N - 1), zero point = -2^(N-1) - min / scale (clamped, rounded).
The written-back model holds the scaled, dequantized Linear weights *and* the rescaled norms (the
same as the compressed checkpoint reloads to).

For ``muse-quant diagnose`` the scales are folded back out: the effective weight acting on the
original input is Q(W diag(c)) / (r c^T) elementwise, where W_scaled = diag(r) W diag(c) is read
off by a log-additive fit of W_scaled / W (:func:`fold_scales`); the step is scale / (r c^T).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..base import QUANTIZERS
from ..calibrated import CalibratedQuantizer

if TYPE_CHECKING:
    import torch


def fold_scales(original: torch.Tensor, scaled: torch.Tensor, max_iterations: int = 200,
                tol: float = 1e-13) -> torch.Tensor:
    """The matrix r_i * c_j with scaled ~= diag(r) original diag(c) (float64).

    Least squares on log|scaled / original| = log r_i + log c_j over the entries where both are
    non-zero (alternating row/column means until they change by less than ``tol``; exact after
    one pass when no entry is zero).
    """
    import torch

    a_w, b_w = original.double(), scaled.double()
    mask = (a_w != 0) & (b_w != 0)
    logs = torch.where(mask, b_w.abs().log() - a_w.abs().log(), torch.zeros_like(a_w))
    weights = mask.double()
    row_n = weights.sum(1).clamp(min=1)
    col_n = weights.sum(0).clamp(min=1)
    a = torch.zeros(a_w.shape[0], dtype=torch.float64)
    b = torch.zeros(a_w.shape[1], dtype=torch.float64)
    for _ in range(max_iterations):
        b = ((logs - a[:, None]) * weights).sum(0) / col_n
        new_a = ((logs - b[None, :]) * weights).sum(1) / row_n
        converged = float((new_a - a).abs().max()) < tol
        a = new_a
        if converged:
            break
    return torch.exp(a[:, None] + b[None, :])


@QUANTIZERS.register("awq")
class AWQ(CalibratedQuantizer):
    usage = "awq:N[:g<size>]"
    summary = ("AWQ via llmcompressor, N in {2,3,4,8}, asymmetric, group 128 (or 64/32 where "
               "128 does not divide); needs calib=")
    label = "AWQ-{bits}"
    modules = ("block linears and the RMSNorm weights feeding them (smoothing scales folded in) "
               "(+ the LM head with quant_lm_head=True)")
    symmetric = False
    duo_scaling = True
    n_grid = 20

    def modifiers(self, config_groups):
        from llmcompressor.modifiers.quantization import QuantizationModifier
        from llmcompressor.modifiers.transform.awq import AWQModifier

        return [AWQModifier(duo_scaling=self.duo_scaling, n_grid=self.n_grid),
                QuantizationModifier(config_groups=config_groups)]

    def algorithm_settings(self):
        return {"algorithm": "AWQ", "duo_scaling": self.duo_scaling, "n_grid": self.n_grid}

    def diagnostic_weights(self, model, module_names, calibration=None):
        result = self.run(model, module_names, calibration)
        modules = dict(model.named_modules())
        for name in module_names:
            original = modules[name].weight.detach().to("cpu")
            factor = fold_scales(original, result.float_weights[name])
            effective = result.state[f"{name}.weight"].double() / factor
            yield name, effective.to(original.dtype), (result.steps[name].double() / factor).float()
