"""lm-eval plugin discovery: the entry points in pyproject.toml resolve the way upstream resolves
them, so plain `lm_eval --tasks muse_news_quant --model muse_quant` works once a release has it."""

import importlib
import importlib.metadata
import importlib.util
from pathlib import Path

TEN = {f"muse_{corpus}_{name}" for corpus in ("news", "books")
       for name in ("quant", "verbmem_f", "knowmem_f", "knowmem_r", "privleak")}


def _entry_point(group: str):
    (ep,) = [e for e in importlib.metadata.entry_points(group=group) if e.name == "muse_quant"]
    return ep


def _package_dir(value: str) -> Path:
    """As lm-eval PR #4015 resolves a ``lm_eval.tasks`` entry point: the value is a package or
    module path (a ``:attr`` part is ignored); it is imported and its directory is scanned."""
    module = importlib.import_module(value.split(":", 1)[0])
    if getattr(module, "__file__", None):
        return Path(module.__file__).parent
    return Path(list(module.__path__)[0])  # a namespace package: its (first) folder


def _lm_eval_task_manager():
    """lm-eval's own TaskManager (``muse-quant eval`` replaces it in-process by a subclass that
    always adds the MUSE folder; see quantizers/compat.py)."""
    from lm_eval.tasks import TaskManager

    return getattr(TaskManager, "_muse_base", TaskManager)


def test_task_entry_point_resolves_as_upstream_discovery_does():
    from harness_ext.plugin import tasks_dir

    TaskManager = _lm_eval_task_manager()

    ep = _entry_point("lm_eval.tasks")
    assert ":" not in ep.value  # a package path: #4015 ignores ":attr"
    folder = _package_dir(ep.value)
    assert folder.resolve() == Path(tasks_dir()).resolve()
    manager = TaskManager(include_path=str(folder), include_defaults=False)
    assert set(manager.all_tasks) == TEN
    assert "muse_news_quant" in manager.all_groups


def test_model_entry_point_is_the_wrapper():
    ep = _entry_point("lm_eval.models")
    assert ep.value == "harness_ext.lm:MuseQuantLM"
    module, attr = ep.value.split(":")
    spec = importlib.util.find_spec(module)
    assert spec is not None and attr in Path(spec.origin).read_text()


def test_the_old_entry_point_would_find_nothing():
    """What the entry point used to be: #4015 would scan harness_ext/ and find no task."""
    TaskManager = _lm_eval_task_manager()
    folder = _package_dir("harness_ext.plugin:tasks_dir")
    assert TaskManager(include_path=str(folder), include_defaults=False).all_tasks == []
