"""Writing the delta format that :func:`.applying.apply_unlearned` reads."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..errors import MuseQuantError
from .reading import DELTA_METADATA, DELTA_METADATA_KEY, EXACT_INDEX, EXACT_VALUE, ROUNDED

#: in a full model directory written by bf16 training from a wider-stored target
BASE_ROUNDING_FILE = "muse_quant_base_rounding.json"


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

    from ..io import atomic_path

    path = Path(path)
    text = DELTA_METADATA + (ROUNDED + _dtype_name(base_rounded_to) if base_rounded_to else "")
    with atomic_path(path) as tmp:
        # one metadata key: safetensors writes a dict in random order, so two keys would make the
        # file's bytes (and its sha256) differ from run to run
        save_file(delta, str(tmp), metadata={DELTA_METADATA_KEY: text})
    return path


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def write_base_rounding(model_dir: str | Path, dtype: torch.dtype) -> Path:
    """Mark a full model directory (``unlearn --save full``) as trained from the target rounded
    to ``dtype``: :func:`delta_base_rounding` reads it, so that ``diagnose`` compares against the
    same rounded target (the weights themselves need no mark: a full model replaces them all)."""
    import json

    path = Path(model_dir) / BASE_ROUNDING_FILE
    path.write_text(json.dumps({"base_rounded_to": _dtype_name(dtype)}) + "\n")
    return path


def delta_base_rounding(path: str | Path) -> torch.dtype | None:
    """The dtype the checkpoint at ``path`` says its base was rounded to, else None: a delta
    file's metadata, or a full model directory's :data:`BASE_ROUNDING_FILE`."""
    path = Path(path)
    if path.is_dir():
        import json

        mark = path / BASE_ROUNDING_FILE
        if not mark.is_file():
            return None
        try:
            name = str(json.loads(mark.read_text())["base_rounded_to"])
        except (ValueError, KeyError, TypeError):
            raise MuseQuantError(f"{mark} is not a JSON object with a base_rounded_to dtype",
                                 "delete it, or re-write the model with `muse-quant unlearn "
                                 "--save full`") from None
        return _rounding_dtype(name, mark)
    if path.suffix != ".safetensors":
        return None
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        text = (f.metadata() or {}).get(DELTA_METADATA_KEY, "")
    if ROUNDED not in text:
        return None
    return _rounding_dtype(text.split(ROUNDED, 1)[1], path)


def _rounding_dtype(name: str, path: Path) -> torch.dtype:
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
