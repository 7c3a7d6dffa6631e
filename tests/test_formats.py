"""Deployment formats other than GGUF: FP8 (compressed-tensors / vLLM), MLX, HQQ and torchao.

Hand-computed values check the stated formulas (always run); the library cross-checks are bit
exact and skip when the library (a pip extra) is absent. Checked with compressed-tensors 0.19.0,
mlx 0.32.4, hqq 0.2.8.post1 and torchao 0.18.0 (torch 2.13.0, CPU).
"""

import json
import sys

import pytest
import torch

from harness_ext.errors import MuseQuantError
from harness_ext.quantizers import apply as qapply
from harness_ext.quantizers import parse_scheme

DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def q(scheme, rows, dtype=torch.float32):
    return parse_scheme(scheme).quantize_weight(torch.tensor(rows, dtype=dtype))


def random_weight(dtype, rows=48, cols=256, seed=0):
    """Rows of very different magnitudes, an all-zero row, a constant half row and a row of
    non-positive values (MLX's min/max edge cases)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g) * 10 ** (torch.rand(rows, 1, generator=g) * 5 - 4)
    w[3] = 0
    w[4, : cols // 2] = 0.5
    w[5] = -w[5].abs()
    return w.to(dtype)


# ------------------------------------------------------------------------------------------
# FP8
# ------------------------------------------------------------------------------------------
# Row absmax 448 -> scale 1. E4M3 steps: 2 in [16, 32) (17 and 19 are ties: to the even mantissa,
# 16 and 20), 2^-5 in [0.25, 0.5) (0.3 -> 0.3125), 2^-9 among the subnormals (0.001 -> 2^-9,
# 0.0009 -> 0).
FP8_ROW = [448.0, 17.0, 19.0, -0.3, 0.001, 0.0009]
FP8_ROW_Q = [448.0, 16.0, 20.0, -0.3125, 0.001953125, 0.0]


def test_fp8_per_channel_by_hand():
    out = q("fp8:e4m3", [FP8_ROW, [2 * x for x in FP8_ROW], [0.0] * 6])
    assert out.tolist() == [FP8_ROW_Q, [2 * x for x in FP8_ROW_Q], [0.0] * 6]
    assert parse_scheme("fp8:e4m3:channel").describe()["granularity"] == "channel"


def test_fp8_per_tensor_by_hand():
    # one scale 896 / 448 = 2: the first row is 2 * E4M3(row / 2). 8.5 and 9.5 tie (step 1 in
    # [8, 16)) -> 8, 10; 0.15 -> 0.15625 (step 2^-6); 0.0005 / 2^-9 = 0.256 -> 0
    out = q("fp8:e4m3:tensor", [FP8_ROW, [2 * x for x in FP8_ROW]])
    assert out[0].tolist() == [448.0, 16.0, 20.0, -0.3125, 0.0, 0.0]
    assert out[1].tolist() == [2 * x for x in FP8_ROW_Q]
    assert parse_scheme("fp8:e4m3:tensor").describe()["weights_only"] is True


def test_fp8_every_code_is_a_fixed_point():
    codes = torch.arange(127, dtype=torch.uint8).view(torch.float8_e4m3fn).float()  # 0 .. 448
    w = torch.stack([codes, -codes / 4])  # second row: scale 112 / 448 = 1/4, exact
    assert torch.equal(q("fp8:e4m3", w.tolist()), w)


def test_fp8_step_is_the_code_bucket_width():
    step = parse_scheme("fp8:e4m3").quantization_step(torch.tensor([FP8_ROW]))
    # 448: last code, 448 - 416 = 32; 17 -> 16, neighbours 15 and 18 -> 1.5;
    # 0.3 -> 0.3125 (neighbours 0.28125, 0.34375) -> 2^-5; 0.0009 -> 0 (neighbours -+2^-9) -> 2^-9
    assert step[0].tolist() == [32.0, 1.5, 2.0, 0.03125, 2 ** -9, 2 ** -9]


@pytest.mark.slow  # importing compressed_tensors takes several seconds
@pytest.mark.parametrize("preset", ["FP8", "FP8_DYNAMIC"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_fp8_matches_compressed_tensors(preset, dtype):
    quantization = pytest.importorskip("compressed_tensors.quantization")
    from compressed_tensors.quantization.lifecycle.forward import (dequantize, fake_quantize,
                                                                   quantize)
    from compressed_tensors.quantization.utils import calculate_qparams

    args = quantization.quant_scheme.PRESET_SCHEMES[preset]["weights"]
    w = random_weight(dtype)
    per_channel = args.strategy == quantization.QuantizationStrategy.CHANNEL
    dims = (-1,) if per_channel else (0, 1)
    scale, zero = calculate_qparams(w.amin(dim=dims), w.amax(dim=dims), args)
    if per_channel:
        scale, zero = scale.reshape(-1, 1), zero.reshape(-1, 1)
    ours = parse_scheme("fp8:e4m3" if per_channel else "fp8:e4m3:tensor").quantize_weight(w)
    assert ours.dtype == dtype
    assert torch.equal(ours, fake_quantize(w, scale, zero, args))
    stored = quantize(w, scale, zero, args, dtype=torch.float8_e4m3fn)
    assert torch.equal(ours, dequantize(stored, scale, zero, args))


# ------------------------------------------------------------------------------------------
# MLX
# ------------------------------------------------------------------------------------------

def test_mlx_by_hand():
    # 2 bits, groups of 32. Group 1: min 0, max 3 -> scale -1 (max is the edge), bias 3,
    # q = rint(3 - w): 0.5 -> 2.5 -> 2 (half to even) -> 1.0. Group 2: min -3 is the edge;
    # scale 4/3, q0 = rint(-2.25) = -2 -> scale 1.5, bias -3: q = rint((w + 3) / 1.5)
    g1 = [0.0, 0.5, 1.0, 3.0] + [0.0] * 28
    g2 = [-3.0, -1.4, 0.2, 1.0] + [0.0] * 28
    out = q("mlx:2:g32", [g1 + g2])
    assert out[0, :4].tolist() == [0.0, 1.0, 1.0, 3.0]
    assert out[0, 32:36].tolist() == [-3.0, -1.5, 0.0, 1.5]
    assert out[0, 4:32].eq(0).all() and out[0, 36:].eq(0).all()
    step = parse_scheme("mlx:2:g32").quantization_step(torch.tensor([g1 + g2]))
    assert step[0, 0] == 1.0 and step[0, 32] == 1.5


def test_mlx_levels_and_errors():
    w = random_weight(torch.float32)
    out = parse_scheme("mlx:3").quantize_weight(w)
    assert max(len(torch.unique(g)) for g in out.reshape(-1, 64)) == 8
    assert parse_scheme("mlx:4").describe()["group_size"] == 64
    with pytest.raises(MuseQuantError, match="group size 16"):
        parse_scheme("mlx:4:g16")
    with pytest.raises(MuseQuantError, match="bit width 7"):
        parse_scheme("mlx:7")
    with pytest.raises(MuseQuantError, match="tile each row"):
        parse_scheme("mlx:4:g128").check_weight("x", torch.zeros(4, 96))


def _to_mx(t):
    import mlx.core as mx
    import numpy as np

    if t.dtype == torch.bfloat16:
        return mx.array(t.view(torch.int16).numpy()).view(mx.bfloat16)
    return mx.array(np.asarray(t.numpy()))


def _from_mx(a, dtype):
    import mlx.core as mx
    import numpy as np

    if dtype == torch.bfloat16:
        return torch.from_numpy(np.array(a.view(mx.int16))).view(torch.bfloat16)
    return torch.from_numpy(np.array(a))


@pytest.mark.parametrize("dtype", DTYPES)
def test_mlx_matches_mx_quantize(dtype):
    mx = pytest.importorskip("mlx.core")
    w = random_weight(dtype)
    for bits in (2, 3, 4, 5, 6, 8):
        for group in (32, 64, 128):
            packed, scales, biases = mx.quantize(_to_mx(w), group_size=group, bits=bits)
            ref = _from_mx(mx.dequantize(packed, scales, biases, group_size=group, bits=bits),
                           dtype)
            assert torch.equal(parse_scheme(f"mlx:{bits}:g{group}").quantize_weight(w), ref), \
                (bits, group)


# ------------------------------------------------------------------------------------------
# HQQ
# ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("scheme", ["hqq:4", "hqq:3:g32", "hqq:2:g128"])
def test_hqq_is_the_library_output(scheme):
    quantize = pytest.importorskip("hqq.core.quantize")
    quantizer = parse_scheme(scheme)
    w = random_weight(torch.float32, rows=32)
    original = w.clone()
    out = quantizer.quantize_weight(w)
    assert torch.equal(w, original)  # the weight given in is not modified
    linear = torch.nn.Linear(256, 32, bias=False)
    linear.weight.data.copy_(w)
    config = quantize.BaseQuantizeConfig(nbits=quantizer.bits, group_size=quantizer.group_size)
    ref = quantize.HQQLinear(linear, config, compute_dtype=torch.float32, device="cpu")
    assert torch.equal(out, ref.dequantize())
    groups = out.reshape(-1, quantizer.group_size)
    assert max(len(torch.unique(g)) for g in groups) <= 2 ** quantizer.bits
    # every value of a group is min + k * Delta for an integer k
    step = quantizer.quantization_step(w).reshape(groups.shape)
    k = (groups - groups.amin(dim=1, keepdim=True)) / step
    assert torch.allclose(k, k.round(), atol=1e-3)


def test_hqq_bfloat16_stays_bfloat16():
    pytest.importorskip("hqq.core.quantize")
    w = random_weight(torch.bfloat16, rows=16)
    out = parse_scheme("hqq:4").quantize_weight(w)
    assert out.dtype == torch.bfloat16 and out.shape == w.shape
    assert (out.float() - w.float()).abs().max() < w.float().abs().max()


def test_hqq_options():
    with pytest.raises(MuseQuantError, match="multiple of 8"):
        parse_scheme("hqq:4:g12")
    with pytest.raises(MuseQuantError, match="bit width 7"):
        parse_scheme("hqq:7")
    assert parse_scheme("hqq:2:g32").describe()["group_size"] == 32


@pytest.mark.parametrize("scheme, modules", [
    ("hqq:4", ["hqq", "hqq.core", "hqq.core.quantize"]),
    ("torchao:int8", ["torchao", "torchao.quantization"]),
])
def test_missing_library_names_the_extra(monkeypatch, scheme, modules):
    for module in modules:
        monkeypatch.setitem(sys.modules, module, None)  # import raises ImportError
    quantizer = parse_scheme(scheme)  # parsing needs no library
    extra = scheme.split(":")[0]
    with pytest.raises(MuseQuantError, match=f"needs the {extra} package") as err:
        quantizer.quantize_weight(torch.ones(4, 256))
    assert err.value.fix == f"pip install 'muse-quant[{extra}]'"


# ------------------------------------------------------------------------------------------
# torchao
# ------------------------------------------------------------------------------------------

def test_torchao_by_hand():
    pytest.importorskip("torchao.quantization")
    # int4, groups of 32: absmax 7.5 -> scale 1; round half to even, clamp to [-8, 7]
    row = [7.5, -7.5, 2.5, 3.5, -0.5] + [0.0] * 27
    assert q("torchao:int4:g32", [row])[0, :5].tolist() == [7.0, -8.0, 2.0, 4.0, 0.0]
    # int8 per row: absmax 127.5 -> scale 1, clamp to [-128, 127]
    row = [127.5, -127.5, 0.5, 1.5] + [0.0] * 28
    assert q("torchao:int8", [row])[0, :4].tolist() == [127.0, -128.0, 0.0, 2.0]


def torchao_formula(w, scheme):
    """torchao 0.18's choose_qparams_affine + quantize_affine + dequantize_affine, symmetric."""
    if scheme == "torchao:int8":
        scale = (w.abs().amax(-1, keepdim=True) / 127.5).clamp(
            min=torch.finfo(torch.float32).eps).float()
        return (torch.clamp(torch.round(w * (1.0 / scale)), -128, 127).to(w.dtype)
                * scale).to(w.dtype)
    group = int(scheme.rsplit(":g", 1)[1])
    g = w.reshape(w.shape[0], -1, group)
    scale = (g.abs().amax(-1, keepdim=True) / 7.5).clamp(min=torch.finfo(w.dtype).smallest_normal)
    return (torch.clamp(torch.round(g * (1.0 / scale)), -8, 7).to(w.dtype) * scale).reshape(w.shape)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("scheme", ["torchao:int4:g32", "torchao:int4:g128", "torchao:int8"])
