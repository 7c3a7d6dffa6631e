"""Writing quantized weights back into a model, and restoring the float weights.

* :func:`quantize_model` writes a quantizer's fake-quantized weights back into ``nn.Linear``s
  (:func:`write_weights` by module name, :func:`write_parameters` by parameter name, e.g. the
  RMSNorm scales AWQ changes).
* :func:`swap_module` replaces an ``nn.Linear`` by another module (real bitsandbytes layers); it
  remembers the original's structure (on the meta device, no memory) so that
  :class:`WeightSnapshot` can put float ``nn.Linear``s back.
* :class:`WeightSnapshot` keeps float weights so one loaded model can be re-quantized many times.
"""

from __future__ import annotations

import time
from typing import Iterable

import torch
from torch import nn

from ..checkpoints import parameter_aliases

def quantizable_linear_names(model: nn.Module, include_lm_head: bool = False) -> list[str]:
    """Every ``nn.Linear`` in the transformer blocks; the LM head only with ``include_lm_head``.

    Embeddings are ``nn.Embedding`` and never included. This matches what bitsandbytes' 4/8-bit
    loading converts (it skips the output embedding).
    """
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return [name for name, module in model.named_modules()
            if isinstance(module, nn.Linear) and (include_lm_head or module is not head)]


def _untie_head(model: nn.Module) -> None:
    """Give the LM head its own weight, so quantizing it leaves the input embedding alone."""
    head = model.get_output_embeddings()
    emb = model.get_input_embeddings()
    if head is not None and emb is not None and head.weight is emb.weight:
        head.weight = nn.Parameter(head.weight.detach().clone(),
                                   requires_grad=head.weight.requires_grad)
        model.config.tie_word_embeddings = False
        if hasattr(model.config, "get_text_config"):
            model.config.get_text_config().tie_word_embeddings = False


@torch.no_grad()
def write_weights(model: nn.Module, new_weights: Iterable[tuple[str, torch.Tensor]],
                  progress: bool = False, desc: str = "quantizing") -> list[str]:
    modules = dict(model.named_modules())
    written = []
    items = list(new_weights) if progress else new_weights
    if progress:
        from tqdm.auto import tqdm

        items = tqdm(items, desc=desc, leave=False)
    for name, weight in items:
        param = modules[name].weight
        if weight.shape != param.shape:
            raise RuntimeError(f"quantizer returned shape {tuple(weight.shape)} for {name}, "
                               f"expected {tuple(param.shape)}")
        param.copy_(weight.to(device=param.device, dtype=param.dtype))
        written.append(name)
    return written


@torch.no_grad()
def write_parameters(model: nn.Module, state: dict[str, torch.Tensor],
                     progress: bool = False, desc: str = "writing") -> list[str]:
    """Copy ``state`` (parameter name -> tensor; tied aliases allowed) into the model."""
    aliases = parameter_aliases(model)
    params = dict(model.named_parameters())
    unknown = sorted(k for k in state if k not in aliases)
    if unknown:
        raise RuntimeError(f"not parameters of the model: {unknown[:3]}")
    items = state.items()
    if progress:
        from tqdm.auto import tqdm

        items = tqdm(list(items), desc=desc, leave=False)
    written = []
    for name, tensor in items:
        param = params[aliases[name]]
        if tuple(tensor.shape) != tuple(param.shape):
            raise RuntimeError(f"{name}: got shape {tuple(tensor.shape)}, the model has "
                               f"{tuple(param.shape)}")
        param.copy_(tensor.to(device=param.device, dtype=param.dtype))
        written.append(name)
    return written


_SWAPPED = "_muse_quant_swapped"


def swap_module(model: nn.Module, name: str, new_module: nn.Module) -> None:
    """Put ``new_module`` at ``name``; the original's structure is kept on the meta device.

    Its weights are not kept: :meth:`WeightSnapshot.restore` rebuilds the original class there
    and writes the snapshot's float weights (biases come from the swapped-in module, which
    keeps them in float, as bitsandbytes' layers do).
    """
    old = model.get_submodule(name)
    new_module.train(old.training)  # e.g. LLM.int8 computes differently in training mode
    swapped = model.__dict__.setdefault(_SWAPPED, {})
    if name not in swapped:
        swapped[name] = old.to("meta")
    model.set_submodule(name, new_module)


