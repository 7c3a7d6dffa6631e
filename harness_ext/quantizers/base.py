"""The quantizer interface, the scheme description and the scheme-string parser.

A scheme string is ``name[:arg[:arg...]]``, e.g. ``rtn:4:g128:asym`` or ``bnb-fp4:b64``. A
quantizer is one class in one file of ``schemes/``, registered with ``@QUANTIZERS.register``.
Its class attributes (``family``, ``bits``, ``needs_calibration``, ``modules``, ``fake``,
``label``, ``summary``, ``usage``) describe it; :func:`describe_scheme` turns a scheme string
into that description (a :class:`SchemeInfo`, no torch objects), which is what code outside the
scheme files reads instead of matching scheme names.

Most quantizers are *fake* quantizers: :meth:`Quantizer.quantize_weight` maps a float weight to
its dequantized float value, which :func:`harness_ext.quantizers.apply.quantize_model` writes
back, so evaluation then runs at float speed. Calibrated quantizers (GPTQ, AWQ) override
:meth:`Quantizer.quantized_weights`; ones that swap modules (real bitsandbytes) override
:meth:`Quantizer.apply`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Iterator

from ..errors import MuseQuantError
from ..registry import Registry

if TYPE_CHECKING:  # torch is imported where tensors are made, so describing needs no torch
    import torch

QUANTIZERS: Registry[type["Quantizer"]] = Registry("quantization scheme")

#: what most schemes change: every ``nn.Linear`` of the transformer blocks
BLOCK_LINEARS = "block linears (+ the LM head with quant_lm_head=True)"


@dataclass(frozen=True)
class SchemeInfo:
    """What a scheme string means, without building anything (:func:`describe_scheme`)."""

    name: str                # registry name, e.g. "gptq"
    scheme: str              # the whole scheme string, e.g. "gptq:4"
    family: str              # the group it is listed under by ``muse-quant schemes``
    bits: int | None         # weight bits; None when the weights keep their dtype ("none")
    needs_calibration: bool  # needs calibration text (calib=...)
    modules: str             # which modules / parameters it changes
    fake: bool               # writes dequantized float weights back (vs. swapping modules)
    label: str               # short display name, e.g. "GPTQ-4"
    summary: str
    usage: str


@dataclass
class Calibration:
    """Text a calibrated quantizer may use (GPTQ/AWQ); ``describe`` goes into the results.

    Built by :func:`harness_ext.quantizers.calibration.build_calibration`: ``windows`` are the
    token-id sequences the quantizer runs through the model; ``cache_dir`` is
    ``quant_cache_dir=``.
    """

    texts: list[str] = field(default_factory=list)
    tokenizer: Any = None
    describe: dict = field(default_factory=dict)
    windows: list[list[int]] = field(default_factory=list)
    cache_dir: str | None = None


class Quantizer:
    """One quantization scheme, parsed from a scheme string.

    Subclasses set the description attributes below (``usage`` is shown in error messages and
    ``muse-quant schemes``), parse their arguments in ``__init__(self, name, args)`` (plain
    Python: no tensors, so :func:`describe_scheme` stays cheap) and implement
    :meth:`quantize_weight` (or override :meth:`quantized_weights` / :meth:`apply`).
    """

    usage: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    family: ClassVar[str] = ""
    #: short display name; ``{bits}`` is replaced by the bit width
    label: ClassVar[str] = ""
    modules: ClassVar[str] = BLOCK_LINEARS
    needs_calibration: ClassVar[bool] = False
    #: True when the quantizer writes float (dequantized) weights back into ``nn.Linear``.
    fake: ClassVar[bool] = True
    #: weight bits (set per instance by schemes with a bit-width argument)
    bits: int | None = None

    def __init__(self, name: str, args: list[str]):
        self.name = name
        self.args = list(args)
        if args:
            raise bad_scheme(self.scheme, f"{name} takes no arguments")

    @property
    def scheme(self) -> str:
        return ":".join([self.name, *self.args])

    def display_label(self) -> str:
        """:attr:`label` for this instance's arguments (overridden to show non-default options)."""
        return self.label.format(bits=self.bits)

    @property
    def info(self) -> SchemeInfo:
        """This scheme's description."""
        return SchemeInfo(name=self.name, scheme=self.scheme, family=self.family, bits=self.bits,
                          needs_calibration=self.needs_calibration, modules=self.modules,
                          fake=self.fake, label=self.display_label(), summary=self.summary,
                          usage=self.usage)

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

    def module_codes(self, module_name: str, weight: torch.Tensor):
        """:meth:`codes` of the weight of ``module_name``; schemes whose grid depends on the
        module (GGUF mixes: a type per tensor) override it."""
        return self.codes(weight)

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
        swap modules (real bitsandbytes) override this, using helpers from ``apply.py``.
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

def scheme_table() -> list[tuple[str, str, str]]:
    """``(family, usage, summary)`` of every registered scheme, for help and error messages."""
    seen, rows = set(), []
    for _, cls in QUANTIZERS.items():
        if cls.usage and cls.usage not in seen:
            seen.add(cls.usage)
            rows.append((cls.family, cls.usage, cls.summary))
    return rows


def bad_scheme(scheme: str, problem: str) -> MuseQuantError:
    valid = "; ".join(usage for _, usage, _ in scheme_table())
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


def describe_scheme(scheme: str) -> SchemeInfo:
    """The :class:`SchemeInfo` of a scheme string; validates it as :func:`parse_scheme` does.

    Parsing a scheme string builds no tensors and imports no torch, so this is cheap.
    """
    return parse_scheme(scheme).info