def test_torchao_matches_its_formula(scheme, dtype):
    pytest.importorskip("torchao.quantization")
    w = random_weight(dtype)
    quantizer = parse_scheme(scheme)
    out = quantizer.quantize_weight(w)
    assert out.dtype == dtype and torch.equal(out, torchao_formula(w, scheme))
    step = quantizer.quantization_step(w)
    per = 256 if scheme == "torchao:int8" else quantizer.group_size
    assert torch.equal(step[:, ::per].repeat_interleave(per, dim=1), step)
    assert step[0, 0] > 0


def test_torchao_options():
    assert parse_scheme("torchao:int4").group_size == 128
    with pytest.raises(MuseQuantError, match="int4"):
        parse_scheme("torchao:int2")
    with pytest.raises(MuseQuantError, match="unknown option 'g32'"):
        parse_scheme("torchao:int8:g32")


# ------------------------------------------------------------------------------------------
# In a model
# ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("scheme, library", [
    ("fp8:e4m3", None), ("fp8:e4m3:tensor", None), ("mlx:4", None),
    ("hqq:4", "hqq.core.quantize"), ("torchao:int4:g32", "torchao.quantization"),
    ("torchao:int8", "torchao.quantization"),
])
def test_quantize_model_writes_each_scheme_back(scheme, library):
    if library:
        pytest.importorskip(library)
    from harness_ext.toy.tiny import build_tiny_llama

    model, _ = build_tiny_llama(seed=0, hidden_size=128, intermediate_size=384,
                                num_hidden_layers=1)
    names = qapply.quantizable_linear_names(model)
    before = {n: m.weight.detach().clone() for n, m in model.named_modules() if n in names}
    emb = model.model.embed_tokens.weight.detach().clone()
    quantizer = parse_scheme(scheme)
    report = qapply.quantize_model(model, quantizer)
    assert report["n_modules"] == len(names) == 7
    json.dumps(report)
    modules = dict(model.named_modules())
    assert all(not torch.equal(modules[n].weight, before[n]) for n in names)
    for name in (names[0], names[-1]):  # q_proj [128, 128], down_proj [128, 384]
        assert torch.equal(modules[name].weight, quantizer.quantize_weight(before[name])), name
    assert torch.equal(model.model.embed_tokens.weight, emb)


