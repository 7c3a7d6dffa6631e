"""Real bitsandbytes kernels (bnb-*-real): the fake 4-bit schemes' log-likelihoods (exactly with
bitsandbytes' float32 CPU path, within propagated bf16 rounding with its AVX512-BF16 kernel), the
same layers as transformers' BitsAndBytesConfig loading, CPU shape checks, and swapping back."""

import copy

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from harness_ext.quantizers import apply as qapply
from harness_ext.errors import MuseQuantError
from harness_ext.quantizers import parse_scheme
from harness_ext.quantizers.schemes.bnb_real import dequantized_weight

bnb = pytest.importorskip("bitsandbytes")

# bitsandbytes 0.50 on CPU: with AVX512-BF16, Linear4bit repacks its weight at the first no-grad
# eval forward and from then on runs a bf16 kernel (bitsandbytes/backends/cpu/ops.py gemv_4bit,
# csrc/cpu_ops.cpp tinygemm_kernel_nn): x -> bf16, code lookup table in bf16, absmax -> bf16,
# products summed in float32 (_mm512_dpbf16_ps, then * absmax per 64-block), output -> bf16.
# Without it (or with the layer's support_avx512bf16_for_cpu flag off) it dequantizes to float32
# and calls F.linear: the fake scheme's computation.
BF16_KERNEL = bnb.functional.has_avx512bf16()
needs_bf16_kernel = pytest.mark.skipif(not BF16_KERNEL, reason="CPU without AVX512-BF16: "
                                       "bitsandbytes never runs its bf16 4-bit kernel here")
U_BF16, U_FP32 = 2.0 ** -8, 2.0 ** -24  # unit roundoffs (8- and 24-bit significands)


def _linear4bit_layers(model):
    return [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]


def _set_bf16_kernel(model, on):
    """Allow (bitsandbytes' default where the CPU has AVX512-BF16) or forbid the repacking."""
    for layer in _linear4bit_layers(model):
        layer.support_avx512bf16_for_cpu = on


def _repacked(layer):
    return getattr(layer.weight.quant_state, "packing_format_for_cpu", False)


def _bf16_emulation(layer):
    """The bf16 kernel in plain torch: bf16 input, the kernel's weight (exact in float32),
    float32 sums, bf16 output, then the float32 bias (as matmul_4bit adds it)."""
    weight, bias = dequantized_weight(layer), layer.bias

    def forward(x):
        y = F.linear(x.to(torch.bfloat16).float(), weight).to(torch.bfloat16).float()
        return y if bias is None else y + bias
    return forward


def _max_diff(a, b):
    return max(max(abs(x - y) for x, y in zip(p, q)) for p, q in zip(a, b))


@pytest.mark.slow
def test_real_4bit_gives_the_fake_log_likelihoods_and_swaps_back(tiny_model_dir):
    """Float32 path (any CPU; forced here by forbidding the repacking): the fake log-probs within
    1e-4. bf16 kernel (CPUs with AVX512-BF16 only): each layer's output carries bf16 rounding
    (x, code, absmax and output, each <= 2^-8 relative; bounded per layer in
    test_4bit_real_bf16_kernel_error_is_bf16_rounding). Propagated through the network these
    perturbations move the log-probs by D = max|emu - fake|, where emu runs the same roundings
    in plain torch on the same weights (_bf16_emulation). The real kernel differs from emu only
    by float32 summation order (one bf16 ulp on rare elements), so it must be much closer to emu
    than bf16 rounding is to float32: |real - emu| <= D/4 (observed about D/20), hence
    |real - fake| <= 1.25 D; D itself is about 1e-2 nats on this model."""
    from harness_ext.data import load_file
    from harness_ext.lm import MuseQuantLM

    texts = load_file("news", "privleak/forget.json", "embedded")[:4]
    lm = MuseQuantLM(pretrained=str(tiny_model_dir), keep_float_weights=True, device="cpu",
                     batch_size=4)
    full = lm.token_logprobs(texts, disable_tqdm=True)
    layer = lm.model.model.layers[2].mlp
    for kind, fake_scheme in (("nf4", "bnb-nf4"), ("fp4", "bnb-fp4-cpu")):  # CPU rounding
        lm.requantize(fake_scheme)
        fake = lm.token_logprobs(texts, disable_tqdm=True)
        lm.requantize(f"bnb-{kind}-real")
        assert isinstance(layer.down_proj, bnb.nn.Linear4bit)
        assert layer.down_proj.weight.quant_type == kind
        _set_bf16_kernel(lm.model, False)
        real = lm.token_logprobs(texts, disable_tqdm=True)
        assert not _repacked(layer.down_proj)
        for a, b in zip(fake, real):
            assert len(a) == len(b) > 10
            torch.testing.assert_close(torch.tensor(b), torch.tensor(a), rtol=0, atol=1e-4)
        assert fake != full  # quantization did change the model
        if BF16_KERNEL:
            _set_bf16_kernel(lm.model, True)
            real = lm.token_logprobs(texts, disable_tqdm=True)
            layers = _linear4bit_layers(lm.model)
            assert all(_repacked(m) for m in layers)
            for m in layers:
                m.forward = _bf16_emulation(m)
            emu = lm.token_logprobs(texts, disable_tqdm=True)
            for m in layers:
                del m.forward
            bf16_effect = _max_diff(emu, fake)
            assert 0 < bf16_effect < 0.1
            assert _max_diff(real, emu) <= bf16_effect / 4
            assert _max_diff(real, fake) <= 1.25 * bf16_effect
        assert lm.muse_info["quantization"]["bnb_config"]["bnb_4bit_quant_type"] == kind
    lm.requantize("none")  # the float nn.Linear modules come back
    assert type(layer.down_proj) is nn.Linear and not layer.down_proj.training
    assert lm.token_logprobs(texts, disable_tqdm=True) == full


