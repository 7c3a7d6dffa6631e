"""Build a tiny random Llama (hidden 256, intermediate 768, 4 layers) with the tiny tokenizer.

  muse-quant tiny-model --out DIR [--seed 0] [--layers 4]
"""

from __future__ import annotations

from pathlib import Path

from ..errors import MuseQuantError

NAME = "tiny-model"
HELP = "build a tiny random Llama (hidden 256) with the tiny tokenizer"


def add_arguments(parser) -> None:
    parser.add_argument("--out", required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--tie_embeddings", action="store_true",
                        help="tie the input embedding and the LM head")


def run(args) -> int:
    from ..toy.tiny import build_tiny_llama

    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        raise MuseQuantError(f"{out} already exists and is not empty",
                             "choose another --out (existing files are never overwritten)")
    build_tiny_llama(out, seed=args.seed, num_hidden_layers=args.layers,
                     tie_word_embeddings=args.tie_embeddings)
    print(out)
    return 0
