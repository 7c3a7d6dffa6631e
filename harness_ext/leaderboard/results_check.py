"""One submitted lm-eval results file (``results/<scheme>.json``): its structure, with a named
message for every wrong type, then tasks, versions, scheme, metrics and their units.

:func:`check_results` never raises: everything it finds is a problem line. The rules that later
code relies on (``results[task]`` is a mapping, ``config.limit`` a number or null, ...) are
checked here first, so nothing downstream meets a list where it expects a mapping.
"""

from __future__ import annotations

from ..errors import MuseQuantError
from ..io import scheme_filename

from .bounds import is_number, task_metric_problems
from .entry import METRICS, corpus_group, corpus_tasks, data_source_kind
from .loading import type_name
from .tasks import same_version

#: dotted path -> the JSON types it may have (missing is fine unless in REQUIRED)
SHAPE = {
    "results": ("object",), "configs": ("object",), "versions": ("object",),
    "n-samples": ("object",), "config": ("object",), "config.muse_quant": ("object",),
    "config.muse_quant.quantization": ("object",),
    "config.muse_quant.quantization.scheme": ("string",),
    "config.muse_quant.unlearned": ("object", "null"),
    "config.muse_quant.unlearned.path": ("string", "null"),
    "config.muse_quant.unlearned.sha256": ("string", "null"),
    "config.muse_quant.pretrained": ("string", "null"),
    "config.model_args": ("object", "string"), "config.limit": ("number", "null"),
    "config.batch_size": ("string", "number", "null"),
}
REQUIRED = ("results", "config", "config.muse_quant", "config.muse_quant.quantization",
            "config.muse_quant.quantization.scheme")
#: per-task mappings: top-level key -> the types of each task's value
PER_TASK = {"results": ("object",), "configs": ("object",), "n-samples": ("object",),
            "versions": ("number", "string")}


def _get(data: dict, path: str):
    for part in path.split("."):
        if not isinstance(data, dict) or part not in data:
            return None, False
        data = data[part]
    return data, True


def structure_problems(data, where: str) -> list[str]:
    """Named type errors: ``results.json: results.muse_news_verbmem_f must be an object, got
    list``. An empty list means every path that later checks read has the right type."""
    if not isinstance(data, dict):
        return [f"{where}: must be an object (an lm-eval results file), got {type_name(data)}"]
    problems = []
    for path, types in SHAPE.items():
        value, present = _get(data, path)
        if not present:
            parent, has_parent = _get(data, path.rpartition(".")[0]) if "." in path else (data,
                                                                                           True)
            if path in REQUIRED and has_parent and isinstance(parent, dict):
                problems.append(f"{where}: {path} is missing; results must come from the "
                                f"muse_quant model (`muse-quant sweep`)")
            continue
        if type_name(value) not in types:
            problems.append(f"{where}: {path} must be {' or '.join(_an(t) for t in types)}, got "
                            f"{type_name(value)}")
    for key, types in PER_TASK.items():
        value = data.get(key)
        if not isinstance(value, dict):
            continue
        for task, item in value.items():
            if type_name(item) not in types:
                problems.append(f"{where}: {key}.{task} must be "
                                f"{' or '.join(_an(t) for t in types)}, got {type_name(item)}")
            elif key == "configs" and "metadata" in item and \
                    not isinstance(item["metadata"], dict):
                problems.append(f"{where}: configs.{task}.metadata must be an object, got "
                                f"{type_name(item['metadata'])}")
            elif key == "n-samples" and "effective" in item and not (
                    isinstance(item["effective"], int) and is_number(item["effective"])):
                problems.append(f"{where}: n-samples.{task}.effective must be an integer")
    limit, _ = _get(data, "config.limit")
    if limit is not None and not (is_number(limit) and limit > 0):
        problems.append(f"{where}: config.limit is {limit!r}; it must be a finite number > 0 or "
                        f"null")
    return problems


def _an(type_: str) -> str:
    return {"object": "an object", "null": "null"}.get(type_, f"a {type_}")


def check_results(data, name: str, corpus: str, muse_data: str | None, tasks: dict,
                  where: str) -> list[str]:
    """Problems of one results file ``name`` (``<scheme>.json``) for an entry of ``corpus``."""
    problems = structure_problems(data, where)
    if problems:
        return problems
    scheme = data["config"]["muse_quant"]["quantization"]["scheme"]
    try:
        expected = scheme_filename(scheme)
    except MuseQuantError as exc:
        expected = f"<{exc.problem}>"
    if expected != name:
        problems.append(f"{where}: the file records scheme {scheme!r:.80} but is named {name}; "
                        f"a {scheme:.80} results file is named {expected:.120}")
    wanted = corpus_tasks(corpus)
    group = corpus_group(corpus)
    versions = data.get("versions") or {}
    configs = data.get("configs") or {}
    for task in sorted(set(data["results"]) | set(versions)):
        if task not in tasks:
            problems.append(f"{where}: unknown task {task!r:.80}; the board takes the tasks "
                            f"{', '.join(wanted)} (group {group})")
        elif task not in wanted and task != group:
            problems.append(f"{where}: task {task!r} does not belong to the {corpus} corpus")
        elif task in versions and not same_version(versions[task], tasks[task]):
            problems.append(f"{where}: {task} was evaluated at version {versions[task]!r:.40}, "
                            f"the current version is {tasks[task]}; re-run `muse-quant sweep`")
        elif task in data["results"]:
            problems += task_metric_problems(data["results"][task], task, where)
    for task in wanted:
        if task not in data["results"]:
            problems.append(f"{where}: task {task} is missing; run the {group} group")
            continue
        if task not in versions:
            problems.append(f"{where}: no version recorded for {task}")
    for suffix, key in METRICS.values():
        task = f"muse_{corpus}_{suffix}"
        value = data["results"].get(task, {}).get(f"{key},none")
        if task in data["results"] and not is_number(value):
            problems.append(f"{where}: metric {key} of {task} is missing or not a finite number "
                            f"({value!r:.60})")
    sources = set()
    for task in wanted:
        config = configs.get(task)
        if config is None:
            if task in data["results"]:
                problems.append(f"{where}: configs[{task}] is missing")
            continue
        sources.add(data_source_kind((config.get("metadata") or {}).get("muse_data")))
    if muse_data is not None and sources and sources != {muse_data}:
        problems.append(f"{where}: computed on muse_data={'/'.join(sorted(sources))}, but the "
                        f"entry says muse_data: {muse_data}")
    return problems
