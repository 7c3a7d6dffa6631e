"""Half-Quadratic Quantization (Badri & Shaji, 2023) through the ``hqq`` package itself.

``hqq:N[:g<size>]`` with N in 1, 2, 3, 4, 5, 6, 8 and groups of ``size`` consecutive input
columns (default 64; a multiple of 8 that divides the row length). Each weight goes through
``HQQLinear(linear, BaseQuantizeConfig(nbits=N, group_size=size), compute_dtype=<weight dtype>,
device="cpu")`` on a throw-away copy of the module, and ``HQQLinear.dequantize()`` is written
back: asymmetric min/max init, then HQQ's proximal solver for the zero point (20 iterations,
l_p = 0.7 shrinkage; zero rounded for 4 bits, as hqq's defaults), scale and zero per group kept in
the weight's dtype. The values are hqq's own. hqq's solver runs in float32 on CPU but in float16
on CUDA, so a GPU run of hqq can give slightly different weights. Needs the ``[hqq]`` extra
(``DISABLE_CUDA=1 pip install 'muse-quant[hqq]'`` builds it without CUDA).
"""

from __future__ import annotations


from ..base import QUANTIZERS, Quantizer, bad_scheme, parse_bits, parse_options
from ..optional import require, scratch_linear
from ...errors import MuseQuantError

HQQ_BITS = (1, 2, 3, 4, 5, 6, 8)


from .fp8 import FAMILY


@QUANTIZERS.register("hqq")
class HQQ(Quantizer):
    usage = "hqq:N[:g<size>]"
    family = FAMILY
    label = "HQQ-{bits}"
    summary = ("HQQ through the hqq package on CPU, calibration-free zero-point optimisation, "
               "groups of 64; needs the [hqq] extra")

    def __init__(self, name, args):
        self.name, self.args = name, list(args)
        self.bits = parse_bits(self.scheme, args[0] if args else None, HQQ_BITS)
        opts = parse_options(self.scheme, args[1:], {"g": "group_size"})
        self.group_size: int = opts.get("group_size", 64)
        if self.group_size % 8:
            raise bad_scheme(self.scheme, f"group size {self.group_size} is not a multiple of 8 "
                             "(hqq requires it)")

    def check_weight(self, module_name, weight):
        if weight.dim() != 2 or weight.shape[1] % self.group_size:
            raise MuseQuantError(f"{self.scheme}: {module_name} has shape {tuple(weight.shape)}; "
                                 f"groups of {self.group_size} must tile each row",
                                 "use a group size that divides the row length")

    def _layer(self, weight):
        """The initialised ``HQQLinear`` of a copy of ``weight``."""
        import torch

        self.check_weight("weight", weight)
        quantize = require("hqq.core.quantize", self.scheme, "hqq")
        config = quantize.BaseQuantizeConfig(nbits=self.bits, group_size=self.group_size)
        with torch.no_grad():
            return quantize.HQQLinear(scratch_linear(weight.cpu()), config,
                                      compute_dtype=weight.dtype, device="cpu")

    def quantize_weight(self, weight):
        import torch

        with torch.no_grad():
            out = self._layer(weight).dequantize()
        return out.reshape(weight.shape).to(device=weight.device, dtype=weight.dtype)

    def quantization_step(self, weight):
        """Delta = the group's dequantization scale (hqq stores 1 / its quantization scale)."""
        scale = self._layer(weight).meta["scale"].float().abs()
        return scale.reshape(-1, 1).expand(-1, self.group_size).reshape(weight.shape).clone()

    def codes(self, weight):
        """hqq's unpacked W_q (0..2^N-1) with each group's scale and zero: value = (q - zero) *
        scale, an affine grid with offset -zero * scale (the near-zero code is round(zero))."""
        import torch

        from ..codes import grid_codes

        layer = self._layer(weight)
        meta = layer.meta
        quantize = require("hqq.core.quantize", self.scheme, "hqq")
        levels = quantize.Quantizer.unpack[meta["packing"]](layer.W_q, dtype=torch.float32)
        n_groups = weight.numel() // self.group_size
        levels = levels[:n_groups]  # 3-bit packing pads the rows
        scale, zero = meta["scale"].float().reshape(-1), meta["zero"].float().reshape(-1)
        return grid_codes(levels, scale, weight.shape, -zero * scale, (0, 2 ** self.bits - 1))

    def describe(self):
        return {**super().describe(), "bits": self.bits, "group_size": self.group_size,
                "optimizer": "hqq proximal (CPU, float32)"}
