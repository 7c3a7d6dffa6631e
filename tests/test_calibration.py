"""Calibration data for GPTQ/AWQ (calib=...), the token windows, and the CPU compatibility shim."""

import json

import pytest
import torch

from harness_ext.quantizers import compat
from harness_ext.quantizers.calibration import build_calibration, token_windows, validate_calib
from harness_ext.data import embedded
from harness_ext.errors import MuseQuantError
from harness_ext.toy.tiny import load_tokenizer


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer()


class CharTokenizer:
    """One token per character (ord), BOS = 1: windows can be checked by hand."""

    bos_token_id = 1

    def __call__(self, text, add_special_tokens=False):
        class Out:
            input_ids = [ord(c) for c in text]

        return Out()


def test_token_windows_by_hand():
    # "ab" + "\n\n" + "cd" = a b \n \n c d (6 tokens); seqlen 3 -> BOS + 2 tokens per window
    windows = token_windows(["ab", "cd"], CharTokenizer(), samples=10, seqlen=3)
    assert windows == [[1, 97, 98], [1, 10, 10], [1, 99, 100]]
    assert token_windows(["ab", "cd"], CharTokenizer(), samples=2, seqlen=3) == windows[:2]
    # shorter than one window: one short window
    assert token_windows(["a"], CharTokenizer(), samples=4, seqlen=8) == [[1, 97]]


def test_generic_falls_back_to_embedded_offline(tok, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cal = build_calibration(tok, calib="generic", calib_samples=3, calib_seqlen=32)
    assert cal.describe["source"] == "embedded:news/raw/generic.json"
    assert "HF_HUB_OFFLINE is set" in cal.describe["fallback_reason"]
    assert len(cal.windows) == cal.describe["samples_used"] == 3
    assert all(len(w) == 32 and w[0] == tok.bos_token_id for w in cal.windows)
    generic = embedded.generate(flavour="news")["raw/generic.json"]
    assert tok.decode(cal.windows[0][1:]) == tok.decode(
        tok(generic[0], add_special_tokens=False).input_ids[:31])


@pytest.mark.parametrize("calib, rel", [("forget", "raw/forget.json"), ("retain", "raw/retain1.json")])
def test_corpus_splits(tok, calib, rel):
    cal = build_calibration(tok, calib=calib, calib_samples=2, calib_seqlen=16, calib_corpus="books",
                            calib_data="embedded")
    assert cal.describe["source"] == f"embedded:books/{rel}"
    assert cal.texts == embedded.generate(flavour="books")[rel]
    assert cal.describe["tokens"] == 32 and len(cal.describe["tokens_sha256"]) == 64


def test_corpus_split_from_a_local_dir_and_muse_data_env(tok, tmp_path, monkeypatch):
    embedded.write(tmp_path, ("news",))
    data = json.loads((tmp_path / "news" / "raw" / "forget.json").read_text())
    data[0] = "a distinct first document " * 20
    (tmp_path / "news" / "raw" / "forget.json").write_text(json.dumps(data))
    monkeypatch.setenv("MUSE_DATA", str(tmp_path))
    cal = build_calibration(tok, calib="forget", calib_samples=1, calib_seqlen=8)
    assert cal.describe["source"] == f"{tmp_path.resolve()}:news/raw/forget.json"
    assert tok.decode(cal.windows[0][1:]).startswith("a distinct first")


def test_calibration_file(tok, tmp_path):
    path = tmp_path / "calib.json"
    path.write_text(json.dumps([{"text": "alpha beta gamma " * 10}, "delta epsilon " * 10]))
    cal = build_calibration(tok, calib=str(path), calib_samples=128, calib_seqlen=512,
                            quant_cache_dir=str(tmp_path / "cache"))
    assert cal.describe["source"] == f"file:{path.resolve()}"
    assert cal.describe["samples_used"] == 1 < cal.describe["samples"]  # short text: one window
    assert cal.cache_dir == str(tmp_path / "cache")


@pytest.mark.parametrize("kwargs, message", [
    (dict(calib="wikipedia"), "unknown calib 'wikipedia'"),
    (dict(calib="forget", calib_corpus="movies"), "unknown calib_corpus 'movies'"),
    (dict(calib="forget", calib_samples=0), "calib_samples=0"),
])
def test_bad_calibration_arguments(tok, kwargs, message):
    with pytest.raises(MuseQuantError, match=message) as err:
        build_calibration(tok, **kwargs)
    assert err.value.fix
    with pytest.raises(MuseQuantError, match=message):
        validate_calib(**kwargs)


def test_pin_memory_noop_only_without_accelerator(monkeypatch):
    from llmcompressor.pipelines.cache import IntermediatesCache

    def library_pin_memory(self, batch_index, input_names=None):
        raise AssertionError("stands in for llmcompressor's own pin_memory")

    before = IntermediatesCache.pin_memory  # may already be the no-op (AWQ ran earlier)
    try:
        IntermediatesCache.pin_memory = library_pin_memory
        monkeypatch.setattr(compat, "accelerator_available", lambda: True)
        assert compat.patch_llmcompressor_pin_memory() is False
        assert IntermediatesCache.pin_memory is library_pin_memory  # untouched with an accelerator
        monkeypatch.setattr(compat, "accelerator_available", lambda: False)
        assert compat.patch_llmcompressor_pin_memory() is True
        assert IntermediatesCache.pin_memory is compat._no_pin_memory
        assert IntermediatesCache.pin_memory(None, 0) is None
    finally:
        IntermediatesCache.pin_memory = before
    if not compat.accelerator_available():  # why the shim exists: pinning fails on CPU-only torch
        with pytest.raises(RuntimeError):
            torch.zeros(2).pin_memory()