@pytest.mark.parametrize("scheme", ["bnb-nf4-real", "bnb-fp4-real", "bnb-int8-real"])
def test_layers_equal_transformers_bitsandbytes_loading(small_model_dir, scheme):
    from transformers import AutoModelForCausalLM

    ours = AutoModelForCausalLM.from_pretrained(small_model_dir, dtype=torch.float32).eval()
    report = qapply.quantize_model(ours, parse_scheme(scheme))
    assert report["n_modules"] == 14 and type(ours.lm_head) is nn.Linear
    config = parse_scheme(scheme).config(torch.float32)
    theirs = AutoModelForCausalLM.from_pretrained(small_model_dir, dtype=torch.float32,
                                                  quantization_config=config, device_map="cpu")
    ids = torch.randint(3, 4000, (2, 24), generator=torch.Generator().manual_seed(0))
    name = "model.layers.1.mlp.down_proj"
    a, b = ours.get_submodule(name), theirs.get_submodule(name)
    stored = dequantized_weight(a)  # before any forward: a CPU forward may repack a 4-bit weight
    assert torch.equal(stored, dequantized_weight(b))
    with torch.no_grad():
        logits = ours(ids).logits
        assert torch.equal(logits, theirs(ids).logits)
        ours(ids)  # a second forward: Linear4bit may have repacked its weight by now
    assert type(a) is type(b)
    if scheme == "bnb-int8-real":
        assert a.state.threshold == b.state.threshold == 6.0 and not a.state.has_fp16_weights
    else:
        assert (a.weight.blocksize, a.weight.quant_type, a.weight.compress_statistics) == \
            (b.weight.blocksize, b.weight.quant_type, b.weight.compress_statistics)
        fake = parse_scheme(scheme.replace("-real", ""))
        float_weight = AutoModelForCausalLM.from_pretrained(small_model_dir).get_submodule(
            name).weight.detach()
        assert torch.equal(stored, fake.quantize_weight(float_weight))
    assert torch.equal(dequantized_weight(a), dequantized_weight(b))
    with torch.no_grad():  # reading the weights left the layers as they were
        assert torch.equal(ours(ids).logits, logits)


@pytest.mark.parametrize("kind", ["nf4", "fp4"])
def test_4bit_real_float32_path_is_the_fake_linear(kind):
    """bitsandbytes' CPU path without AVX512-BF16: dequantize to float32, F.linear; bit-equal to
    the fake scheme's layer."""
    model = Stack((768, 256)).eval()
    x = torch.randn(64, 768, generator=torch.Generator().manual_seed(0)) * 2
    float_layer = copy.deepcopy(model.layers[0].proj)
    qapply.quantize_model(model, parse_scheme(f"bnb-{kind}-real"))
    _set_bf16_kernel(model, False)
    layer = model.layers[0].proj
    weight = parse_scheme(f"bnb-{kind}").quantize_weight(float_layer.weight.detach())
    with torch.no_grad():
        assert torch.equal(layer(x), F.linear(x, weight, float_layer.bias))
    assert not _repacked(layer) and torch.equal(dequantized_weight(layer), weight)


