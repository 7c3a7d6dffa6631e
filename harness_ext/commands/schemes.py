"""List the quantization schemes accepted by ``quant=`` (model_args) and ``--quant`` (sweeps)."""

from __future__ import annotations

NAME = "schemes"
HELP = "list the quantization schemes"


def add_arguments(parser) -> None:
    pass


def run(args) -> int:
    from ..quantizers import available_schemes

    rows = available_schemes()
    width = max(len(usage) for usage, _ in rows)
    for usage, summary in rows:
        print(f"{usage:<{width}}  {summary}")
    return 0
