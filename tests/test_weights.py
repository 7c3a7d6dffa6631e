"""Applying unlearning checkpoints (delta / full / PEFT) and quantizing modules in place."""

import pytest
import torch
from safetensors.torch import save_file

from harness_ext import checkpoints

from harness_ext.quantizers import apply as qapply
from harness_ext.errors import MuseQuantError
from harness_ext.quantizers import parse_scheme
from harness_ext.toy.tiny import build_tiny_llama, save_model

SMALL = dict(hidden_size=128, intermediate_size=384, num_hidden_layers=1)


def small(seed=0, **kw):
    model, tok = build_tiny_llama(seed=seed, **{**SMALL, **kw})
    return model, tok


def test_delta_is_added_by_parameter_name(tmp_path):
    model, _ = small()
    q = model.model.layers[0].self_attn.q_proj.weight
    before = q.detach().clone()
    delta = {"model.layers.0.self_attn.q_proj.weight": torch.full_like(q, 0.5)}
    save_file(delta, tmp_path / "delta.safetensors")
    model, report = checkpoints.apply_unlearned(model, tmp_path / "delta.safetensors")
    assert torch.equal(model.model.layers[0].self_attn.q_proj.weight, before + 0.5)
    assert report["kind"] == "delta" and report["tensors_changed"] == 1
    assert report["update_l2_norm"] == pytest.approx(0.5 * q.numel() ** 0.5)


def test_tied_weights_change_once(tmp_path):
    model, _ = small(tie_word_embeddings=True)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    before = model.model.embed_tokens.weight.detach().clone()
    d = torch.full_like(before, 0.25)
    # Both aliases listed (as state_dict() would): the shared tensor must move by d, not 2d.
    save_file({"model.embed_tokens.weight": d, "lm_head.weight": d.clone()}, tmp_path / "d.safetensors")
    model, report = checkpoints.apply_unlearned(model, tmp_path / "d.safetensors")
    assert torch.equal(model.model.embed_tokens.weight, before + 0.25)
    assert report["tensors_changed"] == 1
    save_file({"model.embed_tokens.weight": d, "lm_head.weight": d * 2}, tmp_path / "bad.safetensors")
    with pytest.raises(MuseQuantError, match="tied parameters .* differ"):
        checkpoints.apply_unlearned(model, tmp_path / "bad.safetensors")


def test_full_model_directory(tmp_path):
    base, tok = small(seed=0)
    other, _ = small(seed=1)
    save_model(other, tok, tmp_path / "unlearned")
    base, report = checkpoints.apply_unlearned(base, tmp_path / "unlearned")
    assert report["kind"] == "full"
    for (n, a), (_, b) in zip(base.named_parameters(), other.named_parameters()):
        assert torch.equal(a, b), n


def test_peft_adapter_is_merged(tmp_path):
    from peft import LoraConfig, get_peft_model

    base, _ = small(seed=0)
    reference, _ = small(seed=0)
    peft_model = get_peft_model(reference, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    for name, p in peft_model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.1)
    peft_model.save_pretrained(tmp_path / "adapter")
    merged = peft_model.merge_and_unload()
    base, report = checkpoints.apply_unlearned(base, tmp_path / "adapter")
    assert report["kind"] == "peft" and report["update_l2_norm"] > 0
    for (n, a), (_, b) in zip(base.named_parameters(), merged.named_parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=n)
    assert all("lora" not in n for n, _ in base.named_parameters())


def test_pickle_needs_opt_in(tmp_path):
    model, _ = small()
    q = model.model.layers[0].self_attn.q_proj.weight
    torch.save({"model.layers.0.self_attn.q_proj.weight": torch.ones_like(q)}, tmp_path / "d.bin")
    with pytest.raises(MuseQuantError, match="pickle") as err:
        checkpoints.apply_unlearned(model, tmp_path / "d.bin")
    assert "allow_pickle=True" in err.value.fix
    before = q.detach().clone()
    model, _ = checkpoints.apply_unlearned(model, tmp_path / "d.bin", allow_pickle=True)
    assert torch.equal(model.model.layers[0].self_attn.q_proj.weight, before + 1)


@pytest.mark.parametrize("state, message", [
    ({"model.layers.0.self_attn.q_proj.weight": torch.zeros(3, 3)}, "has shape"),
    ({"model.layers.9.mlp.up_proj.weight": torch.zeros(384, 128)}, "not parameters of the model"),
    ({"model.layers.0.self_attn.q_proj.weight": torch.zeros(128, 128, dtype=torch.bfloat16)},
     "is torch.bfloat16, the model's"),
])
def test_checkpoint_mismatches_are_clear(tmp_path, state, message):
    model, _ = small()
    save_file(state, tmp_path / "d.safetensors")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with pytest.raises(MuseQuantError, match=message):
        checkpoints.apply_unlearned(model, tmp_path / "d.safetensors")
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())  # untouched


