"""How lm-eval finds this plugin: the task directory and the model registration.

lm-eval 0.4.13 has no plugin discovery, so ``muse-quant eval`` calls :func:`register` and passes
:func:`tasks_dir` as ``--include_path``. The ``lm_eval.models`` / ``lm_eval.tasks`` entry points in
``pyproject.toml`` point here for lm-eval versions that read them.
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
