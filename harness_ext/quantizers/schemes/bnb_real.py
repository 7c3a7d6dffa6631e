"""Real bitsandbytes layers: ``bnb-nf4-real``, ``bnb-fp4-real``, ``bnb-int8-real``.

These run bitsandbytes' own kernels, as ``from_pretrained(quantization_config=
BitsAndBytesConfig(...))`` does, instead of fake-quantized float weights:

* ``bnb-nf4-real`` / ``bnb-fp4-real``: ``BitsAndBytesConfig(load_in_4bit=True,
  bnb_4bit_quant_type="nf4"|"fp4", bnb_4bit_use_double_quant=False,
  bnb_4bit_compute_dtype=<model dtype>)``: ``bnb.nn.Linear4bit`` with blockwise absmax, block 64
  (transformers' fixed default), uint8 storage. The stored weight is bit-identical to the fake
  ``bnb-nf4``, and for FP4 to ``bnb-fp4-cpu`` on a CPU and to ``bnb-fp4`` (the CUDA kernel's
  rounding) on a GPU; only the matmul kernel differs.
* ``bnb-int8-real``: ``BitsAndBytesConfig(load_in_8bit=True)``: ``bnb.nn.Linear8bitLt`` with
  ``has_fp16_weights=False`` and LLM.int8's outlier threshold 6.0, i.e. activation columns with a
  value above 6 are multiplied in 16-bit (mixed-precision decomposition), which the fake
  ``bnb-int8`` cannot emulate. The weight is cast to float16 and quantized per row (absmax/127).

How: the unlearned checkpoint is already applied to the float model, so each selected
``nn.Linear`` is replaced in place (:func:`harness_ext.quantizers.apply.swap_module`) by the
bitsandbytes layer transformers would build (same constructor arguments as
``transformers.integrations.bitsandbytes.replace_with_bnb_linear``), holding the current weight
quantized the way transformers' loader does (``Params4bit(...).to(device)``,
``Int8Params(...).to(device)``). This avoids saving and reloading the whole model, works for
every checkpoint kind (delta, full, merged PEFT), and lets a sweep swap the float modules back.
A test checks the logits against a real ``BitsAndBytesConfig`` load.

CPU constraints (bitsandbytes 0.50): on CPUs with AVX512-BF16 (``bitsandbytes.functional.
has_avx512bf16()``), ``Linear4bit`` repacks its weight for a fused kernel at the first no-grad
forward in eval mode, which needs ``out_features % 32 == 0`` and each 64-block inside one row
(``in_features % 64 == 0``); so on CPU these are required for the 4-bit schemes (clear error
otherwise, naming the module). The repacked layer computes in bfloat16: activations, the 16 code
values and the absmax are rounded to bfloat16 (the absmax for good: the float32 one is dropped),
products are summed in float32 and the output is rounded to bfloat16. Without AVX512-BF16 the
layer dequantizes to float32 and calls ``F.linear``: the fake scheme's computation. After a
repacking forward ``weight.data`` is no longer the 4-bit format: read weights only via
:func:`dequantized_weight`. LLM.int8 has no shape constraint.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...errors import MuseQuantError
from ..base import QUANTIZERS, Quantizer
from .bnb_fake import BNB_DEFAULT_BLOCK, blockwise_4bit_quant_codes, blockwise_4bit_step

if TYPE_CHECKING:
    import torch
    from torch import nn

# transformers' BitsAndBytesConfig has no block-size option: bitsandbytes' default
BLOCK_4BIT = BNB_DEFAULT_BLOCK
CPU_PACK_ROWS = 32  # bitsandbytes' CPU packed 4-bit kernel: out_features % 32 == 0
INT8_THRESHOLD = 6.0
FAMILY = "bitsandbytes kernels (real quantized layers)"


def _bnb():
    try:
        import bitsandbytes as bnb
    except ImportError as exc:  # pragma: no cover - installed with the project
        raise MuseQuantError("the *-real schemes need bitsandbytes",
                             "pip install bitsandbytes==0.50.2") from exc
    return bnb


def dequantized_weight(module: nn.Module) -> torch.Tensor:
    """The float weight a bitsandbytes layer computes with; the module is left untouched.

    A ``Linear4bit`` that the CPU's AVX512-BF16 kernel has repacked (see the module docstring)
    computes with bf16(code) * bf16(absmax), which is returned (exact in float32); before that,
    code * absmax as stored. The repacked layout is decoded here, not via ``state_dict()``:
    bitsandbytes 0.50.2 unpacks it there in place but leaves the absmax transposed, so the
    layer's next forward would use the wrong block scales.
    """
    bnb = _bnb()
    F = bnb.functional
    quant_state = getattr(getattr(module, "weight", None), "quant_state", None)
    if isinstance(module, bnb.nn.Linear4bit) and getattr(quant_state, "packing_format_for_cpu",
                                                         False):
        return _repacked_4bit_weight(module.weight.data, quant_state)
    state = module.state_dict()
    if isinstance(module, bnb.nn.Linear4bit):
        stats = {k[len("weight."):]: v for k, v in state.items() if k.startswith("weight.")}
        quant_state = F.QuantState.from_dict(stats, device=state["weight"].device)
        return F.dequantize_4bit(state["weight"], quant_state)
    if isinstance(module, bnb.nn.Linear8bitLt):
        return F.int8_vectorwise_dequant(state["weight"], state["SCB"])
    return module.weight.detach()


def _repacked_4bit_weight(packed: torch.Tensor, quant_state) -> torch.Tensor:
    """bf16(code) * bf16(absmax) of a CPU-repacked 4-bit weight (absmax stored [K/block, N])."""
    import copy

    import torch

    F = _bnb().functional
    state = copy.copy(quant_state)  # the inverse sets attributes on the state it is given
    state.original_nested = False  # only the codes are wanted, not a re-quantized absmax
    codes, _ = F._convert_weight_packed_for_cpu_inverse(packed, state)
    codes = codes.view(torch.uint8).reshape(-1)
    index = torch.stack([codes >> 4, codes & 0xF], dim=1).reshape(-1).long()  # high nibble first
    code = quant_state.code.to(torch.bfloat16).float()[index]  # the kernel's bf16 lookup table
    absmax = quant_state.absmax.T.reshape(-1).float()
    return (code.reshape(-1, quant_state.blocksize) * absmax[:, None]).reshape(quant_state.shape)


def _frozen_with_bias(module, linear):
    """``module`` with a copy of ``linear``'s bias (if any), frozen: the end of ``make_module``."""
    from torch import nn

    if linear.bias is not None:
        module.bias = nn.Parameter(linear.bias.detach().clone(), requires_grad=False)
    module.requires_grad_(False)
    return module