def test_diagnose_runs_for_the_library_free_formats():
    from harness_ext.evaluation.diagnostics import diagnose_models
    from harness_ext.toy.tiny import build_tiny_llama

    kw = dict(hidden_size=128, intermediate_size=384, num_hidden_layers=1)
    model_o, _ = build_tiny_llama(seed=0, **kw)
    model_u, _ = build_tiny_llama(seed=0, **kw)
    torch.manual_seed(0)
    with torch.no_grad():  # a small update that leaves every group's min and max (the scales)
        for name in qapply.quantizable_linear_names(model_u):
            w = model_u.get_submodule(name).weight.view(-1, 32)
            extreme = (w == w.amax(-1, keepdim=True)) | (w == w.amin(-1, keepdim=True))
            w.add_(torch.where(extreme, 0.0, 1e-4 * torch.randn_like(w)))
    report = diagnose_models(model_o, model_u, ["fp8:e4m3", "mlx:4"], progress=False)
    for scheme in ("fp8:e4m3", "mlx:4"):
        overall = report["schemes"][scheme]["overall"]
        assert 0 < overall["flip_rate"] < 1
        assert 0 < overall["sub_half_step_share"] <= 1
    # MLX 4-bit has a coarser grid than FP8: more of the update is below half a step
    assert (report["schemes"]["mlx:4"]["overall"]["sub_half_step_share"]
            > report["schemes"]["fp8:e4m3"]["overall"]["sub_half_step_share"])
