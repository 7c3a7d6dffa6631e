"""The tiny Llama and its committed tokenizer."""

import json

import pytest

from harness_ext.toy import tiny


def test_committed_tokenizer_is_reproducible():
    committed = json.loads(tiny.TOKENIZER_ASSET.read_text())
    fresh = json.loads(tiny.train_tokenizer().to_str())
    assert fresh["model"]["vocab"] == committed["model"]["vocab"]
    assert fresh["model"]["merges"] == committed["model"]["merges"]


def test_tokenizer_adds_bos_and_round_trips_any_text():
    tok = tiny.load_tokenizer()
    ids = tok("Café — naïve 東京 text!", add_special_tokens=True).input_ids
    assert ids[0] == tiny.BOS_ID
    assert tok.decode(ids, skip_special_tokens=True) == "Café — naïve 东京 text!".replace("东", "東")
    assert tok("x", add_special_tokens=False).input_ids[0] != tiny.BOS_ID


def test_config_dimensions_must_suit_quantizer_kernels():
    assert tiny.tiny_config().hidden_size == 256 and tiny.tiny_config().intermediate_size == 768
    with pytest.raises(ValueError, match="multiple of 128"):
        tiny.tiny_config(hidden_size=200)
