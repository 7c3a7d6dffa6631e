"""Reading unlearning checkpoints: safetensors (pickle only by opt-in), kind detection, PEFT
adapter configs, and the checks (finite values, an existing pretrained folder)."""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

import torch

from ..errors import MuseQuantError


log = logging.getLogger(__name__)

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
#: key suffixes of the exact-value patches a delta file may carry (see :func:`weight_delta`)
EXACT_INDEX, EXACT_VALUE = ":exact_index", ":exact_value"
#: the delta file's one metadata key and its value; a delta taken against the target rounded to
#: a narrower dtype (``unlearn --precision bf16`` from an fp32 target) appends ROUNDED + dtype
DELTA_METADATA_KEY = "muse_quant"
DELTA_METADATA = "delta theta_u - theta_o (format pt)"
ROUNDED = "; base_rounded_to="




def _refuse_pickle(path: Path, allow_pickle: bool) -> None:
    if not allow_pickle:
        raise MuseQuantError(
            f"{path} is a pickle file; loading pickles can run arbitrary code",
            "convert it to .safetensors (safetensors.torch.save_file), or, if you trust it, "
            "pass allow_pickle=True",
        )


def load_state_file(path: str | Path, allow_pickle: bool = False) -> dict[str, torch.Tensor]:
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as exc:
            raise MuseQuantError(f"{path}: not a readable safetensors file ({exc})",
                                 "re-save it with safetensors.torch.save_file") from None
    if path.suffix in PICKLE_SUFFIXES:
        _refuse_pickle(path, allow_pickle)
        try:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as exc:  # torch's text suggests weights_only=False: never say that
            detail = "; ".join(line.strip() for line in str(exc).splitlines() if line.strip()
                               and not re.search(r"weights.only|file an issue|documentation",
                                                 line, re.I))
            raise MuseQuantError(
                f"{path} contains objects other than tensors (or is not a torch checkpoint) and "
                f"was not loaded: {detail[:300] or type(exc).__name__}",
                "re-save the checkpoint's tensors as .safetensors "
                "(safetensors.torch.save_file); muse-quant loads tensors only") from None
        if not isinstance(state, dict) or not all(
                isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
            raise MuseQuantError(f"{path}: expected a dict of tensors by name, got "
                                 f"{type(state).__name__}",
                                 "save the state dict (name -> tensor) as .safetensors")
        return state
    raise MuseQuantError(f"{path}: unknown checkpoint file type {path.suffix!r}",
                         "use a .safetensors file")


def _full_model_files(directory: Path) -> list[Path]:
    shards = sorted(directory.glob("*.safetensors"))
    shards = [p for p in shards if not p.name.startswith("adapter_")]
    if shards:
        return shards
    return sorted(p for p in directory.iterdir() if p.suffix in PICKLE_SUFFIXES)


def detect_checkpoint_kind(path: str | Path) -> str:
    """``"delta"`` (a weight file), ``"peft"`` (adapter directory) or ``"full"`` (model directory)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise MuseQuantError(f"unlearned checkpoint {path} does not exist",
                             "pass unlearned=<model dir | delta .safetensors | PEFT adapter dir>")
    if path.is_file():
        return "delta"
    if (path / "adapter_config.json").is_file():
        read_adapter_config(path)
        return "peft"
    if (path / "config.json").is_file() and _full_model_files(path):
        return "full"
    raise MuseQuantError(
        f"{path} is neither a model directory (config.json + weights), a PEFT adapter directory "
        "(adapter_config.json) nor a weight-delta file",
        "pass unlearned=<model dir | delta .safetensors | PEFT adapter dir>",
    )


def read_adapter_config(path: Path) -> dict:
    """A PEFT adapter folder's ``adapter_config.json``, checked to be a JSON object with a
    ``peft_type``."""
    where = path / "adapter_config.json"
    fix = "re-save the adapter with PeftModel.save_pretrained"
    try:
        config = json.loads(where.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise MuseQuantError(f"{where} is not valid JSON ({type(exc).__name__}: "
                             f"{str(exc)[:200]})", fix) from None
    if not isinstance(config, dict) or not isinstance(config.get("peft_type"), str):
        raise MuseQuantError(f"{where} is not a PEFT adapter config (a JSON object with "
                             "\"peft_type\")", fix)
    return config


def check_finite(state: dict[str, torch.Tensor], where: str) -> None:
    """Refuse a checkpoint with NaN or Inf in a floating-point tensor (naming the tensor)."""
    for name, tensor in state.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            nan = int(torch.isnan(tensor).sum())
            inf = int(torch.isinf(tensor).sum())
            what = " and ".join(f"{n} {label}" for n, label in ((nan, "NaN"), (inf, "Inf")) if n)
            raise MuseQuantError(
                f"{where}: tensor {name} holds {what} value(s) of {tensor.numel()}; the "
                "checkpoint was not applied",
                "the unlearning run diverged or the file is damaged: re-run it (e.g. with a "
                "lower learning rate) or use an earlier checkpoint")


def check_pretrained(pretrained) -> None:
    """Fail early when ``pretrained=`` names a local folder that does not exist (a hub id is
    ``name`` or ``namespace/name``; anything else that looks like a path must be a folder)."""
    if not isinstance(pretrained, (str, Path)):
        return
    text = str(pretrained)
    path = Path(text).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise MuseQuantError(f"pretrained={text}: the folder has no config.json",
                                 "pass a folder written by save_pretrained, or a hub id")
        return
    looks_like_path = (path.exists() or text.startswith(("/", ".", "~")) or text.count("/") > 1
                       or os.sep != "/" and os.sep in text)
    if looks_like_path:
        raise MuseQuantError(f"pretrained={text}: no such model folder",
                             "pass an existing folder written by save_pretrained, or a hub id "
                             "(namespace/name)")
