"""Everything quantization: the schemes (``schemes/``, one file per family), writing weights back
(``apply``), calibration text (``calibration``), the calibrated-result cache (``cache``), the
llmcompressor base (``calibrated``) and every third-party workaround (``compat``).

``parse_scheme("rtn:4:g128")`` returns a quantizer; ``describe_scheme("gptq:4")`` its
:class:`SchemeInfo` (bits, needs_calibration, modules, label, ...), without importing torch. Code
outside ``schemes/`` reads the description instead of matching scheme names.

Adding a scheme: create ``harness_ext/quantizers/schemes/<name>.py`` with a :class:`Quantizer`
subclass decorated by ``@QUANTIZERS.register("<name>")`` that sets the description attributes
(``usage``, ``summary``, ``family``, ``label``, ``bits``, ``needs_calibration``, ``modules``,
``fake``), plus its test. Every module in ``schemes/`` is imported on first use, so nothing else
needs editing.
"""

from __future__ import annotations

from .base import (QUANTIZERS, Calibration, Quantizer, SchemeInfo, describe_scheme, parse_scheme,
                   scheme_table)


def _discover() -> None:
    from ..registry import import_submodules

    from . import schemes

    import_submodules(schemes.__name__, schemes.__path__)


def available_schemes() -> list[tuple[str, str, str]]:
    """``(family, usage, summary)`` for every registered scheme, sorted by family."""
    _discover()
    return sorted(scheme_table(), key=lambda row: row[0])


__all__ = ["QUANTIZERS", "Calibration", "Quantizer", "SchemeInfo", "available_schemes",
           "describe_scheme", "parse_scheme"]
