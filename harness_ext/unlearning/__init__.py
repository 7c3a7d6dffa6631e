"""Unlearning methods, one file each, and the ``muse-quant unlearn`` trainer.

Adding a method: create ``harness_ext/unlearning/<name>.py`` (or any file passed with
``muse-quant unlearn --plugin FILE``) with an :class:`UnlearningMethod` subclass decorated by
``@METHODS.register("<name>")``. Every module of this folder is imported on first use and a
``<name>_sure`` variant is generated for each method, so nothing else needs editing.
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
    from .sure import register_sure_variants

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


def get_method_class(name: str) -> type[UnlearningMethod]:
    _discover()
    return METHODS.get(name)


def make_method(name: str, alpha: float = 1.0, beta: float = 0.1) -> UnlearningMethod:
    """An instance of the registered method ``name`` (unknown names raise MuseQuantError)."""
    method = get_method_class(name)(alpha=alpha, beta=beta)
    method.name = name
    return method


__all__ = ["METHODS", "UnlearningMethod", "available_methods", "get_method_class",
           "kl_to_reference", "load_plugin", "make_method", "nll", "sequence_logprob"]
