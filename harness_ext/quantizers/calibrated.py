"""Calibrated quantizers run through llmcompressor's ``oneshot`` (shared by gptq.py and awq.py).

llmcompressor (vLLM project) is the maintained successor of AutoGPTQ and AutoAWQ. For a scheme
``<algo>:N[:g<size>]`` every selected ``nn.Linear`` gets an integer weight-only scheme (N bits,
``strategy="group"``) through ``config_groups`` that name the modules exactly, so that layers
whose input dimension is not a multiple of 128 work too:

* group size: ``g<size>`` when given (it must divide every layer's input columns), otherwise per
  layer the largest of 128, 64, 32 that divides its input columns; ``group_size_by_module`` in
  the results says which was used;
* bits: 2, 3, 4 or 8 (compressed-tensors' ``pack-quantized`` format stores all of them; the
  round trip through ``save_pretrained(save_compressed=True)`` is tested for each).

``oneshot`` runs on a deep copy of the model (the caller's model is untouched until the
write-back; memory for a second copy is needed) with the calibration windows of
:mod:`harness_ext.quantizers.calibration`. The result is written back as *dequantized* float
weights: ``Q(W) = fake_quantize(W, scale, zero_point)`` of compressed-tensors, the same values a
compressed checkpoint reloads to with ``CompressedTensorsConfig(dequantize=True)`` (tested),
plus any non-``Linear`` parameter the algorithm changed (AWQ's rescaled RMSNorm weights).
With ``quant_cache_dir=`` the written parameters are cached
(:mod:`harness_ext.quantizers.cache`).
"""

from __future__ import annotations

import copy
import logging
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from ..errors import MuseQuantError
from .base import Quantizer, parse_bits, parse_options

if TYPE_CHECKING:
    import torch
    from torch import nn

log = logging.getLogger(__name__)

GROUP_CANDIDATES = (128, 64, 32)
LLMCOMPRESSOR_BITS = (2, 3, 4, 8)
FAMILY = "calibrated (llmcompressor)"


@dataclass
class OneshotResult:
    """What one calibrated run produced (all on CPU)."""

    #: parameter name -> new value: dequantized Linear weights and other changed parameters
    state: dict[str, torch.Tensor]
    #: module name -> the float weight just before rounding (AWQ: after smoothing)
    float_weights: dict[str, torch.Tensor]
    #: module name -> per-element quantization step (the group's scale)
    steps: dict[str, torch.Tensor]
    seconds: float = 0.0
    #: the quantized copy with llmcompressor's state (only with ``keep_model=True``)
    model: nn.Module | None = None


