"""Unlearning checkpoints: read, detect and apply them, and write the delta format.

* :func:`apply_unlearned` applies an unlearning checkpoint: a full model directory, a
  ``.safetensors`` weight delta (theta_u - theta_o by parameter name) or a PEFT/LoRA adapter
  directory (merged). Tied weights are changed once.
* :func:`weight_delta` / :func:`save_delta` write the delta format (``muse-quant unlearn``).

Checkpoints are read as safetensors; pickle files (``.bin``, ``.pt``) are refused unless
``allow_pickle=True``, and even then are loaded with ``torch.load(weights_only=True)``: a pickle
holding anything but tensors is refused. A checkpoint holding NaN or Inf is refused before the
model is changed; one that changes nothing is applied with a warning. The report of
:func:`apply_unlearned` (recorded in results files as ``config.muse_quant.unlearned``) carries the
checkpoint's content hash (:func:`harness_ext.hashing.content_sha256`).
Writing quantized weights back into a model lives in :mod:`harness_ext.quantizers.apply`.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

import torch
from torch import nn

from .errors import MuseQuantError

log = logging.getLogger(__name__)

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
#: key suffixes of the exact-value patches a delta file may carry (see :func:`weight_delta`)
EXACT_INDEX, EXACT_VALUE = ":exact_index", ":exact_value"
#: the delta file's one metadata key and its value; a delta taken against the target rounded to
#: a narrower dtype (``unlearn --precision bf16`` from an fp32 target) appends ROUNDED + dtype
DELTA_METADATA_KEY = "muse_quant"
DELTA_METADATA = "delta theta_u - theta_o (format pt)"
ROUNDED = "; base_rounded_to="


# --------------------------------------------------------------------------------------
# Reading checkpoints
# --------------------------------------------------------------------------------------

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


# --------------------------------------------------------------------------------------
# Applying an unlearning checkpoint
# --------------------------------------------------------------------------------------

def parameter_aliases(model: nn.Module) -> dict[str, str]:
    """Map every parameter name, tied aliases included, to its canonical (first) name."""
    canonical: dict[int, str] = {}
    aliases: dict[str, str] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        aliases[name] = canonical.setdefault(id(param), name)
    return aliases


def _match_checkpoint(model: nn.Module, state: dict[str, torch.Tensor], where: str,
                      require_all: bool) -> dict[str, torch.Tensor]:
    """Map checkpoint keys to canonical parameter names, checking names, shapes and dtypes."""
    aliases = parameter_aliases(model)
    params = dict(model.named_parameters())
    unknown = sorted(k for k in state if k not in aliases)
    if unknown:
        raise MuseQuantError(
            f"{where}: {len(unknown)} tensor name(s) are not parameters of the model, e.g. "
            f"{unknown[:3]}",
            "the checkpoint must come from the same architecture as `pretrained` (names as in "
            "model.named_parameters())",
        )
    matched: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        name = aliases[key]
        param = params[name]
        if tuple(tensor.shape) != tuple(param.shape):
            raise MuseQuantError(f"{where}: {key} has shape {tuple(tensor.shape)}, the model's "
                                 f"{name} has {tuple(param.shape)}",
                                 "use a checkpoint of the same model size")
        if tensor.dtype != param.dtype:
            raise MuseQuantError(f"{where}: {key} is {tensor.dtype}, the model's {name} is "
                                 f"{param.dtype}",
                                 f"load the model in the checkpoint's dtype (model_args "
                                 f"dtype={str(tensor.dtype).replace('torch.', '')}) or re-save "
                                 "the checkpoint")
        if name in matched:  # a tied alias appears twice: it must agree, and counts once
            if not torch.equal(matched[name], tensor):
                raise MuseQuantError(f"{where}: tied parameters {name} and {key} differ",
                                     "tied weights must hold the same values")
            continue
        matched[name] = tensor
    if require_all:
        missing = sorted(set(params) - set(matched))
        if missing:
            raise MuseQuantError(f"{where}: {len(missing)} parameter(s) are missing, e.g. "
                                 f"{missing[:3]}",
                                 "save the full model with save_pretrained, or pass a delta")
    return matched


@torch.no_grad()
def apply_unlearned(model: nn.Module, path: str | Path, allow_pickle: bool = False):
    """Apply an unlearning checkpoint in place. Returns ``(model, report)``.

    The model object is returned because merging a PEFT adapter returns the unwrapped model.
    The report has the checkpoint kind, its content hash, the number of tensors changed and
    ||theta_u - theta_o||. NaN or Inf in the checkpoint is refused before the model is changed.
    """
    from .hashing import content_sha256

    path = Path(path).expanduser()
    kind = detect_checkpoint_kind(path)
    rounded_to = None
    if kind == "peft":
        model, update_norms = _merge_peft(model, path, allow_pickle)
    else:
        patches: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        if kind == "delta":
            state = load_state_file(path, allow_pickle)
            check_finite(state, str(path))
            patches = _exact_patches(state, str(path))
            rounded_to = delta_base_rounding(path)
            if rounded_to is not None:  # the delta is relative to the rounded target
                log.warning("%s was trained from the target rounded to %s: rounding the base "
                            "model's weights to %s before applying it", path,
                            _dtype_name(rounded_to), _dtype_name(rounded_to))
                round_parameters(model, rounded_to)
        else:
            state = {}
            for file in _full_model_files(path):
                part = load_state_file(file, allow_pickle)
                check_finite(part, str(file))
                state.update(part)
        matched = _match_checkpoint(model, state, str(path), require_all=(kind == "full"))
        params = dict(model.named_parameters())
        update_norms = {}
        for name, tensor in matched.items():
            param = params[name]
            tensor = tensor.to(param.device)
            update = tensor if kind == "delta" else tensor - param
            update_norms[name] = float(update.float().norm())
            if kind == "delta":
                param.add_(tensor)
                if name in patches:
                    index, value = patches[name]
                    param.view(-1)[index.to(param.device)] = value.to(param.device, param.dtype)
            else:
                param.copy_(tensor)
    report = {"kind": kind, "path": str(path), "sha256": content_sha256(path)[0],
              "tensors_changed": sum(1 for v in update_norms.values() if v > 0),
              "update_l2_norm": sum(v ** 2 for v in update_norms.values()) ** 0.5}
    if not report["tensors_changed"]:
        log.warning("the unlearned checkpoint %s changes no weight: the results will be those "
                    "of the original model (pretrained=)", path)
    if kind == "delta" and rounded_to is not None:
        report["base_rounded_to"] = _dtype_name(rounded_to)
    log.info("applied unlearned checkpoint (%s) %s: %d tensors changed, ||delta|| = %.4g",
             kind, path, report["tensors_changed"], report["update_l2_norm"])
    return model, report


def _exact_patches(state: dict[str, torch.Tensor], where: str):
    """Pop the ``<name>:exact_index`` / ``<name>:exact_value`` pairs (see :func:`weight_delta`)."""
    patches = {}
    for key in [k for k in state if k.endswith(EXACT_INDEX)]:
        name = key[:-len(EXACT_INDEX)]
        value = state.pop(name + EXACT_VALUE, None)
        index = state.pop(key)
        if value is None or name not in state or index.shape != value.shape or \
                index.dtype != torch.int64 or (index.numel() and (
                    index.min() < 0 or index.max() >= state[name].numel())):
            raise MuseQuantError(f"{where}: {key} does not match {name}{EXACT_VALUE} / {name}",
                                 "re-write the delta with harness_ext.weights.weight_delta")
        patches[name] = (index, value)
    stray = [k for k in state if k.endswith(EXACT_VALUE)]
    if stray:
        raise MuseQuantError(f"{where}: {stray[0]} has no matching {EXACT_INDEX}",
                             "re-write the delta with harness_ext.weights.weight_delta")
    return patches


def _merge_peft(model: nn.Module, path: Path, allow_pickle: bool):
    if not (path / "adapter_model.safetensors").is_file():
        pickled = [p for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES]
        if pickled:
            _refuse_pickle(pickled[0], allow_pickle)
        else:
            raise MuseQuantError(f"{path}: adapter_config.json but no adapter weights",
                                 "save the adapter with PeftModel.save_pretrained")
    config = read_adapter_config(path)
    from peft import PeftModel

    try:
        peft_model = PeftModel.from_pretrained(model, str(path))
    except Exception as exc:
        raise MuseQuantError(
            f"{path}: the adapter does not fit the model ({type(exc).__name__}: {str(exc)[:300]})",
            f"use an adapter trained on the same base model "
            f"(adapter base: {config.get('base_model_name_or_path')})",
        ) from None
    update_norms, deltas = {}, {}
    for name, module in peft_model.named_modules():
        if hasattr(module, "get_delta_weight") and getattr(module, "active_adapters", None):
            for adapter in module.active_adapters:
                deltas[f"{name}/{adapter}"] = delta = module.get_delta_weight(adapter)
                update_norms[f"{name}/{adapter}"] = float(delta.norm())
    try:
        check_finite(deltas, str(path))
    except MuseQuantError:
        peft_model.unload()  # leave the model as it was
        raise
    return peft_model.merge_and_unload(), update_norms


# --------------------------------------------------------------------------------------
# Writing unlearning checkpoints (the delta format apply_unlearned reads)
# --------------------------------------------------------------------------------------

@torch.no_grad()
def weight_delta(unlearned: nn.Module, original: nn.Module) -> tuple[dict[str, torch.Tensor], int]:
    """theta_u - theta_o by canonical parameter name (tied weights once), on CPU.

    Each delta has the original's dtype; tensors that did not change are left out. ``original +
    delta`` (what :func:`apply_unlearned` computes) equals the unlearned weights bit for bit
    except where a weight moves to or across zero (|theta_u| much smaller than |delta|): there
    no float of the delta's width may make the addition exact (it can be off by up to half an ulp
    of the delta). For those few elements the file also holds ``<name>:exact_index`` (flat int64 positions) and
    ``<name>:exact_value`` (theta_u there), which :func:`apply_unlearned` writes after adding.
    Returns ``(tensors, n_exact_patches)``.
    """
    orig = dict(original.named_parameters())
    out: dict[str, torch.Tensor] = {}
    patched = 0
    for name, param in unlearned.named_parameters():
        if name not in orig:
            raise MuseQuantError(f"{name} is not a parameter of the original model",
                                 "compute the delta against the same architecture")
        o = orig[name].detach().cpu()
        u = param.detach().to("cpu", o.dtype)
        if torch.equal(u, o):
            continue
        d = (u.double() - o.double()).to(o.dtype)
        out[name] = d.contiguous()
        bad = ((o + d) != u).reshape(-1)
        if bad.any():
            index = bad.nonzero().reshape(-1)
            out[name + EXACT_INDEX] = index
            out[name + EXACT_VALUE] = u.reshape(-1)[index].contiguous()
            patched += int(index.numel())
    return out, patched


def save_delta(delta: dict[str, torch.Tensor], path: str | Path,
               base_rounded_to: torch.dtype | None = None) -> Path:
    """Write a delta as one ``.safetensors`` file (atomically). ``base_rounded_to``: the delta is
    relative to the target's weights rounded to that dtype (recorded in the metadata;
    :func:`apply_unlearned` rounds the base model the same way before adding)."""
    from safetensors.torch import save_file

    from .io import atomic_path

    path = Path(path)
    text = DELTA_METADATA + (ROUNDED + _dtype_name(base_rounded_to) if base_rounded_to else "")
    with atomic_path(path) as tmp:
        # one metadata key: safetensors writes a dict in random order, so two keys would make the
        # file's bytes (and its sha256) differ from run to run
        save_file(delta, str(tmp), metadata={DELTA_METADATA_KEY: text})
    return path


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def delta_base_rounding(path: str | Path) -> torch.dtype | None:
    """The dtype the delta file at ``path`` says its base must be rounded to, else None."""
    path = Path(path)
    if path.suffix != ".safetensors":
        return None
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        text = (f.metadata() or {}).get(DELTA_METADATA_KEY, "")
    if ROUNDED not in text:
        return None
    name = text.split(ROUNDED, 1)[1]
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise MuseQuantError(f"{path}: its metadata asks to round the base to {name!r}, which "
                             "is not a torch floating-point dtype",
                             "re-write the delta with `muse-quant unlearn --save delta`")
    return dtype


@torch.no_grad()
def round_parameters(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """Round every floating-point parameter of ``model`` to ``dtype`` (round to nearest even) and
    back, in place: the target ``unlearn --precision bf16`` trained from, in its stored dtype."""
    for param in model.parameters():
        if param.is_floating_point() and param.dtype != dtype:
            param.copy_(param.to(dtype).to(param.dtype))
    return model
