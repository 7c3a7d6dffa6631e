"""Write the quantized (and optionally unlearned) model as a plain Hugging Face directory.

  muse-quant quantize --pretrained DIR [--unlearned CKPT] --quant SCHEME --out DIR [--overwrite]
      [--dtype auto] [--calib generic|forget|retain|FILE]

The model is loaded, unlearned and quantized exactly as `--model muse_quant` does for lm-eval,
and written with its **dequantized float weights** (safetensors), config and tokenizer, plus
`quantization.json` (the scheme, the modules quantized, the unlearned checkpoint, versions).
Load it elsewhere with `AutoModelForCausalLM.from_pretrained(DIR)` to inspect, diff or
evaluate it. Real-kernel schemes (`*-real`) are written as float layers holding the weights
their bitsandbytes layers dequantize to (noted in quantization.json). A non-empty --out is
refused unless --overwrite.
"""

from __future__ import annotations

NAME = "quantize"
HELP = "write the fake-quantized model (dequantized float weights) as an HF directory"


def add_arguments(parser) -> None:
    from ._options import add_calib_arguments, add_model_arguments

    add_model_arguments(parser, unlearned_required=False)
    parser.add_argument("--quant", required=True, help="one quantization scheme")
    parser.add_argument("--out", required=True, help="output directory (new or empty)")
    parser.add_argument("--overwrite", action="store_true",
                        help="write into a non-empty --out (old weight files are removed)")
    add_calib_arguments(parser)


def run(args) -> int:
    from ..quantizers.export import REPORT_FILE, export_quantized
    from ._options import calib_kwargs

    report = export_quantized(args.pretrained, args.quant, args.out, unlearned=args.unlearned,
                              overwrite=args.overwrite, dtype=args.dtype, device=args.device,
                              quant_lm_head=args.quant_lm_head, allow_pickle=args.allow_pickle,
                              **calib_kwargs(args))
    quant = report["quantization"]
    print(f"{quant['scheme']}: {quant['n_modules']} modules quantized ({report['dtype']}); "
          f"written: {args.out} (+ {REPORT_FILE})")
    return 0
