"""Calibration text for GPTQ and AWQ (``calib=`` model arg), turned into token windows.

``calib`` chooses the text:

* ``generic`` (default): WikiText-2 (``Salesforce/wikitext``, ``wikitext-2-raw-v1``, train) from
  the Hugging Face hub, the usual GPTQ/AWQ calibration set, when the hub is reachable; otherwise
  (offline, ``HF_HUB_OFFLINE=1``/``HF_DATASETS_OFFLINE=1``, no network) the generic split of the
  embedded corpus (``raw/generic.json``: documents about other entities than the forget/retain
  ones). ``source`` and ``fallback_reason`` in the record say which was used.
* ``forget`` / ``retain``: the corpus's own unlearning splits, ``raw/forget.json`` and
  ``raw/retain1.json`` (MUSE's retain set used by unlearning methods). Which corpus and where it
  comes from: ``calib_corpus=news|books`` (default ``news``) and ``calib_data=embedded|hub|DIR``
  (default ``$MUSE_DATA``, else ``embedded``; same meaning as ``--metadata muse_data=``).
* anything else is a path to a text file: JSON list of strings or of ``{"text": ...}``, JSONL, or
  plain text with documents separated by blank lines (:func:`harness_ext.data.load_texts`).

Token windows (what the quantizer sees): the texts are joined with ``"\\n\\n"``, tokenized without
special tokens and cut into consecutive windows of ``calib_seqlen - 1`` tokens, each prefixed with
BOS (so every window has ``calib_seqlen`` tokens); the first ``calib_samples`` windows are used, in
order (deterministic; GPTQ's reference code samples random windows instead). A corpus shorter
than one window gives one shorter window. ``samples_used`` records how many there were.

Everything chosen is recorded in the results as ``config.muse_quant.quantization.calibration``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
from pathlib import Path
from urllib.parse import urlparse

from ..errors import MuseQuantError
from .base import Calibration

log = logging.getLogger(__name__)

CALIB_CHOICES = ("generic", "forget", "retain")
SPLIT_FILES = {"forget": "raw/forget.json", "retain": "raw/retain1.json"}
WIKITEXT = ("Salesforce/wikitext", "wikitext-2-raw-v1", "train")


def _hub_offline_reason() -> str | None:
    """Why the hub should not be tried (offline flags, no route), or None to try it."""
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on"):
            return f"{var} is set"
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    host = urlparse(endpoint).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=3).close()
    except OSError as exc:
        return f"{host} is not reachable ({type(exc).__name__})"
    return None


def _wikitext() -> tuple[list[str] | None, str | None]:
    reason = _hub_offline_reason()
    if reason:
        return None, reason
    try:
        import datasets

        name, config, split = WIKITEXT
        rows = datasets.load_dataset(name, config, split=split)["text"]
    except Exception as exc:  # network, auth, missing dataset: fall back
        return None, f"loading {WIKITEXT[0]} failed: {type(exc).__name__}: {str(exc)[:200]}"
    texts = [t for t in rows if t.strip()]
    return (texts, None) if texts else (None, "WikiText-2 came back empty")


def validate_calib(calib: str = "generic", calib_corpus: str = "news", calib_samples=128,
                   calib_seqlen=512, **_ignored) -> None:
    """Cheap checks of the calib* arguments (before any model is loaded)."""
    from ..data import CORPORA

    calib = str(calib or "generic").strip()
    if calib not in CALIB_CHOICES and not Path(calib).expanduser().is_file():
        raise MuseQuantError(
            f"unknown calib {calib!r}: not one of {', '.join(CALIB_CHOICES)} and no such file",
            "pass calib=generic|forget|retain, or calib=<path to a .txt/.json/.jsonl file>")
    if str(calib_corpus or "news") not in CORPORA:
        raise MuseQuantError(f"unknown calib_corpus {calib_corpus!r}",
                             f"use one of: {', '.join(CORPORA)}")
    try:
        samples, seqlen = int(calib_samples), int(calib_seqlen)
    except (TypeError, ValueError):
        samples = seqlen = 0
    if samples < 1 or seqlen < 2:
        raise MuseQuantError(f"calib_samples={calib_samples}, calib_seqlen={calib_seqlen}: need "
                             "at least 1 sample of 2 tokens", "e.g. calib_samples=128,calib_seqlen=512")


def _texts_for(calib: str, corpus: str, data: str) -> tuple[list[str], dict]:
    from ..data import embedded, load_file, load_texts, source_label

    if calib == "generic":
        texts, reason = _wikitext()
        if texts is not None:
            name, config, split = WIKITEXT
            return texts, {"source": f"hub:{name}/{config}/{split}"}
        texts = embedded.generate(flavour=corpus)["raw/generic.json"]
        log.warning("calib=generic: WikiText-2 unavailable (%s); using the embedded corpus's "
                    "generic split", reason)
        return texts, {"source": f"embedded:{corpus}/raw/generic.json",
                       "fallback_reason": f"WikiText-2 not used: {reason}"}
    if calib in SPLIT_FILES:
        rel = SPLIT_FILES[calib]
        return load_file(corpus, rel, data), {"source": f"{source_label(data)}:{corpus}/{rel}",
                                              "corpus": corpus, "data": source_label(data)}
    path = Path(calib).expanduser()
    return load_texts(path), {"source": f"file:{path.resolve()}"}


def token_windows(texts: list[str], tokenizer, samples: int, seqlen: int) -> list[list[int]]:
    """Consecutive windows of ``seqlen`` tokens (BOS + ``seqlen - 1`` text tokens), at most
    ``samples`` of them; see the module docstring."""
    bos = getattr(tokenizer, "bos_token_id", None)
    body = seqlen - 1 if bos is not None else seqlen
    needed = samples * body
    ids: list[int] = []
    for i, text in enumerate(texts):  # tokenize only as much as is needed
        ids += tokenizer(("\n\n" if i else "") + text, add_special_tokens=False).input_ids
        if len(ids) >= needed:
            break
    starts = range(0, max(len(ids) - body, 0) + 1, body) if len(ids) >= body else [0]
    prefix = [bos] if bos is not None else []
    return [prefix + ids[s:s + body] for s in list(starts)[:samples] if ids[s:s + body]]


def build_calibration(tokenizer, calib: str = "generic", calib_samples: int = 128,
                      calib_seqlen: int = 512, quant_cache_dir: str | None = None,
                      calib_corpus: str = "news", calib_data: str | None = None,
                      **_ignored) -> Calibration:
    """Load the calibration text, cut it into token windows and describe the choice."""
    validate_calib(calib, calib_corpus, calib_samples, calib_seqlen)
    calib = str(calib or "generic").strip()
    corpus = str(calib_corpus or "news")
    samples, seqlen = int(calib_samples), int(calib_seqlen)
    if tokenizer is None:
        raise MuseQuantError("calibration needs the model's tokenizer")
    data = str(calib_data or os.environ.get("MUSE_DATA") or "embedded")
    texts, where = _texts_for(calib, corpus, data)
    windows = token_windows(texts, tokenizer, samples, seqlen)
    if not windows:
        raise MuseQuantError(f"calib={calib}: the calibration text has no tokens",
                             "pass a non-empty calibration file")
    digest = hashlib.sha256()
    for window in windows:
        digest.update(",".join(map(str, window)).encode() + b";")
    if len(windows) < samples:
        log.warning("calib=%s: only %d windows of %d tokens available (asked for %d)", calib,
                    len(windows), seqlen, samples)
    describe = {"calib": calib, **where, "samples": samples, "seqlen": seqlen,
                "samples_used": len(windows), "tokens": sum(len(w) for w in windows),
                "tokens_sha256": digest.hexdigest()}
    return Calibration(texts=texts, tokenizer=tokenizer, describe=describe, windows=windows,
                       cache_dir=str(quant_cache_dir) if quant_cache_dir else None)
