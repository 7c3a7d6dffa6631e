"""GPTQ and AWQ through llmcompressor: scheme parsing and group sizes, the write-back against the
library's own compressed-checkpoint reload, the quantization cache, and `muse-quant eval` with
calibration data."""

import copy
import json

import pytest
import torch

from harness_ext.quantizers.calibration import build_calibration
from harness_ext.cli import main
from harness_ext.errors import MuseQuantError
from harness_ext.quantizers import parse_scheme
from harness_ext.toy.tiny import load_tokenizer
from harness_ext.quantizers.apply import quantizable_linear_names, quantize_model, write_parameters

CALIB = ",calib_samples=2,calib_seqlen=32"


@pytest.fixture(scope="module")
def mixed_model():
    """One Llama block whose MLP input dim (352) takes group size 32 and the rest 128."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(3)
    config = LlamaConfig(vocab_size=4096, hidden_size=128, intermediate_size=352,
                         num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=4,
                         max_position_embeddings=256, bos_token_id=1, eos_token_id=2,
                         pad_token_id=0, tie_word_embeddings=False)
    return LlamaForCausalLM(config).eval(), load_tokenizer()


@pytest.fixture(scope="module")
def calibration(mixed_model):
    return build_calibration(mixed_model[1], calib="retain", calib_samples=2, calib_seqlen=32)


@pytest.mark.parametrize("scheme, problem", [
    ("gptq", "missing bit width"),
    ("gptq:5", "bit width 5 is not supported (use one of (2, 3, 4, 8))"),
    ("awq:16", "bit width 16 is not supported"),
    ("gptq:4:x64", "unknown option 'x64'"),
    ("awq:4:g0", "unknown option 'g0'"),
])
def test_bad_gptq_awq_schemes(scheme, problem):
    with pytest.raises(MuseQuantError) as err:
        parse_scheme(scheme)
    assert problem in str(err.value) and "gptq:N[:g<size>]" in err.value.fix


def test_group_size_choice_and_errors():
    q = parse_scheme("gptq:4")
    for cols, expected in [(256, 128), (384, 128), (192, 64), (352, 32), (96, 32)]:
        q.check_weight(f"m{cols}", torch.zeros(8, cols))
        assert q.group_size_by_module[f"m{cols}"] == expected
    with pytest.raises(MuseQuantError, match="has 200 input columns; none of the default group "
                                             r"sizes \(128, 64, 32\) divides it") as err:
        q.check_weight("layers.0.mlp.down_proj", torch.zeros(8, 200))
    assert "gptq:4:g<size>" in err.value.fix
    with pytest.raises(MuseQuantError, match="group size 64 does not divide the 96 input columns "
                                             "of layers.0.o_proj"):
        parse_scheme("awq:4:g64").check_weight("layers.0.o_proj", torch.zeros(8, 96))


def test_calibration_is_required(mixed_model):
    model = copy.deepcopy(mixed_model[0])
    with pytest.raises(MuseQuantError, match="gptq:4 needs calibration data"):
        quantize_model(model, parse_scheme("gptq:4"))


@pytest.mark.parametrize("scheme", ["gptq:4", "awq:4", "gptq:3"])
def test_weights_equal_the_compressed_checkpoint_reloaded_as_float(mixed_model, calibration,
                                                                   scheme, tmp_path):
    from transformers import AutoModelForCausalLM
    from transformers.utils.quantization_config import CompressedTensorsConfig

    model, _ = mixed_model
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    quantizer = parse_scheme(scheme)
    names = quantizable_linear_names(model)
    result = quantizer.run(model, names, calibration, keep_model=True)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())  # untouched
    assert quantizer.group_size_by_module["model.layers.0.mlp.down_proj"] == 32
    assert quantizer.group_size_by_module["model.layers.0.self_attn.q_proj"] == 128

    result.model.save_pretrained(tmp_path, save_compressed=True)
    reloaded = AutoModelForCausalLM.from_pretrained(
        tmp_path, dtype=torch.float32, quantization_config=CompressedTensorsConfig(dequantize=True))
    ours = copy.deepcopy(model)
    write_parameters(ours, result.state)
    theirs = dict(reloaded.named_parameters())
    for name, param in ours.named_parameters():
        assert torch.equal(param, theirs[name]), name
    bits = int(scheme.split(":")[1])
    for name in names:
        w = result.state[f"{name}.weight"]
        assert not torch.equal(w, before[f"{name}.weight"]), name
        group = quantizer.group_size_by_module[name]
        levels = max(len(torch.unique(g)) for g in w.reshape(-1, group))
        assert levels <= 2 ** bits, (name, levels)
    changed_norms = sorted(k for k in result.state if "layernorm" in k)
    if scheme.startswith("awq"):  # AWQ's smoothing rescales the norms in front of q/k/v, gate/up
        assert changed_norms == ["model.layers.0.input_layernorm.weight",
                                 "model.layers.0.post_attention_layernorm.weight"]
    else:
        assert changed_norms == []


def run_eval(model_dir, out, model_args, tasks="muse_news_privleak", limit=4):
    return main(["eval", "--model", "muse_quant", "--model_args",
                 f"pretrained={model_dir}{model_args}", "--tasks", tasks,
                 "--metadata", "muse_data=embedded", "--limit", str(limit), "--device", "cpu",
                 "--batch_size", "8", "--output_path", str(out)])


def results_file(out):
    files = sorted(out.rglob("results_*.json"))
    assert len(files) == 1, files
    return json.loads(files[0].read_text())


def test_eval_gptq_with_forget_calibration_then_from_cache(small_model_dir, tmp_path,
                                                           monkeypatch, capsys):
    cache = tmp_path / "qcache"
    args = f",quant=gptq:4,calib=forget{CALIB},quant_cache_dir={cache}"
    assert run_eval(small_model_dir, tmp_path / "a", args) == 0
    first = results_file(tmp_path / "a")
    quant = first["config"]["muse_quant"]["quantization"]
    assert quant["scheme"] == "gptq:4" and quant["n_modules"] == 14
    assert quant["calibration"]["source"] == "embedded:news/raw/forget.json"
    assert quant["calibration"]["samples_used"] == 2 and quant["calibration"]["seqlen"] == 32
    assert quant["group_sizes_chosen"] == [128] and quant["cache"]["hit"] is False
    assert len(list(cache.glob("*.safetensors"))) == 1

    import llmcompressor

    def no_calibration(*args, **kwargs):
        raise AssertionError("calibration ran although the weights are cached")

    monkeypatch.setattr(llmcompressor, "oneshot", no_calibration)
    assert run_eval(small_model_dir, tmp_path / "b", args) == 0
    second = results_file(tmp_path / "b")
    assert second["config"]["muse_quant"]["quantization"]["cache"]["hit"] is True
    assert second["results"]["muse_news_privleak"] == first["results"]["muse_news_privleak"]
    # another calibration set is another cache entry: calibration would run
    other = f",quant=gptq:4,calib=retain{CALIB},quant_cache_dir={cache}"
    capsys.readouterr()
    assert run_eval(small_model_dir, tmp_path / "c", other) == 2
    assert "calibration ran although the weights are cached" in capsys.readouterr().err


def test_eval_awq_with_a_calibration_file(small_model_dir, tmp_path):
    from harness_ext.data import embedded

    texts = embedded.generate(flavour="books")["raw/retain1.json"]
    path = tmp_path / "calib.txt"
    path.write_text("\n\n".join(texts))
    assert run_eval(small_model_dir, tmp_path / "o", f",quant=awq:4,calib={path}{CALIB}") == 0
    res = results_file(tmp_path / "o")
    quant = res["config"]["muse_quant"]["quantization"]
    assert quant["scheme"] == "awq:4" and quant["symmetric"] is False
    assert quant["calibration"]["source"] == f"file:{path.resolve()}"
    assert "model.layers.1.input_layernorm.weight" in quant["other_parameters_changed"]
    assert isinstance(res["results"]["muse_news_privleak"]["mink40_auc,none"], float)


def test_unknown_calib_fails_before_loading(small_model_dir, tmp_path, capsys):
    assert run_eval(small_model_dir, tmp_path / "x", ",quant=gptq:4,calib=wikipedia") == 2
    err = capsys.readouterr().err
    assert "unknown calib 'wikipedia'" in err and "calib=generic|forget|retain" in err
    assert not (tmp_path / "x").exists()
