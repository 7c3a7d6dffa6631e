"""Reading submitted files as plain data: size caps, a YAML loader that refuses tags, aliases and
duplicate keys, and JSON through ``json``. Nothing in a submission is imported or executed.

The readers return ``(data, problems)``: a file that is too large, not UTF-8, not valid, nested
deeper than :data:`MAX_DEPTH`, or holding a number that is not finite (NaN, Infinity, ``.inf``)
or an integer beyond 64 bits (:func:`plain_problems`) is a problem of the entry (one readable
line), never an exception.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import yaml

from ..errors import MuseQuantError

MAX_ENTRY_BYTES = 256 * 1024
MAX_RESULTS_BYTES = 2 * 1024 * 1024
MAX_SAMPLES_BYTES = 16 * 1024 * 1024
MAX_RESULTS_FILES = 32  # <scheme>.json and <scheme>.samples.jsonl
MAX_DEPTH = 32  # nesting of mappings and lists in any submitted file
MAX_INT = 2 ** 63
_JSON_TYPES = ((bool, "boolean"), (int, "number"), (float, "number"), (str, "string"),
               (list, "list"), (dict, "object"), (type(None), "null"))


def type_name(value) -> str:
    """``object``, ``list``, ``string``, ``number``, ``boolean`` or ``null``."""
    return next((name for cls, name in _JSON_TYPES if isinstance(value, cls)),
                type(value).__name__)


def plain_problems(data, where: str, limit: int = 5) -> list[str]:
    """Nesting deeper than :data:`MAX_DEPTH`, non-finite floats and integers of 64 bits or more,
    anywhere in ``data`` (walked without recursion), at most ``limit`` of them."""
    problems = []
    stack = [(data, "", 0)]
    while stack and len(problems) < limit:
        value, at, depth = stack.pop()
        if depth > MAX_DEPTH:
            problems.append(f"{where}: nested more than {MAX_DEPTH} levels deep at {at or 'top'}")
            continue
        if isinstance(value, dict):
            stack += [(v, f"{at}.{k}" if at else str(k), depth + 1) for k, v in value.items()]
        elif isinstance(value, list):
            stack += [(v, f"{at}[{i}]", depth + 1) for i, v in enumerate(value)]
        elif isinstance(value, float) and not math.isfinite(value):
            problems.append(f"{where}: {at or 'value'} is {value!r}, not a finite number (every "
                            f"number must be finite)")
        elif isinstance(value, int) and not isinstance(value, bool) and abs(value) >= MAX_INT:
            problems.append(f"{where}: {at or 'value'} is an integer of {value.bit_length()} "
                            f"bits, out of range")
    return problems


class _DataLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` without implicit timestamps (dates stay strings) and without aliases."""

    _depth = 0

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(
                None, None, f"alias *{event.anchor} is not allowed (write the value out)",
                event.start_mark)
        if self._depth > MAX_DEPTH:  # stop early, not at Python's recursion limit
            raise yaml.composer.ComposerError(None, None, f"nested more than {MAX_DEPTH} "
                                              f"levels deep", self.peek_event().start_mark)
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


