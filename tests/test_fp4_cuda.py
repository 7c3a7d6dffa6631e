"""bnb-fp4 rounds as bitsandbytes' CUDA kernel ``dQuantizeFP4`` (csrc/kernels.cu): crafted ties
with hand-written codes, random bf16 data against a plain scalar copy of the kernel's tree, and
the constants against the kernel's float32 literals. bnb-fp4-cpu (bitsandbytes' CPU path) is
checked bit-exact in tests/test_quantizers.py."""

from fractions import Fraction

import numpy as np
import pytest
import torch

from harness_ext.quantizers import parse_scheme
from harness_ext.quantizers.schemes.bnb_fake import (FP4_CUDA_PIVOTS, NF4_CODE, _codebook,
                                                     dquantize_fp4)

# The kernel's literals, as written in csrc/kernels.cu.
KERNEL_PIVOTS = ("0.00260417", "0.0859375", "0.20833333", "0.29166667", "0.4166667", "0.583333",
                 "0.8333333")
# fp4_dequantization_lut / dDequantizeFP4Tree, indexed by the 3 magnitude bits
KERNEL_LUT = ("0.0", "0.005208333333", "0.66666667", "1.0", "0.33333333", "0.5", "0.16666667",
              "0.25")
KERNEL_NF4_PIVOTS = (
    "-0.8480964004993439", "-0.6106329262256622", "-0.4599952697753906", "-0.33967943489551544",
    "-0.23460740596055984", "-0.13791173323988914", "-0.045525018125772476",
    "0.03979014977812767", "0.1202552504837513", "0.2035212516784668", "0.2920137718319893",
    "0.3893125355243683", "0.5016634166240692", "0.6427869200706482", "0.8614784181118011")


def f32(literal: str) -> np.float32:
    """The float32 a C compiler makes of ``<literal>f``: the nearest float32 to the decimal."""
    exact = Fraction(literal)
    guess = np.float32(float(literal))
    candidates = [np.nextafter(guess, np.float32(-2)), guess, np.nextafter(guess, np.float32(2))]
    return min(candidates, key=lambda c: abs(Fraction(float(c)) - exact))


def kernel_code(x: np.float32, p=tuple(f32(v) for v in KERNEL_PIVOTS)) -> int:
    """dQuantizeFP4, line by line."""
    sign = 0b1000 if x < 0 else 0b0000
    x = np.float32(abs(x))
    if x > p[3]:
        if x > p[5]:
            return (0b0011 if x > p[6] else 0b0010) + sign
        return (0b101 if x > p[4] else 0b100) + sign
    if x > p[1]:
        return (0b0111 if x > p[2] else 0b0110) + sign
    return (0b0001 if x > p[0] else 0b0000) + sign


def kernel_quantize_dequantize(flat: np.ndarray, block: int) -> np.ndarray:
    """kQuantizeBlockwise (FP4) + kDequantizeBlockwise with IEEE float32 arithmetic."""
    lut = [f32(v) for v in KERNEL_LUT]
    out = np.empty(len(flat), dtype=np.float32)
    for start in range(0, len(flat), block):
        vals = flat[start:start + block].astype(np.float32)
        absmax = np.float32(np.max(np.abs(vals)))
        with np.errstate(divide="ignore", invalid="ignore"):
            inv = np.float32(1.0) / absmax
            for j, v in enumerate(vals):
                code = kernel_code(np.float32(v * inv))
                sign = np.float32(-1.0) if code & 0b1000 else np.float32(1.0)
                out[start + j] = np.float32(lut[code & 0b111] * sign) * absmax
    return out


def test_constants_are_the_kernels_float32_literals():
    assert [np.float32(p) for p in FP4_CUDA_PIVOTS] == [f32(v) for v in KERNEL_PIVOTS]
    # the kernel's dequantization values are the code table bitsandbytes' CPU path uses
    lut = torch.tensor([float(f32(v)) for v in KERNEL_LUT])
    values = torch.cat([lut, -lut])
    assert torch.equal(torch.sort(values).values, _codebook("fp4"))
    # the pivots are not the float32 midpoints of the CPU path: 0.583333 is 6 ulps below
    # (1/2 + 2/3) / 2, 0.00260417 14 ulps above (0 + 0.0625/12) / 2; 0.0859375 and 0.4166667
    # are the midpoints
    code = _codebook("fp4")
    mids = ((code[:-1] + code[1:]) / 2)[8:].numpy()  # the positive midpoints
    ulps = [int(f32(k).view(np.int32)) - int(m.view(np.int32)) for k, m in zip(KERNEL_PIVOTS, mids)]
    assert ulps == [14, 0, -1, -1, 0, -6, -1]


def test_nf4_cpu_midpoints_versus_the_cuda_pivots():
    """Why bnb-nf4 keeps the CPU rounding: NF4's CUDA tree is not sign-magnitude (ties go to the
    lower code as on the CPU), and 11 of its 15 float32 pivots are the CPU path's midpoints;
    the other 4 lie one ulp away (the literals are double midpoints printed to 16 digits), so
    the two differ only for values within one ulp of those (0 of 5e7 random bf16 weights)."""
    code = torch.tensor(NF4_CODE, dtype=torch.float32)
    mids = ((code[:-1] + code[1:]) / 2).numpy()
    ulps = [int(f32(k).view(np.int32)) - int(m.view(np.int32))
            for k, m in zip(KERNEL_NF4_PIVOTS, mids)]
    # (int32 views grow with the magnitude: +1 on a negative pivot is one ulp further from 0)
    assert ulps == [1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, -1, 0, -1]


