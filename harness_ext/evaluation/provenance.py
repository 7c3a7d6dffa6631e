"""What produced a sweep's output folder: ``<output_path>/provenance.json``.

A sweep records, before it loads anything, everything its results depend on::

    {"format": "muse-quant-sweep-provenance", "version": 1,
     "model_args": {...},            # as given, without device / batch_size / quant
     "unlearned_sha256": "...",      # content hash of unlearned= (null without one)
     "pretrained_files": "...",      # sha256 of the sizes and modification times of the files
                                     # of a local pretrained= folder (null for a hub id)
     "tasks": [...], "limit": ..., "metadata": {...},
     "data": {"source": "embedded" | "hub" | "/abs/dir", "sha256": "..." (a local folder)},
     "python": "3.11.7", "packages": {"torch": "...", "lm_eval": "...", ...}}

A sweep adds to a folder only when the folder's record equals its own (:func:`differences`);
otherwise it stops before loading the model and says what differs. Hashes use
:func:`harness_ext.hashing.content_sha256` (the same hash the results record in
``config.muse_quant.unlearned.sha256``).
"""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

from ..errors import MuseQuantError

PROVENANCE_FILE = "provenance.json"
FORMAT, VERSION = "muse-quant-sweep-provenance", 1
#: distributions whose version can change a result
PACKAGES = ("muse-quant", "torch", "transformers", "tokenizers", "lm_eval", "peft",
            "bitsandbytes", "llmcompressor", "compressed-tensors", "safetensors", "datasets",
            "rouge-score", "scikit-learn", "numpy", "nltk")


def package_versions() -> dict[str, str | None]:
    from importlib import metadata

    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _plain(value):
    """JSON-normalised (what reading the file back gives)."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def _pretrained_files(pretrained) -> str | None:
    import hashlib

    from ..hashing import tree_files

    path = Path(str(pretrained)).expanduser()
    if not path.is_dir():
        return None
    listing = "".join(f"{rel} {st.st_size} {st.st_mtime_ns}\n"
                      for rel in tree_files(path) for st in [os.stat(path / rel)])
    return hashlib.sha256(listing.encode("utf-8", "surrogateescape")).hexdigest()


def _data(metadata: dict) -> dict:
    from ..data import resolve_source, source_label
    from ..hashing import content_sha256

    source = resolve_source(metadata.get("muse_data"))
    data = {"source": source_label(source)}
    if source not in ("hub", "embedded") and Path(source).expanduser().is_dir():
        data["sha256"] = content_sha256(Path(source).expanduser())[0]
    return data


def build(model_args: dict, tasks: list[str], limit, metadata: dict) -> dict:
    """The provenance record of a sweep (hashes the unlearned checkpoint and local data)."""
    from ..hashing import content_sha256

    unlearned = model_args.get("unlearned")
    has_unlearned = unlearned not in (None, "", "None")
    return _plain({
        "format": FORMAT, "version": VERSION,
        "model_args": model_args,
        "unlearned_sha256": content_sha256(unlearned)[0] if has_unlearned else None,
        "pretrained_files": _pretrained_files(model_args.get("pretrained")),
        "tasks": list(tasks), "limit": limit, "metadata": metadata,
        "data": _data(metadata),
        "python": platform.python_version(), "packages": package_versions(),
    })


def read(folder: Path) -> dict | None:
    """The folder's record, or None when it has none."""
    path = Path(folder) / PROVENANCE_FILE
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MuseQuantError(f"{path} is not readable ({type(exc).__name__})",
                             f"move {folder} away (or use another --output_path) and run "
                             "again") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise MuseQuantError(f"{path} is not a muse-quant sweep provenance record",
                             "use another --output_path")
    return data


def differences(recorded: dict, current: dict) -> list[str]:
    """``["limit: 4 recorded, now 8", "model_args.unlearned: ...", ...]``; empty when equal."""
    out = []
    for key in sorted(set(recorded) | set(current)):
        old, new = recorded.get(key), current.get(key)
        if old == new:
            continue
        if isinstance(old, dict) and isinstance(new, dict):
            out += [f"{key}.{sub}: {old.get(sub)!r} recorded, now {new.get(sub)!r}"
                    for sub in sorted(set(old) | set(new)) if old.get(sub) != new.get(sub)]
        else:
            out.append(f"{key}: {old!r} recorded, now {new!r}")
    return out


def check_folder(folder: Path, record: dict, results: list[str], busy: bool) -> None:
    """Refuse to add to ``folder`` when its ``results`` (file names) or a sweep still running
    there (``busy``) come from another record, or when it has results but no record; otherwise
    write ``record`` (when it is new)."""
    from ..io import write_json

    recorded = read(folder)
    if recorded is None and results:
        raise MuseQuantError(
            f"{folder} holds results ({', '.join(results[:3])}"
            f"{', ...' if len(results) > 3 else ''}) but no {PROVENANCE_FILE}, so nothing says "
            "which model, data and settings produced them",
            "move them away, or pass another --output_path")
    diffs = differences(recorded, record) if recorded is not None else []
    if diffs and (results or busy):
        raise MuseQuantError(
            f"{folder} holds results of a different sweep; resuming would mix them. What "
            "differs: " + "; ".join(diffs),
            f"pass another --output_path, or move {folder} away to start over (or run again "
            f"with the settings recorded in {folder / PROVENANCE_FILE})")
    if recorded != record:
        write_json(folder / PROVENANCE_FILE, record)
