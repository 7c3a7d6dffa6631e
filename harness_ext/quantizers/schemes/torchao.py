"""torchao weight-only quantization on its CPU path, through the ``torchao`` package itself.

* ``torchao:int4[:g<size>]``: ``IntxWeightOnlyConfig(weight_dtype=torch.int4,
  granularity=PerGroup(size))`` (default group 128, as torchao's ``Int4WeightOnlyConfig``, whose
  tinygemm/packed kernels need CUDA or XPU). Symmetric, per group of ``size`` input columns, in the
  weight's dtype: scale = max(max|w| / 7.5, smallest normal), q = clamp(round(w * (1/scale)),
  -8, 7), w' = q * scale.
* ``torchao:int8``: ``Int8WeightOnlyConfig()`` (per row): scale = max(max|w| / 127.5, float32
  eps) computed in the weight's dtype and stored as float32, q = clamp(round(w * (1/scale)),
  -128, 127), w' = q * scale rounded to the weight's dtype.

The weight of a throw-away ``nn.Linear`` goes through ``torchao.quantization.quantize_`` and the
quantized tensor's ``dequantize()`` is written back. The formulas above are what torchao 0.18
computes (checked bit for bit in the tests). Needs the ``[torchao]`` extra.
"""

from __future__ import annotations


from ..base import QUANTIZERS, Quantizer, bad_scheme, parse_options
from ..optional import require, scratch_linear
from ...errors import MuseQuantError

TORCHAO_TYPES = ("int4", "int8")


from .fp8 import FAMILY


@QUANTIZERS.register("torchao")
class TorchAO(Quantizer):
    usage = "torchao:int4[:g<size>] | torchao:int8"
    family = FAMILY
    label = "torchao {dtype}"
    summary = ("torchao weight-only (CPU path): int4 symmetric per group of 128 "
               "(IntxWeightOnlyConfig) or int8 per row (Int8WeightOnlyConfig); "
               "needs the [torchao] extra")

    def __init__(self, name, args):
        self.name, self.args = name, list(args)
        if not args or args[0] not in TORCHAO_TYPES:
            raise bad_scheme(self.scheme, f"expected a weight type, one of {TORCHAO_TYPES}")
        self.dtype = args[0]
        self.bits = 4 if self.dtype == "int4" else 8
        prefixes = {"g": "group_size"} if self.dtype == "int4" else {}
        opts = parse_options(self.scheme, args[1:], prefixes)
        self.group_size: int | None = opts.get("group_size", 128) if self.dtype == "int4" else None

    def display_label(self) -> str:
        return self.label.format(dtype=self.dtype) + (f" g{self.group_size}" if self.group_size else "")

    def check_weight(self, module_name, weight):
        if weight.dim() != 2 or (self.group_size and weight.shape[1] % self.group_size):
            raise MuseQuantError(f"{self.scheme}: {module_name} has shape {tuple(weight.shape)}; "
                                 "torchao needs a 2-D weight"
                                 + (f" whose rows split into groups of {self.group_size}"
                                    if self.group_size else ""),
                                 "use a group size that divides the row length")

    def config(self):
        """The torchao config object of this scheme."""
        import torch

        quantization = require("torchao.quantization", self.scheme, "torchao",
                               quiet_logger="torchao")
        if self.dtype == "int8":
            return quantization.Int8WeightOnlyConfig(set_inductor_config=False)
        granularity = require("torchao.quantization.granularity", self.scheme, "torchao")
        return quantization.IntxWeightOnlyConfig(
            weight_dtype=torch.int4, granularity=granularity.PerGroup(self.group_size))

    def _quantized(self, weight):
        """torchao's quantized weight tensor (``Int8Tensor`` / ``IntxUnpackedToInt8Tensor``)."""
        import torch

        self.check_weight("weight", weight)
        config = self.config()
        quantize_ = require("torchao.quantization", self.scheme, "torchao").quantize_
        linear = scratch_linear(weight.cpu())
        with torch.no_grad():
            quantize_(linear, config)
        return linear.weight

    def quantize_weight(self, weight):
        import torch

        with torch.no_grad():
            out = self._quantized(weight).dequantize()
        return out.to(device=weight.device, dtype=weight.dtype)

    def quantization_step(self, weight):
        """Delta = the row's (int8) or group's (int4) scale."""
        scale = self._quantized(weight).scale.detach().float()
        per = weight.shape[1] // scale.shape[1]
        return scale.repeat_interleave(per, dim=1).reshape(weight.shape)

    def codes(self, weight):
        """torchao's ``qdata`` minus its zero point (0 for these symmetric configs): the signed
        level, with the row's / group's scale; zero code 0, edge half a step."""
        from ..codes import grid_codes

        quantized = self._quantized(weight)
        scale = quantized.scale.detach().float()
        group = weight.shape[1] // scale.shape[1]
        levels = quantized.qdata.detach().long().reshape(-1, group)
        zero_point = getattr(quantized, "zero_point", None)
        if zero_point is not None:
            levels = levels - zero_point.long().reshape(-1, 1)
        return grid_codes(levels, scale.reshape(-1), weight.shape)

    def describe(self):
        return {**super().describe(), "bits": 4 if self.dtype == "int4" else 8,
                "granularity": f"group{self.group_size}" if self.group_size else "channel",
                "symmetric": True}
