"""Regenerate the GGUF golden fixtures from llama.cpp itself (needs the ``gguf-ref`` extra).

    pip install -e '.[gguf-ref]'        # llama-cpp-python (bundles llama.cpp's libggml)
    python tests/data/gguf/make_golden.py --llama-cpp-src /path/to/llama.cpp

``--llama-cpp-src`` is a llama.cpp source tree with ``convert_hf_to_gguf.py`` (the one vendored
in the llama-cpp-python sdist, ``vendor/llama.cpp``, matches the library); it is only used to
convert the tiny models and stays outside this repository.

Writes, next to this file:

* ``types.npz``: seeded float32 matrices (Gaussian, tie-heavy, zero and -0.0 blocks, outliers,
  tiny / huge / denormal scales, a bf16-rounded one, rows of 256, 512 and odd lengths) and for
  every type the bytes of ``ggml_quantize_chunk(type, ..., imatrix=NULL)`` plus the SHA-256 of
  ggml's own dequantization (``type_traits->to_float``) of those bytes.
* ``mixes.json``: tiny Llama models (weights from a seeded numpy generator, :func:`tiny_state`)
  converted with ``convert_hf_to_gguf.py --outtype f32`` and quantized by
  ``llama_model_quantize`` to each file type; per tensor its GGUF type and the SHA-256 of the
  quantized bytes and of the dequantized values, rows put back in Hugging Face order (the
  converter permutes the q/k rows for rotary embeddings).

Both record the llama-cpp-python and ggml versions. ``tests/test_gguf.py`` compares the numpy
implementation with these files without llama.cpp; its ``slow`` test runs llama.cpp live.
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
GGML_TYPES = {"F16": 1, "Q4_0": 2, "Q4_1": 3, "Q5_0": 6, "Q5_1": 7, "Q8_0": 8, "Q2_K": 10,
              "Q3_K": 11, "Q4_K": 12, "Q5_K": 13, "Q6_K": 14}
K_TYPES = ("Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")
MIX_FTYPES = {"Q3_K_S": 11, "Q3_K_M": 12, "Q3_K_L": 13, "Q4_K_S": 14, "Q4_K_M": 15,
              "Q5_K_S": 16, "Q5_K_M": 17}
# tiny Llamas for the mixes: 16 layers so that every use_more_bits / n_layers/16 rule fires
MIX_MODELS = {
    "untied16": dict(hidden_size=256, intermediate_size=256, num_hidden_layers=16,
                     num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False),
    "tied2": dict(hidden_size=256, intermediate_size=384, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=True),
}
MIX_MODEL_FTYPES = {"untied16": tuple(MIX_FTYPES), "tied2": ("Q4_K_M", "Q3_K_M")}


def sha256(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


# ------------------------------------------------------------------------------------------
# inputs (also imported by tests/test_gguf.py)
# ------------------------------------------------------------------------------------------

def golden_matrices() -> dict[str, np.ndarray]:
    """The float32 test matrices (seeded; stored in types.npz, so numpy changes don't matter)."""
    rng = np.random.default_rng(20250101)
    f32 = np.float32
    out = {"gauss": (rng.standard_normal((16, 512)) * 0.02).astype(f32)}
    ties = (rng.integers(-3, 4, (8, 512)) * 0.25).astype(f32)
    ties[0, :32] = np.tile([1.0, -1.0], 16)  # |max| tie with opposite signs
    ties[1, :256] = 0.5  # constant super-block
    out["ties"] = ties
    z = (rng.standard_normal((8, 512)) * 0.1).astype(f32)
    z[0] = 0.0
    z[1, :256] = 0.0
    z[2, ::16] = 0.0
    z[3, :32] = 0.0
    z[3, 256:288] = -0.0
    z[4, :16] = 0.5  # a constant sub-block
    z[5] = -0.0
    z[6, 100:140] = 1e-20  # below GROUP_MAX_EPS
    z[7] = np.abs(z[7])  # minimum 0: the first zero is -0.0 in one block, +0.0 in the next
    z[7, 3], z[7, 9], z[7, 35], z[7, 40] = -0.0, 0.0, 0.0, -0.0
    out["zeros"] = z
    out["heavy"] = rng.standard_t(2, (8, 256)).astype(f32)
    scales = rng.standard_normal((8, 256)).astype(f32)
    scales[:2] *= f32(1e-6)
    scales[2:4] *= f32(3e4)
    scales[4:6] *= f32(1e-39)  # denormals
    scales[6:] = np.abs(scales[6:])
    out["scales"] = scales
    bf16 = (rng.standard_normal((8, 512)) * 0.02).astype(f32)
    out["bf16"] = (bf16.view(np.uint32) + 0x7FFF + ((bf16.view(np.uint32) >> 16) & 1)
                   & 0xFFFF0000).view(f32)  # round to nearest even bf16
    out["rows96"] = rng.standard_normal((4, 96)).astype(f32)  # 32-blocks only
    out["rows40"] = rng.standard_normal((4, 40)).astype(f32)  # F16 only
    return out


def applicable(type_name: str, cols: int) -> bool:
    block = 1 if type_name == "F16" else 256 if type_name in K_TYPES else 32
    return cols % block == 0


def tiny_state(config) -> dict[str, np.ndarray]:
    """Weights of a tiny Llama from a seeded numpy generator, in ``state_dict`` order."""
    from transformers import LlamaForCausalLM

    with _meta_device():
        names = {k: tuple(v.shape) for k, v in LlamaForCausalLM(config).state_dict().items()}
    rng = np.random.default_rng(7)
    state = {}
    for name, shape in names.items():
        if name == "lm_head.weight" and config.tie_word_embeddings:
            continue
        values = rng.standard_normal(shape) * 0.02
        if name.endswith("norm.weight"):
            values = 1.0 + values
        state[name] = values.astype(np.float32)
    return state


def _meta_device():
    import torch

    return torch.device("meta")


def load_tiny_model(spec: dict):
    """The tiny Llama of ``MIX_MODELS[...]`` with :func:`tiny_state` weights (float32)."""
    import torch
    from transformers import LlamaForCausalLM

    from harness_ext.toy.tiny import tiny_config

    config = tiny_config(**spec)
    model = LlamaForCausalLM(config)
    state = {k: torch.from_numpy(v) for k, v in tiny_state(config).items()}
    model.load_state_dict(state, strict=not config.tie_word_embeddings)
    if config.tie_word_embeddings:
        model.tie_weights()
    return model.float().eval()


# ------------------------------------------------------------------------------------------
# llama.cpp
# ------------------------------------------------------------------------------------------

class _TypeTraits(ctypes.Structure):
    _fields_ = [("type_name", ctypes.c_char_p), ("blck_size", ctypes.c_int64),
                ("blck_size_interleave", ctypes.c_int64), ("type_size", ctypes.c_size_t),
                ("is_quantized", ctypes.c_bool), ("to_float", ctypes.c_void_p),
                ("from_float_ref", ctypes.c_void_p)]


_TO_FLOAT = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.POINTER(ctypes.c_float), ctypes.c_int64)


