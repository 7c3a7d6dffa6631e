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


# the metrics diagnose had before the code metrics (same definitions)
SIZE = ("n", "update_norm", "surviving_norm", "survival_ratio", "flip_rate", "sub_half_step_share",
        "unchanged_fraction")
CODE_METRICS = ("code_flip_rate", "scale_change_rate", "flipped_block_rate", "code_share_of_dq",
                "scale_share_of_dq", "near_zero_update_share", "near_zero_edge_min",
                "near_zero_edge_mean", "near_zero_edge_max")


def pick(metrics, keys=SIZE):
    return {k: metrics[k] for k in keys}


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
    layer0 = seed["modules"]["layers.0.proj"]
    assert pick(layer0) == {
        "n": 4, "update_norm": math.sqrt(0.125), "surviving_norm": math.sqrt(0.5),
        "survival_ratio": 2.0, "flip_rate": 0.5, "sub_half_step_share": 0.0,
        "unchanged_fraction": 0.5}
    #   codes [2, 0, -1, 1] -> [2, 1, -1, 0], one scale 1/2 (unchanged): 2 of 4 codes flip, all
    #   of ||dQ||^2 from code crossings; <dQ, dw> = .5*.25 + .5*.25 = .25 -> projection 2;
    #   the target's zero code holds dw = .25 of the update: 0.0625 / 0.125; the moved weights
    #   had |theta_o| = .125 and .5; the zero code reaches 0.5 * Delta = 0.25
    assert pick(layer0, ("projection", "value_change_rate", "movable_cap") + CODE_METRICS) == {
        "projection": 2.0, "value_change_rate": 0.5, "movable_cap": 0.5,
        "code_flip_rate": 0.5, "scale_change_rate": 0.0, "flipped_block_rate": 1.0,
        "code_share_of_dq": 1.0, "scale_share_of_dq": 0.0, "near_zero_update_share": 0.5,
        "near_zero_edge_min": 0.25, "near_zero_edge_mean": 0.25, "near_zero_edge_max": 0.25}
    # layers.1: Delta = 2 / 2 = 1.
    #   Q(theta_o) = round([2, 0.5, -0.25, 0])     = [2, 0, 0, 0]
    #   Q(theta_u) = round([2, 0.625, -0.25, 0.375]) = [2, 1, 0, 0]
    #   dw = [0, .125, 0, .375]: ||dw||^2 = 0.015625 + 0.140625 = 0.15625; ||Q diff||^2 = 1
    #   both non-zero |dw| < 1/2 -> share 1; the 0.125 one still flips (0.5 -> 0.625 crosses
    #   the rounding boundary at 0.5); 1 of 4 flips; 2 of 4 unchanged
    layer1 = seed["modules"]["layers.1.proj"]
    assert pick(layer1) == {
        "n": 4, "update_norm": math.sqrt(0.15625), "surviving_norm": 1.0,
        "survival_ratio": math.sqrt(6.4), "flip_rate": 0.25, "sub_half_step_share": 1.0,
        "unchanged_fraction": 0.5}
    #   codes [2, 0, 0, 0] -> [2, 1, 0, 0]; <dQ, dw> = 1 * .125 -> projection .125 / .15625;
    #   both moved weights sit in the zero code (share 1); |theta_o| of the moved: .5 and 0
    assert pick(layer1, ("projection", "movable_cap") + CODE_METRICS) == {
        "projection": 0.8, "movable_cap": 0.5, "code_flip_rate": 0.25, "scale_change_rate": 0.0,
        "flipped_block_rate": 1.0, "code_share_of_dq": 1.0, "scale_share_of_dq": 0.0,
        "near_zero_update_share": 1.0, "near_zero_edge_min": 0.5, "near_zero_edge_mean": 0.5,
        "near_zero_edge_max": 0.5}
    assert seed["layers"] == {"0": layer0, "1": layer1}
    # overall: sums of squares and counts: 0.28125, 1.5, 3 flips, 0.15625 small, 4 unchanged
    assert pick(seed["overall"]) == {
        "n": 8, "update_norm": math.sqrt(0.28125), "surviving_norm": math.sqrt(1.5),
        "survival_ratio": math.sqrt(1.5 / 0.28125), "flip_rate": 3 / 8,
        "sub_half_step_share": 0.15625 / 0.28125, "unchanged_fraction": 0.5}
    # dot .375; near-zero mass .0625 + .15625; edges .25 and .5 (one group per module)
    assert pick(seed["overall"], ("projection", "movable_cap") + CODE_METRICS) == {
        "projection": 0.375 / 0.28125, "movable_cap": 0.5, "code_flip_rate": 3 / 8,
        "scale_change_rate": 0.0, "flipped_block_rate": 1.0, "code_share_of_dq": 1.0,
        "scale_share_of_dq": 0.0, "near_zero_update_share": 0.21875 / 0.28125,
        "near_zero_edge_min": 0.25, "near_zero_edge_mean": 0.375, "near_zero_edge_max": 0.5}
    # no quantization: everything survives; Delta = 0, so no update is below half a step;
    # `none` has no codes: the code metrics are null
    none = report["schemes"]["none"]
    assert pick(none["overall"]) == {
        "n": 8, "update_norm": math.sqrt(0.28125), "surviving_norm": math.sqrt(0.28125),
        "survival_ratio": 1.0, "flip_rate": 0.5, "sub_half_step_share": 0.0,
        "unchanged_fraction": 0.5}
    assert none["overall"]["projection"] == 1.0
    assert all(none["overall"][k] is None for k in CODE_METRICS)
    assert none["modules"]["layers.1.proj"]["flip_rate"] == 0.5
    assert none["modules"]["layers.1.proj"]["value_change_rate"] == 0.5


