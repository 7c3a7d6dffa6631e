"""Each quantization scheme on hand-made tensors (exact outputs), bit-exactness against
bitsandbytes, and the error paths."""

import dataclasses
import subprocess
import sys

import pytest
import torch

from harness_ext.errors import MuseQuantError
from harness_ext.quantizers import QUANTIZERS, available_schemes, describe_scheme, parse_scheme


def q(scheme, values):
    return parse_scheme(scheme).quantize_weight(torch.tensor(values, dtype=torch.float32))


def test_rtn_seed_formula_by_hand():
    # Delta = 0.8 / 2^(2-1) = 0.4; round(w / 0.4) = [0, -1, 2, -0]
    assert torch.equal(q("rtn-seed:2", [[0.1, -0.35, 0.8, -0.05]]),
                       torch.tensor([[0.0, -0.4, 0.8, 0.0]]))
    # half-way rounds to even: Delta = 0.5; 0.25 / 0.5 = 0.5 -> 0, 0.75 / 0.5 = 1.5 -> 2
    assert torch.equal(q("rtn-seed:2", [0.25, 0.75, 1.0]), torch.tensor([0.0, 1.0, 1.0]))


def test_rtn_seed_has_2_pow_n_plus_1_levels():
    w = torch.linspace(-1, 1, 1001)
    levels = torch.unique(parse_scheme("rtn-seed:3").quantize_weight(w))
    assert len(levels) == 2 ** 3 + 1  # -4..4 times Delta: no clamp
    assert parse_scheme("rtn-seed:3").describe()["levels"] == 9


def test_rtn_per_channel_symmetric_by_hand():
    # qmax = 7; row scale = 1.75 / 7 = 0.25: [7, -3.5 -> -4 (half to even), 1, 0] * 0.25
    out = q("rtn:4", [[1.75, -0.875, 0.25, 0.0], [0.0, 0.0, 0.0, 0.0]])
    assert torch.equal(out, torch.tensor([[1.75, -1.0, 0.25, 0.0], [0.0, 0.0, 0.0, 0.0]]))


def test_rtn_groups_by_hand():
    # 2 bits: qmax = 1; groups of 2 columns: [1, .25] scale 1 -> [1, 0]; [-2, .5] scale 2 -> [-2, 0]
    assert torch.equal(q("rtn:2:g2", [[1.0, 0.25, -2.0, 0.5]]), torch.tensor([[1.0, 0.0, -2.0, 0.0]]))


def test_rtn_asymmetric_by_hand():
    # lo = -1, hi = 2, maxq = 3 -> scale 1, zero 1: q = clamp(round(w) + 1, 0, 3) = [0, 1, 1, 3]
    assert torch.equal(q("rtn:2:asym", [[-1.0, 0.0, 0.5, 2.0]]), torch.tensor([[-1.0, 0.0, 0.0, 2.0]]))


def _block(values, size=64, fill=0.0):
    return values + [fill] * (size - len(values))


def test_nf4_by_hand():
    # block 1: absmax 1 -> 0.5 goes to 0.4407 (midpoint to 0.5626 is 0.5017), -0.3 to -0.2844
    # block 2: absmax 2 -> values are 2 * code
    w = _block([1.0, 0.5, -0.3, 0.0]) + _block([2.0, -1.0])
    out = q("bnb-nf4", w)
    assert out[:4].tolist() == pytest.approx([1.0, 0.44070982933044434, -0.28444138169288635, 0.0],
                                             abs=0, rel=1e-7)
    assert out[64:66].tolist() == pytest.approx([2.0, -2 * 0.5250730514526367], abs=0, rel=1e-7)


def test_fp4_by_hand():
    # FP4 code / 12: 0.3 -> 1/3 (midpoint 0.2917), -0.6 -> -2/3 (midpoint -0.5833),
    # 0.004 -> 0.0625/12 (midpoint 0.0026)
    for scheme in ("bnb-fp4", "bnb-fp4-cpu"):  # no ties: the CUDA and CPU roundings agree
        out = q(scheme, _block([1.0, 0.3, -0.6, 0.004]))
        assert out[:4].tolist() == pytest.approx([1.0, 1 / 3, -2 / 3, 0.0625 / 12], rel=1e-6)