def libggml():
    """llama-cpp-python's bundled ggml (the library ``llama_model_quantize`` uses)."""
    import llama_cpp

    lib_dir = Path(llama_cpp.__file__).parent / "lib"
    lib = ctypes.CDLL(str(next(lib_dir.glob("libggml-base.*"))))
    lib.ggml_quantize_chunk.restype = ctypes.c_size_t
    lib.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p,
                                        ctypes.c_int64, ctypes.c_int64, ctypes.c_int64,
                                        ctypes.c_void_p]
    lib.ggml_get_type_traits.restype = ctypes.POINTER(_TypeTraits)
    lib.ggml_row_size.restype = ctypes.c_size_t
    lib.ggml_row_size.argtypes = [ctypes.c_int, ctypes.c_int64]
    for name in ("ggml_version", "ggml_commit"):
        getattr(lib, name).restype = ctypes.c_char_p
    return lib


def versions(lib) -> dict:
    import llama_cpp

    return {"llama_cpp_python": llama_cpp.__version__,
            "ggml_version": lib.ggml_version().decode(), "ggml_commit": lib.ggml_commit().decode()}


def ggml_quantize(lib, data: np.ndarray, type_name: str) -> np.ndarray:
    data = np.ascontiguousarray(data, dtype=np.float32)
    rows, cols = data.shape
    row_size = lib.ggml_row_size(GGML_TYPES[type_name], cols)
    out = np.zeros((rows, row_size), np.uint8)
    written = lib.ggml_quantize_chunk(GGML_TYPES[type_name], data.ctypes.data, out.ctypes.data,
                                      0, rows, cols, None)
    assert written == out.size, (type_name, written, out.size)
    return out


def ggml_dequantize(lib, qdata: np.ndarray, type_name: str, n: int) -> np.ndarray:
    qdata = np.ascontiguousarray(qdata)
    out = np.zeros(n, np.float32)
    to_float = _TO_FLOAT(lib.ggml_get_type_traits(GGML_TYPES[type_name]).contents.to_float)
    to_float(qdata.ctypes.data, out.ctypes.data_as(ctypes.POINTER(ctypes.c_float)), n)
    return out


def make_types(lib) -> dict:
    arrays, meta = {}, {}
    for name, matrix in golden_matrices().items():
        arrays[f"input/{name}"] = matrix
        for type_name in GGML_TYPES:
            if not applicable(type_name, matrix.shape[1]):
                continue
            q = ggml_quantize(lib, matrix, type_name)
            arrays[f"{type_name}/{name}"] = q
            values = ggml_dequantize(lib, q, type_name, matrix.size)
            meta[f"{type_name}/{name}"] = sha256(values)
    arrays["dequantized_sha256"] = np.array(json.dumps(meta, sort_keys=True))
    arrays["versions"] = np.array(json.dumps(versions(lib), sort_keys=True))
    np.savez_compressed(HERE / "types.npz", **arrays)
    return meta


