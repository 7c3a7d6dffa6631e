"""Real bitsandbytes kernels (bnb-*-real): same log-likelihoods as the fake 4-bit schemes, the
same layers as transformers' BitsAndBytesConfig loading, CPU shape checks, and swapping back."""

import copy

import pytest
import torch
from torch import nn

from harness_ext.quantizers import apply as qapply
from harness_ext.errors import MuseQuantError
from harness_ext.quantizers import parse_scheme
from harness_ext.quantizers.schemes.bnb_real import dequantized_weight

bnb = pytest.importorskip("bitsandbytes")


def test_real_4bit_gives_the_fake_log_likelihoods_and_swaps_back(tiny_model_dir):
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
        real = lm.token_logprobs(texts, disable_tqdm=True)
        for a, b in zip(fake, real):
            assert len(a) == len(b) > 10
            torch.testing.assert_close(torch.tensor(b), torch.tensor(a), rtol=0, atol=1e-4)
        assert fake != full  # quantization did change the model
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
    with torch.no_grad():
        assert torch.equal(ours(ids).logits, theirs(ids).logits)
        ours(ids)  # a second forward: Linear4bit may have repacked its weight by now
    name = "model.layers.1.mlp.down_proj"
    a, b = ours.get_submodule(name), theirs.get_submodule(name)
    assert type(a) is type(b)
    if scheme == "bnb-int8-real":
        assert a.state.threshold == b.state.threshold == 6.0 and not a.state.has_fp16_weights
    else:
        assert (a.weight.blocksize, a.weight.quant_type, a.weight.compress_statistics) == \
            (b.weight.blocksize, b.weight.quant_type, b.weight.compress_statistics)
        fake = parse_scheme(scheme.replace("-real", ""))
        float_weight = AutoModelForCausalLM.from_pretrained(small_model_dir).get_submodule(
            name).weight.detach()
        assert torch.equal(dequantized_weight(a), fake.quantize_weight(float_weight))
    assert torch.equal(dequantized_weight(a), dequantized_weight(b))


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
