"""Write a quantized model to disk as a plain Hugging Face directory (``muse-quant quantize``).

The model is built exactly as the ``muse_quant`` lm-eval model builds it
(:class:`harness_ext.lm.MuseQuantLM`: load, apply the unlearning checkpoint, quantize), so the
written weights are the weights that ``--model muse_quant`` evaluates. The directory holds:

* ``model.safetensors`` (or shards) + ``config.json``: the **dequantized float weights**, in the
  model's dtype, loadable with ``AutoModelForCausalLM.from_pretrained`` without this package;
* the tokenizer files;
* ``quantization.json``: the scheme's description, the modules quantized, the unlearned
  checkpoint, the dtype and the library versions. It is written last: a directory without it is
  incomplete.

Real-kernel schemes (``*-real``) swap ``nn.Linear`` for bitsandbytes layers. Their modules are
written as float ``nn.Linear``s holding the dequantized weights the kernels compute with
(:meth:`Quantizer.to_float_modules`). For 4-bit this is exactly the weight the kernel
dequantizes to. A float model with these weights computes the same products, with a different
kernel's rounding. LLM.int8 also quantizes activations (outlier decomposition), which no float
model reproduces. ``quantization.json`` says so under ``note``.
"""

from __future__ import annotations

import time
from pathlib import Path

from ..errors import MuseQuantError

REPORT_FILE = "quantization.json"
#: weight files of a previous model in the directory (removed with ``overwrite``, so that stale
#: shards cannot mix with the new weights)
_STALE_WEIGHTS = ("model*.safetensors", "model.safetensors.index.json", "pytorch_model*.bin",
                  "pytorch_model.bin.index.json", REPORT_FILE)
_VERSIONED = ("torch", "transformers", "lm_eval", "bitsandbytes", "llmcompressor",
              "compressed-tensors", "peft")


def check_out_dir(out: str | Path, overwrite: bool) -> Path:
    """Refuse a non-empty ``out`` unless ``overwrite``; with it, remove old weight files."""
    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise MuseQuantError(f"--out {out} is a file", "pass a directory")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise MuseQuantError(f"--out {out} is not empty",
                                 "choose an empty or new directory, or pass --overwrite")
        for pattern in _STALE_WEIGHTS:
            for path in out.glob(pattern):
                path.unlink()
    return out


def quantized_lm(pretrained: str, quant: str, unlearned: str | None = None, dtype: str = "auto",
                 device: str = "cpu", quant_lm_head: bool = False, allow_pickle: bool = False,
                 **calib_args):
    """The ``muse_quant`` lm-eval model (:class:`~harness_ext.lm.MuseQuantLM`) for one scheme."""
    from ..lm import MuseQuantLM

    try:
        return MuseQuantLM(pretrained=str(pretrained), unlearned=unlearned, quant=quant,
                           quant_lm_head=quant_lm_head, allow_pickle=allow_pickle, dtype=dtype,
                           device=device, batch_size=1, **calib_args)
    except OSError as exc:
        raise MuseQuantError(f"cannot load pretrained={pretrained}: {str(exc)[:300]}",
                             "pass a model directory or a hub id") from None


def export_quantized(pretrained: str, quant: str, out: str | Path, unlearned: str | None = None,
                     overwrite: bool = False, **load_args) -> dict:
    """Quantize as ``--model muse_quant`` does and write the HF directory; returns the report."""
    from ..io import package_versions, write_json
    from . import parse_scheme

    if "," in quant:
        raise MuseQuantError(f"--quant {quant!r} names several schemes",
                             "quantize writes one model: run it once per scheme")
    quantizer = parse_scheme(quant)  # a bad scheme fails before anything is loaded or removed
    out = check_out_dir(out, overwrite)
    lm = quantized_lm(pretrained, quant, unlearned=unlearned, **load_args)
    model, quantization = lm.model, lm.muse_info["quantization"]
    converted = quantizer.to_float_modules(model, quantization["modules"])
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    lm.tokenizer.save_pretrained(out)
    report = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "pretrained": str(pretrained),
        "unlearned": lm.muse_info["unlearned"],
        "quantization": quantization,
        "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
        "weights": "dequantized float weights",
        "versions": package_versions(_VERSIONED),
    }
    if converted:
        report["converted_from_kernel_layers"] = converted
        report["note"] = ("written as float nn.Linear with the weights the bitsandbytes layers "
                          "dequantize to; a float model does not reproduce their kernels' "
                          "rounding, nor LLM.int8's activation quantization")
    write_json(out / REPORT_FILE, report)
    return report