_CONVERT = """
import sys
src, model_dir, outfile = sys.argv[1:4]
sys.path[:0] = [src, src + "/gguf-py"]
from conversion import base, llama
# the toy byte-level BPE is no known model's tokenizer (and the vocabulary is not under test)
llama.LlamaModel.set_vocab = lambda self: self._set_vocab_gpt2()
base.TextModel.get_vocab_base_pre = lambda self, tokenizer: "gpt-2"
import convert_hf_to_gguf
sys.argv = ["convert_hf_to_gguf.py", model_dir, "--outtype", "f32", "--outfile", outfile]
convert_hf_to_gguf.main()
"""


def hf_rows(gguf_name: str, rows: int, config) -> np.ndarray | None:
    """Row order of the converter's q/k permutation: gguf row i is HF row ``perm[i]``."""
    if not gguf_name.endswith(("attn_q", "attn_k")):
        return None
    heads = config.num_attention_heads
    if gguf_name.endswith("attn_k"):
        heads = config.num_key_value_heads
    return np.arange(rows).reshape(heads, 2, rows // heads // 2).swapaxes(1, 2).reshape(rows)


def gguf_to_hf_name(gguf_name: str) -> str:
    from harness_ext.quantizers.schemes.gguf import _BLOCK_NAMES

    if gguf_name == "token_embd":
        return "model.embed_tokens"
    if gguf_name == "output":
        return "lm_head"
    _, layer, kind = gguf_name.split(".")
    hf = {v: k for k, v in _BLOCK_NAMES.items()}[kind]
    return f"model.layers.{layer}.{hf}"


def read_quantized(lib, path: Path, config) -> dict:
    from gguf import GGUFReader

    out = {}
    for tensor in GGUFReader(str(path)).tensors:
        name = tensor.name.removesuffix(".weight")
        if len(tensor.shape) != 2 or "norm" in name:
            continue
        type_name = tensor.tensor_type.name
        rows, cols = int(tensor.shape[1]), int(tensor.shape[0])
        data = np.asarray(tensor.data).view(np.uint8).reshape(rows, -1)
        if type_name == "F32":
            values = data.view(np.float32).reshape(rows, cols)
        else:
            values = ggml_dequantize(lib, data, type_name, rows * cols).reshape(rows, cols)
        perm = hf_rows(name, rows, config)
        if perm is not None:  # back to the Hugging Face row order
            data_hf, values_hf = np.empty_like(data), np.empty_like(values)
            data_hf[perm], values_hf[perm] = data, values
            data, values = data_hf, values_hf
        out[name] = {"hf": gguf_to_hf_name(name), "type": type_name, "shape": [rows, cols],
                     "bytes_sha256": sha256(data), "values_sha256": sha256(values)}
    return out


def make_mixes(lib, llama_cpp_src: Path) -> dict:
    import llama_cpp

    from harness_ext.toy.tiny import load_tokenizer, save_model

    result = {"versions": versions(lib), "models": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for key, spec in MIX_MODELS.items():
            model = load_tiny_model(spec)
            model_dir, f32 = Path(tmp) / key, Path(tmp) / f"{key}-f32.gguf"
            save_model(model, load_tokenizer(), model_dir)
            subprocess.run([sys.executable, "-c", _CONVERT, str(llama_cpp_src), str(model_dir),
                            str(f32)], check=True, env={**os.environ, "NO_LOCAL_GGUF": "1"})
            entry = {"spec": spec, "inputs_sha256": {
                k: sha256(v) for k, v in tiny_state(model.config).items()}, "files": {}}
            for ftype in MIX_MODEL_FTYPES[key]:
                out = Path(tmp) / f"{key}-{ftype}.gguf"
                params = llama_cpp.llama_model_quantize_default_params()
                params.ftype = MIX_FTYPES[ftype]
                params.nthread = 2
                rc = llama_cpp.llama_model_quantize(str(f32).encode(), str(out).encode(),
                                                    ctypes.byref(params))
                assert rc == 0, f"llama_model_quantize failed for {ftype}: {rc}"
                entry["files"][ftype] = read_quantized(lib, out, model.config)
            result["models"][key] = entry
    (HERE / "mixes.json").write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
    return result


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--llama-cpp-src", type=Path, required=True,
                        help="llama.cpp source tree with convert_hf_to_gguf.py")
    parser.add_argument("--skip-mixes", action="store_true")
    args = parser.parse_args(argv)
    lib = libggml()
    make_types(lib)
    if not args.skip_mixes:
        make_mixes(lib, args.llama_cpp_src.resolve())
    print("wrote", ", ".join(str(p) for p in sorted(HERE.glob("*.np*")) + [HERE / "mixes.json"]))


if __name__ == "__main__":
    main()
