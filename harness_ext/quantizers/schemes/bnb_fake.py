"""bitsandbytes' weight formats as fake quantization in plain torch (no bitsandbytes needed).

* ``bnb-nf4[:b<size>]`` / ``bnb-fp4[:b<size>]`` / ``bnb-fp4-cpu[:b<size>]``: the 4-bit codebooks
  of bitsandbytes with blockwise absmax (Dettmers et al., 2023, QLoRA). The weight is flattened
  and cut into blocks of ``size`` values (default 64, as ``load_in_4bit``); per block,
  absmax = max|x| and every x is scaled to s = x * (1 / absmax) in float32 and mapped to a code;
  the result is ``code value * absmax`` in float32, cast back to the weight's dtype. A trailing
  partial block gets its own absmax. NF4's 16 values are the normal-quantile code of QLoRA
  (App. E); FP4 is bitsandbytes' 1-sign/2-exponent/1-mantissa code
  {0, 0.0625, 2, 3, 4, 6, 8, 12} / 12 with both signs.
  ``BitsAndBytesConfig(load_in_4bit=True)`` defaults to **FP4**, which is what the paper's
  "4-bit" runs used, on GPUs.

  - ``bnb-fp4`` follows the CUDA kernel the paper ran (``dQuantizeFP4`` in bitsandbytes'
    ``csrc/kernels.cu``): sign = (s < 0), then a binary search on |s| with strict ``>`` against
    the float32 pivots :data:`FP4_CUDA_PIVOTS`. A value exactly on a pivot therefore goes to the
    smaller magnitude for **both** signs (ties toward zero), and the pivots are the kernel's
    decimal literals, not the exact midpoints (0.583333 is 6 float32 ulps below 7/12, 0.00260417
    14 ulps above 1/384). Dequantization is ``(lut[code & 7] * sign) * absmax`` as the kernel's
    (a negative value that rounds to zero gives -0.0).
  - ``bnb-fp4-cpu`` is bit-exact with bitsandbytes' CPU/default path
    (``bitsandbytes.functional.quantize_4bit`` + ``dequantize_4bit`` on CPU): s is clamped to
    [-1, 1] and bucketed against the exact midpoints of the sorted code, a value exactly
    half-way going to the *lower* code, i.e. away from zero for negative ties. On bf16
    N(0, 0.02^2) weights 0.06 % of the codes differ from ``bnb-fp4`` (docs/diagnostics.md).
  - ``bnb-nf4`` is bit-exact with bitsandbytes' CPU path. The CUDA ``dQuantizeNF4`` tree is
    not sign-magnitude (ties go to the lower code on both paths) and 11 of its 15 float32
    pivots are the CPU midpoints; the other 4 lie one float32 ulp away, so the two differ only
    for values within one ulp of those pivots (0 of 5e7 random bf16 weights).

  One caveat, not reproducible on a CPU: bitsandbytes' CUDA build uses ``--use_fast_math``, so
  the kernel's ``1.0f / absmax`` is an approximate reciprocal (at most 1 ulp off). Here it is the
  IEEE quotient; the two can differ only for values within about one float32 ulp of a pivot.
* ``bnb-int8``: the weight side of LLM.int8 (Dettmers et al., 2022): per row,
  q = round(w * (127 / max|w_row|)), w' = q * max|w_row| * (1/127). LLM.int8's activation
  outlier decomposition is not emulated (use ``bnb-int8-real`` for that).

Every scheme here also exposes its codes (:meth:`Quantizer.codes`): the index of each element's
code value among the scheme's distinct values in ascending order (FP4's +0 and -0 are one value),
and the scale of each block (absmax) or row (absmax of the row).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

from ..base import QUANTIZERS, Quantizer, bad_scheme, parse_options
from ..codes import QuantCodes

NF4_CODE = (
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
)
_FP4_MAGNITUDES = (0.0, 0.0625, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0)
#: ``dQuantizeFP4``'s pivots (float32 literals of csrc/kernels.cu), ascending: |s| > pivot[i]
#: puts s above magnitude i of ``_FP4_MAGNITUDES``.
FP4_CUDA_PIVOTS = (0.00260417, 0.0859375, 0.20833333, 0.29166667, 0.4166667, 0.583333, 0.8333333)
#: the kernel's 3-bit magnitude code of each magnitude in ascending order (0b000 = 0,
#: 0b001 = 0.0625, 0b110 = 2, 0b111 = 3, 0b100 = 4, 0b101 = 6, 0b010 = 8, 0b011 = 12); bit 3 = sign
FP4_MAGNITUDE_BITS = (0b000, 0b001, 0b110, 0b111, 0b100, 0b101, 0b010, 0b011)
BNB_BLOCK_SIZES = (64, 128, 256, 512, 1024, 2048, 4096)
#: |s| below which an element takes one of the near-zero codes: FP4's 0 and +-0.0625/12 reach up
#: to the pivot 0.0859375; NF4's zero code reaches up to 0.0398 (positive side, the nearer one;
#: the negative side reaches -0.0455)
NEAR_ZERO_EDGE = {"fp4": 0.0859375, "fp4-cpu": 0.0859375, "nf4": 0.03979014977812767}
KINDS = tuple(NEAR_ZERO_EDGE)
BNB_DEFAULT_BLOCK = 64
FAMILY = "bitsandbytes formats, fake-quantized (plain torch)"


def _codebook(kind: str) -> torch.Tensor:
    """The 16 code values in ascending order (float32)."""
    import torch

    if kind == "nf4":
        code = torch.tensor(NF4_CODE, dtype=torch.float32)
    else:
        mags = torch.tensor(_FP4_MAGNITUDES, dtype=torch.float32) / 12.0
        code = torch.cat([-mags, mags])
    return torch.sort(code).values


def _blocks(weight: torch.Tensor, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(blocks, absmax)``: the flat float32 weight padded with zeros to whole blocks
    (``(n_blocks, block_size)``; the padding does not change a block's absmax) and each block's
    absmax (``(n_blocks, 1)``)."""
    import torch

    flat = weight.reshape(-1).float()
    blocks = torch.nn.functional.pad(flat, (0, (-flat.numel()) % block_size)).reshape(
        -1, block_size)
    return blocks, blocks.abs().amax(dim=1, keepdim=True)


