"""Round-to-nearest (RTN) fake quantization, in plain torch.

* ``rtn-seed:N`` is the formula of Zhang et al. (ICLR 2025, "Catastrophic Failure of LLM
  Unlearning via Quantization", Sec. 4): per tensor, Delta = max|w| / 2^(N-1) and
  Q(w) = Delta * round(w / Delta), with no clamp. ``round(w / Delta)`` then ranges over
  -2^(N-1) .. 2^(N-1), i.e. **2^N + 1 levels** (one more than N bits can store).
* ``rtn:N[:g<size>][:asym]`` is standard RTN. Symmetric: per output channel (row) or per group
  of ``size`` input columns, scale = max|w| / qmax with qmax = 2^(N-1) - 1 and
  Q(w) = scale * clamp(round(w / scale), -qmax - 1, qmax). Asymmetric (``asym``, GPTQ's
  convention): lo = min(min w, 0), hi = max(max w, 0), scale = (hi - lo) / (2^N - 1),
  zero = round(-lo / scale), Q(w) = scale * (clamp(round(w / scale) + zero, 0, 2^N - 1) - zero).

``torch.round`` rounds half to even. Groups or rows that are all zero stay zero. Computation is in
float32; the result is cast back to the weight's dtype.
"""

from __future__ import annotations


from ..base import QUANTIZERS, Quantizer, bad_scheme, parse_bits, parse_options
from ..codes import QuantCodes
from ...errors import MuseQuantError

RTN_BITS = (2, 3, 4, 5, 6, 7, 8)
FAMILY = "round-to-nearest (plain torch)"


@QUANTIZERS.register("rtn-seed")
class SeedRTN(Quantizer):
    usage = "rtn-seed:N"
    family = FAMILY
    label = "paper RTN-{bits}"
    summary = "the paper's per-tensor RTN: Delta = max|w|/2^(N-1), no clamp (2^N+1 levels)"

    def __init__(self, name, args):
        self.name, self.args = name, list(args)
        if len(args) != 1:
            raise bad_scheme(self.scheme, "expected exactly one argument, the bit width N")
        self.bits = parse_bits(self.scheme, args[0], RTN_BITS)

    def quantize_weight(self, weight):
        import torch

        w = weight.float()
        delta = w.abs().max() / 2 ** (self.bits - 1)
        if delta == 0:
            return weight.clone()
        return (delta * torch.round(w / delta)).to(weight.dtype)

    def quantization_step(self, weight):
        """Delta = max|w| / 2^(N-1) for every element (one grid per tensor)."""
        import torch

        delta = weight.float().abs().max() / 2 ** (self.bits - 1)
        return torch.full(weight.shape, float(delta), dtype=torch.float32)

    def codes(self, weight):
        """q = round(w / Delta) per element (0 for an all-zero tensor); one group, scale Delta."""
        import torch

        w = weight.float()
        delta = w.abs().max() / 2 ** (self.bits - 1)
        q = torch.round(w / delta) if delta > 0 else torch.zeros_like(w)
        return QuantCodes(q.long(), delta.reshape(1), torch.zeros(weight.shape, dtype=torch.long),
                          (0,), 0.5)

    def describe(self):
        return {**super().describe(), "bits": self.bits, "granularity": "tensor",
                "levels": 2 ** self.bits + 1}


@QUANTIZERS.register("rtn")
class RTN(Quantizer):
    usage = "rtn:N[:g<size>][:asym]"
    family = FAMILY
    label = "RTN-{bits}"
    summary = "standard RTN, qmax = 2^(N-1)-1, per output channel or per group of input columns"

    def __init__(self, name, args):
        self.name, self.args = name, list(args)
        self.bits = parse_bits(self.scheme, args[0] if args else None, RTN_BITS)
        opts = parse_options(self.scheme, args[1:], {"g": "group_size"}, flags=("asym",))
        self.group_size: int | None = opts.get("group_size")
        self.asym: bool = opts["asym"]

    def display_label(self):
        group = f" g{self.group_size}" if self.group_size else ""
        return super().display_label() + group + (" asym" if self.asym else "")

    def check_weight(self, module_name, weight):
        if weight.dim() != 2:
            raise MuseQuantError(f"{self.scheme}: {module_name} has a {weight.dim()}-D weight; "
                                 "RTN per channel needs 2-D weights")
        if self.group_size and weight.shape[1] % self.group_size:
            raise bad_scheme(self.scheme, f"group size {self.group_size} does not divide "
                             f"the {weight.shape[1]} input columns of {module_name}")

    def _grouped(self, weight):
        self.check_weight("weight", weight)
        rows, cols = weight.shape
        group = self.group_size or cols
        return weight.float().reshape(rows, cols // group, group)

    def _scale(self, w):
        """The per-group scale (0 for an all-zero group)."""
        if self.asym:
            lo = w.amin(dim=-1, keepdim=True).clamp(max=0)
            hi = w.amax(dim=-1, keepdim=True).clamp(min=0)
            return (hi - lo) / (2 ** self.bits - 1), lo
        return w.abs().amax(dim=-1, keepdim=True) / (2 ** (self.bits - 1) - 1), None

    def _levels(self, weight):
        """``(scale, level)``: the group scale (1 for an all-zero group) and the signed integer
        level of each element, Q(w) = scale * level (grouped layout)."""
        import torch

        w = self._grouped(weight)
        scale, lo = self._scale(w)
        scale = torch.where(scale == 0, torch.ones_like(scale), scale)
        if self.asym:
            maxq = 2 ** self.bits - 1
            zero = torch.round(-lo / scale)
            q = torch.clamp(torch.round(w / scale) + zero, 0, maxq)
            return scale, q - zero
        qmax = 2 ** (self.bits - 1) - 1
        return scale, torch.clamp(torch.round(w / scale), -qmax - 1, qmax)

    def quantize_weight(self, weight):
        scale, level = self._levels(weight)
        return (scale * level).reshape(weight.shape).to(weight.dtype)

    def codes(self, weight):
        """The integer level (asym: q - zero) per element and the step of each row / group."""
        import torch

        scale, level = self._levels(weight)
        groups = torch.arange(scale.numel()).reshape(scale.shape).expand_as(level)
        return QuantCodes(level.long().reshape(weight.shape), scale.reshape(-1),
                          groups.reshape(weight.shape), (0,), 0.5)

    def quantization_step(self, weight):
        """Delta = the scale of the element's group (row without ``g``)."""
        w = self._grouped(weight)
        return self._scale(w)[0].expand_as(w).reshape(weight.shape).clone()

    def describe(self):
        return {**super().describe(), "bits": self.bits,
                "granularity": f"group{self.group_size}" if self.group_size else "channel",
                "symmetric": not self.asym}