def test_missing_or_unknown_checkpoints(tmp_path):
    model, _ = small()
    with pytest.raises(MuseQuantError, match="does not exist"):
        checkpoints.apply_unlearned(model, tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(MuseQuantError, match="neither a model directory"):
        checkpoints.apply_unlearned(model, tmp_path / "empty")
    (tmp_path / "w.npz").write_bytes(b"x")
    with pytest.raises(MuseQuantError, match="unknown checkpoint file type"):
        checkpoints.apply_unlearned(model, tmp_path / "w.npz")


def test_quantize_model_selects_block_linears_only():
    model, _ = small()
    emb = model.model.embed_tokens.weight.detach().clone()
    head = model.lm_head.weight.detach().clone()
    names = qapply.quantizable_linear_names(model)
    assert len(names) == 7 and "lm_head" not in names  # q k v o gate up down
    report = qapply.quantize_model(model, parse_scheme("rtn:4"))
    assert report["n_modules"] == 7 and report["scheme"] == "rtn:4" and report["seconds"] >= 0
    assert torch.equal(model.model.embed_tokens.weight, emb)
    assert torch.equal(model.lm_head.weight, head)
    w = model.model.layers[0].mlp.down_proj.weight
    assert torch.equal(w, parse_scheme("rtn:4").quantize_weight(w))  # idempotent: on the grid


def test_quant_lm_head_unties_and_leaves_embedding():
    model, _ = small(tie_word_embeddings=True)
    emb = model.model.embed_tokens.weight.detach().clone()
    report = qapply.quantize_model(model, parse_scheme("rtn:4"), include_lm_head=True)
    assert "lm_head" in report["modules"] and report["n_modules"] == 8
    assert torch.equal(model.model.embed_tokens.weight, emb)
    assert not torch.equal(model.lm_head.weight, emb)


def test_snapshot_restores_float_weights():
    model, _ = small()
    names = qapply.quantizable_linear_names(model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    snap = qapply.WeightSnapshot(model, names)
    qapply.quantize_model(model, parse_scheme("bnb-nf4"))
    assert not torch.equal(model.model.layers[0].self_attn.q_proj.weight,
                           before["model.layers.0.self_attn.q_proj.weight"])
    snap.restore(model)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


def test_bf16_delta_on_a_bf16_exact_fp32_model_equals_the_bf16_run(tmp_path):
    """A pure-bf16 unlearning run evaluated with fp32 arithmetic: its bf16 delta is added in
    bf16 (as written) to the fp32 model whose weights are exactly bf16, then widened."""
    original, _ = small(seed=0)
    original = original.to(torch.bfloat16)
    unlearned, _ = small(seed=0)
    unlearned = unlearned.to(torch.bfloat16)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in unlearned.parameters():  # updates as large as the weights: deltas round
            p.add_((torch.randn(p.shape, generator=gen) * p.float().std()).to(p.dtype))
    delta, _ = checkpoints.weight_delta(unlearned, original)
    checkpoints.save_delta(delta, tmp_path / "delta.safetensors")
    model = original.float()  # fp32 arithmetic, bf16-exact values
    expected = {n: p.detach().float() for n, p in unlearned.named_parameters()}
    # the test can fail: adding the bf16 delta in fp32 would miss the bf16 weights somewhere
    name = "model.layers.0.mlp.up_proj.weight"
    naive = dict(model.named_parameters())[name] + delta[name].float()
    assert not torch.equal(naive, expected[name])
    model, report = checkpoints.apply_unlearned(model, tmp_path / "delta.safetensors")
    assert report["kind"] == "delta"
    for n, p in model.named_parameters():
        assert p.dtype == torch.float32 and torch.equal(p, expected[n]), n
    # a full bf16 model widens exactly too
    full_dir = tmp_path / "full"
    unlearned.save_pretrained(full_dir)
    fresh, _ = small(seed=3)
    fresh, report = checkpoints.apply_unlearned(fresh, full_dir)
    assert all(torch.equal(p, expected[n]) for n, p in fresh.named_parameters())


def test_bf16_delta_on_fp32_weights_that_are_not_bf16_is_refused(tmp_path):
    model, _ = small(seed=0)  # fp32 values: not exactly bf16
    q = model.model.layers[0].self_attn.q_proj.weight
    save_file({"model.layers.0.self_attn.q_proj.weight": torch.zeros_like(q, dtype=torch.bfloat16)},
              tmp_path / "d.safetensors")
    before = q.detach().clone()
    with pytest.raises(MuseQuantError, match="not exactly representable") as err:
        checkpoints.apply_unlearned(model, tmp_path / "d.safetensors")
    assert "dtype=bfloat16" in err.value.fix
    assert torch.equal(model.model.layers[0].self_attn.q_proj.weight, before)
