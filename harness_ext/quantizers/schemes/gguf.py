"""llama.cpp's GGUF formats as fake quantization, bit-identical to ``llama-quantize``.

* ``gguf:<type>`` with type ``q4_0 q4_1 q5_0 q5_1 q8_0 q2_k q3_k q4_k q5_k q6_k``: every
  quantized ``nn.Linear`` (the transformer blocks; the LM head too with ``quant_lm_head``) is
  quantized to that ggml type, as ``ggml_quantize_chunk`` does without an importance matrix, and
  dequantized back.
* ``gguf:<mix>`` with mix ``q3_k_s q3_k_m q3_k_l q4_k_s q4_k_m q5_k_s q5_k_m``: what
  ``llama_model_quantize`` writes for that file type (no imatrix). The type of each tensor
  follows ``llama_tensor_get_type`` for a Llama-architecture model: the output (LM head) is Q6_K,
  attn_v / ffn_down get more bits in the layers ``use_more_bits`` picks (Q4_K_M, Q5_K_M), Q3_K_M
  raises attn_v, attn_output and ffn_down, and the **token embedding is quantized too** (it is
  part of the file). With tied embeddings (no output tensor in the file; also an LM head whose
  values equal the embedding, as after the harness untied it) the single shared tensor is the
  token embedding and gets the output's type. A mix always quantizes the output and the
  embedding, whatever ``quant_lm_head`` says, because a GGUF file does.

Both: a tensor whose rows are not a multiple of the type's block size falls back to another type
as llama.cpp does (Q2_K/Q3_K -> Q4_0, Q4_K -> Q5_0, Q5_K -> Q5_1, Q6_K -> Q8_0, and F16 when even
32 does not divide the row). :meth:`GGUF.describe` records each tensor's GGUF name, chosen type
and any fallback. The source values are the weight in float32 (exact for fp32/bf16/fp16
weights: what ``convert_hf_to_gguf.py`` writes with ``--outtype f32``, or ``auto`` for bf16/fp16
models); the dequantized values are cast back to the weight's dtype. The q/k row permutation of
the converter moves whole rows, so quantizing in the Hugging Face layout gives the same values.
The kernels are in :mod:`harness_ext.quantizers.gguf_kquants`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

from ..base import QUANTIZERS, Quantizer, bad_scheme
from ...errors import MuseQuantError


def _kq():
    """The numpy K-quant module, imported on first use (describing a scheme needs no numpy)."""
    from .. import gguf_kquants

    return gguf_kquants

SINGLE_TYPES = ("q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "q2_k", "q3_k", "q4_k", "q5_k", "q6_k")
MIXES = ("q3_k_s", "q3_k_m", "q3_k_l", "q4_k_s", "q4_k_m", "q5_k_s", "q5_k_m")

# llama.cpp's tensor_type_fallback for rows that are not a multiple of the block size
_FALLBACK = {"Q2_K": "Q4_0", "Q3_K": "Q4_0", "Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0"}
_BLOCK_NAMES = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
                "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
                "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
                "mlp.down_proj": "ffn_down"}
_BLOCK_RE = re.compile(r"(?:^|\.)layers\.(\d+)\.(" + "|".join(
    re.escape(k) for k in _BLOCK_NAMES) + r")$")


def shape_fallback(ggml_type: str, n_per_row: int) -> str:
    """The type llama.cpp uses when ``n_per_row`` does not fit ``ggml_type``'s blocks."""
    if n_per_row % _kq().BLOCK_SIZES[ggml_type][0] == 0:
        return ggml_type
    other = _FALLBACK.get(ggml_type, ggml_type)
    return other if n_per_row % _kq().BLOCK_SIZES[other][0] == 0 else "F16"


