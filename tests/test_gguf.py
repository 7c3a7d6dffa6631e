"""GGUF schemes: bit-exactness against llama.cpp (committed fixtures made by
tests/data/gguf/make_golden.py from llama.cpp's own libggml and llama_model_quantize), the
file-type rules by hand, the scheme on models, and restoring the embedding in sweeps."""

import hashlib
import importlib.util
import json
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest
import torch

from harness_ext.errors import MuseQuantError
from harness_ext.quantizers import apply as qapply
from harness_ext.quantizers import gguf_kquants as kq
from harness_ext.quantizers import available_schemes, parse_scheme
from harness_ext.quantizers.schemes.gguf import mix_type, shape_fallback, use_more_bits
from harness_ext.toy.tiny import build_tiny_llama

DATA = Path(__file__).parent / "data" / "gguf"
TYPES = ("F16", *kq.LEGACY_TYPES, *kq.K_TYPES)


def _make_golden():
    spec = importlib.util.spec_from_file_location("make_golden", DATA / "make_golden.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


golden = _make_golden()


def sha(array) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


@lru_cache(maxsize=None)
def types_fixture():
    with np.load(DATA / "types.npz") as f:
        return {k: f[k] for k in f.files}


@lru_cache(maxsize=None)
def mixes_fixture():
    return json.loads((DATA / "mixes.json").read_text())


# ------------------------------------------------------------------------------------------
# helpers by hand
# ------------------------------------------------------------------------------------------

def test_nearest_int_rounds_half_to_even_like_the_bit_trick():
    values = np.array([0.5, 1.5, 2.5, -0.5, -1.5, 2.4999, -3.7, 4194303.0], np.float32)
    assert kq.nearest_int(values).tolist() == [0, 2, 2, 0, -2, 2, -4, 4194303]


def test_fp16_conversion_rounds_to_nearest_even():
    # 1 + 2^-11 is half-way between 1 and 1 + 2^-10: even mantissa (1.0) wins
    values = np.array([1 + 2 ** -11, 1 + 3 * 2 ** -11, 70000.0, -0.0, np.nan], np.float32)
    assert kq.fp16_bits(values).tolist() == [0x3C00, 0x3C02, 0x7C00, 0x8000, 0x7E00]


def test_use_more_bits_by_hand():
    # n = 8: n/8 = 1, 7n/8 = 7 -> layer 0, layer 7, and (i - 1) % 3 == 2 -> 3, 6
    assert [i for i in range(8) if use_more_bits(i, 8)] == [0, 3, 6, 7]
    # n = 32: layers 0-3 and 28-31, and (i - 4) % 3 == 2 -> 6, 9, ..., 27
    assert [i for i in range(32) if use_more_bits(i, 32)] == [
        0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 27, 28, 29, 30, 31]


def test_file_type_rules_by_hand():
    assert mix_type("q4_k_m", "output", None, 8, 256) == "Q6_K"
    assert mix_type("q4_k_m", "output", None, 8, 384) == "Q8_0"  # rows not a multiple of 256
    assert mix_type("q4_k_m", "token_embd", None, 8, 256) == "Q4_K"
    assert mix_type("q4_k_m", "token_embd", None, 8, 256, tied=True) == "Q6_K"
    assert [mix_type("q4_k_m", "attn_v", i, 8, 256) for i in range(4)] == [
        "Q6_K", "Q4_K", "Q4_K", "Q6_K"]
    assert [mix_type("q5_k_m", "ffn_down", i, 8, 256) for i in (0, 1, 7)] == [
        "Q6_K", "Q5_K", "Q6_K"]
    assert mix_type("q4_k_m", "attn_q", 0, 8, 256) == "Q4_K"
    # Q3_K_M: attn_v Q5_K in the first two layers, then Q4_K; attn_output Q4_K;
    # ffn_down Q5_K below n/16, else Q4_K; the rest Q3_K
    assert [mix_type("q3_k_m", "attn_v", i, 16, 256) for i in (0, 1, 2)] == ["Q5_K", "Q5_K", "Q4_K"]
    assert mix_type("q3_k_m", "attn_output", 5, 16, 256) == "Q4_K"
    assert [mix_type("q3_k_m", "ffn_down", i, 16, 256) for i in (0, 1)] == ["Q5_K", "Q4_K"]
    assert mix_type("q3_k_m", "ffn_up", 0, 16, 256) == "Q3_K"
    assert mix_type("q3_k_s", "attn_v", 0, 16, 256) == "Q3_K"
    assert [mix_type("q4_k_s", "attn_v", i, 16, 256) for i in (3, 4)] == ["Q5_K", "Q4_K"]
    assert [mix_type("q4_k_s", "ffn_down", i, 16, 256) for i in (1, 2)] == ["Q5_K", "Q4_K"]
    # Llama-2-70B (GQA, 80 layers): attn_v never below Q5_K. Layer 11 of 80 gets no more
    # bits (11 >= 80/8 = 10 and (11 - 10) % 3 == 1), so Q4_K_M would give it Q4_K
    assert mix_type("q4_k_m", "attn_v", 11, 80, 256) == "Q4_K"
    assert mix_type("q4_k_m", "attn_v", 11, 80, 256, is_70b=True) == "Q5_K"


def test_shape_fallback_by_hand():
    assert shape_fallback("Q4_K", 512) == "Q4_K"
    assert [shape_fallback(t, 96) for t in ("Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")] == [
        "Q4_0", "Q4_0", "Q5_0", "Q5_1", "Q8_0"]
    assert shape_fallback("Q4_K", 40) == "F16" and shape_fallback("Q4_0", 40) == "F16"


# ------------------------------------------------------------------------------------------
# bit-exactness against llama.cpp's ggml_quantize_chunk / to_float (committed fixtures)
# ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("type_name", TYPES)
def test_bytes_and_values_equal_llama_cpp(type_name):
    fixture = types_fixture()
    dequantized = json.loads(str(fixture["dequantized_sha256"]))
    checked = 0
    for key in fixture:
        if not key.startswith(f"{type_name}/"):
            continue
        matrix = fixture[f"input/{key.split('/')[1]}"]
        ours = kq.quantize(matrix, type_name)
        np.testing.assert_array_equal(ours, fixture[key], err_msg=key)
        assert sha(kq.dequantize(ours, type_name)) == dequantized[key], key
        checked += 1
    assert checked >= (2 if type_name in kq.K_TYPES else 4)


def test_fixtures_cover_the_hard_cases():
    fixture = types_fixture()
    inputs = {k.split("/")[1]: v for k, v in fixture.items() if k.startswith("input/")}
    assert {"gauss", "ties", "zeros", "bf16", "scales"} <= set(inputs)
    assert np.signbit(inputs["zeros"][5]).all() and (inputs["zeros"][0] == 0).all()
    bf16 = inputs["bf16"].view(np.uint32)
    assert (bf16 & 0xFFFF == 0).all()  # exactly representable in bf16
    assert {m.shape[1] for m in inputs.values()} >= {256, 512, 96, 40}
    versions = json.loads(str(fixture["versions"]))
    assert versions["llama_cpp_python"] and versions["ggml_version"]


# ------------------------------------------------------------------------------------------
# file-type mixes against llama_model_quantize
# ------------------------------------------------------------------------------------------

@lru_cache(maxsize=None)
def golden_model(key):
    model = golden.load_tiny_model(mixes_fixture()["models"][key]["spec"])
    recorded = mixes_fixture()["models"][key]["inputs_sha256"]
    assert {k: sha(v) for k, v in golden.tiny_state(model.config).items()} == recorded, (
        "numpy's generator no longer gives the fixture's weights: regenerate the fixtures")
    return model


def _hf_weight(model, hf_name):
    return model.get_submodule(hf_name).weight.detach().numpy()


def _check_tensor(model, info, cache):
    key = (info["hf"], info["type"])
    if key not in cache:
        q = kq.quantize(_hf_weight(model, info["hf"]), info["type"])
        cache[key] = (sha(q), sha(kq.dequantize(q, info["type"])))
    assert cache[key] == (info["bytes_sha256"], info["values_sha256"]), key


def _check_mix(key, ftype, only=None):
    model = golden_model(key)
    quantizer = parse_scheme(f"gguf:{ftype.lower()}")
    names = qapply.quantizable_linear_names(model)
    plan = {p.gguf_name: p.ggml_type for p in quantizer.plan(model, names)}
    expected = mixes_fixture()["models"][key]["files"][ftype]
    assert plan == {name: info["type"] for name, info in expected.items()}
    cache = _check_mix.cache
    for name, info in expected.items():
        if only is None or name in only:
            _check_tensor(model, info, cache)


_check_mix.cache = {}
UNTIED_SAMPLE = {"token_embd", "output", "blk.0.attn_k", "blk.1.attn_v", "blk.0.ffn_down",
                 "blk.2.attn_output"}


@pytest.mark.parametrize("ftype", list(golden.MIX_FTYPES))
def test_mix_types_and_sample_tensors_equal_llama_quantize(ftype):
    """Every tensor's type; the bytes of a sample (GQA-permuted attn_k included)."""
    _check_mix("untied16", ftype, only=UNTIED_SAMPLE)


@pytest.mark.slow
@pytest.mark.parametrize("ftype", list(golden.MIX_FTYPES))
def test_mix_all_tensors_equal_llama_quantize(ftype):
    _check_mix("untied16", ftype)


@pytest.mark.parametrize("ftype", golden.MIX_MODEL_FTYPES["tied2"])
def test_mix_on_a_tied_model_writes_the_file_into_the_model(ftype):
    """End to end: quantize_model leaves the model holding llama.cpp's dequantized tensors;
    the shared embedding/output tensor is token_embd at Q6_K, and no output tensor exists."""
    expected = mixes_fixture()["models"]["tied2"]["files"][ftype]
    assert "output" not in expected and expected["token_embd"]["type"] == "Q6_K"
    model = golden.load_tiny_model(mixes_fixture()["models"]["tied2"]["spec"])
    report = qapply.quantize_model(model, parse_scheme(f"gguf:{ftype.lower()}"))
    assert report["tied_embeddings"] is True and report["file_type"] == ftype
    assert {k: v["type"] for k, v in report["tensors"].items()} == {
        k: v["type"] for k, v in expected.items()}
    assert "lm_head" in report["modules"] and report["n_modules"] == 15
    assert model.lm_head.weight is model.model.embed_tokens.weight
    for info in expected.values():
        assert sha(_hf_weight(model, info["hf"])) == info["values_sha256"], info["hf"]


# ------------------------------------------------------------------------------------------
# the scheme on models
# ------------------------------------------------------------------------------------------

def small(**kw):
    return build_tiny_llama(**{**dict(hidden_size=256, intermediate_size=384,
                                      num_hidden_layers=2), **kw})[0]


def test_single_type_quantizes_block_linears_only():
    model = small()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    report = qapply.quantize_model(model, parse_scheme("gguf:q4_k"))
    assert report["n_modules"] == 14 and report["ggml_type"] == "Q4_K"
    # ffn_down rows are 384 long: not a multiple of 256 -> llama.cpp's fallback Q5_0
    assert report["tensors"]["blk.1.ffn_down"] == {
        "type": "Q5_0", "fallback_from": "Q4_K", "shape": [256, 384],
        "written_to": ["model.layers.1.mlp.down_proj"]}
    assert report["type_counts"] == {"Q4_K": 12, "Q5_0": 2}
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        assert torch.equal(dict(model.named_parameters())[name], before[name])
    w = before["model.layers.0.self_attn.v_proj.weight"].numpy()
    assert np.array_equal(model.model.layers[0].self_attn.v_proj.weight.detach().numpy(),
                          kq.fake_quantize(w, "Q4_K"))


def test_bf16_weights_are_quantized_from_their_float32_values():
    w = torch.randn(4, 256, generator=torch.Generator().manual_seed(0)).bfloat16()
    out = parse_scheme("gguf:q6_k").quantize_weight(w)
    assert out.dtype == torch.bfloat16
    expected = kq.fake_quantize(w.float().numpy(), "Q6_K")
    assert torch.equal(out, torch.from_numpy(expected).bfloat16())


def test_mix_quantizes_embedding_and_output_and_records_them():
    model = small()
    emb = model.model.embed_tokens.weight.detach().clone()
    report = qapply.quantize_model(model, parse_scheme("gguf:q4_k_m"))
    assert report["tied_embeddings"] is False
    assert report["other_parameters_changed"] == ["model.embed_tokens.weight"]
    assert report["tensors"]["output"]["type"] == "Q6_K"
    assert report["tensors"]["token_embd"]["type"] == "Q4_K"
    assert "lm_head" in report["modules"]
    assert torch.equal(model.model.embed_tokens.weight,
                       torch.from_numpy(kq.fake_quantize(emb.numpy(), "Q4_K")))


def test_diagnose_sees_the_per_tensor_types_of_a_mix():
    model = small(num_hidden_layers=8, intermediate_size=256)
    names = ["model.layers.0.self_attn.v_proj", "model.layers.1.self_attn.v_proj"]
    out = list(parse_scheme("gguf:q4_k_m").diagnostic_weights(model, names))
    assert [name for name, _, _ in out] == names
    for (name, q, step), ggml_type in zip(out, ["Q6_K", "Q4_K"]):  # use_more_bits(0 / 1, 8)
        w = model.get_submodule(name).weight.detach().numpy()
        assert np.array_equal(q.numpy(), kq.fake_quantize(w, ggml_type)), name
        # the step is the element's sub-block scale at that type (16 values for Q6_K, 32 Q4_K)
        group = {"Q6_K": 16, "Q4_K": 32}[ggml_type]
        assert step.shape == q.shape and bool((step > 0).all())
        assert torch.unique(step.reshape(-1, group), dim=1).shape[1] == 1
    assert "gguf:TYPE" in [usage for _, usage, _ in available_schemes()]


def test_scheme_errors():
    for scheme, problem in [("gguf", "expected one argument"), ("gguf:q4_k_x", "unknown GGUF"),
                            ("gguf:q4_k:x", "expected one argument")]:
        with pytest.raises(MuseQuantError, match=problem):
            parse_scheme(scheme)
    with pytest.raises(MuseQuantError, match="chooses a type per tensor"):
        parse_scheme("gguf:q4_k_m").quantize_weight(torch.zeros(2, 256))
    model = torch.nn.Sequential(torch.nn.Embedding(8, 256), torch.nn.Linear(256, 4))
    model.get_input_embeddings = lambda: model[0]
    with pytest.raises(MuseQuantError, match="no GGUF tensor name for module '1'"):
        parse_scheme("gguf:q4_k_m").apply(model, ["1"])


# ------------------------------------------------------------------------------------------
# sweeps: the next scheme starts from the float model again
# ------------------------------------------------------------------------------------------

def _sweep(model, schemes, include_lm_head):
    """What MuseQuantLM does: snapshot once, then restore what the last scheme changed."""
    names = qapply.quantizable_linear_names(model, include_lm_head=True)
    snapshot = qapply.WeightSnapshot(model, names, other_parameters=True)
    changed = None
    for scheme in schemes:
        if changed is not None:
            snapshot.restore(model, only=changed)
        report = qapply.quantize_model(model, parse_scheme(scheme), include_lm_head)
        changed = set(report["modules"]) | set(report.get("other_parameters_changed", []))
    snapshot.restore(model, only=changed)


@pytest.mark.parametrize("tied", [False, True])
def test_sweep_restores_the_embedding_after_a_mix(tied):
    model = small(tie_word_embeddings=tied)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    # rtn with the LM head first: on the tied model this unties the head, so the embedding
    # the mix then quantizes is no longer the kept LM-head weight itself
    _sweep(model, ["rtn:4", "gguf:q4_k_m", "gguf:q3_k_m"], include_lm_head=True)
    after = dict(model.named_parameters())
    assert all(torch.equal(after[n], before[n]) for n in before)
    assert torch.equal(model.model.embed_tokens.weight, before["model.embed_tokens.weight"])


def test_requantize_after_a_mix_gives_the_float_model_back(small_model_dir):
    from harness_ext.data import load_file
    from harness_ext.lm import MuseQuantLM

    texts = load_file("news", "privleak/forget.json", "embedded")[:2]
    lm = MuseQuantLM(pretrained=str(small_model_dir), keep_float_weights=True, device="cpu",
                     batch_size=2)
    full = lm.token_logprobs(texts, disable_tqdm=True)
    emb = lm.model.model.embed_tokens.weight.detach().clone()
    report = lm.requantize("gguf:q4_k_m")
    # hidden 128: K-quant rows fall back (Q4_K -> Q5_0), the output to Q8_0
    assert report["tensors"]["token_embd"] == {
        "type": "Q5_0", "fallback_from": "Q4_K", "shape": list(emb.shape),
        "written_to": ["model.embed_tokens.weight"]}
    assert report["tensors"]["output"]["type"] == "Q8_0"
    assert lm.token_logprobs(texts, disable_tqdm=True) != full
    lm.requantize("rtn:8")
    assert torch.equal(lm.model.model.embed_tokens.weight, emb)
    lm.requantize("none")
    assert lm.token_logprobs(texts, disable_tqdm=True) == full


# ------------------------------------------------------------------------------------------
# live comparison with llama.cpp (needs the gguf-ref extra)
# ------------------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("type_name", TYPES)
def test_live_against_llama_cpp(type_name):
    pytest.importorskip("llama_cpp")
    lib = golden.libggml()
    rng = np.random.default_rng(12345)
    for matrix in (rng.standard_normal((64, 512)).astype(np.float32),
                   (rng.integers(-4, 5, (16, 256)) * 0.125).astype(np.float32),
                   rng.standard_cauchy((16, 256)).astype(np.float32)):
        theirs = golden.ggml_quantize(lib, matrix, type_name)
        ours = kq.quantize(matrix, type_name)
        np.testing.assert_array_equal(ours, theirs)
        np.testing.assert_array_equal(
            kq.dequantize(ours, type_name).reshape(-1),
            golden.ggml_dequantize(lib, theirs, type_name, matrix.size))
