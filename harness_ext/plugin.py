"""How lm-eval finds this plugin: the task directory and the model registration.

lm-eval 0.4.13 has no plugin discovery, so ``muse-quant eval`` calls :func:`register` and adds
:func:`tasks_dir` to every TaskManager. For lm-eval versions that read entry points,
``pyproject.toml`` declares ``lm_eval.models`` -> ``harness_ext.lm:MuseQuantLM`` (upstream PR
#4013) and ``lm_eval.tasks`` -> the package ``muse_quant_tasks`` (the ``tasks/`` folder; PR #4015
imports that package and scans its directory; tests/test_plugin.py resolves it the same way).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

_CHECKOUT_TASKS = Path(__file__).resolve().parent.parent / "tasks"


def tasks_dir() -> str:
    """The directory holding the MUSE task YAMLs (a source checkout's ``tasks/`` or the wheel's)."""
    if (_CHECKOUT_TASKS / "utils.py").is_file():
        return str(_CHECKOUT_TASKS)
    spec = importlib.util.find_spec("muse_quant_tasks")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the MUSE task files are not installed; reinstall muse-quant")
    return str(Path(list(spec.submodule_search_locations)[0]))


def register() -> None:
    """Register the ``muse_quant`` model with lm-eval (importing the wrapper does it)."""
    from . import lm  # noqa: F401
