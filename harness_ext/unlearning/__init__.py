"""Unlearning methods and the ``muse-quant unlearn`` trainer.

Adding a method: create ``harness_ext/unlearning/methods/<name>.py`` (or any file passed with
``muse-quant unlearn --plugin FILE``) with an :class:`UnlearningMethod` subclass decorated by
``@METHODS.register("<name>")`` that defines its forget loss. Every module of ``methods/`` is
imported on first use; ``<name>_gdr`` / ``<name>_klr`` (:mod:`.regularizers`) and a ``_sure``
variant of each (:mod:`.sure`) are generated, so nothing else needs editing.

Layout: ``base`` (interface, registry), ``losses``, ``methods/``, ``regularizers``, ``sure`` /
``saliency``, ``lora``; the trainer: ``config`` (:class:`UnlearnConfig`, the CLI options),
``data``, ``loop`` (:class:`UnlearningRun`, :func:`unlearn`), ``checkpoint`` (outputs, resume).
Importing the package or the registry does not import torch.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from ..errors import MuseQuantError
from .base import METHODS, UnlearningMethod
from .losses import kl_to_reference, nll, sequence_logprob


def _discover() -> None:
    from ..registry import import_submodules

    from . import methods

    import_submodules(methods.__name__, methods.__path__)
    from .regularizers import register_regularized_variants
    from .sure import register_sure_variants

    register_regularized_variants()
    register_sure_variants()


def load_plugin(path: str | Path) -> None:
    """Import a Python file that registers methods (``muse-quant unlearn --plugin FILE``)."""
    path = Path(path).expanduser().resolve()
    if not path.is_file() or path.suffix != ".py":
        raise MuseQuantError(f"--plugin {path}: no such Python file",
                             "pass the path of a .py file that registers a method with "
                             "@METHODS.register(...)")
    _discover()
    module_name = f"muse_quant_plugin_{path.stem}"
    if module_name not in sys.modules:
        spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        try:
            spec.loader.exec_module(module)
        except MuseQuantError:
            raise
        except Exception as exc:
            del sys.modules[module_name]
            raise MuseQuantError(f"--plugin {path} failed to import: {type(exc).__name__}: {exc}",
                                 "fix the plugin file") from exc
    _discover()


def available_methods() -> list[tuple[str, str]]:
    """``(name, summary)`` of every registered method, SURE variants included."""
    _discover()
    return [(name, cls.summary) for name, cls in METHODS.items()]


def builtin_method_names() -> list[str]:
    """The methods this package defines (no plugins): the forget methods and their regularized
    variants, then the SURE variants in the same order."""
    from ..recipes import SURE_SUFFIX

    _discover()
    own = [name for name, cls in METHODS.items() if cls.__module__.startswith(__name__ + ".")]
    plain = [name for name in own if not METHODS.get(name).sure]
    return plain + [f"{name}{SURE_SUFFIX}" for name in plain if f"{name}{SURE_SUFFIX}" in own]


def get_method_class(name: str) -> type[UnlearningMethod]:
    _discover()
    return METHODS.get(name)


def make_method(name: str, alpha: float = 1.0, beta: float = 0.1,
                klr_reduction: str = "mean") -> UnlearningMethod:
    """An instance of the registered method ``name`` (unknown names raise MuseQuantError)."""
    method = get_method_class(name)(alpha=alpha, beta=beta, klr_reduction=klr_reduction)
    method.name = name
    return method


__all__ = ["METHODS", "UnlearningMethod", "available_methods", "builtin_method_names",
           "get_method_class", "kl_to_reference", "load_plugin", "make_method", "nll",
           "sequence_logprob"]
