"""What a codebook or uniform-grid quantizer stores for one weight: codes and scales.

:meth:`harness_ext.quantizers.base.Quantizer.codes` returns a :class:`QuantCodes`; the
diagnostics use it to tell a *code crossing* (an element's code changed) from a *scale move*
(its block's or row's scale changed). Definitions: ``docs/diagnostics.md``.
"""

from __future__ import annotations

from typing import NamedTuple

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


class QuantCodes(NamedTuple):
    """Codes and scales of one quantized weight (unpacks as ``codes, scales, *rest``).

    For every scheme that returns it, two elements of one group with equal codes have equal
    dequantized values, and the dequantized value of an element depends only on its code and
    its group's scale.
    """

    #: int64, the weight's shape: the element's code, an index that orders the scheme's distinct
    #: values (4-bit: 0..15 or 0..14 for FP4, whose +0 and -0 are one value; RTN / int8: the
    #: signed integer level q, with Q(w) = scale * q)
    codes: torch.Tensor
    #: float32, ``(n_groups,)``: each quantization group's scale (4-bit: the block's absmax;
    #: bnb-int8: the row's absmax; RTN: the row's / group's step)
    scales: torch.Tensor
    #: int64, the weight's shape: the group (block, row, column group) of each element
    groups: torch.Tensor
    #: the codes counted as zero / near-zero (the zero code; FP4 also its +-0.0625/12 codes)
    zero_codes: tuple[int, ...]
    #: the near-zero codes take every element with |w| below ``near_zero_edge * scale``
    #: (FP4: 0.0859375, the kernel's pivot above 0.0625/12; NF4: 0.0398, the positive edge of
    #: the zero code; RTN: 0.5; bnb-int8: 0.5 / 127)
    near_zero_edge: float

    def near_zero(self) -> torch.Tensor:
        """bool, the weight's shape: the element's code is one of :attr:`zero_codes`."""
        import torch

        return torch.isin(self.codes, torch.tensor(self.zero_codes, dtype=self.codes.dtype))

    def element_scales(self) -> torch.Tensor:
        """float32, the weight's shape: the scale of each element's group."""
        return self.scales[self.groups]
