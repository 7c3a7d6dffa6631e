"""`muse-quant quantize`: for every registered scheme the written HF directory holds exactly the
weights the `muse_quant` lm-eval model evaluates; unlearned checkpoints, the report, and the
refusals."""

import json

import pytest
import torch
from safetensors.torch import save_file

from harness_ext.cli import main
from harness_ext.quantizers import QUANTIZERS, _discover
from harness_ext.quantizers.schemes.bnb_real import dequantized_weight

from test_quantizers import SCHEME_EXPECTATIONS

# One valid scheme string per registered name: the examples of test_quantizers' table, which
# fails until every registered scheme has one.
EXAMPLES = {scheme.split(":")[0]: scheme for scheme in SCHEME_EXPECTATIONS}
CALIBRATED = {"gptq", "awq"}
CALIB = ["--calib", "forget", "--calib_samples", "2", "--calib_seqlen", "32"]


def _schemes():
    _discover()
    return [pytest.param(EXAMPLES.get(name, name),
                         marks=[pytest.mark.slow] if name in CALIBRATED else [])
            for name in QUANTIZERS.names()]


def evaluated_lm(model_dir, scheme, unlearned=None):
    """The lm-eval model `--model muse_quant` builds for these model_args."""
    from harness_ext.lm import MuseQuantLM

    calib = {"calib": "forget", "calib_samples": 2, "calib_seqlen": 32}
    return MuseQuantLM(pretrained=str(model_dir), quant=scheme, unlearned=unlearned,
                       device="cpu", batch_size=1, **calib)


def assert_written_equals_evaluated(out, lm):
    """Every tensor of the written model equals the evaluated model's: float weights as they
    are, bitsandbytes layers as the weights they dequantize to."""
    from transformers import AutoModelForCausalLM

    written = AutoModelForCausalLM.from_pretrained(out, dtype="auto").state_dict()
    evaluated = lm.model
    assert set(written) == {n for n, _ in evaluated.named_parameters(remove_duplicate=False)}
    for name, tensor in written.items():
        module_name, _, attr = name.rpartition(".")
        module = evaluated.get_submodule(module_name)
        reference = dequantized_weight(module) if attr == "weight" else getattr(module, attr)
        assert reference.dtype == tensor.dtype, name
        assert torch.equal(reference, tensor), name
    return written


@pytest.mark.parametrize("scheme", _schemes())
def test_written_model_equals_the_evaluated_model(small_model_dir, tmp_path, scheme, capsys):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "q"
    assert main(["quantize", "--pretrained", str(small_model_dir), "--quant", scheme,
                 "--out", str(out), *CALIB]) == 0
    assert "written:" in capsys.readouterr().out
    written = assert_written_equals_evaluated(out, evaluated_lm(small_model_dir, scheme))
    report = json.loads((out / "quantization.json").read_text())
    assert report["quantization"]["scheme"] == scheme and report["unlearned"] is None
    assert report["versions"]["torch"] == torch.__version__
    assert (out / "tokenizer.json").is_file() and (out / "config.json").is_file()
    original = AutoModelForCausalLM.from_pretrained(small_model_dir).state_dict()
    name = "model.layers.1.mlp.down_proj.weight"
    changed = not torch.equal(written[name], original[name])
    assert changed == (scheme != "none")
    # 14 block Linears; a GGUF file-type mix also quantizes the output/token embedding (1 tied)
    from harness_ext.quantizers import describe_scheme

    blocks = 0 if scheme == "none" else 14
    extra = 1 if "output" in describe_scheme(scheme).modules else 0
    assert report["quantization"]["n_modules"] == blocks + extra
    if scheme.endswith("-real"):
        assert len(report["converted_from_kernel_layers"]) == 14 and "note" in report


def test_unlearned_checkpoint_is_applied_first(small_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(small_model_dir)
    gen = torch.Generator().manual_seed(0)
    delta = {n: torch.randn(p.shape, generator=gen) * 1e-2
             for n, p in model.named_parameters() if "layers.0.mlp" in n}
    save_file(delta, tmp_path / "delta.safetensors")
    ckpt, out = str(tmp_path / "delta.safetensors"), tmp_path / "q"
    assert main(["quantize", "--pretrained", str(small_model_dir), "--unlearned", ckpt,
                 "--quant", "bnb-fp4", "--out", str(out)]) == 0
    written = assert_written_equals_evaluated(out, evaluated_lm(small_model_dir, "bnb-fp4", ckpt))
    plain = evaluated_lm(small_model_dir, "bnb-fp4").model.state_dict()
    name = "model.layers.0.mlp.up_proj.weight"
    assert not torch.equal(written[name], plain[name])  # the delta made a difference
    report = json.loads((out / "quantization.json").read_text())
    assert report["unlearned"]["kind"] == "delta" and report["unlearned"]["tensors_changed"] == 3


def test_refusals_and_overwrite(small_model_dir, tmp_path, capsys):
    out = tmp_path / "q"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    args = ["quantize", "--pretrained", str(small_model_dir), "--quant", "rtn:4", "--out",
            str(out)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "is not empty" in err and "--overwrite" in err
    (out / "model-00002-of-00002.safetensors").write_text("stale shard")
    assert main(args + ["--overwrite"]) == 0
    assert not (out / "model-00002-of-00002.safetensors").exists()  # no stale shard is left
    assert (out / "notes.txt").read_text() == "mine" and (out / "model.safetensors").is_file()
    for quant, problem in (("rtn:4,bnb-fp4", "names several schemes"),
                           ("rtn:99", "bit width 99 is not supported")):
        fresh = tmp_path / quant.replace(":", "_").replace(",", "_")
        assert main(["quantize", "--pretrained", str(small_model_dir), "--quant", quant,
                     "--out", str(fresh)]) == 2
        assert problem in capsys.readouterr().err
        assert not fresh.exists()  # nothing written on bad input
