"""The one place that works around bugs of pinned third-party libraries. Keep it small.

llmcompressor 0.14.0.1, AWQ on machines without an accelerator
    ``AWQModifier._apply_smoothing`` calls ``IntermediatesCache.pin_memory`` for every cached
    batch, unconditionally. ``Tensor.pin_memory()`` raises ``RuntimeError: Cannot access
    accelerator device when none is available`` on a CPU-only torch, so AWQ cannot run on CPU.
    Pinned (page-locked) host memory only speeds up host-to-accelerator copies, which never
    happen without an accelerator, so there the call is made a no-op. With an accelerator
    (CUDA, XPU, MPS, ...) nothing is changed. Remove this when llmcompressor checks itself.
"""

from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)


def accelerator_available() -> bool:
    """True when torch sees any accelerator (CUDA/ROCm, XPU, MPS, ...)."""
    accelerator = getattr(torch, "accelerator", None)
    if accelerator is not None and hasattr(accelerator, "is_available"):
        return bool(accelerator.is_available())
    if torch.cuda.is_available():
        return True
    for backend in ("xpu", "mps"):
        module = getattr(torch, backend, None) or getattr(torch.backends, backend, None)
        if module is not None and getattr(module, "is_available", lambda: False)():
            return True
    return False


def _no_pin_memory(self, batch_index, input_names=None):
    """No-op replacement (see the module docstring): no accelerator, nothing to pin for."""


def patch_llmcompressor_pin_memory() -> bool:
    """Make ``IntermediatesCache.pin_memory`` a no-op when no accelerator exists.

    Returns True when the no-op is (now) in place. Idempotent; call it before running AWQ.
    """
    if accelerator_available():
        return False
    from llmcompressor.pipelines.cache import IntermediatesCache

    if IntermediatesCache.pin_memory is not _no_pin_memory:
        IntermediatesCache.pin_memory = _no_pin_memory
        log.info("compat: llmcompressor IntermediatesCache.pin_memory is a no-op "
                 "(no accelerator available)")
    return True
