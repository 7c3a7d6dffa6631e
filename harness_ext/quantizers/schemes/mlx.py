"""MLX's affine group quantization (``mx.quantize``, ``mode="affine"``), ported to torch.

``mlx:N[:g<size>]`` with N in 2, 3, 4, 5, 6, 8 and groups of 32, 64 (default, as ``mlx_lm
convert -q``) or 128 consecutive input columns. Per group, in float32, as MLX's CPU kernel
(``mlx/backend/cpu/quantized.cpp``, ``quantize``) does:

    n      = 2^N - 1
    scale  = max((max w - min w) / n, 1e-7), negated unless |min w| > |max w|
    edge   = min w if |min w| > |max w| else max w;  q0 = rint(edge / scale)
    if q0 != 0: scale = edge / q0, bias = edge       (the edge value is exactly on the grid)
    else:       bias = 0
    q      = clamp(rint((w - bias) / scale), 0, n)

The codes use the float32 scale and bias; the stored scale and bias are rounded to the weight's
dtype, and ``mx.dequantize`` computes ``q * scale + bias`` in that dtype (two roundings). ``rint``
and ``torch.round`` both round half to even. Bit-identical to ``mx.quantize`` + ``mx.dequantize``
(mlx 0.32) for float32, bfloat16 and float16 weights (tests, when mlx is installed: the
``[mlx]`` extra). Needs no MLX at run time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


from ..base import QUANTIZERS, Quantizer, bad_scheme, parse_bits, parse_options
from ...errors import MuseQuantError

MLX_BITS = (2, 3, 4, 5, 6, 8)
MLX_GROUP_SIZES = (32, 64, 128)


def mlx_affine(weight: torch.Tensor, bits: int, group_size: int
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(q, scale, bias)``: codes [rows, groups, group] (float32), scale and bias [rows, groups,
    1] in the weight's dtype, as MLX stores them."""
    import torch

    rows, cols = weight.shape
    w = weight.float().reshape(rows, cols // group_size, group_size)
    n_bins = float(2 ** bits - 1)
    w_max = w.amax(dim=-1, keepdim=True)
    w_min = w.amin(dim=-1, keepdim=True)
    mask = w_min.abs() > w_max.abs()
    scale = torch.maximum((w_max - w_min) / n_bins, torch.tensor(1e-7, dtype=torch.float32))
    scale = torch.where(mask, scale, -scale)
    edge = torch.where(mask, w_min, w_max)
    q0 = torch.round(edge / scale)
    on_grid = q0 != 0
    scale = torch.where(on_grid, edge / torch.where(on_grid, q0, torch.ones_like(q0)), scale)
    bias = torch.where(on_grid, edge, torch.zeros_like(edge))
    q = torch.clamp(torch.round((w - bias) / scale), 0, n_bins)
    return q, scale.to(weight.dtype), bias.to(weight.dtype)


from .fp8 import FAMILY


@QUANTIZERS.register("mlx")
class MLX(Quantizer):
    usage = "mlx:N[:g<size>]"
    family = FAMILY
    label = "MLX-{bits}"
    summary = "MLX affine group quantization (mx.quantize), scale and bias per group of 64"

    def __init__(self, name, args):
        self.name, self.args = name, list(args)
        self.bits = parse_bits(self.scheme, args[0] if args else None, MLX_BITS)
        opts = parse_options(self.scheme, args[1:], {"g": "group_size"})
        self.group_size: int = opts.get("group_size", 64)
        if self.group_size not in MLX_GROUP_SIZES:
            raise bad_scheme(self.scheme, f"group size {self.group_size} is not one of MLX's "
                             f"{MLX_GROUP_SIZES}")

    def check_weight(self, module_name, weight):
        if weight.dim() != 2 or weight.shape[1] % self.group_size:
            raise MuseQuantError(f"{self.scheme}: {module_name} has shape {tuple(weight.shape)}; "
                                 f"MLX needs a 2-D weight whose {self.group_size}-column groups "
                                 "tile each row", "use a group size that divides the row length")

    def quantize_weight(self, weight):
        self.check_weight("weight", weight)
        q, scale, bias = mlx_affine(weight, self.bits, self.group_size)
        return (q.to(weight.dtype) * scale + bias).reshape(weight.shape)

    def quantization_step(self, weight):
        """Delta = |scale| of the element's group, as stored (in the weight's dtype)."""
        self.check_weight("weight", weight)
        _, scale, _ = mlx_affine(weight, self.bits, self.group_size)
        rows, groups, _ = scale.shape
        return scale.abs().float().expand(rows, groups, self.group_size).reshape(weight.shape)

    def codes(self, weight):
        """q in 0..2^N-1 per element, each group's |scale| and bias (an affine grid: the near-zero
        code is the level nearest -bias/scale, :func:`~harness_ext.quantizers.codes.grid_codes`)."""
        from ..codes import grid_codes

        self.check_weight("weight", weight)
        q, scale, bias = mlx_affine(weight, self.bits, self.group_size)
        return grid_codes(q.reshape(-1, self.group_size), scale.reshape(-1), weight.shape,
                          bias.reshape(-1), (0, 2 ** self.bits - 1))

    def describe(self):
        return {**super().describe(), "bits": self.bits, "group_size": self.group_size,
                "mode": "affine"}
