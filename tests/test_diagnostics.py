"""`muse-quant diagnose`: every number on hand-made weights, the step definitions, the AWQ scale
fold, bf16 unchanged fractions, and the command end to end."""

import json
import math

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from harness_ext.cli import main
from harness_ext.evaluation.diagnostics import diagnose_models
from harness_ext.quantizers import parse_scheme
from harness_ext.quantizers.schemes.awq import fold_scales


class Block(nn.Module):
    def __init__(self, weight):
        super().__init__()
        self.proj = nn.Linear(len(weight[0]), len(weight), bias=False)
        with torch.no_grad():
            self.proj.weight.copy_(torch.tensor(weight))


class Stack(nn.Module):
    def __init__(self, *weights, dtype=torch.float32):
        super().__init__()
        self.layers = nn.ModuleList(Block(w) for w in weights)
        self.to(dtype)


# theta_o and theta_u of two one-row modules; all values are exact in binary.
THETA_O = ([[1.0, 0.125, -0.625, 0.5]], [[2.0, 0.5, -0.25, 0.0]])
THETA_U = ([[1.0, 0.375, -0.625, 0.25]], [[2.0, 0.625, -0.25, 0.375]])


def test_every_number_by_hand():
    report = diagnose_models(Stack(*THETA_O), Stack(*THETA_U), ["rtn-seed:2", "none"],
                             progress=False)
    assert report["dtype"] == "float32"
    seed = report["schemes"]["rtn-seed:2"]
    # layers.0: Delta = max|w| / 2^(2-1) = 1/2 for both models.
    #   Q(theta_o) = 0.5 * round([2, 0.25, -1.25, 1])   = [1, 0, -0.5, 0.5]
    #   Q(theta_u) = 0.5 * round([2, 0.75, -1.25, 0.5]) = [1, 0.5, -0.5, 0]   (0.5 -> 0: even)
    #   dw = [0, .25, 0, -.25]: ||dw||^2 = 0.125; Q diff = [0, .5, 0, -.5]: ||.||^2 = 0.5
    #   |dw| < Delta/2 = 0.25: no non-zero entry -> share 0; 2 of 4 flip; 2 of 4 unchanged
    assert seed["modules"]["layers.0.proj"] == {
        "n": 4, "update_norm": math.sqrt(0.125), "surviving_norm": math.sqrt(0.5),
        "survival_ratio": 2.0, "flip_rate": 0.5, "sub_half_step_share": 0.0,
        "unchanged_fraction": 0.5}
    # layers.1: Delta = 2 / 2 = 1.
    #   Q(theta_o) = round([2, 0.5, -0.25, 0])     = [2, 0, 0, 0]
    #   Q(theta_u) = round([2, 0.625, -0.25, 0.375]) = [2, 1, 0, 0]
    #   dw = [0, .125, 0, .375]: ||dw||^2 = 0.015625 + 0.140625 = 0.15625; ||Q diff||^2 = 1
    #   both non-zero |dw| < 1/2 -> share 1; the 0.125 one still flips (0.5 -> 0.625 crosses
    #   the rounding boundary at 0.5); 1 of 4 flips; 2 of 4 unchanged
    assert seed["modules"]["layers.1.proj"] == {
        "n": 4, "update_norm": math.sqrt(0.15625), "surviving_norm": 1.0,
        "survival_ratio": math.sqrt(6.4), "flip_rate": 0.25, "sub_half_step_share": 1.0,
        "unchanged_fraction": 0.5}
    assert seed["layers"] == {"0": seed["modules"]["layers.0.proj"],
                              "1": seed["modules"]["layers.1.proj"]}
    # overall: sums of squares and counts: 0.28125, 1.5, 3 flips, 0.15625 small, 4 unchanged
    assert seed["overall"] == {
        "n": 8, "update_norm": math.sqrt(0.28125), "surviving_norm": math.sqrt(1.5),
        "survival_ratio": math.sqrt(1.5 / 0.28125), "flip_rate": 3 / 8,
        "sub_half_step_share": 0.15625 / 0.28125, "unchanged_fraction": 0.5}
    # no quantization: everything survives; Delta = 0, so no update is below half a step
    none = report["schemes"]["none"]
    assert none["overall"] == {
        "n": 8, "update_norm": math.sqrt(0.28125), "surviving_norm": math.sqrt(0.28125),
        "survival_ratio": 1.0, "flip_rate": 0.5, "sub_half_step_share": 0.0,
        "unchanged_fraction": 0.5}
    assert none["modules"]["layers.1.proj"]["flip_rate"] == 0.5


def test_identical_models_have_no_update():
    report = diagnose_models(Stack(*THETA_O), Stack(*THETA_O), ["rtn:4"], progress=False)
    assert report["schemes"]["rtn:4"]["overall"] == {
        "n": 8, "update_norm": 0.0, "surviving_norm": 0.0, "survival_ratio": None,
        "flip_rate": 0.0, "sub_half_step_share": None, "unchanged_fraction": 1.0}


