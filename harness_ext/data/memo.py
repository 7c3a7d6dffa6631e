"""Task datasets kept for the process: they do not depend on the weights, so a sweep (one
``simple_evaluate`` per scheme) builds each once.

lm-eval loads ``tasks/utils.py`` afresh for every task config, so the store lives here. A key
holds everything a dataset depends on: the call's arguments that matter and, for local files,
their path, modification time and size (an edited file is read again).
"""

from __future__ import annotations

from pathlib import Path

from .sources import resolve_source

_STORE: dict = {}
_MAX_ENTRIES = 64


def file_stamps(corpus: str, rels: tuple[str, ...], muse_data) -> tuple:
    """``(path, mtime_ns, size)`` of each local data file (nothing for hub / embedded)."""
    source = resolve_source(muse_data)
    if source in ("hub", "embedded"):
        return (source,)
    stamps = []
    for rel in rels:
        path = Path(source).expanduser() / corpus / rel
        try:
            st = path.stat()
            stamps.append((str(path.resolve()), st.st_mtime_ns, st.st_size))
        except OSError:
            stamps.append((str(path), None, None))
    return tuple(stamps)


def tokenizer_stamp(pretrained=None, tokenizer=None, revision=None, trust_remote_code=False,
                    **_) -> tuple:
    """What the VerbMem reference tokenizer is loaded from (with file stamps for a directory)."""
    source = tokenizer or pretrained
    if not isinstance(source, str):
        return ("object", id(source))
    stamps = []
    if Path(source).is_dir():
        for path in sorted(Path(source).glob("tokenizer*")) + sorted(Path(source).glob("*.model")):
            st = path.stat()
            stamps.append((path.name, st.st_mtime_ns, st.st_size))
    return (source, None if tokenizer else revision, bool(trust_remote_code), tuple(stamps))


def memoized(key: tuple, build) -> dict:
    """``build()`` once per ``key``; a new dict (same ``datasets.Dataset`` objects) each call."""
    if key not in _STORE:
        if len(_STORE) >= _MAX_ENTRIES:
            _STORE.clear()
        _STORE[key] = build()
    return dict(_STORE[key])


def clear() -> None:
    _STORE.clear()
