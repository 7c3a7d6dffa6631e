"""Unlearning losses worked out by hand, MUSE's chunking, the registry, SURE thresholds, plugins."""

import copy
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from harness_ext.errors import MuseQuantError
from harness_ext.data.tokenized import TokenizedTexts
from harness_ext.unlearning import (METHODS, available_methods, kl_to_reference, load_plugin,
                                    make_method)
from harness_ext.unlearning.methods.npo import npo_loss
from harness_ext.unlearning.saliency import SureMask
from harness_ext.unlearning.sure import parse_threshold

REPO = Path(__file__).resolve().parent.parent
BASE_METHODS = ["ga", "ga_gdr", "ga_klr", "npo", "npo_gdr", "npo_klr"]
LN3 = math.log(3.0)


class Bigram(torch.nn.Module):
    """A model whose next-token logits depend only on the current token: logits = table[token]."""

    def __init__(self, table):
        super().__init__()
        self.table = torch.nn.Parameter(torch.tensor(table, dtype=torch.float64))

    def forward(self, input_ids, attention_mask=None):
        return SimpleNamespace(logits=self.table[input_ids])


def val(x) -> float:
    return x.detach().item()


def hand_batch():
    """Row A = [0, 1, 1] (3 real tokens); row B = [1, 0] + one pad (labels -100)."""
    input_ids = torch.tensor([[0, 1, 1], [1, 0, 0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    return {"input_ids": input_ids, "attention_mask": mask,
            "labels": input_ids.masked_fill(mask == 0, -100)}


def test_npo_loss_equals_hand_computation():
    # theta: uniform next-token distribution -> log p_theta(A) = 2 ln(1/2), log p_theta(B) = ln(1/2)
    theta = Bigram([[0.0, 0.0], [0.0, 0.0]])
    # ref: p(0|0) = 3/4, p(1|0) = 1/4, p(0|1) = 1/4, p(1|1) = 3/4
    ref = Bigram([[LN3, 0.0], [0.0, LN3]])
    # log p_ref(A) = ln(1/4 * 3/4) = ln(3/16); log p_ref(B) = ln(1/4)
    # r_A = ln(1/4) - ln(3/16) = ln(4/3); r_B = ln(1/2) - ln(1/4) = ln 2
    # L = -(2/beta) * mean(log sigmoid(-beta r)) = (1/beta) * [ln(1 + (4/3)^beta) + ln(1 + 2^beta)]
    for beta in (0.1, 1.0, 2.5):
        expected = (math.log(1 + (4 / 3) ** beta) + math.log(1 + 2 ** beta)) / beta
        got = npo_loss(theta, ref, hand_batch(), beta)
        assert val(got) == pytest.approx(expected, rel=1e-6)
        method = make_method("npo", beta=beta)
        assert val(method.loss(theta, ref, hand_batch(), None)) == pytest.approx(expected,
                                                                                   rel=1e-6)
    # beta = 0.1: (ln 2.02919... + ln 2.07177...) / 0.1
    assert val(npo_loss(theta, ref, hand_batch(), 0.1)) == pytest.approx(14.36041, abs=1e-4)


def test_npo_gradient_only_reaches_the_model():
    theta = Bigram([[0.0, 0.0], [0.0, 0.0]])
    ref = Bigram([[LN3, 0.0], [0.0, LN3]])
    npo_loss(theta, ref, hand_batch(), 0.1).backward()
    assert theta.table.grad is not None and ref.table.grad is None


def test_kl_term_by_hand():
    # theta: uniform after token 0, p(0|1) = 3/4 after token 1; ref as above
    theta = Bigram([[0.0, 0.0], [LN3, 0.0]])
    ref = Bigram([[LN3, 0.0], [0.0, LN3]])
    kl0 = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)  # after token 0
    kl1 = 0.25 * math.log(0.25 / 0.75) + 0.75 * math.log(0.75 / 0.25)  # after token 1 = ln(3)/2
    # scored positions: A after 0 and after 1, B after 1 (B's last position predicts padding)
    expected = (kl0 + kl1 + kl1) / 3
    assert val(kl_to_reference(theta, ref, hand_batch())) == pytest.approx(expected, rel=1e-6)
    ga_klr = make_method("ga_klr", alpha=2.0)
    uniform_nll = math.log(2)  # GA's forget term with theta uniform on a forget batch
    forget = hand_batch()
    theta_u = Bigram([[0.0, 0.0], [0.0, 0.0]])
    assert val(ga_klr.loss(theta_u, ref, forget, forget)) == pytest.approx(
        -uniform_nll + 2.0 * kl0, rel=1e-6)


def test_kl_term_summed_over_tokens_per_batch_row_by_hand():
    """--klr_reduction sum: KL summed over the vocabulary and the real tokens, divided by the
    batch rows (the paper's kl_div(..., reduction="batchmean") scale)."""
    theta = Bigram([[0.0, 0.0], [LN3, 0.0]])
    ref = Bigram([[LN3, 0.0], [0.0, LN3]])
    kl0 = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    kl1 = math.log(3) / 2
    # 3 scored positions (A after 0, A after 1, B after 1) over 2 rows
    expected = (kl0 + kl1 + kl1) / 2
    assert val(kl_to_reference(theta, ref, hand_batch(), reduction="sum")) == pytest.approx(
        expected, rel=1e-6)
    assert val(kl_to_reference(theta, ref, hand_batch(), reduction="mean")) == pytest.approx(
        expected * 2 / 3, rel=1e-6)
    # without padding it is exactly torch's kl_div batchmean on (rows, positions, vocabulary)
    batch = {"input_ids": torch.tensor([[0, 1, 1, 0], [1, 0, 0, 1]]),
             "attention_mask": torch.ones(2, 4, dtype=torch.long)}
    batch["labels"] = batch["input_ids"].clone()
    logp = torch.log_softmax(theta.table[batch["input_ids"][:, :-1]], -1)
    ref_logp = torch.log_softmax(ref.table[batch["input_ids"][:, :-1]], -1)
    paper = torch.nn.functional.kl_div(logp, ref_logp, reduction="batchmean", log_target=True)
    assert val(kl_to_reference(theta, ref, batch, reduction="sum")) == pytest.approx(
        val(paper), rel=1e-6)  # the loss computes in float32
    # the _klr methods pass --klr_reduction through; theta uniform: every position has KL kl0
    theta_u = Bigram([[0.0, 0.0], [0.0, 0.0]])
    for reduction, kl in (("mean", kl0), ("sum", 3 * kl0 / 2)):
        method = make_method("ga_klr", alpha=2.0, klr_reduction=reduction)
        assert val(method.loss(theta_u, ref, hand_batch(), hand_batch())) == pytest.approx(
            -math.log(2) + 2.0 * kl, rel=1e-6)
    with pytest.raises(ValueError, match="unknown reduction"):
        kl_to_reference(theta, ref, hand_batch(), reduction="batchmean")


def test_kl_term_is_zero_at_the_reference_and_positive_otherwise():
    from harness_ext.toy.tiny import build_tiny_llama

    model, tok = build_tiny_llama(seed=3, hidden_size=128, intermediate_size=384,
                                  num_hidden_layers=1)
    ref = copy.deepcopy(model)
    data = TokenizedTexts.from_texts(tok, ["A short retain text.", "Another, longer retain "
                                           "document about a fictional town."], 32)
    batch = data.batch([0, 1])
    assert val(kl_to_reference(model, ref, batch)) == 0.0
    with torch.no_grad():
        model.model.layers[0].mlp.down_proj.weight.add_(0.05)
    kl = kl_to_reference(model, ref, batch)
    assert val(kl) > 1e-4
    kl.backward()
    assert model.model.layers[0].mlp.down_proj.weight.grad.abs().sum() > 0


def test_muse_chunks():
    from harness_ext.toy.tiny import load_tokenizer

    tok = load_tokenizer()
    texts = ["First document of the split.", "Second one, a little longer than the first.",
             "Third."]
    tokens = tok("\n\n".join(texts), add_special_tokens=False).input_ids
    data = TokenizedTexts.muse_chunks(tok, texts, max_len=8)
    bos = tok.bos_token_id
    assert all(len(c) == 8 for c in data.ids)
    assert all(c[0] == bos for c in data.ids)
    assert data.ids[0] == [bos] + tokens[:7]
    assert len(data.ids) == math.ceil(len(tokens) / 7)
    k = 7 * (len(data.ids) - 1)
    tail = [bos] + tokens[k:]
    assert data.ids[-1] == (tail + data.ids[0])[:8]  # MUSE's rotation fills the last chunk
    assert [t for c in data.ids[:-1] for t in c[1:]] == tokens[:k]


def test_registry_has_every_method_and_its_sure_variant():
    names = [n for n, _ in available_methods()]
    for base in BASE_METHODS:
        assert base in names and f"{base}_sure" in names
        sure_cls = METHODS.get(f"{base}_sure")
        assert sure_cls.sure and issubclass(sure_cls, METHODS.get(base))
        assert sure_cls.default_lr == 1e-4 and METHODS.get(base).default_lr == 1e-5
    assert not any(n.endswith("_sure_sure") for n in names)
    assert METHODS.get("npo_klr").needs_reference and METHODS.get("npo_klr").needs_retain
    assert not METHODS.get("ga").needs_reference and not METHODS.get("ga").needs_retain
    assert METHODS.get("ga_gdr").needs_retain and not METHODS.get("ga_gdr").needs_reference
    with pytest.raises(MuseQuantError, match="unknown unlearning method 'gradient_ascent'"):
        make_method("gradient_ascent")


@pytest.mark.parametrize("text,kind,value", [("90", "percentile", 90.0), ("0", "percentile", 0.0),
                                             ("100", "percentile", 100.0),
                                             ("abs:1e-3", "absolute", 1e-3)])
def test_threshold_syntax(text, kind, value):
    t = parse_threshold(text)
    assert (t.kind, t.value, t.text) == (kind, value, text)


@pytest.mark.parametrize("text", ["101", "-1", "abs:-0.5", "ninety", "abs:", "nan"])
def test_threshold_out_of_range(text):
    with pytest.raises(MuseQuantError, match="--sure_threshold"):
        parse_threshold(text)


def test_mask_from_scores_percentiles():
    scores = {"a": torch.tensor(1.0), "b": torch.tensor(3.0), "c": torch.tensor(2.0),
              "d": torch.tensor(4.0)}
    top = SureMask.from_scores(scores, parse_threshold("100"), "module")
    assert {n for n, m in top.mask.items() if m} == {"d"} and top.gamma == 4.0
    everything = SureMask.from_scores(scores, parse_threshold("0"), "module")
    assert all(bool(m) for m in everything.mask.values())
    # numpy's linear interpolation: the 50th percentile of 1, 2, 3, 4 is 2.5
    half = SureMask.from_scores(scores, parse_threshold("50"), "module")
    assert half.gamma == 2.5 and {n for n, m in half.mask.items() if m} == {"b", "d"}
    absolute = SureMask.from_scores(scores, parse_threshold("abs:2"), "module")
    assert {n for n, m in absolute.mask.items() if m} == {"b", "c", "d"}
    with pytest.raises(MuseQuantError, match="selects nothing"):
        SureMask.from_scores(scores, parse_threshold("abs:5"), "module")
    rows = {"w": torch.tensor([0.5, 3.0, 1.0]), "norm": torch.tensor([2.0])}
    neuron = SureMask.from_scores(rows, parse_threshold("abs:1"), "neuron")
    assert neuron.mask["w"].tolist() == [False, True, True]
    assert neuron.mask["norm"].tolist() == [True]
    card = neuron.run_card()
    assert card["mask"] == {"w": 2, "norm": 1} and card["scores"]["w"] == 3.0


def test_example_plugin_registers_a_method_and_its_sure_variant():
    load_plugin(REPO / "examples" / "my_unlearning_method.py")
    assert "my_method" in METHODS and "my_method_sure" in METHODS
    method = make_method("my_method", alpha=0.5)
    assert method.needs_retain and not method.needs_reference
    theta = Bigram([[0.0, 0.0], [0.0, 0.0]])
    # forget NLL ln 2 (uniform), retain NLL ln 2: -ln2 + 0.5 ln 2
    assert val(method.loss(theta, None, hand_batch(), hand_batch())) == pytest.approx(
        -0.5 * math.log(2), rel=1e-6)
    with pytest.raises(MuseQuantError, match="no such Python file"):
        load_plugin(REPO / "examples" / "missing.py")
    assert "my_method_gdr" not in METHODS  # it has its own retain term: no generated variants


FORGET_ONLY_PLUGIN = '''
from harness_ext.unlearning import METHODS, UnlearningMethod, nll


@METHODS.register("neg_nll")
class NegNLL(UnlearningMethod):
    summary = "forget loss only"

    def forget_loss(self, model, ref_model, forget_batch):
        return -nll(model, forget_batch)


@METHODS.register("neg_nll_loss_only")
class NegNLLLossOnly(UnlearningMethod):
    def loss(self, model, ref_model, forget_batch, retain_batch):
        return -nll(model, forget_batch)
'''


def test_a_forget_loss_gets_generated_gdr_klr_and_sure_variants(tmp_path):
    plugin = tmp_path / "forget_only_methods.py"
    plugin.write_text(FORGET_ONLY_PLUGIN)
    load_plugin(plugin)
    theta = Bigram([[0.0, 0.0], [0.0, 0.0]])  # uniform: forget NLL = retain NLL = ln 2
    ref = Bigram([[LN3, 0.0], [0.0, LN3]])  # KL(ref || uniform) = kl0 at every position
    kl0 = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    for base in ("neg_nll", "neg_nll_loss_only"):
        for suffix in ("", "_gdr", "_klr"):
            assert f"{base}{suffix}" in METHODS and f"{base}{suffix}_sure" in METHODS
        assert not METHODS.get(base).needs_retain
        gdr, klr = METHODS.get(f"{base}_gdr"), METHODS.get(f"{base}_klr_sure")
        assert gdr.needs_retain and not gdr.needs_reference and gdr.reference_forwards() == 0
        assert klr.needs_retain and klr.needs_reference and klr.reference_forwards() == 1
        assert issubclass(gdr, METHODS.get(base)) and klr.sure
        assert val(make_method(f"{base}_gdr", alpha=0.5).loss(
            theta, None, hand_batch(), hand_batch())) == pytest.approx(-0.5 * math.log(2))
        method = make_method(f"{base}_klr_sure", alpha=2.0)
        assert val(method.loss(theta, ref, hand_batch(), hand_batch())) == pytest.approx(
            -math.log(2) + 2.0 * kl0, rel=1e-6)
        # SURE's saliency uses the forget term alone
        assert val(method.forget_loss(theta, ref, hand_batch())) == pytest.approx(-math.log(2))
    assert METHODS.get("neg_nll_klr").summary == \
        "NEG_NLL + alpha * KL(p_ref || p_theta) on retain tokens"


def test_contributing_shows_the_example_file_verbatim():
    import re

    section = (REPO / "CONTRIBUTING.md").read_text().split("## Add your unlearning method")[1]
    block = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    example = (REPO / "examples" / "my_unlearning_method.py").read_text()
    assert block == example
    assert len(example.splitlines()) <= 20


def test_weight_delta_round_trips_bit_for_bit_with_tied_weights(tmp_path):
    """theta_o + delta == theta_u exactly, also for weights that move to or across zero (where a
    float32 delta may not be exact and the file carries the exact values); tied weights once."""
    from harness_ext import checkpoints
    from harness_ext.toy.tiny import build_tiny_llama

    original, _ = build_tiny_llama(seed=4, hidden_size=128, intermediate_size=384,
                                   num_hidden_layers=1, tie_word_embeddings=True)
    unlearned = copy.deepcopy(original)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in unlearned.parameters():
            for _ in range(3):  # several rounded steps, as training takes
                p.add_(torch.randn(p.shape, generator=gen) * 1e-3)
        unlearned.model.layers[0].mlp.up_proj.weight.zero_()  # a whole tensor crossing to 0
        unlearned.model.norm.weight.copy_(original.model.norm.weight)  # an unchanged tensor
    delta, patched = checkpoints.weight_delta(unlearned, original)
    assert "model.embed_tokens.weight" in delta and "lm_head.weight" not in delta
    assert "model.norm.weight" not in delta
    assert patched > 0 and any(k.endswith(checkpoints.EXACT_VALUE) for k in delta)
    checkpoints.save_delta(delta, tmp_path / "delta.safetensors")
    fresh = copy.deepcopy(original)
    fresh, report = checkpoints.apply_unlearned(fresh, tmp_path / "delta.safetensors")
    assert report["kind"] == "delta"
    for (name, a), (_, b) in zip(fresh.named_parameters(), unlearned.named_parameters()):
        assert torch.equal(a, b), name
    assert fresh.lm_head.weight is fresh.model.embed_tokens.weight
