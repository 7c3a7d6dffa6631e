"""List the quantization schemes accepted by quant= (model_args) and --quant (sweeps)."""

from __future__ import annotations

NAME = "schemes"
HELP = "list the quantization schemes"


def add_arguments(parser) -> None:
    pass


def run(args) -> int:
    from ..quantizers import available_schemes

    rows = available_schemes()
    width = max(len(usage) for _, usage, _ in rows)
    family = None
    for row_family, usage, summary in rows:
        if row_family != family:
            print(("\n" if family is not None else "") + f"{row_family}:")
            family = row_family
        print(f"  {usage:<{width}}  {summary}")
    return 0
