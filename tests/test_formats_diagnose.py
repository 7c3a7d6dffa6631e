"""`muse-quant diagnose` for every scheme: codes and steps of the deployment formats (GGUF, FP8,
HQQ, MLX, torchao) and of the bitsandbytes kernels, affine grids' near-zero codes by hand, the
GGUF codes rebuilt from llama.cpp's own bytes, and the command on a tiny Llama for every
registered scheme; `muse-quant schemes` lists every scheme under its family."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from harness_ext.cli import main
from harness_ext.evaluation.diagnostics import METRICS, diagnose_models
from harness_ext.quantizers import QUANTIZERS, Quantizer, available_schemes, parse_scheme
from harness_ext.quantizers import gguf_kquants as kq
from harness_ext.quantizers.codes import grid_codes
from harness_ext.quantizers.gguf_codes import GROUPS, block_levels

#: the library a scheme needs at run time (the test skips when it is absent)
NEEDS = {"hqq": "hqq.core.quantize", "torchao": "torchao.quantization",
         "gptq": "llmcompressor", "awq": "llmcompressor"}
CODE_METRICS = ("code_flip_rate", "scale_change_rate", "flipped_block_rate", "code_share_of_dq",
                "scale_share_of_dq", "near_zero_update_share", "near_zero_edge_min",
                "near_zero_edge_mean", "near_zero_edge_max")

#: One example per registered scheme and what diagnose reports for it: (has a step, has codes).
#: A new scheme must be added here (test_every_scheme_is_listed_here fails until it is).
DIAGNOSE_EXPECTATIONS = {
    "none": (True, False),          # no grid: Delta = 0, no codes
    "rtn-seed:4": (True, True),
    "rtn:4:g64": (True, True),
    "bnb-nf4": (True, True),
    "bnb-fp4": (True, True),
    "bnb-fp4-cpu": (True, True),
    "bnb-int8": (True, True),
    "bnb-nf4-real": (True, True),
    "bnb-fp4-real": (True, True),
    "bnb-int8-real": (True, True),
    "gptq:4": (True, False),        # calibrated: each model gets its own grid, no shared codes
    "awq:4": (True, False),
    "fp8:e4m3": (True, True),
    "mlx:4": (True, True),
    "hqq:4": (True, True),
    "torchao:int4:g64": (True, True),
    "gguf:q4_k_m": (True, True),
}
EXTRA = ("gguf:q8_0", "gguf:q4_1", "gguf:q3_k", "torchao:int8", "fp8:e4m3:tensor", "mlx:3:g32")


def _skip_without_library(scheme):
    module = NEEDS.get(scheme.split(":")[0])
    if module:
        pytest.importorskip(module)


def test_every_scheme_is_listed_here():
    available_schemes()
    assert sorted({s.split(":")[0] for s in DIAGNOSE_EXPECTATIONS}) == QUANTIZERS.names()


# ------------------------------------------------------------------------------------------
# grids by hand
# ------------------------------------------------------------------------------------------

def test_affine_grid_near_zero_code_by_hand():
    # value = scale * q + offset. Group 0: scale 0.5, offset -0.3 -> 0 sits at level 0.6, the
    # nearest code is 1 (value 0.2), which keeps |w| < (0.5 - 0.4) * 0.5 = 0.05.
    # Group 1: scale -0.25 (codes are -q), offset 0.5 -> 0 at code 2 exactly: edge 0.5 * 0.25.
    # Group 2: all levels positive and z = -4 outside 0..3: nearest code 0, edge 0.
    levels = torch.tensor([[0, 1, 3], [0, 2, 3], [0, 1, 2]])
    codes = grid_codes(levels, torch.tensor([0.5, -0.25, 1.0]), (3, 3),
                       torch.tensor([-0.3, 0.5, 4.0]), (0, 3))
    assert codes.codes.tolist() == [[0, 1, 3], [0, -2, -3], [0, 1, 2]]
    assert codes.scales.tolist() == [0.5, 0.25, 1.0]
    assert codes.zero_codes.tolist() == [1, -2, 0]
    assert codes.near_zero().tolist() == [[False, True, False], [False, True, False],
                                          [True, False, False]]
    assert codes.edges().tolist() == pytest.approx([0.05, 0.125, 0.0])
    # symmetric (no offset): zero code 0, edge half a step; a negative scale flips the codes
    sym = grid_codes(torch.tensor([[-2, 0, 1]]), torch.tensor([-0.5]), (1, 3))
    assert sym.codes.tolist() == [[2, 0, -1]] and sym.zero_codes == (0,)
    assert sym.edges().tolist() == [0.25]
    # a group whose offset alone moved counts as a scale move
    moved = grid_codes(levels, torch.tensor([0.5, -0.25, 1.0]), (3, 3),
                       torch.tensor([-0.3, 0.25, 4.0]), (0, 3))
    assert codes.group_moved(moved).tolist() == [False, True, False]


def test_fp8_codes_by_hand():
    # absmax 448 -> scale 1: codes are E4M3's magnitude bits with the sign
    w = torch.tensor([[448.0, 1.0, -1.0, 0.0009, -2.0 ** -9, 0.0]])
    codes = parse_scheme("fp8:e4m3").codes(w)
    # 448 = 0x7E, 1.0 = 0x38, 2^-9 (the smallest subnormal) = 0x01, 0.0009 < 2^-10 -> 0
    assert codes.codes.tolist() == [[0x7E, 0x38, -0x38, 0, -1, 0]]
    assert codes.scales.tolist() == [1.0] and codes.edges().tolist() == [2.0 ** -10]


# ------------------------------------------------------------------------------------------
# GGUF: codes rebuilt from llama.cpp's own bytes (the committed golden fixtures)
# ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("type_name", sorted(GROUPS))
def test_gguf_codes_rebuild_llama_cpp_values(type_name):
    with np.load(Path(__file__).parent / "data" / "gguf" / "types.npz") as fixture:
        keys = [k for k in fixture.files if k.startswith(f"{type_name}/")]
        assert keys
        for key in keys:
            qdata = fixture[key]  # bytes written by llama.cpp's ggml_quantize_chunk
            levels, scale, offset = block_levels(qdata, type_name)
            size, low, high, has_offset = GROUPS[type_name]
            assert levels.shape[1] == size and (offset is not None) == has_offset
            assert low <= levels.min() and levels.max() <= high
            values = scale[:, None] * levels.astype(np.float32)
            if offset is not None:
                values = values + offset[:, None]
            expected = kq.dequantize(qdata, type_name)
            np.testing.assert_array_equal(values.reshape(expected.shape), expected, err_msg=key)


# ------------------------------------------------------------------------------------------
# every grid scheme: codes consistent with its values, steps, near-zero edges
# ------------------------------------------------------------------------------------------

GRID_SCHEMES = [s for s, (_, has_codes) in DIAGNOSE_EXPECTATIONS.items()
                if has_codes and s != "gguf:q4_k_m"] + ["gguf:q4_k", "gguf:q5_1"] + list(EXTRA)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("scheme", GRID_SCHEMES)
def test_codes_explain_the_quantized_values(scheme, dtype):
    _skip_without_library(scheme)
    g = torch.Generator().manual_seed(0)
    w = (torch.randn(32, 256, generator=g) * 0.02).to(dtype)
    w[0, :64] = 0.0  # an all-zero block
    quantizer = parse_scheme(scheme)
    codes = quantizer.codes(w)
    q = quantizer.quantize_weight(w).float().reshape(-1)
    assert codes.codes.shape == w.shape == codes.groups.shape
    assert bool((codes.scales >= 0).all())
    # equal (group, code) -> equal dequantized value
    key = codes.groups.reshape(-1) * 100000 + codes.codes.reshape(-1)
    _, inverse = torch.unique(key, return_inverse=True)
    high = torch.full((int(inverse.max()) + 1,), -torch.inf).scatter_reduce(0, inverse, q, "amax")
    low = torch.full_like(high, torch.inf).scatter_reduce(0, inverse, q, "amin")
    assert torch.equal(high, low)
    # weights inside the near-zero edge take a near-zero code (affine grids: up to the rounding
    # of their stored scale and min, fp16 for GGUF: Q4_1 misses about 1 % of them here)
    inside = w.float().abs() < codes.edges().float()[codes.groups]
    near = codes.near_zero()
    if inside.any():
        assert near[inside].float().mean() >= (0.98 if codes.offsets is not None else 1.0)
    if scheme.split(":")[0] in ("gguf", "mlx", "hqq", "torchao"):
        step = quantizer.quantization_step(w)  # uniform grids: Delta = the group's scale
        torch.testing.assert_close(step, codes.element_scales(), rtol=1e-6, atol=0)


@pytest.mark.parametrize("scheme", ["gguf:q4_k", "gguf:q4_1", "gguf:q6_k", "fp8:e4m3", "mlx:4",
                                    "hqq:4", "torchao:int4:g64", "bnb-int8-real"])
def test_same_code_and_group_grid_give_the_same_value(scheme):
    """Across two weights (what diagnose compares): same code and same scale and offset <=>
    same dequantized value, so the code and scale shares of ||dQ||^2 add up to 1."""
    _skip_without_library(scheme)
    quantizer = parse_scheme(scheme)
    gen = torch.Generator().manual_seed(3)
    a = torch.randn(32, 256, generator=gen) * 0.02
    noise = torch.randn(32, 256, generator=gen) * 0.002
    b = a + noise * (torch.rand(32, 256, generator=gen) < 0.3) * (a.abs() < 0.02)
    b[0, :64] *= 1.5
    ca, cb = quantizer.codes(a), quantizer.codes(b)
    same_grid = ~ca.group_moved(cb)[ca.groups]
    same_code = ca.codes == cb.codes
    changed = quantizer.quantize_weight(a) != quantizer.quantize_weight(b)
    assert not changed[same_code & same_grid].any()
    assert changed[~same_code & same_grid].all()
    if scheme not in ("gguf:q4_k", "hqq:4"):
        assert (~same_code & same_grid).any()
    else:  # their grid is searched per group: any change in a group moves its scale or min
        assert not bool(same_grid[b != a].any())


def test_gguf_step_and_codes_follow_the_mix_types():
    from harness_ext.toy.tiny import build_tiny_llama

    model, _ = build_tiny_llama(seed=0, hidden_size=256, intermediate_size=512,
                                num_hidden_layers=2, num_attention_heads=4)
    quantizer = parse_scheme("gguf:q4_k_m")
    names = ["model.layers.1.self_attn.v_proj", "model.layers.1.self_attn.q_proj"]
    out = list(quantizer.diagnostic_weights(model, names))
    # use_more_bits(1, 2): layer 1 >= 7 * 2 // 8 -> attn_v at Q6_K; attn_q stays Q4_K
    assert quantizer.module_types[names[0]] == "Q6_K"
    assert quantizer.module_types[names[1]] == "Q4_K"
    assert sorted(name for name, _, _ in out) == sorted(names)
    for name, q, step in out:
        group, sub = {names[0]: (16, "Q6_K"), names[1]: (32, "Q4_K")}[name]
        w = model.get_submodule(name).weight.detach()
        codes = quantizer.module_codes(name, w)
        assert codes.scales.numel() == w.numel() // group
        assert torch.equal(step, codes.element_scales())
        assert np.array_equal(q.numpy(), kq.fake_quantize(w.numpy(), sub))


# ------------------------------------------------------------------------------------------
# muse-quant diagnose on a tiny Llama, every registered scheme
# ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_pair(tmp_path_factory):
    """A random Llama with rows of 256 (K-quants apply) and a delta on block 1."""
    from safetensors.torch import save_file

    from harness_ext.toy.tiny import build_tiny_llama

    out = tmp_path_factory.mktemp("formats_diagnose")
    model, _ = build_tiny_llama(out / "model", seed=3, hidden_size=256, intermediate_size=256,
                                num_hidden_layers=2, num_attention_heads=4)
    gen = torch.Generator().manual_seed(0)
    delta = {n: torch.randn(p.shape, generator=gen) * 1e-3
             for n, p in model.named_parameters() if ".layers.1." in n and p.dim() == 2}
    save_file(delta, out / "delta.safetensors")
    return out / "model", out / "delta.safetensors"


def _check_report(scheme, data, has_step, has_codes):
    overall = data["overall"]
    assert set(METRICS) <= set(overall)
    assert data["layers"]["0"]["update_norm"] == 0.0 and overall["update_norm"] > 0
    assert (overall["sub_half_step_share"] is not None) == has_step, scheme
    for key in CODE_METRICS:
        assert (overall[key] is not None) == has_codes, (scheme, key)
    if has_codes and overall["surviving_norm"] > 0:
        assert overall["code_share_of_dq"] + overall["scale_share_of_dq"] == pytest.approx(1)
        assert 0 <= overall["near_zero_update_share"] <= 1
        assert 0 <= overall["near_zero_edge_min"] <= overall["near_zero_edge_max"]


def test_every_scheme_gives_diagnose_what_it_needs():
    """Per registered scheme, on one weight: a step (calibrated schemes: from their own run, in
    diagnostic_weights) and codes exactly where DIAGNOSE_EXPECTATIONS says."""
    w = torch.randn(32, 256, generator=torch.Generator().manual_seed(1)) * 0.02
    for scheme, (_, has_codes) in DIAGNOSE_EXPECTATIONS.items():
        module = NEEDS.get(scheme.split(":")[0])
        if module and not _importable(module):
            continue
        quantizer = parse_scheme(scheme)
        if quantizer.info.needs_calibration:  # the step comes from the calibrated run
            assert type(quantizer).diagnostic_weights is not Quantizer.diagnostic_weights
        elif scheme.startswith("gguf:q4_k_m"):  # a mix: the step of the type of each module
            assert parse_scheme("gguf:q4_k").quantization_step(w).shape == w.shape
        else:
            assert quantizer.quantization_step(w).shape == w.shape, scheme
        if has_codes:
            codes = (parse_scheme("gguf:q4_k") if scheme == "gguf:q4_k_m" else quantizer).codes(w)
            assert codes.codes.shape == w.shape, scheme
        else:
            with pytest.raises(NotImplementedError):
                quantizer.codes(w)


#: the command test: this change's formats and the bitsandbytes kernels (the other families run
#: through the command in tests/test_diagnostics.py)
COMMAND_SCHEMES = ("gguf:q4_k_m", "gguf:q4_1", "fp8:e4m3", "mlx:4", "hqq:4", "torchao:int4:g64",
                   "torchao:int8", "bnb-int8-real", "bnb-nf4-real")


@pytest.mark.slow
def test_diagnose_command_on_the_deployment_formats(tiny_pair, tmp_path, capsys):
    model_dir, delta = tiny_pair
    schemes = [s for s in COMMAND_SCHEMES
               if not NEEDS.get(s.split(":")[0]) or _importable(NEEDS[s.split(":")[0]])]
    out = tmp_path / "diag"
    args = ["diagnose", "--pretrained", str(model_dir), "--unlearned", str(delta),
            "--quant", ",".join(schemes), "--out", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    report = json.loads((out / "diagnose.json").read_text())
    assert list(report["schemes"]) == schemes
    for scheme in schemes:
        assert scheme in printed
        expected = DIAGNOSE_EXPECTATIONS.get(scheme, (True, True))
        _check_report(scheme, report["schemes"][scheme], *expected)
    mix = report["schemes"]["gguf:q4_k_m"]["quantizer"]
    assert mix["type_counts"] and {"Q4_K", "Q6_K"} <= set(mix["type_counts"])
    # FP8's grid is fine near zero (edge 2^-10 * scale); Q4_K_M's zero codes hold far more of
    # the update
    fp8 = report["schemes"]["fp8:e4m3"]["overall"]
    q4km = report["schemes"]["gguf:q4_k_m"]["overall"]
    assert fp8["near_zero_update_share"] < q4km["near_zero_update_share"]
    assert fp8["near_zero_edge_max"] < q4km["near_zero_edge_mean"]


def _importable(module):
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


@pytest.mark.slow
def test_diagnose_library_free_formats_on_a_tiny_llama(tiny_pair):
    from harness_ext.evaluation.diagnostics import load_pair

    target, unlearned, _, _ = load_pair(str(tiny_pair[0]), str(tiny_pair[1]))
    schemes = ["gguf:q4_k_m", "gguf:q8_0", "fp8:e4m3", "mlx:4"]
    report = diagnose_models(target, unlearned, schemes, progress=False)
    for scheme in schemes:
        _check_report(scheme, report["schemes"][scheme], True, True)


# ------------------------------------------------------------------------------------------
# muse-quant schemes
# ------------------------------------------------------------------------------------------

def test_schemes_command_lists_every_scheme_under_its_family(capsys):
    assert main(["schemes"]) == 0
    printed = capsys.readouterr().out
    family, under = None, {}
    for line in printed.splitlines():
        if line and not line.startswith(" "):
            family = line.rstrip(":")
            assert family not in under, f"family {family!r} printed twice"
            under[family] = []
        elif line.strip():
            under[family].append(line.split()[0])
    for scheme in DIAGNOSE_EXPECTATIONS:
        info = parse_scheme(scheme).info
        assert info.usage.split()[0] in under[info.family], scheme
    assert {"GGUF (llama.cpp), bit-exact", "deployment formats (FP8, HQQ, MLX, torchao), "
            "fake-quantized", "bitsandbytes kernels (real quantized layers)"} <= set(under)


def test_every_scheme_has_a_reversible_results_file_name():
    from harness_ext.errors import MuseQuantError
    from harness_ext.io import scheme_filename, scheme_from_filename

    # GGUF types hold '_', which the file name keeps as '__' (':' becomes '_')
    assert scheme_filename("gguf:q4_k_m") == "gguf_q4__k__m.json"
    assert scheme_filename("rtn:4:g128") == "rtn_4_g128.json"
    for scheme in [*DIAGNOSE_EXPECTATIONS, *EXTRA, "gguf:q4_0", "bnb-fp4:b128"]:
        assert scheme_from_filename(scheme_filename(scheme)) == scheme
    for bad in ("gguf:_q4", "a_:b", "x/y", "_x"):
        with pytest.raises(MuseQuantError, match="cannot be used as a file name"):
            scheme_filename(bad)