class CalibratedQuantizer(Quantizer):
    """Base of the llmcompressor-backed schemes; subclasses define :meth:`modifiers`."""

    needs_calibration = True
    family = FAMILY
    symmetric: ClassVar[bool] = True

    def __init__(self, name, args):
        self.name, self.args = name, list(args)
        self.bits = parse_bits(self.scheme, args[0] if args else None, LLMCOMPRESSOR_BITS)
        opts = parse_options(self.scheme, args[1:], {"g": "group_size"})
        self.group_size: int | None = opts.get("group_size")
        self.group_size_by_module: dict[str, int] = {}
        self.run_info: dict = {}
        self.calibration_info: dict | None = None

    def display_label(self):
        return super().display_label() + (f" g{self.group_size}" if self.group_size else "")

    # ------------------------------------------------------------------ configuration
    def group_size_for(self, module_name: str, in_features: int) -> int:
        if self.group_size:
            if in_features % self.group_size:
                raise MuseQuantError(
                    f"bad quantization scheme {self.scheme!r}: group size {self.group_size} does "
                    f"not divide the {in_features} input columns of {module_name}",
                    f"use a group size that divides every layer's input columns, or leave out "
                    f"g<size> ({self.name}:{self.bits}) to pick 128/64/32 per layer")
            return self.group_size
        for size in GROUP_CANDIDATES:
            if in_features % size == 0:
                return size
        raise MuseQuantError(
            f"{self.scheme}: {module_name} has {in_features} input columns; none of the default "
            f"group sizes {GROUP_CANDIDATES} divides it",
            f"pass a group size that divides {in_features}, e.g. {self.name}:{self.bits}:g<size>")

    def check_weight(self, module_name, weight):
        if weight.dim() != 2:
            raise MuseQuantError(f"{self.scheme}: {module_name} has a {weight.dim()}-D weight; "
                                 f"{self.name} quantizes 2-D Linear weights only")
        self.group_size_by_module[module_name] = self.group_size_for(module_name, weight.shape[1])

    def config_groups(self, model: nn.Module, module_names: list[str]) -> dict:
        from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme

        modules = dict(model.named_modules())
        by_size: dict[int, list[str]] = defaultdict(list)
        for name in module_names:
            self.check_weight(name, modules[name].weight)
            by_size[self.group_size_by_module[name]].append(name)
        return {f"group_{size}": QuantizationScheme(
                    targets=sorted(names),
                    weights=QuantizationArgs(num_bits=self.bits, type="int",
                                             symmetric=self.symmetric, strategy="group",
                                             group_size=size))
                for size, names in sorted(by_size.items())}

    def modifiers(self, config_groups: dict) -> list:
        """llmcompressor modifiers (the recipe) for these ``config_groups``."""
        raise NotImplementedError

    def algorithm_settings(self) -> dict:
        """Settings of the algorithm recorded in the results."""
        return {}

    # ------------------------------------------------------------------ running
    def _check_calibration(self, calibration):
        if calibration is None or not calibration.windows:
            raise MuseQuantError(f"{self.scheme} needs calibration data",
                                 "build it with harness_ext.quantizers.calibration."
                                 "build_calibration (the muse_quant model does this from "
                                 "calib=...)")
        self.calibration_info = dict(calibration.describe)

    def run(self, model: nn.Module, module_names: list[str], calibration,
            keep_model: bool = False) -> OneshotResult:
        """Run the algorithm on a deep copy of ``model``; ``model`` itself is not changed."""
        self._check_calibration(calibration)
        groups = self.config_groups(model, module_names)
        import datasets
        import torch
        from compressed_tensors.quantization.lifecycle.forward import fake_quantize
        from llmcompressor import oneshot

        from .compat import patch_llmcompressor_pin_memory

        patch_llmcompressor_pin_memory()
        windows = calibration.windows
        dataset = datasets.Dataset.from_dict(
            {"input_ids": windows, "attention_mask": [[1] * len(w) for w in windows]})
        work = copy.deepcopy(model)
        start = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            # oneshot re-reads the config from config._name_or_path; point it at a local copy
            # so that it never goes to the hub.
            name_or_path = work.config._name_or_path
            work.config.save_pretrained(tmp)
            work.config._name_or_path = tmp
            try:
                oneshot(model=work, tokenizer=calibration.tokenizer, dataset=dataset,
                        recipe=self.modifiers(groups), num_calibration_samples=len(windows),
                        max_seq_length=max(len(w) for w in windows),
                        shuffle_calibration_samples=False)
            except MuseQuantError:
                raise
            except Exception as exc:
                raise MuseQuantError(
                    f"{self.scheme}: llmcompressor failed: {type(exc).__name__}: "
                    f"{str(exc)[:400]}",
                    "check the scheme and the model architecture (llmcompressor supports "
                    "decoder-only HF models)") from exc
            finally:
                work.config._name_or_path = name_or_path
        seconds = time.perf_counter() - start

        modules = dict(work.named_modules())
        state, floats, steps = {}, {}, {}
        for name in module_names:
            module = modules[name]
            weight = module.weight.detach()
            args = module.quantization_scheme.weights
            if getattr(module, "weight_g_idx", None) is not None:  # actorder="group" only
                raise RuntimeError(f"{name}: permuted groups (g_idx) are not supported")
            deq = fake_quantize(weight, module.weight_scale, module.weight_zero_point, args)
            step = module.weight_scale.detach().float().repeat_interleave(args.group_size, dim=1)
            state[f"{name}.weight"] = deq.to("cpu", dtype=weight.dtype, copy=True)
            floats[name] = weight.to("cpu", copy=True)
            steps[name] = step.to("cpu")
        original = dict(model.named_parameters())
        written = set(state)
        for pname, param in work.named_parameters():
            if pname in written or pname not in original:
                continue
            if not torch.equal(param.detach().to(original[pname].device), original[pname]):
                state[pname] = param.detach().to("cpu", copy=True)
        return OneshotResult(state=state, float_weights=floats, steps=steps, seconds=seconds,
                             model=work if keep_model else None)

    def _state(self, model, module_names, calibration) -> dict[str, torch.Tensor]:
        """The parameters to write: from ``quant_cache_dir`` when cached, else by :meth:`run`."""
        from . import cache as quant_cache

        self._check_calibration(calibration)
        modules = dict(model.named_modules())
        for name in module_names:
            self.check_weight(name, modules[name].weight)
        key = None
        if calibration.cache_dir:
            start = time.perf_counter()
            key = quant_cache.cache_key(quant_cache.model_fingerprint(model), self.scheme,
                                        module_names, calibration.describe)
            hashing = round(time.perf_counter() - start, 4)
            hit = quant_cache.load(calibration.cache_dir, key)
            path = str(quant_cache.entry_path(calibration.cache_dir, key))
            if hit is not None:
                state, info = hit
                self.run_info = {**info, "cache": {"hit": True, "path": path,
                                                   "hash_seconds": hashing}}
                log.info("%s: quantized weights from cache %s", self.scheme, path)
                return state
        result = self.run(model, module_names, calibration)
        self.run_info = {"calibration_seconds": round(result.seconds, 4)}
        if key is not None:
            quant_cache.save(calibration.cache_dir, key, result.state, self.run_info)
            self.run_info["cache"] = {"hit": False, "path": path, "hash_seconds": hashing}
        return result.state

    def apply(self, model, module_names, calibration=None, progress=False):
        from .apply import write_parameters

        state = self._state(model, module_names, calibration)
        write_parameters(model, state, progress=progress, desc=f"writing {self.scheme}")
        weights = {f"{name}.weight" for name in module_names}
        self.run_info["other_parameters_changed"] = sorted(set(state) - weights)
        return list(module_names)

    def diagnostic_weights(self, model, module_names, calibration=None):
        """Q is this quantizer calibrated on ``model`` itself (its own scales)."""
        result = self.run(model, module_names, calibration)
        for name in module_names:
            yield name, result.state[f"{name}.weight"], result.steps[name]

    def describe(self):
        sizes = self.group_size_by_module
        return {**super().describe(), "bits": self.bits, "symmetric": self.symmetric,
                "library": "llmcompressor oneshot", "group_size": self.group_size or "auto",
                "group_sizes_chosen": sorted(set(sizes.values())),
                "group_size_by_module": dict(sizes), **self.algorithm_settings(),
                "calibration": self.calibration_info, **self.run_info}