# (value, kernel code, bnb-fp4 value, bnb-fp4-cpu value) with absmax 1: exact ties first.
# Codes: 0b0000 = 0, 0b0001 = 0.0625, 0b0110 = 2, 0b0111 = 3, 0b0100 = 4, 0b0101 = 6,
# 0b0010 = 8, 0b0011 = 12 (all / 12); bit 3 = sign.
TIES = [
    # on the pivot: the smaller magnitude for both signs
    (0.0859375, 0b0001, 0.0625 / 12, 0.0625 / 12),
    (-0.0859375, 0b1001, -0.0625 / 12, -2 / 12),  # CPU: exact midpoint, to the lower code
    (float(f32("0.20833333")), 0b0110, 2 / 12, 2 / 12),
    (-float(f32("0.20833333")), 0b1110, -2 / 12, -2 / 12),  # pivot 1 ulp below 5/24
    (float(f32("0.29166667")), 0b0111, 3 / 12, 3 / 12),
    (-float(f32("0.29166667")), 0b1111, -3 / 12, -3 / 12),
    (float(f32("0.4166667")), 0b0100, 4 / 12, 4 / 12),
    (-float(f32("0.4166667")), 0b1100, -4 / 12, -6 / 12),  # the pivot is the midpoint 5/12
    (float(f32("0.583333")), 0b0101, 6 / 12, 6 / 12),
    (-float(f32("0.583333")), 0b1101, -6 / 12, -6 / 12),
    (float(f32("0.8333333")), 0b0010, 8 / 12, 8 / 12),
    (-float(f32("0.8333333")), 0b1010, -8 / 12, -8 / 12),
    (float(f32("0.00260417")), 0b0000, 0.0, 0.0625 / 12),  # CPU midpoint 1/384 is lower
    (-float(f32("0.00260417")), 0b1000, -0.0, -0.0625 / 12),
    # between the pivot 0.583333 and the midpoint 7/12: the kernel rounds up, the CPU down
    (float(np.nextafter(f32("0.583333"), np.float32(1))), 0b0010, 8 / 12, 6 / 12),
    # one ulp above a pivot: the larger magnitude
    (float(np.nextafter(np.float32(0.0859375), np.float32(1))), 0b0110, 2 / 12, 2 / 12),
    (-float(np.nextafter(np.float32(0.0859375), np.float32(1))), 0b1110, -2 / 12, -2 / 12),
    (0.0, 0b0000, 0.0, 0.0),
    (-1.0, 0b1011, -1.0, -1.0),
    (1.0, 0b0011, 1.0, 1.0),
]


@pytest.mark.parametrize("absmax", [1.0, 0.5, 2.0 ** -6])
def test_crafted_ties_give_the_kernels_codes(absmax):
    """Values exactly on the pivots (times a power-of-two absmax, so s = x * (1/absmax) is exact)."""
    values = torch.tensor([v for v, *_ in TIES], dtype=torch.float32) * absmax
    block = torch.cat([values, torch.zeros(64 - len(values))])
    assert dquantize_fp4(values / absmax).tolist() == [code for _, code, *_ in TIES]
    cuda = parse_scheme("bnb-fp4").quantize_weight(block)[:len(TIES)]
    cpu = parse_scheme("bnb-fp4-cpu").quantize_weight(block)[:len(TIES)]
    expected_cuda = torch.tensor([float(np.float32(v)) for *_, v, _ in TIES]) * absmax
    expected_cpu = torch.tensor([float(np.float32(v)) for *_, v in TIES]) * absmax
    assert torch.equal(cuda, expected_cuda)
    assert torch.equal(cpu, expected_cpu)
    # the kernel's -0.0 for a negative value that rounds to zero
    assert torch.signbit(cuda[13]) and not torch.signbit(cuda[12])


def test_all_zero_and_partial_blocks():
    w = torch.cat([torch.zeros(64), torch.tensor([0.3, -0.04, 0.0])])  # all-zero, then partial
    out = parse_scheme("bnb-fp4").quantize_weight(w)
    assert torch.equal(out[:64], torch.zeros(64))
    assert out[64:].tolist() == pytest.approx([0.3, -0.3 * 2 / 12, 0.0], rel=1e-6)


@pytest.mark.parametrize("seed", [0, 1])
def test_random_bf16_equals_the_kernels_tree(seed):
    gen = torch.Generator().manual_seed(seed)
    w = (torch.randn(64, 512, generator=gen) * 0.02).to(torch.bfloat16)
    w[0, :64] = torch.tensor([0.5, 0.0859375 * 0.5, -0.0859375 * 0.5] + [0.01] * 61)  # ties
    w[1, :64] = 0.0  # an all-zero block
    reference = kernel_quantize_dequantize(w.float().reshape(-1).numpy(), 64)
    ours = parse_scheme("bnb-fp4").quantize_weight(w)
    expected = torch.from_numpy(reference).reshape(w.shape).to(torch.bfloat16)
    assert torch.equal(ours, expected)
    # the test can tell the roundings apart: the CPU path differs on some of these weights
    assert not torch.equal(parse_scheme("bnb-fp4-cpu").quantize_weight(w), expected)
