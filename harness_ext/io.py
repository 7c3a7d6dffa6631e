"""Small shared helpers, one of each: atomic writes, results files, scheme <-> file name,
``model_args`` parsing.

lm-eval results files as this project writes and reads them (sweeps, leaderboard, demo):

A sweep writes one lm-eval results JSON per quantization scheme, named by
:func:`scheme_filename` (``bnb-fp4`` -> ``bnb-fp4.json``, ``rtn:4:g128`` -> ``rtn_4_g128.json``;
scheme names never contain ``_``, so the mapping is reversible).
"""

from __future__ import annotations

import json
import os
import uuid
from contextlib import contextmanager
from pathlib import Path

from .errors import MuseQuantError


def scheme_filename(scheme: str) -> str:
    if "_" in scheme or "/" in scheme:
        raise MuseQuantError(f"scheme {scheme!r} cannot be used as a file name",
                             "scheme strings use ':' and '-' only")
    return scheme.replace(":", "_") + ".json"


def scheme_from_filename(name: str) -> str:
    stem = Path(name).name
    if not stem.endswith(".json"):
        raise MuseQuantError(f"{name}: results files are named <scheme>.json")
    return stem[:-len(".json")].replace("_", ":")


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