def test_int8_by_hand():
    # 127 / 2 = 63.5: q = [127, round(63.5) = 64, round(31.75) = 32] -> q * 2 / 127
    out = q("bnb-int8", [[2.0, 1.0, 0.5], [0.0, 0.0, 0.0]])
    torch.testing.assert_close(out, torch.tensor([[2.0, 128 / 127, 64 / 127], [0.0, 0.0, 0.0]]),
                               rtol=0, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("kind, scheme", [("nf4", "bnb-nf4"), ("fp4", "bnb-fp4-cpu")])
@pytest.mark.parametrize("block", [64, 128])
def test_4bit_bit_exact_vs_bitsandbytes_cpu(dtype, kind, scheme, block):
    """bnb-nf4 and bnb-fp4-cpu equal bitsandbytes' CPU path (bnb-fp4 follows the CUDA kernel:
    tests/test_fp4_cuda.py)."""
    F = pytest.importorskip("bitsandbytes.functional")
    torch.manual_seed(0)
    w = (torch.randn(256, 768) * 0.02).to(dtype)
    w[3, 5] = 0.5  # an outlier
    packed, state = F.quantize_4bit(w, blocksize=block, quant_type=kind)
    reference = F.dequantize_4bit(packed, state)
    assert torch.equal(parse_scheme(f"{scheme}:b{block}").quantize_weight(w), reference)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_int8_bit_exact_vs_bitsandbytes(dtype):
    F = pytest.importorskip("bitsandbytes.functional")
    torch.manual_seed(1)
    w = (torch.randn(256, 768) * 0.02).to(dtype)
    cb, scb, _ = F.int8_vectorwise_quant(w.clone())
    reference = F.int8_vectorwise_dequant(cb, scb).to(dtype)
    assert torch.equal(parse_scheme("bnb-int8").quantize_weight(w), reference)


def test_quantizers_keep_shape_and_dtype():
    w = torch.randn(128, 256, dtype=torch.bfloat16)
    for scheme in ["rtn-seed:4", "rtn:4", "rtn:3:g128:asym", "bnb-nf4", "bnb-fp4:b128",
                   "bnb-fp4-cpu", "bnb-int8"]:
        out = parse_scheme(scheme).quantize_weight(w)
        assert out.shape == w.shape and out.dtype == w.dtype, scheme
        assert not torch.equal(out, w), scheme


@pytest.mark.parametrize("scheme, problem", [
    ("awesome:4", "unknown scheme 'awesome'"),
    ("rtn", "missing bit width"),
    ("rtn:9", "bit width 9 is not supported"),
    ("rtn:four", "not an integer"),
    ("rtn:4:x12", "unknown option 'x12'"),
    ("rtn-seed:4:g128", "exactly one argument"),
    ("bnb-nf4:b100", "block size 100"),
    ("bnb-int8:b64", "takes no arguments"),
    ("", "empty scheme"),
])
def test_bad_schemes_list_valid_ones(scheme, problem):
    for parse in (parse_scheme, describe_scheme):  # describing validates the same way
        with pytest.raises(MuseQuantError) as err:
            parse(scheme)
        assert problem in str(err.value)
        assert "rtn:N[:g<size>][:asym]" in err.value.fix and "bnb-fp4[:b<size>]" in err.value.fix


def test_group_size_must_divide_columns():
    quantizer = parse_scheme("rtn:4:g128")
    with pytest.raises(MuseQuantError, match="group size 128 does not divide the 200 input columns"):
        quantizer.check_weight("layer.q_proj", torch.zeros(4, 200))


def test_scheme_listing():
    rows = available_schemes()
    usages = [u for _, u, _ in rows]
    for expected in ["none", "rtn-seed:N", "rtn:N[:g<size>][:asym]", "bnb-nf4[:b<size>]",
                     "bnb-fp4[:b<size>]", "bnb-fp4-cpu[:b<size>]", "bnb-int8"]:
        assert expected in usages
    families = [f for f, _, _ in rows]
    assert families == sorted(families) and "" not in families  # grouped, every scheme has one


# One example per registered scheme, with its expected (bits, needs_calibration, fake, label).
# A new scheme must be added here (the test below fails until it is).
SCHEME_EXPECTATIONS = {
    "none": (None, False, True, "full"),
    "rtn-seed:4": (4, False, True, "paper RTN-4"),
    "rtn:3:g64:asym": (3, False, True, "RTN-3 g64 asym"),
    "bnb-nf4": (4, False, True, "4-bit NF4"),
    "bnb-fp4:b128": (4, False, True, "4-bit FP4 b128"),
    "bnb-fp4-cpu": (4, False, True, "4-bit FP4 (CPU rounding)"),
    "bnb-int8": (8, False, True, "8-bit"),
    "bnb-nf4-real": (4, False, False, "4-bit NF4 (bnb kernels)"),
    "bnb-fp4-real": (4, False, False, "4-bit FP4 (bnb kernels)"),
    "bnb-int8-real": (8, False, False, "8-bit (LLM.int8 kernels)"),
    "gptq:4": (4, True, True, "GPTQ-4"),
    "awq:2:g32": (2, True, True, "AWQ-2 g32"),
    "fp8:e4m3": (8, False, True, "FP8 E4M3"),
    "mlx:4": (4, False, True, "MLX-4"),
    "hqq:4": (4, False, True, "HQQ-4"),
    "torchao:int4:g32": (4, False, True, "torchao int4 g32"),
    "gguf:q4_k_m": (4, False, True, "GGUF Q4_K_M"),
}


def test_every_registered_scheme_is_described():
    available_schemes()  # imports every scheme module (the registry fills on discovery)
    assert sorted(s.split(":")[0] for s in SCHEME_EXPECTATIONS) == QUANTIZERS.names()
    listed = {usage: (family, summary) for family, usage, summary in available_schemes()}
    for scheme, (bits, needs_calibration, fake, label) in SCHEME_EXPECTATIONS.items():
        info = describe_scheme(scheme)
        assert (info.bits, info.needs_calibration, info.fake, info.label) == \
            (bits, needs_calibration, fake, label), scheme
        assert info.scheme == scheme and info.name == scheme.split(":")[0]
        assert listed[info.usage] == (info.family, info.summary) and info.modules, scheme
        # the description agrees with what the results JSON records about the scheme
        recorded = parse_scheme(scheme).describe()
        assert recorded["family"] == info.name and recorded["summary"] == info.summary
        assert recorded.get("bits") == bits, scheme


def test_scheme_description_by_hand():
    gptq = describe_scheme("gptq:4")
    assert (gptq.bits, gptq.needs_calibration) == (4, True)
    assert gptq.family == "calibrated (llmcompressor)" == describe_scheme("awq:4").family
    int8 = describe_scheme(" bnb-int8 ")
    assert (int8.scheme, int8.bits, int8.needs_calibration) == ("bnb-int8", 8, False)
    assert describe_scheme("none").bits is None and describe_scheme("none").modules == "nothing"
    assert "RMSNorm" in describe_scheme("awq:4").modules  # AWQ also rescales the norms
    assert describe_scheme("rtn:4").modules == describe_scheme("bnb-fp4").modules
    assert "LM head" in describe_scheme("rtn:4").modules
    with pytest.raises(dataclasses.FrozenInstanceError):
        gptq.bits = 8


def test_describing_needs_no_torch():
    code = ("import sys; from harness_ext.quantizers import describe_scheme, available_schemes; "
            f"infos = [describe_scheme(s) for s in {sorted(SCHEME_EXPECTATIONS)!r}]; "
            "available_schemes(); print(sorted(m for m in sys.modules if m.split('.')[0] == "
            "'torch'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def codes(scheme, values):
    return parse_scheme(scheme).codes(torch.tensor(values, dtype=torch.float32))


def test_codes_by_hand():
    # rtn:4, see test_rtn_per_channel_symmetric_by_hand: row scales 0.25 and 1 (all-zero row)
    c = codes("rtn:4", [[1.75, -0.875, 0.25, 0.0], [0.0, 0.0, 0.0, 0.0]])
    assert c.codes.tolist() == [[7, -4, 1, 0], [0, 0, 0, 0]]
    assert c.scales.tolist() == [0.25, 1.0] and c.groups.tolist() == [[0] * 4, [1] * 4]
    assert c.zero_codes == (0,) and c.near_zero_edge == 0.5
    # asymmetric: scale 1, zero 1, q = [0, 1, 1, 3]: the code is q - zero
    assert codes("rtn:2:asym", [[-1.0, 0.0, 0.5, 2.0]]).codes.tolist() == [[-1, 0, 0, 2]]
    c = codes("rtn:2:g2", [[1.0, 0.25, -2.0, 0.5]])
    assert (c.codes.tolist(), c.scales.tolist(), c.groups.tolist()) == \
        ([[1, 0, -1, 0]], [1.0, 2.0], [[0, 0, 1, 1]])
    c = codes("rtn-seed:2", [[0.1, -0.35, 0.8, -0.05]])  # Delta 0.4, one group
    assert c.codes.tolist() == [[0, -1, 2, 0]] and c.scales.tolist() == [pytest.approx(0.4)]
    c = codes("bnb-int8", [[2.0, 1.0, 0.5], [0.0, 0.0, 0.0]])  # q = round(w * 127 / absmax)
    assert c.codes.tolist() == [[127, 64, 32], [0, 0, 0]] and c.scales.tolist() == [2.0, 0.0]
    assert c.near_zero_edge == 0.5 / 127
    # FP4's 15 distinct values ascending: -1, -2/3, -1/2, -1/3, -1/4, -1/6, -1/192, 0 (index 7),
    # 1/192, 1/6, 1/4, 1/3, 1/2, 2/3, 1
    c = codes("bnb-fp4", _block([1.0, 0.3, -0.6, 0.004, -0.004]) + _block([0.5]))
    assert c.codes[:5].tolist() == [14, 11, 1, 8, 6] and c.scales.tolist() == [1.0, 0.5]
    assert c.codes[64].item() == 14 and c.groups[63].item() == 0 and c.groups[64].item() == 1
    assert c.zero_codes == (6, 7, 8) and c.near_zero_edge == 0.0859375
    assert c.near_zero()[:5].tolist() == [False, False, False, True, True]
    # NF4: the index into its 16 values; 0.5 -> 0.4407 (12), -0.3 -> -0.2844 (4)
    c = codes("bnb-nf4", _block([1.0, 0.5, -0.3, 0.0]))
    assert c.codes[:4].tolist() == [15, 12, 4, 7] and c.zero_codes == (7,)


@pytest.mark.parametrize("scheme", ["rtn-seed:4", "rtn:4", "rtn:3:g64:asym", "bnb-int8",
                                    "bnb-nf4", "bnb-fp4", "bnb-fp4-cpu"])
def test_code_and_scale_determine_the_value(scheme):
    """Equal code and scale <=> equal dequantized value (what diagnose's split relies on)."""
    quantizer = parse_scheme(scheme)
    gen = torch.Generator().manual_seed(3)
    a = torch.randn(32, 128, generator=gen) * 0.02
    noise = torch.randn(32, 128, generator=gen) * 0.002
    b = a + noise * (torch.rand(32, 128, generator=gen) < 0.3) * (a.abs() < 0.02)  # not maxima
    b[0, :64] *= 1.5  # one 4-bit block / one row changes its scale
    ca, cb = quantizer.codes(a), quantizer.codes(b)
    same_scale = ca.element_scales() == cb.element_scales()
    same_code = ca.codes == cb.codes
    changed = quantizer.quantize_weight(a) != quantizer.quantize_weight(b)
    assert not changed[same_code & same_scale].any()
    assert changed[~same_code & same_scale].all() and (~same_code & same_scale).any()
    # the bitsandbytes kernels store the fake kind's codes (on a CPU, FP4 with the CPU rounding);
    # calibrated schemes have none
    real = parse_scheme("bnb-fp4-real").codes(a)
    assert torch.equal(real.codes, parse_scheme("bnb-fp4-cpu").codes(a).codes)
    with pytest.raises(NotImplementedError):
        parse_scheme("gptq:4").codes(a)
