"""Small shared helpers, one of each: atomic writes, lock files, results files, scheme <-> file
name.

lm-eval results files as this project writes and reads them (sweeps, leaderboard, demo):

A sweep writes one lm-eval results JSON per quantization scheme, named by
:func:`scheme_filename` (``bnb-fp4`` -> ``bnb-fp4.json``, ``rtn:4:g128`` -> ``rtn_4_g128.json``,
``gguf:q4_k_m`` -> ``gguf_q4__k__m.json``: ``:`` becomes ``_`` and ``_`` becomes ``__``; a ``_``
next to a ``:`` or at either end is refused, so the mapping is reversible).
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

from .errors import MuseQuantError


def scheme_filename(scheme: str) -> str:
    """``rtn:4:g128`` -> ``rtn_4_g128.json``; ``gguf:q4_k_m`` -> ``gguf_q4__k__m.json``."""
    if ("/" in scheme or "\\" in scheme or "_:" in scheme or ":_" in scheme
            or scheme.startswith("_") or scheme.endswith("_")):
        raise MuseQuantError(f"scheme {scheme!r} cannot be used as a file name",
                             "scheme strings use ':' between arguments and no '/'")
    return scheme.replace("_", "__").replace(":", "_") + ".json"


def scheme_from_filename(name: str) -> str:
    """The inverse of :func:`scheme_filename`."""
    stem = Path(name).name
    if not stem.endswith(".json"):
        raise MuseQuantError(f"{name}: results files are named <scheme>.json")
    return stem[:-len(".json")].replace("__", "\0").replace("_", ":").replace("\0", "_")


def load_results(path: str | Path) -> dict:
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise MuseQuantError(f"{path}: not a readable results JSON ({exc})") from None
    if not isinstance(data, dict) or "results" not in data:
        raise MuseQuantError(f"{path}: not an lm-eval results file (no 'results' key)")
    return data


def recorded_scheme(results: dict) -> str | None:
    """The quantization scheme a ``muse_quant`` results file was produced with."""
    quant = ((results.get("config") or {}).get("muse_quant") or {}).get("quantization") or {}
    return quant.get("scheme")


def metric(results: dict, task: str, key: str, filter_name: str = "none"):
    """``results["results"][task]["<key>,<filter>"]``, or None when absent."""
    return (results.get("results", {}).get(task) or {}).get(f"{key},{filter_name}")


@contextmanager
def atomic_path(path: str | Path):
    """Yield a unique temporary path beside ``path``; on success it is renamed onto ``path``.

    An interrupted or failed write never leaves half a file at ``path``, and two processes
    writing the same file never share a temporary name. The temporary name keeps the suffix
    (``savefig`` and ``save_file`` read the format from it).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp{path.suffix}")
    try:
        yield tmp
        tmp.replace(path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (:func:`atomic_path`)."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_json(path: str | Path, data) -> Path:
    """Write JSON atomically (temp file + rename), so an interrupted run never leaves half a file."""
    text = json.dumps(data, indent=2, default=str, ensure_ascii=False) + "\n"
    return write_bytes(path, text.encode("utf-8"))


# ------------------------------------------------------------------------------ lock files
def _lock_holder(path: Path) -> dict | None:
    try:
        holder = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return holder if isinstance(holder, dict) else None


def _holder_is_dead(holder: dict | None) -> bool:
    """True only when the holder ran on this host and its process no longer exists."""
    if not holder or holder.get("host") != socket.gethostname() or \
            not isinstance(holder.get("pid"), int) or holder["pid"] <= 0:
        return False
    try:
        os.kill(holder["pid"], 0)
    except ProcessLookupError:
        return True
    except OSError:  # e.g. PermissionError: it exists, owned by someone else
        return False
    return False


def _remove_stale(path: Path, holder: dict) -> None:
    """Remove a dead holder's lock file, unless another process replaced it meanwhile."""
    aside = path.with_name(f"{path.name}.stale.{uuid.uuid4().hex[:8]}")
    try:
        os.rename(path, aside)  # atomic: of several processes, one takes it
    except FileNotFoundError:
        return
    if _lock_holder(aside) != holder:  # a live lock was taken in between: put it back
        try:
            os.link(aside, path)
        except FileExistsError:
            pass
    aside.unlink()


def acquire_lock(path: str | Path, what: str) -> dict:
    """Create the lock file ``path`` (``O_CREAT | O_EXCL``) holding this process's pid and host.

    A lock left by a process that died on this host is removed and taken; a live holder (or one
    on another host, which cannot be checked) raises :class:`MuseQuantError` naming it. Returns
    the holder record to pass to :func:`release_lock`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    me = {"pid": os.getpid(), "host": socket.gethostname(), "what": what,
          "since": time.strftime("%Y-%m-%dT%H:%M:%S"), "token": uuid.uuid4().hex}
    for attempt in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _lock_holder(path)
            if attempt < 2 and _holder_is_dead(holder):
                _remove_stale(path, holder)
                continue
            who = (f"pid {holder.get('pid')} on {holder.get('host')}, since "
                   f"{holder.get('since')}" if holder else "a process that is starting or died")
            raise MuseQuantError(f"{path.parent} is in use: {what} is locked by {who} ({path})",
                                 f"wait for it to finish, or use another folder; if no such "
                                 f"process is running, delete {path}") from None
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(me, fh)
        return me
    raise MuseQuantError(f"could not take the lock {path}", f"delete {path} and run again")


def release_lock(path: str | Path, holder: dict) -> None:
    """Remove the lock file if it is still ``holder``'s."""
    path = Path(path)
    if _lock_holder(path) == holder:
        path.unlink()


@contextmanager
def file_lock(path: str | Path, what: str, wait_seconds: float = 0.0):
    """Hold the lock file ``path`` for the ``with`` block; retry for ``wait_seconds`` while a
    live process holds it (for locks that are only held for a moment)."""
    deadline = time.monotonic() + wait_seconds
    while True:
        try:
            holder = acquire_lock(path, what)
            break
        except MuseQuantError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.05)
    try:
        yield holder
    finally:
        release_lock(path, holder)


def lock_is_held(path: str | Path) -> bool:
    """True when the lock file ``path`` exists and its holder may be alive."""
    path = Path(path)
    return path.exists() and not _holder_is_dead(_lock_holder(path))


def package_versions(distributions) -> dict:
    """``{name: installed version or None}`` for each distribution, plus ``harness_ext``."""
    from importlib.metadata import PackageNotFoundError, version

    from . import __version__

    out = {"harness_ext": __version__}
    for name in distributions:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def parse_kv(text, what: str = "--model_args", fix: str | None = None) -> dict:
    """lm-eval's ``k=v,k=v`` (``--model_args``) as a dict, values typed as lm-eval types them
    (``lm_eval.utils.handle_arg_string``: ``true``/``false``, integers, floats, else the string).
    A dict is returned as a copy; an empty text gives ``{}``. A fragment without ``=`` raises
    :class:`MuseQuantError` naming ``what`` (with ``fix`` as the hint)."""
    if isinstance(text, dict):
        return dict(text)
    from lm_eval.utils import handle_arg_string

    args = {}
    for fragment in [f for f in str(text or "").split(",") if f.strip()]:
        if "=" not in fragment:
            raise MuseQuantError(f"{what} fragment {fragment!r} is not key=value",
                                 fix or f"{what} is a comma-separated list of key=value pairs")
        key, value = fragment.split("=", 1)
        args[key.strip()] = handle_arg_string(value)
    return args