@torch.no_grad()
def restore_swapped(model: nn.Module, float_weights: dict[str, torch.Tensor]) -> list[str]:
    """Put the original modules back at every :func:`swap_module`'d name.

    ``float_weights`` maps module names to their float weights (a :class:`WeightSnapshot`).
    """
    swapped = model.__dict__.get(_SWAPPED, {})
    missing = sorted(set(swapped) - set(float_weights))
    if missing:
        raise RuntimeError(f"no float weights kept for swapped modules {missing[:3]}")
    restored = []
    for name in sorted(swapped):
        current = model.get_submodule(name)
        device = next(iter(current.parameters())).device
        original = swapped.pop(name).to_empty(device=device).train(current.training)
        original.weight.copy_(float_weights[name])
        bias = getattr(current, "bias", None)
        if bias is not None:
            original.bias.copy_(bias)
        model.set_submodule(name, original)
        restored.append(name)
    return restored


def quantize_model(model: nn.Module, quantizer, include_lm_head: bool = False,
                   calibration=None, progress: bool = False) -> dict:
    """Quantize the model in place with ``quantizer``; returns the report for the results JSON."""
    if include_lm_head:
        _untie_head(model)
    names = quantizable_linear_names(model, include_lm_head)
    modules = dict(model.named_modules())
    for name in names:
        quantizer.check_weight(name, modules[name].weight)
    start = time.perf_counter()
    written = quantizer.apply(model, names, calibration, progress=progress)
    seconds = time.perf_counter() - start
    return {**quantizer.describe(), "modules": written, "n_modules": len(written),
            "quant_lm_head": include_lm_head, "seconds": round(seconds, 4)}


class WeightSnapshot:
    """A CPU copy of selected weights, to restore a model before re-quantizing it.

    ``names`` are modules whose ``.weight`` is kept; with ``other_parameters=True`` every other
    parameter is kept too (by parameter name), for quantizers that also change non-``Linear``
    parameters (AWQ rescales RMSNorm weights). :meth:`restore` also puts back float modules
    where :func:`swap_module` put quantized ones.
    """

    def __init__(self, model: nn.Module, names: Iterable[str], other_parameters: bool = False):
        modules = dict(model.named_modules())
        self.weights = {n: modules[n].weight.detach().to("cpu", copy=True) for n in names}
        self.parameters: dict[str, torch.Tensor] = {}
        # other names of a kept weight (a tied input embedding): restored from that weight,
        # also after the tie was broken (quantizing the LM head unties it)
        self.tied: dict[str, str] = {}
        if other_parameters:
            covered = {id(modules[n].weight) for n in self.weights}
            self.parameters = {n: p.detach().to("cpu", copy=True)
                               for n, p in model.named_parameters() if id(p) not in covered}
            owner = {id(modules[n].weight): n for n in self.weights}
            self.tied = {n: owner[id(p)] for n, p in model.named_parameters(remove_duplicate=False)
                         if id(p) in owner and n != f"{owner[id(p)]}.weight"}

    @torch.no_grad()
    def restore(self, model: nn.Module, only: Iterable[str] | None = None) -> None:
        """Write the kept values back; with ``only``, just those module / parameter names
        (what the last quantization changed; swapped modules are always put back)."""
        swapped = set(restore_swapped(model, self.weights))
        keep = None if only is None else set(only)
        write_weights(model, ((n, w) for n, w in self.weights.items()
                              if (keep is None or n in keep) and n not in swapped))
        params = {n: t for n, t in self.parameters.items() if keep is None or n in keep}
        params.update({n: self.weights[m] for n, m in self.tied.items()
                       if keep is None or n in keep})
        if params:
            write_parameters(model, params)