def test_bf16_small_updates_round_away(tmp_path):
    """In bf16 an update below half the spacing of a weight leaves it unchanged."""
    from harness_ext.checkpoints import apply_unlearned

    target = Stack([[1.0, 0.5, 0.25, 0.125]], dtype=torch.bfloat16)
    # bf16 spacing at 1.0 is 2^-7: +1e-4 rounds away; at 0.5 it is 2^-8: +2^-7 is kept
    save_file({"layers.0.proj.weight": torch.tensor([[1e-4, 2 ** -7, 0.0, 0.0]],
                                                     dtype=torch.bfloat16)},
              tmp_path / "delta.safetensors")
    unlearned, _ = apply_unlearned(Stack([[1.0, 0.5, 0.25, 0.125]], dtype=torch.bfloat16),
                                   tmp_path / "delta.safetensors")
    report = diagnose_models(target, unlearned, ["none"], progress=False)
    assert report["dtype"] == "bfloat16"
    overall = report["schemes"]["none"]["overall"]
    assert overall["unchanged_fraction"] == 0.75
    assert overall["update_norm"] == 2 ** -7


def test_quantization_steps_by_hand():
    w = torch.tensor([[1.75, -0.875, 0.25, 0.0], [0.0, 0.0, 0.0, 0.0]])
    assert parse_scheme("rtn:4").quantization_step(w).tolist() == [[0.25] * 4, [0.0] * 4]
    g = torch.tensor([[1.0, 0.25, -2.0, 0.5]])
    assert parse_scheme("rtn:2:g2").quantization_step(g).tolist() == [[1.0, 1.0, 2.0, 2.0]]
    assert parse_scheme("rtn:2:asym").quantization_step(torch.tensor([[-1.0, 0.0, 0.5, 2.0]])
                                                        ).tolist() == [[1.0] * 4]
    assert parse_scheme("rtn-seed:3").quantization_step(g).tolist() == [[0.5] * 4]
    assert parse_scheme("bnb-int8").quantization_step(torch.tensor([[1.27, -2.54]]))[0].tolist() \
        == pytest.approx([0.02, 0.02], rel=1e-6)
    # FP4, absmax 1: distinct codes ..., 1/4, 1/3, 1/2, 2/3, 1; bucket width of code k is
    # (c[k+1] - c[k-1]) / 2, the end code uses its one neighbour:
    # 1.0 -> 1 - 2/3; 0.3 -> 1/3: (1/2 - 1/4)/2; 0 -> 0: (1/192 + 1/192)/2; -0.6 -> -2/3: 1/4
    block = torch.tensor([1.0, 0.3, 0.0, -0.6] + [0.0] * 60)
    step = parse_scheme("bnb-fp4").quantization_step(block)
    assert step[:4].tolist() == pytest.approx([1 / 3, 1 / 8, 1 / 192, 1 / 4], rel=1e-6)
    assert torch.equal(parse_scheme("bnb-fp4-real").quantization_step(block), step)
    assert parse_scheme("none").quantization_step(block).abs().sum() == 0


def test_awq_scale_fold_recovers_row_and_column_scales():
    torch.manual_seed(0)
    w = torch.randn(6, 8)
    w[2, 3] = 0.0  # a zero entry carries no scale information
    r, c = torch.rand(6) + 0.5, torch.rand(8) + 0.5
    scaled = r[:, None] * w * c[None, :]
    torch.testing.assert_close(fold_scales(w, scaled), (r[:, None] * c[None, :]).double(),
                               rtol=1e-6, atol=0)


@pytest.mark.slow
def test_diagnose_command(small_model_dir, tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(small_model_dir)
    gen = torch.Generator().manual_seed(0)
    delta = {n: torch.randn(p.shape, generator=gen) * 1e-3
             for n, p in model.named_parameters() if "layers.1.mlp" in n}
    save_file(delta, tmp_path / "delta.safetensors")
    out = tmp_path / "diag"
    args = ["diagnose", "--pretrained", str(small_model_dir), "--unlearned",
            str(tmp_path / "delta.safetensors"), "--quant", "none,rtn:4,bnb-fp4,awq:4",
            "--calib", "forget", "--calib_samples", "2", "--calib_seqlen", "32", "--out", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "awq:4" in printed and "ratio" in printed
    report = json.loads((out / "diagnose.json").read_text())
    assert (out / "survival.png").stat().st_size > 1000
    assert report["unlearned"]["kind"] == "delta"
    for scheme, data in report["schemes"].items():
        assert len(data["modules"]) == 14 and set(data["layers"]) == {"0", "1"}
        assert data["layers"]["0"]["update_norm"] == 0.0  # the update is in block 1 only
        assert data["layers"]["0"]["survival_ratio"] is None
        mlp = data["modules"]["model.layers.1.mlp.up_proj"]
        assert mlp["update_norm"] == pytest.approx(delta["model.layers.1.mlp.up_proj.weight"]
                                                   .double().norm().item(), rel=1e-9)
        assert 0 <= data["overall"]["flip_rate"] <= 1
    assert report["schemes"]["none"]["overall"]["survival_ratio"] == 1.0
    awq = report["schemes"]["awq:4"]
    assert awq["quantizer"]["calibration"]["source"] == "embedded:news/raw/forget.json"
    assert 0 <= awq["overall"]["sub_half_step_share"] <= 1
    # results are never overwritten
    assert main(args) == 2
    assert "already exists" in capsys.readouterr().err