def test_identical_models_have_no_update():
    report = diagnose_models(Stack(*THETA_O), Stack(*THETA_O), ["rtn:4"], progress=False)
    overall = report["schemes"]["rtn:4"]["overall"]
    assert pick(overall) == {
        "n": 8, "update_norm": 0.0, "surviving_norm": 0.0, "survival_ratio": None,
        "flip_rate": 0.0, "sub_half_step_share": None, "unchanged_fraction": 1.0}
    assert overall["projection"] is None and overall["movable_cap"] is None
    assert overall["code_flip_rate"] == 0.0 and overall["code_share_of_dq"] is None


def test_fp4_mechanism_on_a_crafted_update():
    """Code crossings, scale moves and near-zero codes of bnb-fp4, every number by hand.

    One 2x64 weight = two FP4 blocks of 64. FP4 values (/12): 0, 0.0625, 2, 3, 4, 6, 8, 12;
    the 15 distinct values in ascending order have codes 0..14 (0 -> 7, 1/4 -> 10, 1/3 -> 11,
    1/2 -> 12, 1 -> 14, 1/192 -> 8, -1/2 -> 2).
    """
    theta_o = torch.zeros(2, 64)
    theta_u = torch.zeros(2, 64)
    # block 0, absmax 1 in both models:
    #   0.25 -> 0.3125: crosses the pivot 0.2917: code 10 (1/4) -> 11 (1/3), a code flip
    #   -0.5 -> -0.46875: stays in (0.4167, 0.5833]: code 2 (-1/2), no change
    #   2^-7 -> 5 * 2^-7: stays in (0.0026, 0.0859]: code 8 (1/192), near-zero, no change
    theta_o[0, :4] = torch.tensor([1.0, 0.25, -0.5, 2 ** -7])
    theta_u[0, :4] = torch.tensor([1.0, 0.3125, -0.46875, 5 * 2 ** -7])
    # block 1: absmax 0.5 -> 0.53125 (a scale move); 0.25 does not move, its code stays 12
    #   (0.25 / 0.5 = 0.5 and 0.25 / 0.53125 = 0.47 are both in (0.4167, 0.5833]) but its value
    #   follows the scale: 0.25 -> 0.265625
    theta_o[1, :2] = torch.tensor([0.5, 0.25])
    theta_u[1, :2] = torch.tensor([0.53125, 0.25])
    report = diagnose_models(Stack(theta_o.tolist()), Stack(theta_u.tolist()),
                             ["bnb-fp4", "bnb-fp4-cpu"], progress=False)
    third = float(torch.tensor(1 / 3))  # the float32 code value 4/12
    d_code = third - 0.25  # dQ of the code crossing; the scale moves give dQ 1/32 and 1/64
    sq_dq = d_code ** 2 + (1 / 32) ** 2 + (1 / 64) ** 2
    sq_dw = (1 / 16) ** 2 + 3 * (1 / 32) ** 2  # 0.0625, 0.03125, 0.03125, 0.03125
    expected = {
        "n": 128, "update_norm": math.sqrt(sq_dw), "surviving_norm": math.sqrt(sq_dq),
        "survival_ratio": math.sqrt(sq_dq / sq_dw),
        # <dQ, dw> = d_code * 1/16 + 1/32 * 1/32 (the unmoved 0.25 adds nothing)
        "projection": (d_code / 16 + 1 / 1024) / sq_dw,
        "value_change_rate": 3 / 128, "flip_rate": 3 / 128, "unchanged_fraction": 124 / 128,
        "code_flip_rate": 1 / 128, "scale_change_rate": 0.5, "flipped_block_rate": 0.5,
        "code_share_of_dq": d_code ** 2 / sq_dq,
        "scale_share_of_dq": ((1 / 32) ** 2 + (1 / 64) ** 2) / sq_dq,
        "near_zero_update_share": (1 / 32) ** 2 / sq_dw,  # only 2^-7 moved within code 8
        "movable_cap": 0.5,  # moved: 0.25, -0.5, 2^-7 and 0.5
        "near_zero_edge_min": 0.0859375 * 0.5, "near_zero_edge_mean": 0.0859375 * 0.75,
        "near_zero_edge_max": 0.0859375,
    }
    for scheme in ("bnb-fp4", "bnb-fp4-cpu"):  # no ties here: both roundings agree
        overall = report["schemes"][scheme]["overall"]
        assert pick(overall, expected) == pytest.approx(expected, rel=1e-12, abs=0)
        assert overall["code_share_of_dq"] + overall["scale_share_of_dq"] == pytest.approx(1.0)


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