def dquantize_fp4(scaled: torch.Tensor) -> torch.Tensor:
    """The 4-bit code (``uint8``, bit 3 = sign) ``dQuantizeFP4`` gives each float32 value.

    NaN (0 * inf in an all-zero block, where the kernel's reciprocal is inf) compares false
    everywhere and gets 0b0000, as in the kernel.
    """
    import torch

    pivots = torch.tensor(FP4_CUDA_PIVOTS, dtype=torch.float32)
    magnitude_bits = torch.tensor(FP4_MAGNITUDE_BITS, dtype=torch.uint8)
    clean = torch.where(torch.isnan(scaled), torch.zeros_like(scaled), scaled)
    # bucketize (right=False) counts the pivots p with |s| > p: the kernel's strict comparisons
    magnitude = torch.bucketize(clean.abs(), pivots)
    return magnitude_bits[magnitude] | (clean < 0).to(torch.uint8) << 3


def _fp4_bit_tables() -> tuple[torch.Tensor, torch.Tensor]:
    """``(value, level)`` of each of the 16 kernel codes: the dequantized value
    ``lut[code & 7] * sign`` and the index of that value among the distinct FP4 values."""
    import torch

    mags = torch.tensor(_FP4_MAGNITUDES, dtype=torch.float32) / 12.0
    value = torch.empty(16, dtype=torch.float32)
    level = torch.empty(16, dtype=torch.long)
    zero = len(mags) - 1  # ascending distinct values: -mags[7..1], 0, mags[1..7]
    for m, bits in enumerate(FP4_MAGNITUDE_BITS):
        value[bits], value[bits | 8] = mags[m], -mags[m]
        level[bits], level[bits | 8] = zero + m, zero - m
    return value, level


