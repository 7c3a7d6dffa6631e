"""``quant_cache_dir=``: keep calibrated quantizers' results, so repeated runs skip calibration.

An entry is ``<dir>/<key>.safetensors`` holding every parameter the quantizer changed (dequantized
float weights, plus e.g. AWQ's rescaled norms), with a JSON description in the safetensors
metadata. The key is the SHA-256 of:

* the checkpoint: a hash of the content (name, dtype, shape, bytes) of every parameter of the
  model *as it is about to be quantized*, i.e. the pretrained weights with the unlearned
  checkpoint already applied; any change to either gives another key;
* the scheme string and the list of modules quantized;
* the calibration description (source, sample count, sequence length and the SHA-256 of the
  token windows);
* the versions of llmcompressor and compressed-tensors and :data:`CACHE_FORMAT`.

Entries are written atomically (temp file + rename); a corrupt entry is ignored and rewritten.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import torch

log = logging.getLogger(__name__)

CACHE_FORMAT = 1


def model_fingerprint(model: torch.nn.Module) -> str:
    """SHA-256 over the content of every parameter (tied aliases once), in name order."""
    digest = hashlib.sha256()
    for name, param in sorted(model.named_parameters(), key=lambda item: item[0]):
        tensor = param.detach().to("cpu").contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _library_versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for package in ("llmcompressor", "compressed-tensors"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            out[package] = None
    return out


def cache_key(fingerprint: str, scheme: str, module_names: list[str], calibration: dict) -> str:
    payload = {"format": CACHE_FORMAT, "model": fingerprint, "scheme": scheme,
               "modules": list(module_names), "calibration": calibration,
               "libraries": _library_versions()}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def entry_path(cache_dir: str | os.PathLike, key: str) -> Path:
    return Path(cache_dir).expanduser() / f"{key}.safetensors"


def load(cache_dir, key: str) -> tuple[dict[str, torch.Tensor], dict] | None:
    """``(state, info)`` of a cache entry, or None when absent or unreadable."""
    path = entry_path(cache_dir, key)
    if not path.is_file():
        return None
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            info = json.loads((handle.metadata() or {}).get("muse_quant", "{}"))
            state = {name: handle.get_tensor(name) for name in handle.keys()}
    except Exception as exc:  # a truncated or foreign file: recompute
        log.warning("ignoring unreadable quantization cache entry %s (%s)", path, exc)
        return None
    return state, info


def save(cache_dir, key: str, state: dict[str, torch.Tensor], info: dict) -> Path:
    from safetensors.torch import save_file

    from ..io import atomic_path

    path = entry_path(cache_dir, key)
    tensors = {name: t.detach().to("cpu").contiguous() for name, t in state.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"muse_quant": json.dumps(info, default=str)})
    return path
