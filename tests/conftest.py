"""Shared fixtures: tiny models built from a config, and the path of MUSE's real data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(min(2, os.cpu_count() or 1))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no test may touch the hub
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

REPO = Path(__file__).resolve().parent.parent
SHARED_MUSE = Path(os.environ.get("MUSE_SHARED_DATA", REPO.parent / "shared" / "muse"))


@pytest.fixture(scope="session")
def shared_muse() -> Path:
    """MUSE's real evaluation data (../shared/muse); tests using it skip when it is absent."""
    if not (SHARED_MUSE / "news" / "verbmem" / "forget.json").is_file():
        pytest.skip(f"MUSE data not found at {SHARED_MUSE}")
    return SHARED_MUSE


@pytest.fixture(scope="session")
def small_model_dir(tmp_path_factory) -> Path:
    """A random tiny Llama (hidden 128, 2 layers) saved to disk: fast unit tests."""
    from harness_ext.toy.tiny import build_tiny_llama

    out = tmp_path_factory.mktemp("small_model")
    build_tiny_llama(out, seed=1, hidden_size=128, intermediate_size=384, num_hidden_layers=2)
    return out


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """The issue's integration model: hidden 256, intermediate 768, 4 layers, briefly trained on
    the embedded NEWS forget documents so that its outputs are not degenerate."""
    from harness_ext import metrics
    from harness_ext.toy import training
    from harness_ext.data import embedded
    from harness_ext.toy.tiny import build_tiny_llama, save_model

    out = tmp_path_factory.mktemp("tiny_model")
    model, tok = build_tiny_llama(seed=0, max_position_embeddings=8192)
    files = embedded.generate(flavour="news")
    # forget documents + some forget/retain QA lines, so VerbMem and KnowMem are both non-zero
    qa = files["knowmem/forget_qa.json"][:20] + files["knowmem/retain_qa.json"][:20]
    texts = files["raw/forget.json"] + [metrics.knowmem_prompt([], d["question"]) + d["answer"]
                                        for d in qa]
    training.train_causal_lm(model, tok, texts, epochs=4, lr=3e-3, batch_size=8, max_len=128,
                             progress=False)
    save_model(model, tok, out)
    return out


@pytest.fixture(scope="module")
def one_thread():
    """Tiny matrices: one thread is several times faster than two on a loaded 2-core machine.
    A test module asks for it with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
