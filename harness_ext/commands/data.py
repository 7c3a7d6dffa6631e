"""Write the embedded (fictional, generated) corpus in MUSE's file layout.

  muse-quant data --out DIR [--corpus news|books|both]

Then use it with --muse_data DIR (or --metadata muse_data=DIR); muse_data=embedded generates it
in memory.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import MuseQuantError

NAME = "data"
HELP = "write the embedded corpus in MUSE's file layout"


def add_arguments(parser) -> None:
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--corpus", default="both", choices=["news", "books", "both"])


def run(args) -> int:
    from ..data import embedded

    out = Path(args.out)
    flavours = embedded.FLAVOURS if args.corpus == "both" else (args.corpus,)
    for flavour in flavours:
        if (out / flavour).exists() and any((out / flavour).iterdir()):
            raise MuseQuantError(f"{out / flavour} already exists and is not empty",
                                 "choose another --out (existing files are never overwritten)")
    embedded.write(out, flavours)
    for flavour in flavours:
        print(out / flavour)
    return 0
