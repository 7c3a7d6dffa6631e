"""The current task YAMLs: which tasks and groups exist, at which ``metadata.version``.

A results file is accepted only for tasks this checkout defines, at their current version
(:func:`same_version`), so a board never mixes numbers from different task definitions.
"""

from __future__ import annotations

import functools
from pathlib import Path

import yaml


class _TaskYamlLoader(yaml.SafeLoader):
    """Reads the project's own task YAMLs (``!function`` kept as a string)."""


_TaskYamlLoader.add_constructor("!function", lambda loader, node: loader.construct_scalar(node))


def _read_task_yaml(path: Path) -> dict:
    data = yaml.load(path.read_text(encoding="utf-8"), Loader=_TaskYamlLoader) or {}
    include = data.pop("include", None)
    if include:
        base = _read_task_yaml((path.parent / include).resolve())
        base.update(data)
        data = base
    return data


@functools.lru_cache(maxsize=None)
def _current_tasks_cached(tasks_dir: str) -> dict:
    versions = {}
    for path in sorted(Path(tasks_dir).rglob("*.yaml")):
        config = _read_task_yaml(path)
        name = config.get("task") if isinstance(config.get("task"), str) else config.get("group")
        if isinstance(name, str):
            versions[name] = (config.get("metadata") or {}).get("version")
    return versions


def current_tasks(tasks_dir: str | None = None) -> dict[str, object]:
    """``{task or group name: metadata.version}`` from the task YAMLs (``include:`` resolved)."""
    if tasks_dir is None:
        from ..plugin import tasks_dir as _tasks_dir

        tasks_dir = _tasks_dir()
    return dict(_current_tasks_cached(str(tasks_dir)))


def same_version(a, b) -> bool:
    """Task versions compare as numbers when both are numbers (``1`` == ``"1.0"``), else as text."""
    def norm(v):
        try:
            return float(v)
        except (TypeError, ValueError):
            return str(v)

    return norm(a) == norm(b)