_DataLoader.yaml_implicit_resolvers = {
    key: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for key, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_PLAIN_TAGS = {f"tag:yaml.org,2002:{t}" for t in ("str", "int", "float", "bool", "null", "map",
                                                   "seq")}


def _check_nodes(node, where: str) -> None:
    stack = [node]
    while stack:
        node = stack.pop()
        if node.tag not in _PLAIN_TAGS:
            raise MuseQuantError(
                f"{where}, line {node.start_mark.line + 1}: the YAML tag {node.tag!r} is not "
                f"allowed; entries are plain data and tags that construct objects are refused",
                "remove the tag and write the value as a plain string, number, list or mapping")
        if isinstance(node, yaml.MappingNode):
            seen = set()
            for key, value in node.value:
                if key.tag != "tag:yaml.org,2002:str" or not isinstance(key, yaml.ScalarNode):
                    _check_nodes(key, where)
                    raise MuseQuantError(f"{where}, line {key.start_mark.line + 1}: mapping keys "
                                         f"must be strings", "quote the key")
                if key.value in seen:
                    raise MuseQuantError(f"{where}, line {key.start_mark.line + 1}: duplicate key "
                                         f"{key.value!r}", "keep one of them")
                seen.add(key.value)
                stack.append(value)
        elif isinstance(node, yaml.SequenceNode):
            stack.extend(node.value)


_FLAT = (f"write plain mappings, lists, strings and finite numbers, at most {MAX_DEPTH} levels "
         f"deep")


def load_plain_yaml(text: str, where: str):
    """Parse YAML as plain data: only str/int/float/bool/null/map/seq; no tags, aliases,
    duplicate keys or non-string keys. Raises :class:`MuseQuantError` naming the problem."""
    loader = None
    try:
        loader = _DataLoader(text)  # refuses non-printable characters (yaml.ReaderError)
        node = loader.get_single_node()
        if node is None:
            return None
        _check_nodes(node, where)
        return loader.construct_document(node)
    except yaml.MarkedYAMLError as exc:
        line = f", line {exc.problem_mark.line + 1}" if exc.problem_mark else ""
        context = f"{exc.context}, " if exc.context else ""
        raise MuseQuantError(f"{where}{line}: not valid plain YAML: {context}{exc.problem}",
                             "write entry.yaml as plain mappings, lists, strings and numbers") \
            from None
    except yaml.YAMLError as exc:
        raise MuseQuantError(f"{where}: not valid plain YAML ({exc})".replace("\n", " "),
                             "write entry.yaml as plain mappings, lists, strings and numbers") \
            from None
    except MuseQuantError:
        raise
    except RecursionError:
        raise MuseQuantError(f"{where}: nested too deeply", _FLAT) from None
    except ValueError as exc:  # e.g. an integer of more than 4300 digits
        raise MuseQuantError(f"{where}: a value cannot be read ({str(exc)[:100]})", _FLAT) \
            from None
    finally:
        if loader is not None:
            loader.dispose()


def _too_large(path: Path, cap: int, where: str) -> list[str]:
    size = path.stat().st_size
    return [f"{where}: {size} bytes, over the {cap} byte cap"] if size > cap else []


def read_plain_yaml(path: Path, where: str) -> tuple[object, list[str]]:
    """``(data, [])`` of a YAML file of at most :data:`MAX_ENTRY_BYTES`, or ``(None, problems)``."""
    too_large = _too_large(path, MAX_ENTRY_BYTES, where)
    if too_large:
        return None, too_large
    try:
        data = load_plain_yaml(path.read_text(encoding="utf-8"), where)
    except UnicodeDecodeError:
        return None, [f"{where}: not UTF-8 text"]
    except MuseQuantError as exc:
        return None, [exc.problem]
    problems = plain_problems(data, where)
    return (None, problems) if problems else (data, [])


def read_text(path: Path, where: str, cap: int) -> tuple[str | None, list[str]]:
    """``(text, [])`` of a UTF-8 file of at most ``cap`` bytes, or ``(None, problems)``."""
    too_large = _too_large(path, cap, where)
    if too_large:
        return None, too_large
    try:
        return path.read_text(encoding="utf-8"), []
    except UnicodeDecodeError:
        return None, [f"{where}: not UTF-8 text"]


def read_json(path: Path, where: str) -> tuple[object, list[str]]:
    """``(data, [])`` of a JSON file of at most :data:`MAX_RESULTS_BYTES`, or ``(None,
    problems)``."""
    text, problems = read_text(path, where, MAX_RESULTS_BYTES)
    if problems:
        return None, problems
    try:
        data = json.loads(text)
    except RecursionError:
        return None, [f"{where}: not valid JSON (nested too deeply)"]
    except ValueError as exc:  # JSONDecodeError, or an integer of more than 4300 digits
        return None, [f"{where}: not valid JSON ({str(exc)[:100]})"]
    problems = plain_problems(data, where)
    return (None, problems) if problems else (data, [])
