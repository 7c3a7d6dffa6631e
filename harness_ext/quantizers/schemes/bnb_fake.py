"""bitsandbytes' weight formats as fake quantization in plain torch (no bitsandbytes needed).

* ``bnb-nf4[:b<size>]`` / ``bnb-fp4[:b<size>]``: the 4-bit codebooks of bitsandbytes with
  blockwise absmax (Dettmers et al., 2023, QLoRA). The weight is flattened and cut into blocks of
  ``size`` values (default 64, as ``load_in_4bit``); per block, absmax = max|x|, each
  x * (1 / absmax) is clamped to [-1, 1] and mapped to the nearest codebook value (a value exactly
  half-way goes to the lower one), and the result is ``code * absmax`` in float32, cast back to the
  weight's dtype. A trailing partial block gets its own absmax. NF4's 16 values are the
  normal-quantile code of QLoRA (App. E); FP4 is bitsandbytes' 1-sign/2-exponent/1-mantissa code
  {0, 0.0625, 2, 3, 4, 6, 8, 12} / 12 with both signs. Bit-exact with
  ``bitsandbytes.functional.quantize_4bit`` + ``dequantize_4bit`` (tests).
  ``BitsAndBytesConfig(load_in_4bit=True)`` defaults to **FP4**, which is what the paper's
  "4-bit" runs used.
* ``bnb-int8``: the weight side of LLM.int8 (Dettmers et al., 2022): per row,
  q = round(w * (127 / max|w_row|)), w' = q * max|w_row| * (1/127). LLM.int8's activation
  outlier decomposition is not emulated (use ``bnb-int8-real`` for that).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..base import QUANTIZERS, Quantizer, bad_scheme, parse_options

if TYPE_CHECKING:
    import torch

NF4_CODE = (
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
)
_FP4_MAGNITUDES = (0.0, 0.0625, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0)
BNB_BLOCK_SIZES = (64, 128, 256, 512, 1024, 2048, 4096)
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


def blockwise_4bit(weight: torch.Tensor, kind: str, block_size: int) -> torch.Tensor:
    import torch

    code = _codebook(kind)
    midpoints = (code[:-1] + code[1:]) / 2
    flat = weight.reshape(-1).float()
    n = flat.numel()
    padded = torch.nn.functional.pad(flat, (0, (-n) % block_size))
    blocks = padded.reshape(-1, block_size)
    absmax = blocks.abs().amax(dim=1, keepdim=True)
    # The padding zeros don't change a block's absmax, so the partial block is handled too.
    scaled = torch.clamp(blocks * (1.0 / absmax.clamp(min=1e-38)), -1, 1)
    index = torch.bucketize(scaled, midpoints)
    out = (code[index] * absmax).reshape(-1)[:n]
    return out.reshape(weight.shape).to(weight.dtype)


def blockwise_4bit_step(weight: torch.Tensor, kind: str, block_size: int) -> torch.Tensor:
    """Delta per element: absmax * the width of the rounding bucket of the element's code.

    With the distinct code values c_0 < ... < c_m (FP4's +0 and -0 are one value) and the
    element mapped to code k, the bucket is [(c_{k-1} + c_k)/2, (c_k + c_{k+1})/2], of width
    (c_{k+1} - c_{k-1}) / 2: for a uniform grid exactly its step. The end codes use the distance
    to their single neighbour, |c_k - c_{k+-1}|.
    """
    import torch

    code = torch.unique(_codebook(kind))
    midpoints = (code[:-1] + code[1:]) / 2
    width = torch.empty_like(code)
    width[1:-1] = (code[2:] - code[:-2]) / 2
    width[0], width[-1] = code[1] - code[0], code[-1] - code[-2]
    flat = weight.reshape(-1).float()
    n = flat.numel()
    blocks = torch.nn.functional.pad(flat, (0, (-n) % block_size)).reshape(-1, block_size)
    absmax = blocks.abs().amax(dim=1, keepdim=True)
    scaled = torch.clamp(blocks * (1.0 / absmax.clamp(min=1e-38)), -1, 1)
    step = width[torch.bucketize(scaled, midpoints)] * absmax
    return step.reshape(-1)[:n].reshape(weight.shape)


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

    def describe(self):
        return {**super().describe(), "bits": self.bits, "codebook": self.kind,
                "block_size": self.block_size}


@QUANTIZERS.register("bnb-nf4")
class BnbNF4(_Bnb4bit):
    kind = "nf4"
    usage = "bnb-nf4[:b<size>]"
    summary = "bitsandbytes NF4 codebook, blockwise absmax (block 64)"
    label = "{bits}-bit NF4"


@QUANTIZERS.register("bnb-fp4")
class BnbFP4(_Bnb4bit):
    kind = "fp4"
    usage = "bnb-fp4[:b<size>]"
    summary = "bitsandbytes FP4 codebook, blockwise absmax (block 64); the paper's 4-bit"
    label = "{bits}-bit FP4"


@QUANTIZERS.register("bnb-int8")
class BnbInt8(Quantizer):
    usage = "bnb-int8"
    summary = "LLM.int8 weight quantization: per-row absmax / 127 (no outlier decomposition)"
    family = FAMILY
    label = "{bits}-bit"
    bits = 8

    def quantize_weight(self, weight):
        import torch

        w = weight.float().reshape(-1, weight.shape[-1])
        absmax = w.abs().amax(dim=1, keepdim=True)
        q = torch.round(w * (127.0 / absmax))
        out = q * absmax * (1 / 127)
        out = torch.where(absmax == 0, torch.zeros_like(out), out)
        return out.reshape(weight.shape).to(weight.dtype)

    def quantization_step(self, weight):
        """Delta = max|w_row| / 127."""
        w = weight.float().reshape(-1, weight.shape[-1])
        return (w.abs().amax(dim=1, keepdim=True) / 127).expand_as(w).reshape(weight.shape).clone()

    def describe(self):
        return {**super().describe(), "bits": self.bits, "granularity": "row"}
