"""FP8 (E4M3) weights as vLLM serves them from compressed-tensors checkpoints, in plain torch.

``fp8:e4m3[:channel|:tensor]``. llm-compressor's ``FP8_DYNAMIC`` scheme stores one scale per
output channel (row), its ``FP8`` scheme one per tensor; vLLM runs both. The default is
**per channel** (``FP8_DYNAMIC``, the recipe of most published FP8 checkpoints). Per row or per
tensor, as ``compressed_tensors`` computes it (``calculate_qparams`` + ``fake_quantize``), all in
the weight's dtype (the checkpoint stores the scale in that dtype):

    scale = max|w| / 448            (448 = largest finite float8_e4m3fn; a zero scale becomes the
                                     dtype's eps, so an all-zero row stays zero)
    q     = float8_e4m3fn(clamp(w / scale, -448, 448))      (round to nearest even)
    w'    = q * scale

Bit-identical to ``compressed_tensors`` 0.19 for float32, bfloat16 and float16 weights (tests).
For a float32 model ``w'`` is exactly the weight vLLM multiplies with; for bf16/fp16 models the
product is rounded once more to the model dtype (as compressed-tensors' own fake quantization
does), while vLLM's FP8 GEMM keeps it unrounded. **Weights only**: FP8 activations (static
per-tensor for ``FP8``, dynamic per-token for ``FP8_DYNAMIC``) and the FP8 KV cache are not
emulated.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


from ..base import QUANTIZERS, Quantizer, bad_scheme

FP8_MAX = 448.0  # torch.finfo(torch.float8_e4m3fn).max
FP8_GRANULARITIES = ("channel", "tensor")


def fp8_scale(weight: torch.Tensor, per_channel: bool) -> torch.Tensor:
    """absmax / 448 per row (shape [rows, 1]) or per tensor, in the weight's dtype."""
    import torch

    if per_channel:
        absmax = weight.abs().amax(dim=-1, keepdim=True)
    else:
        absmax = weight.abs().amax().reshape([1] * weight.dim())
    scale = absmax / FP8_MAX
    eps = torch.tensor(torch.finfo(weight.dtype).eps, dtype=weight.dtype)
    return torch.where(scale == 0, eps, scale)


def fp8_codes(weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The stored float8_e4m3fn values."""
    import torch

    return torch.clamp(weight / scale, -FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)


def _bucket_widths() -> torch.Tensor:
    """Width of the rounding bucket of each E4M3 magnitude code 0..126 (0 .. 448).

    For code k with neighbours c_{k-1} < c_k < c_{k+1} the width is (c_{k+1} - c_{k-1}) / 2; the
    neighbour below 0 is -c_1, and 448 (no finite neighbour above) uses 448 + (448 - 416).
    """
    import torch

    mags = torch.arange(127, dtype=torch.uint8).view(torch.float8_e4m3fn).float()
    lower = torch.cat([-mags[1:2], mags[:-1]])
    upper = torch.cat([mags[1:], 2 * mags[-1:] - mags[-2:-1]])
    return (upper - lower) / 2


FAMILY = "deployment formats (FP8, HQQ, MLX, torchao), fake-quantized"


@QUANTIZERS.register("fp8")
class FP8(Quantizer):
    usage = "fp8:e4m3[:channel|:tensor]"
    family = FAMILY
    label = "FP8 E4M3"
    bits = 8
    summary = ("FP8 E4M3 weights, scale = absmax/448 per channel (FP8_DYNAMIC, default) or per "
               "tensor (FP8), as compressed-tensors/vLLM; weights only")

    def __init__(self, name, args):
        self.name, self.args = name, list(args)
        if not args or args[0] != "e4m3":
            raise bad_scheme(self.scheme, "expected the format e4m3 (fp8:e4m3[:channel|:tensor])")
        if len(args) > 2 or (len(args) == 2 and args[1] not in FP8_GRANULARITIES):
            raise bad_scheme(self.scheme, f"the scale granularity is one of {FP8_GRANULARITIES}")
        self.granularity = args[1] if len(args) == 2 else "channel"

    def display_label(self) -> str:
        return self.label + (" per tensor" if self.granularity == "tensor" else "")

    @property
    def per_channel(self) -> bool:
        return self.granularity == "channel"

    def quantize_weight(self, weight):
        scale = fp8_scale(weight, self.per_channel)
        return fp8_codes(weight, scale).to(weight.dtype) * scale

    def quantization_step(self, weight):
        """Delta = scale * the width of the rounding bucket of the element's E4M3 code.

        E4M3 is a float grid: the step doubles with each binade (2^-9 among the subnormals,
        2^(e-3) in binade [2^e, 2^(e+1))), so Delta grows with |w|.
        """
        import torch

        scale = fp8_scale(weight, self.per_channel)
        code = fp8_codes(weight, scale).view(torch.uint8) & 0x7F
        return _bucket_widths()[code.long()] * scale.float()

    def codes(self, weight):
        """The signed E4M3 code (+-0..126, the magnitude's bits; +0 and -0 are 0) and the row's
        (tensor's) scale. Zero code 0 with edge 2^-10 (half the smallest subnormal, 2^-9): only
        |w| < 2^-10 * scale rounds to 0, so FP8 keeps almost every small update."""
        import torch

        from ..codes import QuantCodes

        scale = fp8_scale(weight, self.per_channel)
        bits = fp8_codes(weight, scale).view(torch.uint8).long()
        codes = torch.where(bits >= 128, -(bits & 0x7F), bits & 0x7F)
        scales = scale.float().reshape(-1)
        groups = (torch.arange(weight.shape[0])[:, None] if self.per_channel
                  else torch.zeros(1, 1, dtype=torch.long)).expand(weight.shape)
        return QuantCodes(codes, scales, groups.clone(), (0,), 2.0 ** -10)

    def describe(self):
        return {**super().describe(), "bits": 8, "format": "float8_e4m3fn",
                "granularity": self.granularity, "weights_only": True}
