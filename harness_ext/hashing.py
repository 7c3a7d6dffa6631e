"""Content hashes of checkpoints and data folders (sha256), safe against symbolic-link loops.

:func:`content_sha256` of a file is the sha256 of its bytes; of a directory, the sha256 of the
``sha256sum`` listing of its files (links followed) in sorted relative-path order, i.e. what
``cd DIR && find -L . -type f | sed 's|^\\./||' | LC_ALL=C sort | xargs sha256sum | sha256sum``
prints. A link to one of its own parent directories (a loop, which ``find -L`` reports and skips)
is skipped; a directory tree of more than :data:`MAX_FILES` files is refused.

A hash is computed once per process for an unchanged file set: it is remembered under the
paths, sizes, modification times and inodes of the files (a sweep hashes the checkpoint for its
provenance, then loads it and records the same hash in the results).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from .errors import MuseQuantError

CHUNK = 1 << 20
MAX_FILES = 100_000
_MEMO: dict[tuple, str] = {}


def file_sha256(path: str | Path, bar=None) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
            if bar is not None:
                bar.update(len(chunk))
    return digest.hexdigest()


def tree_files(path: str | Path) -> list[str]:
    """Relative POSIX paths of the regular files under ``path`` (links followed, loops skipped),
    sorted as ``LC_ALL=C sort`` sorts them."""
    root = os.fspath(path)
    ancestors = {root: frozenset({os.path.realpath(root)})}  # directory -> real paths above it
    found = []
    for directory, subdirs, names in os.walk(root, followlinks=True):
        chain = ancestors.pop(directory)
        keep = []
        for sub in subdirs:
            full = os.path.join(directory, sub)
            real = os.path.realpath(full)
            if real not in chain:  # a link back to a parent would loop forever
                ancestors[full] = chain | {real}
                keep.append(sub)
        subdirs[:] = keep
        for name in names:
            full = os.path.join(directory, name)
            if os.path.isfile(full):
                found.append(Path(os.path.relpath(full, root)).as_posix())
        if len(found) > MAX_FILES:
            raise MuseQuantError(f"{root} holds more than {MAX_FILES} files",
                                 "pass the checkpoint's own folder (model files only)")
    return sorted(found, key=lambda rel: rel.encode("utf-8", "surrogateescape"))


def content_sha256(path: str | Path, progress: bool = False) -> tuple[str, str]:
    """``(hex digest, "file" | "directory")`` of a file or a folder (see the module docstring)."""
    path = Path(path).expanduser()
    if path.is_file():
        files, kind = [""], "file"
    elif path.is_dir():
        files, kind = tree_files(path), "directory"
        if not files:
            raise MuseQuantError(f"folder {path} has no files", "pass the right folder")
    else:
        raise MuseQuantError(f"{path} does not exist", "pass an existing file or folder")
    stats = [os.stat(path / rel if rel else path) for rel in files]
    key = (str(path.resolve()), kind, tuple(
        (rel, s.st_size, s.st_mtime_ns, s.st_ino) for rel, s in zip(files, stats)))
    if key not in _MEMO:
        from tqdm.auto import tqdm

        with tqdm(total=sum(s.st_size for s in stats), unit="B", unit_scale=True,
                  desc="sha256", disable=not progress) as bar:
            if kind == "file":
                _MEMO[key] = file_sha256(path, bar)
            else:
                listing = "".join(f"{file_sha256(path / rel, bar)}  {rel}\n" for rel in files)
                _MEMO[key] = hashlib.sha256(listing.encode("utf-8", "surrogateescape")).hexdigest()
    return _MEMO[key], kind
