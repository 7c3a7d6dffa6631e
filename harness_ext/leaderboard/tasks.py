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
def _current_tasks_cached(tasks_dir: str) -> tuple[dict, dict]:
    versions, aggregations = {}, {}
    for path in sorted(Path(tasks_dir).rglob("*.yaml")):
        config = _read_task_yaml(path)
        name = config.get("task") if isinstance(config.get("task"), str) else config.get("group")
        if isinstance(name, str):
            versions[name] = (config.get("metadata") or {}).get("version")
            # "mean", or "!function utils.agg_privleak" read as "utils.agg_privleak"
            aggregations[name] = {item["metric"]: str(item["aggregation"]).rpartition(".")[2]
                                  for item in config.get("metric_list") or []}
    return versions, aggregations


def _tasks_dir(tasks_dir: str | None) -> str:
    if tasks_dir is None:
        from ..plugin import tasks_dir as _default

        tasks_dir = _default()
    return str(tasks_dir)


def current_tasks(tasks_dir: str | None = None) -> dict[str, object]:
    """``{task or group name: metadata.version}`` from the task YAMLs (``include:`` resolved)."""
    return dict(_current_tasks_cached(_tasks_dir(tasks_dir))[0])


def task_aggregations(tasks_dir: str | None = None) -> dict[str, dict[str, str]]:
    """``{task: {metric: aggregation}}``: ``"mean"`` or the name of the ``agg_*`` function of
    the task's ``metric_list``; a samples file must name the same (see :mod:`.samples_check`)."""
    return {k: dict(v) for k, v in _current_tasks_cached(_tasks_dir(tasks_dir))[1].items()}


def same_version(a, b) -> bool:
    """Task versions compare as numbers when both are numbers (``1`` == ``"1.0"``), else as text."""
    def norm(v):
        try:
            return float(v)
        except (TypeError, ValueError):
            return str(v)

    return norm(a) == norm(b)
