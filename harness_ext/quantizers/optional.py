"""Optional quantization libraries (pip extras): import on first use, or say which extra to install.

Schemes that run a third-party library (``hqq``, ``torchao``) import it through :func:`require`
inside their methods, so ``muse-quant`` starts, lists schemes and parses scheme strings without
it. The libraries that quantize whole modules get a throw-away ``nn.Linear`` holding a copy of
the weight (:func:`scratch_linear`); the model's own module is never handed to them.
"""

from __future__ import annotations

import importlib
import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

from ..errors import MuseQuantError


def require(module: str, scheme: str, extra: str, quiet_logger: str | None = None):
    """Import ``module`` or raise a :class:`MuseQuantError` naming the pip extra ``extra``.

    ``quiet_logger``: a logger silenced below ERROR while importing (torchao logs a warning for
    every CUDA kernel library it cannot load on a CPU-only machine).
    """
    log = logging.getLogger(quiet_logger) if quiet_logger else None
    level = log.level if log else None
    if log:
        log.setLevel(logging.ERROR)
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        package = module.split(".")[0]
        raise MuseQuantError(f"{scheme} needs the {package} package, which is not installed "
                             f"({exc})", f"pip install 'muse-quant[{extra}]'") from exc
    finally:
        if log:
            log.setLevel(level)


def scratch_linear(weight: torch.Tensor) -> torch.nn.Linear:
    """A bias-free ``nn.Linear`` whose weight is a detached copy of ``weight`` (same dtype)."""
    import torch

    if weight.dim() != 2:
        raise MuseQuantError(f"expected a 2-D Linear weight, got shape {tuple(weight.shape)}")
    with torch.device("meta"):
        linear = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False,
                                 dtype=weight.dtype)
    linear.weight = torch.nn.Parameter(weight.detach().clone(), requires_grad=False)
    return linear
