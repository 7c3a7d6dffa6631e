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
    its group's scale (and offset, for grids with a min / bias / zero point).
    """

    #: int64, the weight's shape: the element's code, an index that orders the scheme's distinct
    #: values (4-bit: 0..15 or 0..14 for FP4, whose +0 and -0 are one value; RTN / int8: the
    #: signed integer level q, with Q(w) = scale * q)
    codes: torch.Tensor
    #: float32, ``(n_groups,)``: each quantization group's scale (4-bit: the block's absmax;
    #: bnb-int8: the row's absmax; RTN: the row's / group's step; always >= 0)
    scales: torch.Tensor
    #: int64, the weight's shape: the group (block, row, column group) of each element
    groups: torch.Tensor
    #: the codes counted as zero / near-zero (the zero code; FP4 also its +-0.0625/12 codes): a
    #: tuple shared by every group, or an int64 ``(n_groups,)`` tensor, the near-zero code of
    #: each group (affine grids, whose zero point moves from group to group)
    zero_codes: tuple[int, ...] | torch.Tensor
    #: the near-zero codes take every element with |w| below ``near_zero_edge * scale``
    #: (FP4: 0.0859375, the kernel's pivot above 0.0625/12; NF4: 0.0398, the positive edge of
    #: the zero code; RTN: 0.5; bnb-int8: 0.5 / 127); a float, or a float64 ``(n_groups,)``
    #: tensor for affine grids
    near_zero_edge: float | torch.Tensor
    #: float32 ``(n_groups,)``: the group's offset (min / bias / -zero * scale) of an affine grid,
    #: value = scale * code + offset; None for grids without one
    offsets: torch.Tensor | None = None

    def near_zero(self) -> torch.Tensor:
        """bool, the weight's shape: the element's code is one of :attr:`zero_codes`."""
        import torch

        if isinstance(self.zero_codes, torch.Tensor):
            return self.codes == self.zero_codes[self.groups]
        return torch.isin(self.codes, torch.tensor(self.zero_codes, dtype=self.codes.dtype))

    def element_scales(self) -> torch.Tensor:
        """float32, the weight's shape: the scale of each element's group."""
        return self.scales[self.groups]

    def group_moved(self, other: "QuantCodes") -> torch.Tensor:
        """bool ``(n_groups,)``: the group's scale (or offset) differs in ``other``."""
        moved = self.scales != other.scales
        if self.offsets is not None and other.offsets is not None:
            moved = moved | (self.offsets != other.offsets)
        return moved

    def edges(self) -> torch.Tensor:
        """float64 ``(n_groups,)``: how far each group's near-zero codes reach, in weight units."""
        import torch

        return torch.as_tensor(self.near_zero_edge, dtype=torch.float64) * self.scales.double()


def grid_codes(levels, scale, shape, offset=None, level_range=None,
               edge: float = 0.5) -> QuantCodes:
    """The :class:`QuantCodes` of a rounded grid, value = ``scale * level (+ offset)`` per group.

    ``levels``: (n_groups, group size) integer levels, each group contiguous in the weight's
    element order; ``scale`` (may be negative) and ``offset``: (n_groups,). The codes are the
    levels times the sign of the scale (so that codes order the values), the scales |scale|.

    * Without an offset the zero code is 0 and ``edge`` (in units of the scale) is where
      rounding to nearest leaves it (0.5).
    * With an offset (an affine grid) the value 0 sits at level z = -offset / scale: each group's
      near-zero code is the level nearest z within ``level_range`` (lowest, highest level), and
      its edge is the distance from z to that code's rounding boundary, 0.5 - |code - z| (0 when
      z lies outside the grid or the scale is 0).
    """
    import torch

    scale = torch.as_tensor(scale).reshape(-1).float()
    n_groups = scale.numel()
    sign = torch.where(scale < 0, -1, 1)
    levels = torch.as_tensor(levels).reshape(n_groups, -1).long()
    codes = levels * sign[:, None]
    magnitude = scale.abs()
    groups = torch.arange(n_groups)[:, None].expand_as(levels)
    zero_codes: tuple | torch.Tensor = (0,)
    near_zero_edge: float | torch.Tensor = edge
    if offset is not None:
        offset = torch.as_tensor(offset).reshape(-1).float()
        lo, hi = level_range
        safe = torch.where(magnitude > 0, magnitude, torch.ones_like(magnitude))
        z = torch.where(magnitude > 0, -offset.double() / safe.double(), torch.zeros(n_groups,
                        dtype=torch.float64))
        low = torch.where(sign > 0, lo, -hi).double()
        high = torch.where(sign > 0, hi, -lo).double()
        nearest = torch.minimum(torch.maximum(torch.round(z), low), high)
        near_zero_edge = torch.where(magnitude > 0, (0.5 - (nearest - z).abs()).clamp(min=0),
                                     torch.zeros_like(z))
        zero_codes = nearest.long()
    return QuantCodes(codes.reshape(shape), magnitude, groups.reshape(shape), zero_codes,
                      near_zero_edge, offset)