@needs_bf16_kernel
@pytest.mark.parametrize("kind", ["nf4", "fp4"])
def test_4bit_real_bf16_kernel_error_is_bf16_rounding(kind):
    """The AVX512-BF16 kernel, per output element y (K = 768 inputs, S = sum_k |x_k| |W_nk|):

    * its weight is the stored one with code and absmax rounded to bf16:
      |W_b - W| <= ((1 + u)^2 - 1) |W|, u = 2^-8 (bf16), read without disturbing the layer;
    * it is _bf16_emulation up to float32 summation order: both sums are within gamma_K S_b of
      the exact one (gamma_K = K u32 / (1 - K u32), u32 = 2^-24; S_b with the bf16 operands),
      then each is rounded to bf16 (<= u relative): |y - emu| <= 2 gamma_K S_b + u (1 + u)
      (|y - bias| + |emu - bias|); they differ only where the two sums straddle a rounding point;
    * against the float32 product x W^T + bias (the fake layer): x, code and absmax rounded to
      bf16 (each <= u; bf16 x bf16 x bf16 products are exact in float32), code * absmax rounded
      in float32 (u32), both sums (gamma_K each), output rounding u / (1 - u) of |y - bias|:
      |y - exact| <= ((1 + u)^3 (1 + u32) - 1 + 3 gamma_K) S + u / (1 - u) |y - bias|.
    """
    u, u32 = U_BF16, U_FP32
    k = 768
    gamma = k * u32 / (1 - k * u32)
    model = Stack((k, 256)).eval()
    x = torch.randn(64, k, generator=torch.Generator().manual_seed(0)) * 2
    qapply.quantize_model(model, parse_scheme(f"bnb-{kind}-real"))
    layer = model.layers[0].proj
    bias = layer.bias.detach().clone()
    weight = dequantized_weight(layer)  # as stored, before the repacking forward
    with torch.no_grad():
        y = layer(x)
    assert _repacked(layer)
    weight_b = dequantized_weight(layer)
    assert ((weight_b - weight).abs() <= ((1 + u) ** 2 - 1) * weight.abs()).all()
    assert not torch.equal(weight_b, weight)
    with torch.no_grad():
        assert torch.equal(layer(x), y)  # reading the weight left the layer intact
    emu = _bf16_emulation(layer)(x)
    x_b = x.to(torch.bfloat16).float()
    s_b = x_b.abs() @ weight_b.abs().T
    bound = 2 * gamma * s_b + u * (1 + u) * ((y - bias).abs() + (emu - bias).abs())
    assert ((y - emu).abs() <= bound).all()
    assert (y != emu).float().mean() < 0.01  # observed about 0.03%
    exact = F.linear(x, weight, bias)
    s = x.abs() @ weight.abs().T
    bound = ((1 + u) ** 3 * (1 + u32) - 1 + 3 * gamma) * s + u / (1 - u) * (y - bias).abs()
    assert ((y - exact).abs() <= bound).all()
    assert not torch.equal(y, exact)


def test_int8_real_differs_from_weight_only_int8(small_model_dir):
    """LLM.int8 also quantizes activations (outlier columns in 16 bit): not the fake bnb-int8."""
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(small_model_dir, dtype=torch.float32).eval()
    real, fake = copy.deepcopy(base), copy.deepcopy(base)
    qapply.quantize_model(real, parse_scheme("bnb-int8-real"))
    qapply.quantize_model(fake, parse_scheme("bnb-int8"))
    ids = torch.randint(3, 4000, (1, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a, b = real(ids).logits, fake(ids).logits
    assert not torch.equal(a, b)
    torch.testing.assert_close(a, b, rtol=0, atol=0.1)


class Block(nn.Module):
    def __init__(self, in_features, out_features):
        super().__init__()
        self.proj = nn.Linear(in_features, out_features)


class Stack(nn.Module):
    def __init__(self, *shapes):
        super().__init__()
        self.layers = nn.ModuleList(Block(i, o) for i, o in shapes)


@pytest.mark.parametrize("shape, needs", [((96, 128), "in_features divisible by the block size 64"),
                                          ((128, 48), "out_features divisible by 32")])
def test_4bit_real_on_cpu_needs_kernel_shaped_dims(shape, needs):
    model = Stack((128, 128), shape)
    with pytest.raises(MuseQuantError, match="layers.1.proj has shape") as err:
        qapply.quantize_model(model, parse_scheme("bnb-fp4-real"))
    assert needs in str(err.value) and "bnb-fp4" in err.value.fix
    assert all(type(b.proj) is nn.Linear for b in model.layers)  # nothing swapped


def test_int8_real_has_no_shape_constraint():
    model = Stack((33, 7)).eval()
    x = torch.randn(2, 33)
    qapply.quantize_model(model, parse_scheme("bnb-int8-real"))
    assert isinstance(model.layers[0].proj, bnb.nn.Linear8bitLt)
    with torch.no_grad():
        assert model.layers[0].proj(x).shape == (2, 7)


def test_real_schemes_take_no_arguments():
    with pytest.raises(MuseQuantError, match="takes no arguments"):
        parse_scheme("bnb-nf4-real:b128")
