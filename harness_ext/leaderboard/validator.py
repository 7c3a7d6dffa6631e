"""Load and validate leaderboard submissions (``submissions/<corpus>/<slug>/``).

An entry is ``entry.yaml`` (checked against ``entry.schema.json`` (beside this module)) and
``results/<scheme>.json`` (lm-eval results files written by ``muse-quant sweep``, unedited). Checks:

* layout: only ``entry.yaml`` and ``results/*.json``, regular files (no links), size caps;
* ``entry.yaml``: plain YAML data (no tags, aliases or duplicate keys), the JSON Schema, and
  agreement with its folder (corpus) and its run card (corpus, data source);
* each results file: tasks and versions equal the current task YAMLs; the scheme recorded in
  ``config.muse_quant.quantization.scheme`` matches the file name; the required metrics are finite
  numbers; the data source (``configs[task].metadata.muse_data``) and corpus match the entry;
* across an entry's files: the full, 8-bit and 4-bit FP4 files exist, and all files evaluated the
  same model (``pretrained``, ``unlearned``) with the same ``--limit``;
* across the board: slugs are unique (they name an entry in ``check --reproduce``), and every
  method / retrain entry names a target entry of the same corpus, scale, data and limit.

Nothing in a submission is imported or executed.
"""

from __future__ import annotations

import functools
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..errors import MuseQuantError
from ..recipes import REQUIRED_SCHEMES
from ..io import recorded_scheme, scheme_filename, scheme_from_filename

from . import SCHEMA_PATH

CORPORA = ("news", "books")
KINDS = ("method", "target", "retrain")
ENTRY_FILE = "entry.yaml"
RESULTS_DIR = "results"
SUBMISSIONS_DIR = "submissions"
MAX_ENTRY_BYTES = 256 * 1024
MAX_RESULTS_BYTES = 2 * 1024 * 1024
MAX_RESULTS_FILES = 16
SLUG_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,62}[a-z0-9])?$")
# Schemes every entry must have: the board's full / 8-bit / 4-bit columns.
# board column -> (task suffix, lm-eval metric key); the MUSE metrics the board shows
METRICS = {
    "verbmem_f": ("verbmem_f", "verbmem_rougeL_f1"),
    "knowmem_f": ("knowmem_f", "knowmem_rougeL_f1"),
    "privleak": ("privleak", "privleak"),
    "knowmem_r": ("knowmem_r", "knowmem_rougeL_f1"),
}


def corpus_tasks(corpus: str) -> list[str]:
    return [f"muse_{corpus}_{suffix}" for suffix, _ in METRICS.values()]


def corpus_group(corpus: str) -> str:
    return f"muse_{corpus}_quant"


def data_source_kind(muse_data) -> str:
    """``hub`` (absent or "hub"), ``embedded``, or ``local`` (a directory in MUSE's layout)."""
    if muse_data in (None, "", "hub"):
        return "hub"
    return "embedded" if muse_data == "embedded" else "local"


