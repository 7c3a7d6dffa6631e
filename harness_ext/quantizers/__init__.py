"""Quantization schemes, one file each. ``parse_scheme("rtn:4:g128")`` returns a quantizer.

Adding a scheme: create ``harness_ext/quantizers/<name>.py`` with a :class:`Quantizer` subclass
decorated by ``@QUANTIZERS.register("<name>")``, plus its test. Every module in this folder is
imported on first use, so nothing else needs editing.
"""

from __future__ import annotations

from .base import QUANTIZERS, Calibration, Quantizer, parse_scheme, scheme_table

def _discover() -> None:
    from ..registry import import_submodules

    from . import schemes

    import_submodules(schemes.__name__, schemes.__path__)


def available_schemes() -> list[tuple[str, str]]:
    """``(usage, summary)`` for every registered scheme."""
    _discover()
    return scheme_table()


__all__ = ["QUANTIZERS", "Calibration", "Quantizer", "available_schemes", "parse_scheme"]