class _BnbReal(Quantizer):
    fake = False
    family = FAMILY

    def __init__(self, name, args):
        super().__init__(name, args)  # no arguments
        self.compute_dtype: torch.dtype | None = None

    def config(self, dtype: torch.dtype):
        """The ``BitsAndBytesConfig`` this scheme mirrors."""
        raise NotImplementedError

    def make_module(self, linear: nn.Linear, config) -> nn.Module:
        raise NotImplementedError

    def apply(self, model, module_names, calibration=None, progress=False):
        import torch
        from torch import nn

        from ..apply import swap_module

        modules = dict(model.named_modules())
        names = list(module_names)
        if progress:
            from tqdm.auto import tqdm

            names = tqdm(names, desc=f"quantizing ({self.scheme})", leave=False)
        for name in names:
            linear = modules[name]
            if type(linear) is not nn.Linear:
                raise MuseQuantError(f"{self.scheme}: {name} is a {type(linear).__name__}, "
                                     "not a float nn.Linear", "quantize the float model")
            self.compute_dtype = linear.weight.dtype
            with torch.no_grad():
                swap_module(model, name, self.make_module(linear, self.config(linear.weight.dtype)))
        return list(module_names)

    def to_float_modules(self, model, module_names):
        """Swap the bitsandbytes layers back for ``nn.Linear``s holding their dequantized
        weights (:func:`dequantized_weight`, cast to the model's dtype)."""
        from ..apply import restore_swapped

        return restore_swapped(model, {name: dequantized_weight(model.get_submodule(name))
                                       for name in module_names})

    def describe(self):
        out = {**super().describe(), "kernels": "bitsandbytes " + _bnb().__version__}
        if self.compute_dtype is not None:
            config = self.config(self.compute_dtype).to_dict()
            out["bnb_config"] = {k: v for k, v in config.items() if not k.startswith("_")}
        return out


