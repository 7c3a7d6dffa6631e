"""Command-line options shared by commands that load a target (+ unlearned) model and quantize.

Not a command itself (no ``NAME``). Kept free of heavy imports: the parser builds without torch.
"""

from __future__ import annotations


def add_model_arguments(parser, unlearned_required: bool) -> None:
    """--pretrained, --unlearned, --dtype, --device, --quant_lm_head, --allow_pickle."""
    parser.add_argument("--pretrained", required=True, help="target (original) model dir or id")
    parser.add_argument("--unlearned", required=unlearned_required, default=None,
                        help="unlearned model dir, .safetensors delta or PEFT adapter dir")
    parser.add_argument("--dtype", default="auto", help="auto (checkpoint's), float32, bfloat16")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quant_lm_head", action="store_true")
    parser.add_argument("--allow_pickle", action="store_true")


def add_calib_arguments(parser) -> None:
    """The GPTQ/AWQ calibration options (harness_ext/quantizers/calibration.py)."""
    parser.add_argument("--calib", default="generic",
                        help="GPTQ/AWQ calibration: generic, forget, retain or a file")
    parser.add_argument("--calib_samples", type=int, default=128)
    parser.add_argument("--calib_seqlen", type=int, default=512)
    parser.add_argument("--calib_corpus", default="news", choices=["news", "books"])
    parser.add_argument("--calib_data", default=None,
                        help="embedded, hub or a MUSE-layout dir (default $MUSE_DATA, else "
                             "embedded)")


def calib_kwargs(args) -> dict:
    """The calibration options as keyword arguments (``calib=...``, ``calib_samples=...``)."""
    return {"calib": args.calib, "calib_samples": args.calib_samples,
            "calib_seqlen": args.calib_seqlen, "calib_corpus": args.calib_corpus,
            "calib_data": args.calib_data}