def use_more_bits(i_layer: int, n_layers: int) -> bool:
    """llama.cpp's choice of layers that get more bits: the first and last eighth, and every
    third layer in between."""
    return (i_layer < n_layers // 8 or i_layer >= 7 * n_layers // 8
            or (i_layer - n_layers // 8) % 3 == 2)


def mix_type(mix: str, category: str, i_layer: int | None, n_layers: int, n_per_row: int,
             tied: bool = False, is_70b: bool = False) -> str:
    """``llama_tensor_get_type_impl`` for a K-quant file type (before the shape fallback).

    ``category`` is the GGUF tensor kind: ``output``, ``token_embd``, ``attn_q`` ...
    ``ffn_down``; ``i_layer`` the block index (llama.cpp's attn_v / ffn_down counters, which
    follow the layer order).
    """
    default = {"q3": "Q3_K", "q4": "Q4_K", "q5": "Q5_K"}[mix[:2]]
    if category == "output" or (tied and category == "token_embd"):
        return "Q8_0" if n_per_row % _kq().QK_K else "Q6_K"
    new = default
    if category == "attn_v":
        if mix == "q3_k_m":
            new = "Q5_K" if i_layer < 2 else "Q4_K"
        elif mix == "q3_k_l":
            new = "Q5_K"
        elif mix in ("q4_k_m", "q5_k_m") and use_more_bits(i_layer, n_layers):
            new = "Q6_K"
        elif mix == "q4_k_s" and i_layer < 4:
            new = "Q5_K"
        if is_70b and new in ("Q3_K", "Q4_K"):  # 8 heads share attn_v in Llama-2-70B
            new = "Q5_K"
    elif category == "ffn_down":
        if mix == "q3_k_m":
            new = "Q5_K" if i_layer < n_layers // 16 else "Q4_K"
        elif mix == "q3_k_l":
            new = "Q5_K"
        elif mix in ("q4_k_m", "q5_k_m") and use_more_bits(i_layer, n_layers):
            new = "Q6_K"
        elif mix == "q4_k_s" and i_layer < n_layers // 8:
            new = "Q5_K"
    elif category == "attn_output":
        new = {"q3_k_m": "Q4_K", "q3_k_l": "Q5_K"}.get(mix, new)
    return new


def gguf_block_name(module_name: str) -> tuple[str, int] | None:
    """``model.layers.3.self_attn.v_proj`` -> (``blk.3.attn_v``, 3); None if not a block Linear."""
    match = _BLOCK_RE.search(module_name)
    if match is None:
        return None
    layer = int(match.group(1))
    return f"blk.{layer}.{_BLOCK_NAMES[match.group(2)]}", layer


def fake_quantize_tensor(weight: torch.Tensor, ggml_type: str) -> torch.Tensor:
    """Quantize ``weight`` (2-D) to ``ggml_type`` in float32, dequantize, cast back."""
    import torch

    source = weight.detach().to("cpu", torch.float32).numpy()
    return torch.from_numpy(_kq().fake_quantize(source, ggml_type)).to(weight.dtype)


def tensor_codes(weight: torch.Tensor, ggml_type: str, qdata=None):
    """The :class:`~harness_ext.quantizers.codes.QuantCodes` of ``weight`` quantized to
    ``ggml_type`` (its blocks' levels, scales and mins; :mod:`harness_ext.quantizers.gguf_codes`).

    Symmetric types (Q4_0 Q5_0 Q8_0 Q3_K Q6_K): zero code 0, edge half a step. Types with a min
    (Q4_1 Q5_1 Q2_K Q4_K Q5_K): per sub-block, the level nearest the value 0 and the distance to
    its rounding boundary. The F16 fallback: the fp16 values' ranks, one group per row of scale
    1, edge half the smallest fp16 subnormal (2^-25).
    """
    import torch

    from .. import gguf_codes
    from ..codes import grid_codes

    if qdata is None:
        qdata = _kq().quantize(weight.detach().to("cpu", torch.float32).numpy(), ggml_type)
    if ggml_type == "F16":
        ranks = gguf_codes.f16_ranks(_kq().dequantize(qdata, "F16"))
        return grid_codes(torch.from_numpy(ranks), torch.ones(weight.shape[0]), weight.shape,
                          edge=2.0 ** -25)
    levels, scale, offset = gguf_codes.block_levels(qdata, ggml_type)
    _, lo, hi, _ = gguf_codes.GROUPS[ggml_type]
    return grid_codes(torch.from_numpy(levels), torch.from_numpy(scale), weight.shape,
                      None if offset is None else torch.from_numpy(offset), (lo, hi))


def quantized_with_step(weight: torch.Tensor, ggml_type: str):
    """``(Q(W), Delta)`` from one quantization: Delta = |the scale of the element's group| (the
    fp16 spacing of the value for F16)."""
    import numpy as np
    import torch

    qdata = _kq().quantize(weight.detach().to("cpu", torch.float32).numpy(), ggml_type)
    values = _kq().dequantize(qdata, ggml_type)
    if ggml_type == "F16":
        step = np.abs(np.spacing(values.astype(np.float16))).astype(np.float32)
        return torch.from_numpy(values).to(weight.dtype), torch.from_numpy(step)
    codes = tensor_codes(weight, ggml_type, qdata)
    return torch.from_numpy(values).to(weight.dtype), codes.element_scales().clone()


@dataclass
class PlannedTensor:
    """One tensor of the emulated GGUF file and where its dequantized values go."""

    gguf_name: str
    weight: torch.Tensor
    ggml_type: str
    requested_type: str
    modules: list[str] = field(default_factory=list)      # Linear modules (write_weights)
    parameters: list[str] = field(default_factory=list)   # other parameters (the embedding)

    def record(self) -> dict:
        out = {"type": self.ggml_type, "shape": list(self.weight.shape),
               "written_to": self.modules + self.parameters}
        if self.requested_type != self.ggml_type:
            out["fallback_from"] = self.requested_type
        return out


@QUANTIZERS.register("gguf")
class GGUF(Quantizer):
    usage = "gguf:TYPE"
    family = "GGUF (llama.cpp), bit-exact"
    label = "GGUF {type}"
    summary = ("llama.cpp GGUF formats, bit-exact (no imatrix): TYPE = q4_0 q4_1 q5_0 q5_1 q8_0 "
               "q2_k q3_k q4_k q5_k q6_k (block Linears) or the llama-quantize mixes q3_k_s/m/l "
               "q4_k_s/m q5_k_s/m (per-tensor types, output and token embedding included)")

    def __init__(self, name, args):
        self.name, self.args = name, list(args)
        if len(args) != 1:
            raise bad_scheme(self.scheme, "expected one argument, the GGUF type or file type")
        kind = args[0].lower()
        if kind not in SINGLE_TYPES + MIXES:
            raise bad_scheme(self.scheme, f"unknown GGUF type {args[0]!r} (known: "
                             f"{', '.join(SINGLE_TYPES + MIXES)})")
        self.mix = kind if kind in MIXES else None
        self.ggml_type = None if self.mix else kind.upper()
        self.bits = int(kind[1])  # nominal: the digit of the type name (q4_k_m -> 4)
        if self.mix:
            self.modules = "block linears, the output and the token embedding (per-tensor types)"
        self.tensors: dict[str, dict] = {}
        self.module_types: dict[str, str] = {}  # Linear module -> its ggml type (last plan)
        self.other_parameters_changed: list[str] = []
        self.tied_embeddings: bool | None = None

    def display_label(self) -> str:
        return self.label.format(type=self.args[0].upper())

    # -- per tensor ---------------------------------------------------------------------
    def check_weight(self, module_name, weight):
        if weight.dim() != 2:
            raise MuseQuantError(f"{self.scheme}: {module_name} has a {weight.dim()}-D weight; "
                                 "GGUF quantizes rows of 2-D weights")

    def _single_type(self, weight) -> str:
        if self.mix:
            raise MuseQuantError(f"{self.scheme} chooses a type per tensor from its name",
                                 "quantize a whole model (quantize_model / quantized_weights)")
        self.check_weight("weight", weight)
        return shape_fallback(self.ggml_type, weight.shape[-1])

    def quantize_weight(self, weight):
        return fake_quantize_tensor(weight, self._single_type(weight))

    def quantization_step(self, weight):
        """Delta = |the scale of the element's block / sub-block| (Q4_K: d * sc of its 32)."""
        return quantized_with_step(weight, self._single_type(weight))[1]

    def codes(self, weight):
        """The levels and (sub-)block scales and mins of the GGUF blocks (:func:`tensor_codes`)."""
        return tensor_codes(weight, self._single_type(weight))

    def module_codes(self, module_name, weight):
        """The codes of ``module_name`` at the type the last plan chose for it (mixes)."""
        if module_name in self.module_types:
            return tensor_codes(weight, self.module_types[module_name])
        return self.codes(weight)

    # -- the file ------------------------------------------------------------------------
    def plan(self, model: torch.nn.Module, module_names: list[str]) -> list[PlannedTensor]:
        """Every tensor this scheme quantizes, with its GGUF name and type."""
        modules = dict(model.named_modules())
        if not self.mix:
            out = []
            for name in module_names:
                weight = modules[name].weight.detach()
                gguf = gguf_block_name(name)
                out.append(PlannedTensor(gguf[0] if gguf else name, weight,
                                         shape_fallback(self.ggml_type, weight.shape[-1]),
                                         self.ggml_type, modules=[name]))
            return out
        return self._plan_mix(model, modules, module_names)

    def _plan_mix(self, model, modules, module_names):
        import torch

        head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        emb = model.get_input_embeddings()
        head_name = next((n for n, m in modules.items() if m is head), None)
        emb_param = next(n for n, p in model.named_parameters(remove_duplicate=False)
                         if p is emb.weight)
        tied = head is None or head.weight is emb.weight or (
            head.weight.shape == emb.weight.shape and torch.equal(head.weight, emb.weight))
        self.tied_embeddings = tied
        config = getattr(model, "config", None)
        blocks = {}
        for name in module_names:
            if name == head_name:
                continue
            gguf = gguf_block_name(name)
            if gguf is None:
                raise MuseQuantError(
                    f"{self.scheme}: no GGUF tensor name for module {name!r}",
                    "GGUF file-type mixes know Llama-style modules (self_attn.{q,k,v,o}_proj, "
                    "mlp.{gate,up,down}_proj); use a single type such as gguf:q4_k")
            blocks[name] = gguf
        n_layers = getattr(config, "num_hidden_layers", None) or 1 + max(
            (layer for _, layer in blocks.values()), default=0)
        is_70b = (getattr(config, "model_type", None) == "llama" and n_layers == 80
                  and config.num_key_value_heads != config.num_attention_heads)

        def planned(gguf_name, weight, category, layer=None, **where):
            requested = mix_type(self.mix, category, layer, n_layers, weight.shape[-1], tied,
                                 is_70b)
            return PlannedTensor(gguf_name, weight, shape_fallback(requested, weight.shape[-1]),
                                 requested, **where)

        # llama.cpp's order: token_embd / output first, then the blocks by layer and name
        out = []
        if tied:
            targets = {"modules": [head_name]} if head is not None else {"modules": []}
            if head is None or head.weight is not emb.weight:
                targets["parameters"] = [emb_param]
            out.append(planned("token_embd", emb.weight.detach(), "token_embd", **targets))
        else:
            out.append(planned("output", head.weight.detach(), "output", modules=[head_name]))
            out.append(planned("token_embd", emb.weight.detach(), "token_embd",
                               parameters=[emb_param]))
        for name, (gguf_name, layer) in sorted(blocks.items(), key=lambda kv: (kv[1][1], kv[1][0])):
            out.append(planned(gguf_name, modules[name].weight.detach(), gguf_name.split(".")[-1],
                               layer, modules=[name]))
        return out

    def _record(self, plan: list[PlannedTensor]) -> None:
        self.tensors = {p.gguf_name: p.record() for p in plan}
        self.module_types = {name: p.ggml_type for p in plan for name in p.modules}
        self.other_parameters_changed = sorted(n for p in plan for n in p.parameters)

    # -- model-level interface ----------------------------------------------------------
    def quantized_weights(self, model, module_names, calibration=None):
        """``(module name, dequantized weight)`` of the Linear modules (not the embedding); a
        mix also yields the LM head, which it always quantizes."""
        plan = self.plan(model, module_names)
        self._record(plan)
        for item in plan:
            if item.modules:
                quantized = fake_quantize_tensor(item.weight, item.ggml_type)
                for name in item.modules:
                    yield name, quantized

    def diagnostic_weights(self, model, module_names, calibration=None):
        """Q(W) of ``module_names`` as the scheme quantizes them in the model, and Delta (the
        element's block scale at the tensor's type). The token embedding, which a mix also
        quantizes, is no Linear and is not diagnosed."""
        wanted = set(module_names)
        plan = self.plan(model, module_names)
        self._record(plan)
        for item in plan:
            names = [name for name in item.modules if name in wanted]
            if names:
                quantized, step = quantized_with_step(item.weight, item.ggml_type)
                for name in names:
                    yield name, quantized, step

    def apply(self, model, module_names, calibration=None, progress=False):
        from ..apply import write_parameters, write_weights

        plan = self.plan(model, module_names)

        def linear_weights():  # one tensor at a time; the embedding is written on the way
            for item in plan:
                quantized = fake_quantize_tensor(item.weight, item.ggml_type)
                if item.parameters:
                    write_parameters(model, dict.fromkeys(item.parameters, quantized))
                for name in item.modules:
                    yield name, quantized

        written = write_weights(model, linear_weights(), progress=progress,
                                desc=f"quantizing ({self.scheme})")
        self._record(plan)
        return written

    def describe(self):
        out = {**super().describe(), "bits": self.bits, "reference": "llama.cpp ggml_quantize_chunk without "
               "importance matrix (ggml-quants.c reference quantizers)"}
        if self.mix:
            out.update(file_type=self.mix.upper(), tied_embeddings=self.tied_embeddings,
                       other_parameters_changed=self.other_parameters_changed)
        else:
            out["ggml_type"] = self.ggml_type
        if self.tensors:
            counts: dict[str, int] = {}
            for info in self.tensors.values():
                counts[info["type"]] = counts.get(info["type"], 0) + 1
            out.update(type_counts=dict(sorted(counts.items())), tensors=self.tensors)
        return out
