"""The forget and retain sets of an unlearning run: loading, tokenizing, retain sampling."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import MuseQuantError
from .config import UnlearnConfig

log = logging.getLogger(__name__)


def texts_sha256(texts: list[str]) -> str:
    """sha256 of the texts as a JSON list (UTF-8), independent of the file format they came in."""
    return hashlib.sha256(json.dumps(texts, ensure_ascii=False).encode("utf-8")).hexdigest()


@dataclass
class TextSet:
    texts: list[str]
    source: str

    def card(self) -> dict:
        return {"source": self.source, "sha256": texts_sha256(self.texts),
                "n_texts": len(self.texts)}


def load_forget(cfg: UnlearnConfig) -> TextSet:
    from ..data import load_file, load_texts, resolve_source

    if cfg.forget:
        return TextSet(load_texts(cfg.forget), str(Path(cfg.forget).expanduser().resolve()))
    source = resolve_source(cfg.muse_data)
    return TextSet(load_file(cfg.corpus, "raw/forget.json", source),
                   f"{source}:{cfg.corpus}/raw/forget.json")


def load_retain(cfg: UnlearnConfig, required: bool, method_name: str) -> TextSet | None:
    """retain1 of the corpus (or ``--retain FILE``). When not ``required`` (the method does not
    train on it; it is only scored at the end) a missing retain set gives None."""
    from ..data import load_file, load_texts, resolve_source

    if cfg.retain:
        return TextSet(load_texts(cfg.retain), str(Path(cfg.retain).expanduser().resolve()))
    source = resolve_source(cfg.muse_data)
    try:
        return TextSet(load_file(cfg.corpus, "raw/retain1.json", source),
                       f"{source}:{cfg.corpus}/raw/retain1.json")
    except MuseQuantError as err:
        if not required:
            log.info("no retain set (%s); retain_nll will be null", err.problem)
            return None
        raise MuseQuantError(
            f"method {method_name!r} trains on a retain set, but it cannot be loaded: "
            f"{err.problem}",
            f"pass --retain FILE (a JSON list of texts, JSONL of {{\"text\": ...}} or a .txt file "
            f"with blank-line separated documents), or a --muse_data source with "
            f"{cfg.corpus}/raw/retain1.json",
        ) from None


def tokenize(tokenizer, texts: list[str], max_len: int, packing: str):
    from ..data.tokenized import TokenizedTexts

    if packing == "muse":
        return TokenizedTexts.muse_chunks(tokenizer, texts, max_len)
    return TokenizedTexts.from_texts(tokenizer, texts, max_len)


class RetainSampler:
    """Retain micro-batches from a seeded permutation, cycled through (state is resumable)."""

    def __init__(self, n: int, batch_size: int, seed: int):
        self.n, self.batch_size = n, batch_size
        self.generator = torch.Generator().manual_seed(seed)
        self.queue: list[int] = []

    def next(self) -> list[int]:
        out = []
        while len(out) < self.batch_size:
            if not self.queue:
                self.queue = torch.randperm(self.n, generator=self.generator).tolist()
            out.append(self.queue.pop(0))
        return out