class _Bnb4bitReal(_BnbReal):
    kind = ""
    bits = 4

    def config(self, dtype):
        from transformers import BitsAndBytesConfig

        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=self.kind,
                                  bnb_4bit_use_double_quant=False, bnb_4bit_compute_dtype=dtype)

    def check_weight(self, module_name, weight):
        out_features, in_features = weight.shape
        if weight.device.type == "cpu" and (in_features % BLOCK_4BIT
                                            or out_features % CPU_PACK_ROWS):
            raise MuseQuantError(
                f"{self.scheme}: {module_name} has shape {out_features}x{in_features}; "
                f"bitsandbytes' CPU 4-bit kernel needs in_features divisible by the block size "
                f"{BLOCK_4BIT} and out_features divisible by {CPU_PACK_ROWS}",
                f"use the fake-quantized bnb-{self.kind} (the weights bitsandbytes computes on a "
                "GPU), run on a GPU, or skip this module")

    def make_module(self, linear, config):
        import torch

        bnb = _bnb()
        with torch.device("meta"):
            module = bnb.nn.Linear4bit(
                linear.in_features, linear.out_features, linear.bias is not None,
                config.bnb_4bit_compute_dtype,
                compress_statistics=config.bnb_4bit_use_double_quant,
                quant_type=config.bnb_4bit_quant_type,
                quant_storage=config.bnb_4bit_quant_storage)
        weight = linear.weight.detach()
        module.weight = bnb.nn.Params4bit(
            weight.clone(), requires_grad=False, blocksize=BLOCK_4BIT,
            compress_statistics=config.bnb_4bit_use_double_quant,
            quant_type=config.bnb_4bit_quant_type, quant_storage=config.bnb_4bit_quant_storage,
            module=module).to(weight.device)
        return _frozen_with_bias(module, linear)

    def quantize_weight(self, weight):
        """The weight the kernel computes with (bitsandbytes' own quantize/dequantize)."""
        F = _bnb().functional
        flat = weight.detach().reshape(-1)  # dequantize_4bit needs whole blocks per row on CPU
        packed, state = F.quantize_4bit(flat, blocksize=BLOCK_4BIT, compress_statistics=False,
                                        quant_type=self.kind)
        return F.dequantize_4bit(packed, state).reshape(weight.shape).to(weight.dtype)

    def _fake_kind(self, weight) -> str:
        """The fake kind with the rounding of the device's kernel (bnb_fake.KINDS)."""
        return self.kind if self.kind == "nf4" or weight.is_cuda else f"{self.kind}-cpu"

    def quantization_step(self, weight):
        return blockwise_4bit_step(weight, self._fake_kind(weight), BLOCK_4BIT)

    def codes(self, weight):
        """The stored 4-bit codes and float32 block absmax (those of the fake kind with the
        device's rounding; a repacked CPU layer computes with the absmax rounded to bf16)."""
        return blockwise_4bit_quant_codes(weight, self._fake_kind(weight), BLOCK_4BIT)

    def describe(self):
        return {**super().describe(), "bits": self.bits, "codebook": self.kind,
                "block_size": BLOCK_4BIT, "double_quant": False}


@QUANTIZERS.register("bnb-nf4-real")
class BnbNF4Real(_Bnb4bitReal):
    kind = "nf4"
    usage = "bnb-nf4-real"
    summary = "bitsandbytes Linear4bit NF4 kernels (BitsAndBytesConfig load_in_4bit, nf4)"
    label = "{bits}-bit NF4 (bnb kernels)"


@QUANTIZERS.register("bnb-fp4-real")
class BnbFP4Real(_Bnb4bitReal):
    kind = "fp4"
    usage = "bnb-fp4-real"
    summary = ("bitsandbytes Linear4bit FP4 kernels (BitsAndBytesConfig load_in_4bit): the "
               "paper's 4-bit")
    label = "{bits}-bit FP4 (bnb kernels)"


@QUANTIZERS.register("bnb-int8-real")
class BnbInt8Real(_BnbReal):
    usage = "bnb-int8-real"
    summary = ("bitsandbytes LLM.int8 kernels with outlier decomposition, threshold 6.0 "
               "(BitsAndBytesConfig load_in_8bit): the paper's 8-bit")
    label = "{bits}-bit (LLM.int8 kernels)"
    bits = 8

    def config(self, dtype):
        from transformers import BitsAndBytesConfig

        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_threshold=INT8_THRESHOLD)

    def make_module(self, linear, config):
        import torch

        bnb = _bnb()
        with torch.device("meta"):
            module = bnb.nn.Linear8bitLt(linear.in_features, linear.out_features,
                                         linear.bias is not None,
                                         has_fp16_weights=config.llm_int8_has_fp16_weight,
                                         threshold=config.llm_int8_threshold)
        weight = linear.weight.detach()
        module.weight = bnb.nn.Int8Params(weight.to("cpu", copy=True), requires_grad=False,
                                          has_fp16_weights=config.llm_int8_has_fp16_weight
                                          ).to(weight.device)
        return _frozen_with_bias(module, linear)

    def quantize_weight(self, weight):
        """The dequantized int8 weight: float16 cast, per-row absmax / 127 (as Int8Params)."""
        import torch

        F = _bnb().functional
        cb, scb, _ = F.int8_vectorwise_quant(weight.detach().to(torch.float16))
        return F.int8_vectorwise_dequant(cb, scb).to(weight.dtype)

    def quantization_step(self, weight):
        """Delta = max|w_row| / 127 (of the float16-cast row)."""
        import torch

        w = weight.detach().to(torch.float16).float()
        return (w.abs().amax(dim=1, keepdim=True) / 127).expand_as(w).clone()

    def codes(self, weight):
        """Int8Params' CB (-127..127) and SCB (the float16-cast row's absmax), as bnb-int8's."""
        import torch

        from ..codes import QuantCodes

        cb, scb, _ = _bnb().functional.int8_vectorwise_quant(weight.detach().to(torch.float16))
        groups = torch.arange(cb.shape[0])[:, None].expand(cb.shape)
        return QuantCodes(cb.long(), scb.float().reshape(-1), groups.clone(), (0,), 0.5 / 127)

    def describe(self):
        return {**super().describe(), "bits": self.bits, "granularity": "row",
                "outlier_threshold": INT8_THRESHOLD}
