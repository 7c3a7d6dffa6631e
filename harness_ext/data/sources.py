"""Where MUSE data comes from: the hub, a local directory in MUSE's layout, or the embedded corpus.

The source is chosen by lm-eval's ``--metadata muse_data=...``, then the ``MUSE_DATA`` environment
variable, then ``hub``. Every file is validated against :data:`SCHEMAS`; a missing file, an empty
split or a wrong field raises one :class:`MuseQuantError` naming the path and the expected schema.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..errors import MuseQuantError
from . import embedded

CORPORA = ("news", "books")
HUB_DATASETS = {"news": "muse-bench/MUSE-News", "books": "muse-bench/MUSE-Books"}
# The hub is unreachable from the machines this project is developed on, so no commit hash could
# be verified; pass `hub_revision=<sha>` in --metadata to pin one for a publication run.
HUB_REVISION = "main"

_QA = {"question": str, "answer": str}
# relative path pattern -> element schema (a dict of field -> type, or `str` for plain strings)
SCHEMAS: dict[str, object] = {
    "verbmem/forget.json": {"prompt": str, "gt": str},
    "knowmem/forget_qa.json": _QA,
    "knowmem/forget_qa_icl.json": _QA,
    "knowmem/retain_qa.json": _QA,
    "knowmem/retain_qa_icl.json": _QA,
    "knowmem/generic_qa.json": _QA,
    "privleak/forget.json": str,
    "privleak/retain.json": str,
    "privleak/holdout.json": str,
    "raw/forget.json": str,
    "raw/retain1.json": str,
    "raw/retain2.json": str,
    "raw/holdout.json": str,
    "raw/generic.json": str,
}
#: files whose texts are scored token by token (an empty text has no token to score)
NONEMPTY_TEXTS = ("privleak/forget.json", "privleak/retain.json", "privleak/holdout.json")
# relative path -> (hub config, hub split)
_HUB_SPLITS = {
    "verbmem/forget.json": ("verbmem", "forget"),
    **{f"knowmem/{s}.json": ("knowmem", s)
       for s in ("forget_qa", "forget_qa_icl", "retain_qa", "retain_qa_icl")},
    **{f"privleak/{s}.json": ("privleak", s) for s in ("forget", "retain", "holdout")},
    **{f"raw/{s}.json": ("raw", s) for s in ("forget", "retain1", "retain2", "holdout")},
}


def describe_schema(rel: str) -> str:
    schema = SCHEMAS[rel]
    if schema is str:
        return "a JSON list of strings"
    fields = ", ".join(f'"{k}": {t.__name__}' for k, t in schema.items())
    return "a JSON list of objects {" + fields + "}"


def resolve_source(muse_data: str | None = None) -> str:
    """``muse_data`` argument, else ``$MUSE_DATA``, else ``"hub"``."""
    source = muse_data or os.environ.get("MUSE_DATA") or "hub"
    return str(source)


def source_label(source: str) -> str:
    """A stable description of a source for results files (paths are made absolute)."""
    if source in ("hub", "embedded"):
        return source
    return str(Path(source).expanduser().resolve())


def validate(rel: str, data: object, where: str) -> list:
    """Check ``data`` against the schema of ``rel``; raise one clear error otherwise."""
    schema = SCHEMAS.get(rel)
    expected = describe_schema(rel) if schema is not None else "a non-empty JSON list"
    if not isinstance(data, list):
        raise MuseQuantError(f"{where}: expected {expected}, got a JSON {type(data).__name__}",
                             "regenerate the file with MUSE's load_data.py layout")
    if not data:
        raise MuseQuantError(f"{where}: the split is empty; expected {expected}",
                             "point muse_data at a complete MUSE data directory")
    if schema is None:
        return data
    for i, item in enumerate(data):
        if schema is str and rel in NONEMPTY_TEXTS and isinstance(item, str) and not item.strip():
            raise MuseQuantError(f"{where}: item {i} is an empty text; Min-K% (PrivLeak) needs "
                                 "at least one token per text",
                                 "remove the empty texts from the file")
        if schema is str:
            ok = isinstance(item, str)
        else:
            ok = isinstance(item, dict) and all(isinstance(item.get(k), t) for k, t in schema.items())
        if not ok:
            raise MuseQuantError(f"{where}: item {i} does not match the schema; expected {expected}, "
                                 f"got {json.dumps(item)[:120]}",
                                 "fix or regenerate the file (MUSE's load_data.py layout)")
    return data


def _load_local(root: Path, corpus: str, rel: str) -> list:
    corpus_dir = root / corpus
    path = corpus_dir / rel
    if not root.is_dir():
        raise MuseQuantError(f"muse_data={root}: no such directory",
                             "pass muse_data=hub, muse_data=embedded or an existing directory "
                             "in MUSE's layout <dir>/<news|books>/...")
    if not path.is_file():
        hint = ""
        if not corpus_dir.is_dir() and (root / rel.split("/")[0]).is_dir():
            hint = f" (it looks like {root} is itself a corpus folder; pass its parent)"
        raise MuseQuantError(
            f"missing MUSE data file {path}{hint}; expected {describe_schema(rel)}"
            if rel in SCHEMAS else f"missing MUSE data file {path}{hint}",
            "use the layout MUSE's load_data.py writes: "
            "<dir>/<corpus>/{verbmem/forget.json, knowmem/{forget,retain}_qa[_icl].json, "
            "privleak/{forget,retain,holdout}.json, raw/...}",
        )
    data = _parse_json(read_utf8(path), path, f"the file must hold {describe_schema(rel)}")
    return validate(rel, data, str(path))


def read_utf8(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise MuseQuantError(f"{path}: not UTF-8 text (byte {exc.start}: {exc.reason})",
                             "save the file as UTF-8 (e.g. iconv -t UTF-8), as MUSE's files "
                             "are") from None


def _parse_json(text: str, path: Path, fix: str):
    try:
        return json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise MuseQuantError(f"{path}: not valid JSON ({type(exc).__name__}: "
                             f"{str(exc)[:200]})", fix) from None


def _load_hub(corpus: str, rel: str, revision: str) -> list:
    if rel not in _HUB_SPLITS:
        raise MuseQuantError(f"{rel} is not published on the hub for MUSE-{corpus}",
                             "use muse_data=embedded or a local directory that has it")
    config, split = _HUB_SPLITS[rel]
    import datasets

    try:
        ds = datasets.load_dataset(HUB_DATASETS[corpus], config, split=split, revision=revision)
    except Exception as exc:  # network / auth / missing split: one clear message
        raise MuseQuantError(
            f"could not load {HUB_DATASETS[corpus]} ({config}/{split}) from the Hugging Face hub: "
            f"{type(exc).__name__}: {str(exc)[:200]}",
            "check your network/HF_TOKEN, or use --metadata muse_data=embedded (offline) or "
            "muse_data=<dir> with files written by MUSE's load_data.py",
        ) from None
    schema = SCHEMAS[rel]
    data = list(ds["text"]) if schema is str else [{k: row[k] for k in schema} for row in ds]
    return validate(rel, data, f"{HUB_DATASETS[corpus]}:{config}/{split}")


def load_file(corpus: str, rel: str, muse_data: str | None = None,
              hub_revision: str | None = None) -> list:
    """Load one MUSE data file (e.g. ``"verbmem/forget.json"``) for ``corpus`` from the source."""
    if corpus not in CORPORA:
        raise MuseQuantError(f"unknown corpus {corpus!r}", f"use one of {CORPORA}")
    source = resolve_source(muse_data)
    if source == "embedded":
        files = embedded.generate(flavour=corpus)
        if rel not in files:
            raise MuseQuantError(f"the embedded corpus has no {rel}",
                                 f"available: {', '.join(sorted(files))}")
        return validate(rel, files[rel], f"embedded:{corpus}/{rel}")
    if source == "hub":
        return _load_hub(corpus, rel, hub_revision or HUB_REVISION)
    return _load_local(Path(source).expanduser(), corpus, rel)


def load_texts(path: str | Path) -> list[str]:
    """A user-supplied text collection: a JSON list of strings, a JSON list of ``{"text": ...}``
    objects, a JSONL file of those, or a plain text file (documents separated by blank lines)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise MuseQuantError(f"no such file: {path}",
                             "pass a .json/.jsonl list of texts or a .txt file")
    raw = read_utf8(path)
    if path.suffix in (".json", ".jsonl"):
        fix = "use a JSON list of strings or of {\"text\": ...} objects"
        items = (_parse_json(raw, path, fix) if path.suffix == ".json"
                 else [_parse_json(line, path, fix) for line in raw.splitlines() if line.strip()])
        if not isinstance(items, list):
            raise MuseQuantError(f"{path}: expected a JSON list", "use a JSON list of strings")
        texts = [it["text"] if isinstance(it, dict) and isinstance(it.get("text"), str) else it
                 for it in items]
        if not all(isinstance(t, str) for t in texts):
            raise MuseQuantError(f"{path}: every item must be a string or an object with a "
                                 "string \"text\" field", "fix the file")
    else:
        texts = [t.strip() for t in raw.split("\n\n")]
    texts = [t for t in texts if t.strip()]
    if not texts:
        raise MuseQuantError(f"{path}: contains no text", "pass a file with at least one document")
    return texts