# ---------------------------------------------------------------- plain-data YAML
class _DataLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` without implicit timestamps (dates stay strings) and without aliases."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(
                None, None, f"alias *{event.anchor} is not allowed (write the value out)",
                event.start_mark)
        return super().compose_node(parent, index)


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


def load_plain_yaml(text: str, where: str):
    """Parse YAML as plain data: only str/int/float/bool/null/map/seq; no tags, aliases,
    duplicate keys or non-string keys. Raises :class:`MuseQuantError` naming the problem."""
    loader = _DataLoader(text)
    try:
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
    finally:
        loader.dispose()


# ---------------------------------------------------------------- current tasks
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


def _same_version(a, b) -> bool:
    def norm(v):
        try:
            return float(v)
        except (TypeError, ValueError):
            return str(v)

    return norm(a) == norm(b)


# ---------------------------------------------------------------- entries
@dataclass
class Entry:
    """One valid entry: its ``entry.yaml`` data and its results files, by scheme."""

    corpus: str
    slug: str
    path: Path
    meta: dict
    results: dict[str, dict]  # scheme -> lm-eval results JSON
    files: dict[str, str] = field(default_factory=dict)  # scheme -> file name

    @property
    def kind(self) -> str:
        return self.meta["kind"]

    @property
    def name(self) -> str:
        return self.meta["method"]

    @property
    def target(self) -> str | None:
        return self.meta.get("target")

    @property
    def reproducible(self) -> str:
        return self.meta["reproducible"]

    @property
    def muse_data(self) -> str:
        return self.meta["muse_data"]

    @property
    def limit(self):
        first = next(iter(self.results.values()), {})
        return (first.get("config") or {}).get("limit")

    @property
    def run_card(self) -> dict | None:
        return self.meta.get("run_card")

    def hyperparameters(self) -> dict:
        if self.run_card and isinstance(self.run_card.get("hyperparameters"), dict):
            return self.run_card["hyperparameters"]
        return self.meta.get("hyperparameters") or {}

    def value(self, scheme: str, column: str) -> float | None:
        """The board metric ``column`` (``verbmem_f``, ...) at ``scheme``, or None."""
        data = self.results.get(scheme)
        if data is None:
            return None
        suffix, key = METRICS[column]
        return data["results"][f"muse_{self.corpus}_{suffix}"][f"{key},none"]


@dataclass
class Board:
    root: Path
    entries: list[Entry]
    problems: list[str]

    def corpus_entries(self, corpus: str) -> list[Entry]:
        return [e for e in self.entries if e.corpus == corpus]

    def find(self, slug: str) -> Entry:
        corpus, _, name = slug.rpartition("/")
        found = [e for e in self.entries if e.slug == name and corpus in ("", e.corpus)]
        if not found:
            raise MuseQuantError(f"no valid leaderboard entry {slug!r} under {self.root}",
                                 "use the name of a folder in submissions/<corpus>/ "
                                 "(see `muse-quant leaderboard check`)")
        return found[0]


@functools.lru_cache(maxsize=1)
def _schema_validator():
    import jsonschema

    schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def schema_problems(meta, where: str) -> list[str]:
    """JSON Schema errors of an ``entry.yaml`` document, one readable line each."""
    if not isinstance(meta, dict):
        return [f"{where}: must be a mapping of keys to values (see harness_ext/leaderboard/entry.schema.json)"]
    validator = _schema_validator()
    allowed = sorted(validator.schema["properties"])
    out = []
    for err in sorted(validator.iter_errors(meta), key=lambda e: (list(map(str, e.absolute_path)),
                                                                    e.message)):
        at = ".".join(str(p) for p in err.absolute_path)
        if err.validator == "additionalProperties" and not err.absolute_path:
            extra = sorted(set(meta) - set(allowed))
            out.append(f"{where}: unknown key(s) {', '.join(map(repr, extra))}; allowed keys: "
                       f"{', '.join(allowed)}")
        elif err.validator == "anyOf" and all(set(sub) == {"required"}
                                               for sub in err.validator_value):
            keys = " or ".join(repr(sub["required"][0]) for sub in err.validator_value)
            out.append(f"{where}: {at + ': ' if at else ''}needs {keys}")
        elif err.validator == "not" and err.validator_value == {"required": ["target"]}:
            out.append(f"{where}: a target entry has no 'target' key")
        elif err.validator == "maxLength":
            out.append(f"{where}: {at or 'value'} is longer than {err.validator_value} characters")
        else:
            out.append(f"{where}: {at + ': ' if at else ''}{err.message[:300]}")
    return out


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_results(data, name: str, corpus: str, muse_data: str | None, tasks: dict,
                  where: str) -> list[str]:
    """Problems of one results file ``name`` (``<scheme>.json``) for an entry of ``corpus``."""
    problems = []
    if not isinstance(data, dict) or not isinstance(data.get("results"), dict):
        return [f"{where}: not an lm-eval results file (no 'results' mapping)"]
    scheme = recorded_scheme(data) if isinstance(data.get("config"), dict) else None
    if not isinstance(scheme, str):
        problems.append(f"{where}: no config.muse_quant.quantization.scheme; results must come "
                        f"from the muse_quant model (`muse-quant sweep`)")
    else:
        try:
            expected = scheme_filename(scheme)
        except MuseQuantError as exc:
            expected = f"<{exc.problem}>"
        if expected != name:
            problems.append(f"{where}: the file records scheme {scheme!r} but is named {name}; a "
                            f"{scheme} results file is named {expected}")
    wanted = corpus_tasks(corpus)
    group = corpus_group(corpus)
    versions = data.get("versions") if isinstance(data.get("versions"), dict) else {}
    configs = data.get("configs") if isinstance(data.get("configs"), dict) else {}
    for task in sorted(set(data["results"]) | set(versions)):
        if task not in tasks:
            problems.append(f"{where}: unknown task {task!r}; the board takes the tasks "
                            f"{', '.join(wanted)} (group {group})")
        elif task not in wanted and task != group:
            problems.append(f"{where}: task {task!r} does not belong to the {corpus} corpus")
        elif task in versions and not _same_version(versions[task], tasks[task]):
            problems.append(f"{where}: {task} was evaluated at version {versions[task]}, the "
                            f"current version is {tasks[task]}; re-run `muse-quant sweep`")
    for task in wanted:
        if task not in data["results"]:
            problems.append(f"{where}: task {task} is missing; run the {group} group")
            continue
        if task not in versions:
            problems.append(f"{where}: no version recorded for {task}")
    for suffix, key in METRICS.values():
        task = f"muse_{corpus}_{suffix}"
        value = (data["results"].get(task) or {}).get(f"{key},none")
        if task in data["results"] and not _is_number(value):
            problems.append(f"{where}: metric {key} of {task} is missing or not a finite number "
                            f"({value!r})")
    sources = set()
    for task in wanted:
        config = configs.get(task)
        if not isinstance(config, dict):
            if task in data["results"]:
                problems.append(f"{where}: configs[{task}] is missing")
            continue
        sources.add(data_source_kind((config.get("metadata") or {}).get("muse_data")))
    if muse_data is not None and sources and sources != {muse_data}:
        problems.append(f"{where}: computed on muse_data={'/'.join(sorted(sources))}, but the "
                        f"entry says muse_data: {muse_data}")
    return problems


def _model_identity(data: dict) -> tuple:
    info = ((data.get("config") or {}).get("muse_quant") or {})
    unlearned = info.get("unlearned") or {}
    return info.get("pretrained"), unlearned.get("path") if isinstance(unlearned, dict) else None


def load_entry(path: Path, corpus: str, tasks: dict | None = None) -> tuple[Entry | None, list[str]]:
    """Validate one entry folder. Returns ``(entry or None, problems)``."""
    tasks = current_tasks() if tasks is None else tasks
    where = f"{corpus}/{path.name}"
    problems = []
    if not SLUG_RE.match(path.name):
        problems.append(f"{where}: the folder name is not a valid slug (lowercase letters, digits "
                        f"and '-', at most 64 characters)")
    for item in sorted(path.iterdir()):
        if item.is_symlink():
            problems.append(f"{where}/{item.name}: symbolic links are not allowed")
        elif item.name == ENTRY_FILE and item.is_file():
            continue
        elif item.name == RESULTS_DIR and item.is_dir():
            continue
        else:
            problems.append(f"{where}/{item.name}: unexpected file; an entry holds only "
                            f"{ENTRY_FILE} and {RESULTS_DIR}/<scheme>.json")
    entry_path = path / ENTRY_FILE
    meta = None
    if not entry_path.is_file() or entry_path.is_symlink():
        problems.append(f"{where}: {ENTRY_FILE} is missing")
    elif entry_path.stat().st_size > MAX_ENTRY_BYTES:
        problems.append(f"{where}/{ENTRY_FILE}: {entry_path.stat().st_size} bytes, over the "
                        f"{MAX_ENTRY_BYTES} byte cap")
    else:
        try:
            meta = load_plain_yaml(entry_path.read_text(encoding="utf-8"), f"{where}/{ENTRY_FILE}")
        except UnicodeDecodeError:
            problems.append(f"{where}/{ENTRY_FILE}: not UTF-8 text")
        except MuseQuantError as exc:
            problems.append(exc.problem)
        else:
            schema_errors = schema_problems(meta, f"{where}/{ENTRY_FILE}")
            problems += schema_errors
            if schema_errors:
                meta = None
    if meta is not None:
        if meta["corpus"] != corpus:
            problems.append(f"{where}/{ENTRY_FILE}: corpus is {meta['corpus']!r} but the entry "
                            f"is in submissions/{corpus}/")
        card = meta.get("run_card") or {}
        if card.get("corpus") not in (None, corpus):
            problems.append(f"{where}/{ENTRY_FILE}: the run card unlearned on corpus "
                            f"{card['corpus']!r}, the entry is for {corpus!r}")
        if "muse_data" in card and data_source_kind(card["muse_data"]) != meta["muse_data"]:
            problems.append(f"{where}/{ENTRY_FILE}: the run card used muse_data="
                            f"{card['muse_data']}, the entry says {meta['muse_data']}")

    results, files = {}, {}
    results_dir = path / RESULTS_DIR
    if not results_dir.is_dir() or results_dir.is_symlink():
        problems.append(f"{where}: {RESULTS_DIR}/ is missing (the files `muse-quant sweep` wrote)")
        items = []
    else:
        items = sorted(results_dir.iterdir())
    if len(items) > MAX_RESULTS_FILES:
        problems.append(f"{where}/{RESULTS_DIR}: {len(items)} files, at most {MAX_RESULTS_FILES}")
        items = []
    for item in items:
        rel = f"{where}/{RESULTS_DIR}/{item.name}"
        if item.is_symlink() or not item.is_file():
            problems.append(f"{rel}: only regular <scheme>.json files are allowed here")
            continue
        if not item.name.endswith(".json"):
            problems.append(f"{rel}: unexpected file; results are named <scheme>.json")
            continue
        if item.stat().st_size > MAX_RESULTS_BYTES:
            problems.append(f"{rel}: {item.stat().st_size} bytes, over the {MAX_RESULTS_BYTES} "
                            f"byte cap")
            continue
        try:
            data = json.loads(item.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
            problems.append(f"{rel}: not valid JSON ({type(exc).__name__})")
            continue
        file_problems = check_results(data, item.name, corpus,
                                      meta["muse_data"] if meta else None, tasks, rel)
        problems += file_problems
        if not file_problems:
            scheme = scheme_from_filename(item.name)
            results[scheme] = data
            files[scheme] = item.name
    for scheme in REQUIRED_SCHEMES:
        if results_dir.is_dir() and not (results_dir / scheme_filename(scheme)).exists():
            problems.append(f"{where}: {RESULTS_DIR}/{scheme_filename(scheme)} is missing; every "
                            f"entry has {', '.join(REQUIRED_SCHEMES)} (muse-quant sweep --quant "
                            f"none,bnb-int8,bnb-fp4,gptq:4,awq:4)")
    if results:
        identities = {s: _model_identity(d) for s, d in results.items()}
        if len(set(identities.values())) > 1:
            detail = "; ".join(f"{s}: pretrained={p}, unlearned={u}"
                               for s, (p, u) in sorted(identities.items()))
            problems.append(f"{where}: the results files evaluated different models ({detail}); "
                            f"submit the files of one sweep")
        limits = {s: (d.get("config") or {}).get("limit") for s, d in results.items()}
        if len(set(limits.values())) > 1:
            problems.append(f"{where}: the results files used different --limit values {limits}")
        if meta and meta["kind"] in ("target", "retrain") and \
                any(u is not None for _, u in identities.values()):
            problems.append(f"{where}: a {meta['kind']} entry evaluates a model without an "
                            f"unlearning checkpoint (results have model_args unlearned=...)")
    if problems or meta is None:
        return None, problems
    return Entry(corpus=corpus, slug=path.name, path=path, meta=meta, results=results,
                 files=files), []


def load_board(root: str | Path, tasks: dict | None = None) -> Board:
    """Every entry under ``root/submissions``; invalid ones are left out and reported in
    ``Board.problems``."""
    root = Path(root)
    if not root.is_dir():
        raise MuseQuantError(f"leaderboard folder {root} not found",
                             "run from the repository root or pass --root <checkout>/leaderboard")
    tasks = current_tasks() if tasks is None else tasks
    subs = root / SUBMISSIONS_DIR
    entries, problems = [], []
    seen: dict[str, str] = {}
    if subs.is_dir():
        for corpus_dir in sorted(subs.iterdir()):
            if corpus_dir.name.startswith(".") or corpus_dir.name == "README.md":
                continue
            if corpus_dir.name not in CORPORA or not corpus_dir.is_dir() or \
                    corpus_dir.is_symlink():
                problems.append(f"{SUBMISSIONS_DIR}/{corpus_dir.name}: unexpected; submissions "
                                f"go in {SUBMISSIONS_DIR}/<{'|'.join(CORPORA)}>/<slug>/")
                continue
            for entry_dir in sorted(corpus_dir.iterdir()):
                if entry_dir.name.startswith("."):
                    continue
                where = f"{corpus_dir.name}/{entry_dir.name}"
                if entry_dir.is_symlink() or not entry_dir.is_dir():
                    problems.append(f"{where}: unexpected file; each entry is a folder")
                    continue
                if entry_dir.name in seen:
                    problems.append(f"{where}: duplicate slug {entry_dir.name!r} (also "
                                    f"{seen[entry_dir.name]}); slugs are unique across the board")
                seen.setdefault(entry_dir.name, where)
                entry, entry_problems = load_entry(entry_dir, corpus_dir.name, tasks)
                problems += entry_problems
                if entry is not None:
                    entries.append(entry)
    by_key = {(e.corpus, e.slug): e for e in entries}
    for e in entries:
        if e.kind != "target":
            problems += target_problems(e, by_key.get((e.corpus, e.target)))
    return Board(root=root, entries=entries, problems=problems)


def target_problems(entry: Entry, target: Entry | None) -> list[str]:
    """A method / retrain entry must name a valid target entry of the same corpus, scale, data
    source and ``--limit``: retained knowledge compares like with like."""
    where = f"{entry.corpus}/{entry.slug}/{ENTRY_FILE}"
    if target is None or target.kind != "target" or target.corpus != entry.corpus:
        return [f"{where}: target {entry.target!r} is not a valid target entry in "
                f"{SUBMISSIONS_DIR}/{entry.corpus}/"]
    return [f"{where}: {attr} is {getattr(entry, attr)!r} but its target {target.slug} has "
            f"{getattr(target, attr)!r}; retained knowledge compares like with like"
            for attr in ("reproducible", "muse_data", "limit")
            if getattr(entry, attr) != getattr(target, attr)]
