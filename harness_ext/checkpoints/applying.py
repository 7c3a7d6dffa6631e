"""Applying an unlearning checkpoint (full / delta / PEFT) to a loaded model."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from ..errors import MuseQuantError
from .reading import (EXACT_INDEX, EXACT_VALUE, PICKLE_SUFFIXES, _full_model_files, _refuse_pickle,
                      check_finite, detect_checkpoint_kind, load_state_file, read_adapter_config)
from .delta import _dtype_name, delta_base_rounding, round_parameters

log = logging.getLogger(__name__)


def parameter_aliases(model: nn.Module) -> dict[str, str]:
    """Map every parameter name, tied aliases included, to its canonical (first) name."""
    canonical: dict[int, str] = {}
    aliases: dict[str, str] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        aliases[name] = canonical.setdefault(id(param), name)
    return aliases


def _narrower_float(tensor: torch.Tensor, param: torch.Tensor) -> bool:
    return tensor.is_floating_point() and param.is_floating_point() and \
        tensor.element_size() < param.element_size()


def _widens_exactly(tensor: torch.Tensor, param: torch.Tensor, delta: bool) -> bool:
    """A narrower float checkpoint on a wider model (a bf16 unlearning run evaluated with fp32
    arithmetic): a full model's weights widen exactly; a delta only when the model's weights are
    exactly values of the delta's dtype (a bf16 checkpoint loaded in fp32, or a base rounded to
    it), so that the addition can be done in the delta's dtype, as it was written."""
    if not _narrower_float(tensor, param):
        return False
    return not delta or bool(torch.equal(param.to(tensor.dtype).to(param.dtype), param))


def _match_checkpoint(model: nn.Module, state: dict[str, torch.Tensor], where: str,
                      require_all: bool, delta: bool = False) -> dict[str, torch.Tensor]:
    """Map checkpoint keys to canonical parameter names, checking names, shapes and dtypes
    (a narrower float dtype is accepted where :func:`_widens_exactly`)."""
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
        if tensor.dtype != param.dtype and not _widens_exactly(tensor, param, delta):
            exact = " and its values are not exactly representable in it" \
                if _narrower_float(tensor, param) else ""
            raise MuseQuantError(f"{where}: {key} is {tensor.dtype}, the model's {name} is "
                                 f"{param.dtype}{exact}",
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
    from ..hashing import content_sha256

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
            # a full model replaces every weight; its rounding mark only tells diagnose which
            # target it was trained from (the base's weights need no rounding)
            rounded_to = delta_base_rounding(path)
            state = {}
            for file in _full_model_files(path):
                part = load_state_file(file, allow_pickle)
                check_finite(part, str(file))
                state.update(part)
        matched = _match_checkpoint(model, state, str(path), require_all=(kind == "full"),
                                    delta=(kind == "delta"))
        params = dict(model.named_parameters())
        update_norms = {}
        for name, tensor in matched.items():
            param = params[name]
            tensor = tensor.to(param.device)
            update = tensor if kind == "delta" else tensor - param
            update_norms[name] = float(update.float().norm())
            if kind == "delta":
                if tensor.dtype == param.dtype:
                    value = param.add_(tensor)
                else:  # a narrower delta (see _widens_exactly): add in its dtype, as written
                    value = param.to(tensor.dtype) + tensor
                if name in patches:
                    index, exact = patches[name]
                    value.view(-1)[index.to(param.device)] = exact.to(param.device, value.dtype)
                if value is not param:
                    param.copy_(value)
            else:
                param.copy_(tensor)
    report = {"kind": kind, "path": str(path), "sha256": content_sha256(path)[0],
              "tensors_changed": sum(1 for v in update_norms.values() if v > 0),
              "update_l2_norm": sum(v ** 2 for v in update_norms.values()) ** 0.5}
    if not report["tensors_changed"]:
        log.warning("the unlearned checkpoint %s changes no weight: the results will be those "
                    "of the original model (pretrained=)", path)
    if rounded_to is not None:
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
