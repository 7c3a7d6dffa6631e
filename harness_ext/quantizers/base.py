"""The quantizer interface and the scheme-string parser.

A scheme string is ``name[:arg[:arg...]]``, e.g. ``rtn:4:g128:asym`` or ``bnb-fp4:b64``. A
quantizer is one class in one file of this package, registered with ``@QUANTIZERS.register``.

Most quantizers are *fake* quantizers: :meth:`Quantizer.quantize_weight` maps a float weight to
its dequantized float value, which :func:`harness_ext.weights.quantize_model` writes back, so
evaluation then runs at float speed. Calibrated quantizers (GPTQ, AWQ) override
:meth:`Quantizer.quantized_weights`; ones that swap modules (real bitsandbytes) override
:meth:`Quantizer.apply`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterator

import torch

from ..errors import MuseQuantError
from ..registry import Registry

QUANTIZERS: Registry[type["Quantizer"]] = Registry("quantization scheme")


@dataclass
class Calibration:
    """Text a calibrated quantizer may use (GPTQ/AWQ); ``describe`` goes into the results.

    Built by :func:`harness_ext.calibration.build_calibration`: ``windows`` are the token-id
    sequences the quantizer runs through the model; ``cache_dir`` is ``quant_cache_dir=``.
    """

    texts: list[str] = field(default_factory=list)
    tokenizer: Any = None
    max_samples: int = 128
    seqlen: int = 512
    describe: dict = field(default_factory=dict)
    windows: list[list[int]] = field(default_factory=list)
    cache_dir: str | None = None


class Quantizer:
    """One quantization scheme, parsed from a scheme string.

    Subclasses set ``usage`` (shown in error messages and ``muse-quant schemes``) and
    ``summary``, parse their arguments in ``__init__(self, args)`` and implement
    :meth:`quantize_weight` (or override :meth:`quantized_weights` / :meth:`apply`).
    """

    usage: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    needs_calibration: ClassVar[bool] = False
    #: True when the quantizer writes float (dequantized) weights back into ``nn.Linear``.
    fake: ClassVar[bool] = True

    def __init__(self, name: str, args: list[str]):
        self.name = name
        self.args = list(args)
        if args:
            raise bad_scheme(self.scheme, f"{name} takes no arguments")

    @property
    def scheme(self) -> str:
        return ":".join([self.name, *self.args])

    # -- per-tensor interface -----------------------------------------------------------
    def check_weight(self, module_name: str, weight: torch.Tensor) -> None:
        """Raise :class:`MuseQuantError` when this scheme cannot quantize ``weight``."""

    def quantize_weight(self, weight: torch.Tensor) -> torch.Tensor:
        """Return the fake-quantized (dequantized) weight: same shape and dtype."""
        raise NotImplementedError

    def quantization_step(self, weight: torch.Tensor) -> torch.Tensor:
        """The quantization step Delta of every element of ``weight`` (float32, same shape).

        For a uniform grid Delta is the scale of the element's group/row/tensor, so rounding
        leaves an element's quantized value unchanged by any change smaller than Delta/2 that
        does not cross a rounding boundary (Zhang et al. 2025, Sec. 4). Used by
        ``muse-quant diagnose``; quantizers that cannot say raise NotImplementedError.
        """
        raise NotImplementedError

    def codes(self, weight: torch.Tensor):
        """The element codes and group scales behind :meth:`quantize_weight`.

        Returns a :class:`harness_ext.quantizers.codes.QuantCodes` (``codes, scales, ...``).
        Codebook and uniform-grid schemes implement it; the others (calibrated, real-kernel)
        raise NotImplementedError and ``muse-quant diagnose`` reports their code metrics as
        ``-``.
        """
        raise NotImplementedError

    # -- model-level interface ----------------------------------------------------------
    def quantized_weights(self, model: torch.nn.Module, module_names: list[str],
                          calibration: Calibration | None = None
                          ) -> Iterator[tuple[str, torch.Tensor]]:
        """Yield ``(module name, new weight)``; the default quantizes each weight on its own."""
        modules = dict(model.named_modules())
        for name in module_names:
            yield name, self.quantize_weight(modules[name].weight.detach())

    def diagnostic_weights(self, model: torch.nn.Module, module_names: list[str],
                           calibration: Calibration | None = None
                           ) -> Iterator[tuple[str, torch.Tensor, torch.Tensor | None]]:
        """Yield ``(module name, Q(W), Delta)`` without changing ``model`` (for diagnose).

        ``Q(W)`` is the dequantized weight acting on the module's original input; ``Delta`` the
        per-element step (:meth:`quantization_step`) or None when undefined.
        """
        modules = dict(model.named_modules())
        for name in module_names:
            weight = modules[name].weight.detach()
            try:
                step = self.quantization_step(weight)
            except NotImplementedError:
                step = None
            yield name, self.quantize_weight(weight), step

    def apply(self, model: torch.nn.Module, module_names: list[str],
              calibration: Calibration | None = None, progress: bool = False) -> list[str]:
        """Quantize ``module_names`` of ``model`` in place; returns the names changed.

        The default writes :meth:`quantized_weights` back as float weights. Quantizers that
        swap modules (real bitsandbytes) override this, using helpers from ``weights.py``.
        """
        from .apply import write_weights

        return write_weights(model, self.quantized_weights(model, module_names, calibration),
                             progress=progress, desc=f"quantizing ({self.scheme})")

    def to_float_modules(self, model: torch.nn.Module, module_names: list[str]) -> list[str]:
        """After :meth:`apply`, make every quantized module a float ``nn.Linear`` again, holding
        the dequantized weight the scheme computes with (for ``muse-quant quantize``); returns
        the names converted. Fake quantizers already wrote float weights: nothing to do."""
        return []

    def describe(self) -> dict:
        """What goes into the results JSON about this scheme."""
        return {"scheme": self.scheme, "family": self.name, "summary": self.summary}


# ------------------------------------------------------------------------------------------
# Parsing helpers shared by the quantizer files
# ------------------------------------------------------------------------------------------

def scheme_table() -> list[tuple[str, str]]:
    """``(usage, summary)`` of every registered scheme, for help and error messages."""
    seen, rows = set(), []
    for _, cls in QUANTIZERS.items():
        if cls.usage and cls.usage not in seen:
            seen.add(cls.usage)
            rows.append((cls.usage, cls.summary))
    return rows


def bad_scheme(scheme: str, problem: str) -> MuseQuantError:
    valid = "; ".join(usage for usage, _ in scheme_table())
    return MuseQuantError(f"bad quantization scheme {scheme!r}: {problem}",
                          f"valid schemes: {valid}")


def parse_bits(scheme: str, text: str | None, allowed: tuple[int, ...]) -> int:
    if text is None:
        raise bad_scheme(scheme, f"missing bit width (one of {allowed})")
    try:
        bits = int(text)
    except ValueError:
        raise bad_scheme(scheme, f"bit width {text!r} is not an integer") from None
    if bits not in allowed:
        raise bad_scheme(scheme, f"bit width {bits} is not supported (use one of {allowed})")
    return bits


def parse_options(scheme: str, args: list[str], prefixes: dict[str, str],
                  flags: tuple[str, ...] = ()) -> dict[str, Any]:
    """Parse ``g128``-style integer options (``prefixes``: letter -> option name) and flags."""
    out: dict[str, Any] = {flag: False for flag in flags}
    for arg in args:
        if arg in flags:
            out[arg] = True
            continue
        letter, value = arg[:1], arg[1:]
        if letter in prefixes and value.isdigit() and int(value) > 0:
            out[prefixes[letter]] = int(value)
            continue
        known = [f"{p}<size>" for p in prefixes] + list(flags)
        raise bad_scheme(scheme, f"unknown option {arg!r} (known: {', '.join(known) or 'none'})")
    return out


def parse_scheme(scheme: str) -> Quantizer:
    """Turn a scheme string into a :class:`Quantizer`, or raise a clear error listing valid ones."""
    from . import _discover

    _discover()
    if not isinstance(scheme, str) or not scheme.strip():
        raise bad_scheme(str(scheme), "empty scheme")
    name, *args = scheme.strip().split(":")
    if name not in QUANTIZERS:
        raise bad_scheme(scheme, f"unknown scheme {name!r}")
    return QUANTIZERS.get(name)(name, args)