def blockwise_4bit_codes(weight: torch.Tensor, kind: str, block_size: int
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(level, dequantized, absmax)``, blockwise (``(n_blocks, block_size)`` incl. padding).

    ``level`` indexes the kind's distinct code values in ascending order; ``dequantized`` is the
    float32 value before the cast to the weight's dtype. ``kind``: ``nf4``, ``fp4`` (the CUDA
    kernel's tree) or ``fp4-cpu`` (bitsandbytes' CPU path); see the module docstring.
    """
    import torch

    blocks, absmax = _blocks(weight, block_size)
    if kind == "fp4":
        bits = dquantize_fp4(blocks * (1.0 / absmax)).long()
        value, level = _fp4_bit_tables()
        return level[bits], value[bits] * absmax, absmax
    code = _codebook("nf4" if kind == "nf4" else "fp4")
    scaled = torch.clamp(blocks * (1.0 / absmax.clamp(min=1e-38)), -1, 1)
    index = torch.bucketize(scaled, (code[:-1] + code[1:]) / 2)
    level = torch.unique(code, return_inverse=True)[1]  # FP4's -0 and +0 are one level
    return level[index], code[index] * absmax, absmax


def _unblock(blocks: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return blocks.reshape(-1)[:weight.numel()].reshape(weight.shape)


def blockwise_4bit(weight: torch.Tensor, kind: str, block_size: int) -> torch.Tensor:
    """The fake-quantized weight (same shape and dtype)."""
    return _unblock(blockwise_4bit_codes(weight, kind, block_size)[1], weight).to(weight.dtype)


def blockwise_4bit_step(weight: torch.Tensor, kind: str, block_size: int) -> torch.Tensor:
    """Delta per element: absmax * the width of the rounding bucket of the element's code.

    With the distinct code values c_0 < ... < c_m (FP4's +0 and -0 are one value) and the
    element mapped to code k, the bucket is [(c_{k-1} + c_k)/2, (c_k + c_{k+1})/2], of width
    (c_{k+1} - c_{k-1}) / 2: for a uniform grid exactly its step. The end codes use the distance
    to their single neighbour, |c_k - c_{k+-1}|.
    """
    import torch

    code = torch.unique(_codebook("nf4" if kind == "nf4" else "fp4"))
    width = torch.empty_like(code)
    width[1:-1] = (code[2:] - code[:-2]) / 2
    width[0], width[-1] = code[1] - code[0], code[-1] - code[-2]
    level, _, absmax = blockwise_4bit_codes(weight, kind, block_size)
    return _unblock(width[level] * absmax, weight)


def blockwise_4bit_quant_codes(weight: torch.Tensor, kind: str, block_size: int) -> QuantCodes:
    """:class:`QuantCodes` of a blockwise 4-bit scheme: levels, absmax per block, block index."""
    import torch

    level, _, absmax = blockwise_4bit_codes(weight, kind, block_size)
    groups = torch.arange(weight.numel()) // block_size
    values = torch.unique(_codebook("nf4" if kind == "nf4" else "fp4"))
    near = (values.abs() < NEAR_ZERO_EDGE[kind]).nonzero().reshape(-1).tolist()
    return QuantCodes(_unblock(level, weight), absmax.reshape(-1), groups.reshape(weight.shape),
                      tuple(near), NEAR_ZERO_EDGE[kind])


class _Bnb4bit(Quantizer):
    kind = ""
    family = FAMILY
    bits = 4

    def __init__(self, name, args):
        self.name, self.args = name, list(args)
        opts = parse_options(self.scheme, args, {"b": "block_size"})
        self.block_size = opts.get("block_size", BNB_DEFAULT_BLOCK)
        if self.block_size not in BNB_BLOCK_SIZES:
            raise bad_scheme(self.scheme, f"block size {self.block_size} is not one of "
                             f"bitsandbytes' {BNB_BLOCK_SIZES}")

    def display_label(self):
        block = "" if self.block_size == BNB_DEFAULT_BLOCK else f" b{self.block_size}"
        return super().display_label() + block

    def quantize_weight(self, weight):
        return blockwise_4bit(weight, self.kind, self.block_size)

    def quantization_step(self, weight):
        return blockwise_4bit_step(weight, self.kind, self.block_size)

    def codes(self, weight):
        return blockwise_4bit_quant_codes(weight, self.kind, self.block_size)

    def describe(self):
        return {**super().describe(), "bits": self.bits, "codebook": self.kind.split("-")[0],
                "block_size": self.block_size, "rounding": self.rounding}


@QUANTIZERS.register("bnb-nf4")
class BnbNF4(_Bnb4bit):
    kind = "nf4"
    rounding = "bitsandbytes CPU path (the CUDA tree differs within 1 ulp of 4 pivots)"
    usage = "bnb-nf4[:b<size>]"
    label = "{bits}-bit NF4"
    summary = "bitsandbytes NF4 codebook, blockwise absmax (block 64)"


@QUANTIZERS.register("bnb-fp4")
class BnbFP4(_Bnb4bit):
    kind = "fp4"
    rounding = "CUDA dQuantizeFP4 tree (ties toward zero)"
    usage = "bnb-fp4[:b<size>]"
    label = "{bits}-bit FP4"
    summary = ("bitsandbytes FP4 codebook, blockwise absmax (block 64), rounded as the CUDA "
               "kernel does; the paper's 4-bit")


@QUANTIZERS.register("bnb-fp4-cpu")
class BnbFP4Cpu(_Bnb4bit):
    kind = "fp4-cpu"
    rounding = "bitsandbytes CPU path (midpoint ties to the lower code)"
    usage = "bnb-fp4-cpu[:b<size>]"
    label = "{bits}-bit FP4 (CPU rounding)"
    summary = "bnb-fp4 rounded as bitsandbytes' CPU path (negative ties away from zero)"


@QUANTIZERS.register("bnb-int8")
class BnbInt8(Quantizer):
    usage = "bnb-int8"
    family = FAMILY
    label = "{bits}-bit"
    bits = 8
    summary = "LLM.int8 weight quantization: per-row absmax / 127 (no outlier decomposition)"

    @staticmethod
    def _rows(weight):
        import torch

        w = weight.float().reshape(-1, weight.shape[-1])
        absmax = w.abs().amax(dim=1, keepdim=True)
        return torch.round(w * (127.0 / absmax)), absmax

    def quantize_weight(self, weight):
        import torch

        q, absmax = self._rows(weight)
        out = q * absmax * (1 / 127)
        out = torch.where(absmax == 0, torch.zeros_like(out), out)
        return out.reshape(weight.shape).to(weight.dtype)

    def quantization_step(self, weight):
        """Delta = max|w_row| / 127."""
        w = weight.float().reshape(-1, weight.shape[-1])
        return (w.abs().amax(dim=1, keepdim=True) / 127).expand_as(w).reshape(weight.shape).clone()

    def codes(self, weight):
        """q in -127..127 per element (0 in an all-zero row), max|w_row| per row."""
        import torch

        q, absmax = self._rows(weight)
        q = torch.where(absmax == 0, torch.zeros_like(q), q).long()
        groups = torch.arange(q.shape[0])[:, None].expand_as(q)
        return QuantCodes(q.reshape(weight.shape), absmax.reshape(-1),
                          groups.reshape(weight.shape), (0,), 0.5 / 127)

    def describe(self):
        return {**super().describe(), "bits": self.bits, "granularity": "row"}
