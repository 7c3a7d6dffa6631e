"""Load and validate leaderboard submissions (``submissions/<corpus>/<slug>/``).

An entry is ``entry.yaml`` (checked against ``entry.schema.json`` (beside this module)),
``results/<scheme>.json`` (lm-eval results files written by ``muse-quant sweep``, unedited) and,
beside each, ``results/<scheme>.samples.jsonl`` (its per-document scores). Checks:

* layout: only ``entry.yaml``, ``results/<scheme>.json`` and ``results/<scheme>.samples.jsonl``,
  regular files (no links), size caps; any other file or folder anywhere under ``submissions/``,
  hidden ones (``.name``) included, is a problem;
* ``entry.yaml``: plain YAML data (no tags, aliases or duplicate keys; finite numbers; at most
  :data:`.loading.MAX_DEPTH` levels), the JSON Schema, hyperparameters in range
  (:mod:`.bounds`), and agreement with its folder (corpus) and its run card (corpus, data source);
* each results file (:mod:`.results_check`): a named message for every wrong type; tasks and
  versions equal the current task YAMLs; the scheme recorded in
  ``config.muse_quant.quantization.scheme`` matches the file name; every metric is a finite
  number within its unit; the data source and corpus match the entry;
* each samples file (:mod:`.samples_check`): every aggregate of its results file recomputed from
  the per-document scores equals the submitted one exactly (a consistent forgery of the scores
  themselves is caught only by ``check --reproduce``);
* across an entry's files: the full, 8-bit and 4-bit FP4 files exist, and all files evaluated the
  same model (``pretrained``, ``unlearned``) with the same ``--limit``;
* across the board: slugs are unique (they name an entry in ``check --reproduce``), and every
  method / retrain entry names a target entry of the same corpus, scale, data and limit.

Every problem of every entry is collected (:attr:`Board.problems`) before anything fails.
Nothing in a submission is imported or executed: files are read by :mod:`.loading` (size caps,
plain-data YAML, JSON); task versions come from :mod:`.tasks`; :class:`Entry` and :class:`Board`
are in :mod:`.entry`.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

from ..errors import MuseQuantError
from ..io import scheme_filename, scheme_from_filename
from ..recipes import CORPORA, PAPER_SCHEMES, REQUIRED_SCHEMES

from . import SCHEMA_PATH
from .bounds import entry_number_problems
from .entry import (ENTRY_FILE, RESULTS_DIR, SLUG_RE, SUBMISSIONS_DIR, Board, Entry,
                    data_source_kind)
from .loading import (MAX_ENTRY_BYTES, MAX_RESULTS_BYTES, MAX_RESULTS_FILES, load_plain_yaml,
                      read_json, read_plain_yaml)
from .results_check import check_results
from .samples_check import MISSING, MISSING_HELP, SAMPLES_SUFFIX, samples_problems
from .tasks import current_tasks, task_aggregations

# also importable from here: the records and loaders the rules use
__all__ = ["Board", "Entry", "MAX_ENTRY_BYTES", "MAX_RESULTS_BYTES", "check_results",
           "current_tasks", "load_board", "load_entry", "load_plain_yaml", "schema_problems",
           "target_problems"]


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


def _model_identity(data: dict) -> tuple:
    info = data["config"]["muse_quant"]
    unlearned = info.get("unlearned") or {}
    return info.get("pretrained"), unlearned.get("path")


HIDDEN = ("hidden files and folders are not allowed; a submission holds only the files the "
          "validator knows")


def _unexpected(item: Path, rel: str, allowed: str) -> str:
    if item.name.startswith("."):
        return f"{rel}: {HIDDEN} ({allowed})"
    if item.is_symlink():
        return f"{rel}: symbolic links are not allowed ({allowed})"
    return f"{rel}: unexpected {'folder' if item.is_dir() else 'file'}; {allowed}"


ENTRY_LAYOUT = (f"an entry holds only {ENTRY_FILE} and {RESULTS_DIR}/ (<scheme>.json and "
                f"<scheme>{SAMPLES_SUFFIX} files)")


def load_entry(path: Path, corpus: str, tasks: dict | None = None,
               aggregations: dict | None = None) -> tuple[Entry | None, list[str]]:
    """Validate one entry folder. Returns ``(entry or None, problems)``."""
    tasks = current_tasks() if tasks is None else tasks
    aggregations = task_aggregations() if aggregations is None else aggregations
    where = f"{corpus}/{path.name}"
    problems = []
    if not SLUG_RE.match(path.name):
        problems.append(f"{where}: the folder name is not a valid slug (lowercase letters, digits "
                        f"and '-', at most 64 characters)")
    for item in sorted(path.iterdir()):
        if item.is_symlink() or item.name not in (ENTRY_FILE, RESULTS_DIR) or \
                (item.name == ENTRY_FILE) != item.is_file():
            problems.append(_unexpected(item, f"{where}/{item.name}", ENTRY_LAYOUT))
    entry_path = path / ENTRY_FILE
    meta = None
    if not entry_path.is_file() or entry_path.is_symlink():
        problems.append(f"{where}: {ENTRY_FILE} is missing")
    else:
        meta, read_problems = read_plain_yaml(entry_path, f"{where}/{ENTRY_FILE}")
        problems += read_problems
        if not read_problems:
            schema_errors = schema_problems(meta, f"{where}/{ENTRY_FILE}")
            if not schema_errors:
                schema_errors = entry_number_problems(meta, f"{where}/{ENTRY_FILE}")
            problems += schema_errors
            if schema_errors:
                meta = None
        else:
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
    names = {item.name for item in items}
    for item in items:
        rel = f"{where}/{RESULTS_DIR}/{item.name}"
        if item.name.startswith(".") or item.is_symlink() or not item.is_file():
            problems.append(_unexpected(item, rel, "only regular <scheme>.json files and their "
                                                   f"<scheme>{SAMPLES_SUFFIX} are allowed here"))
            continue
        if item.name.endswith(SAMPLES_SUFFIX):
            if item.name[:-len(SAMPLES_SUFFIX)] + ".json" not in names:
                problems.append(f"{rel}: per-document scores without their results file "
                                f"{item.name[:-len(SAMPLES_SUFFIX)]}.json")
            continue
        if not item.name.endswith(".json"):
            problems.append(f"{rel}: unexpected file; results are named <scheme>.json, their "
                            f"per-document scores <scheme>{SAMPLES_SUFFIX}")
            continue
        data, read_problems = read_json(item, rel)
        if read_problems:
            problems += read_problems
            continue
        file_problems = check_results(data, item.name, corpus,
                                      meta["muse_data"] if meta else None, tasks, rel)
        if not file_problems:
            file_problems = samples_problems(data, item, rel, aggregations)
        problems += file_problems
        if not file_problems:
            scheme = scheme_from_filename(item.name)
            results[scheme] = data
            files[scheme] = item.name
    if any(p.endswith(MISSING) for p in problems):
        problems.append(f"{where}: {MISSING_HELP}")
    for scheme in REQUIRED_SCHEMES:
        if results_dir.is_dir() and not (results_dir / scheme_filename(scheme)).exists():
            problems.append(f"{where}: {RESULTS_DIR}/{scheme_filename(scheme)} is missing; every "
                            f"entry has {', '.join(REQUIRED_SCHEMES)} (muse-quant sweep --quant "
                            f"{','.join(PAPER_SCHEMES)})")
    if results:
        identities = {s: _model_identity(d) for s, d in results.items()}
        if len(set(identities.values())) > 1:
            detail = "; ".join(f"{s}: pretrained={p}, unlearned={u}"
                               for s, (p, u) in sorted(identities.items()))
            problems.append(f"{where}: the results files evaluated different models ({detail}); "
                            f"submit the files of one sweep")
        limits = {s: d["config"].get("limit") for s, d in results.items()}
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
    aggregations = task_aggregations()
    layout = f"submissions go in {SUBMISSIONS_DIR}/<{'|'.join(CORPORA)}>/<slug>/"
    if subs.is_symlink() or (subs.exists() and not subs.is_dir()):
        problems.append(f"{SUBMISSIONS_DIR}: must be a folder, not a link or a file")
    elif subs.is_dir():
        for corpus_dir in sorted(subs.iterdir()):
            rel = f"{SUBMISSIONS_DIR}/{corpus_dir.name}"
            if corpus_dir.name == "README.md" and corpus_dir.is_file() and \
                    not corpus_dir.is_symlink():
                continue
            if corpus_dir.name not in CORPORA or not corpus_dir.is_dir() or \
                    corpus_dir.is_symlink():
                problems.append(_unexpected(corpus_dir, rel, layout))
                continue
            for entry_dir in sorted(corpus_dir.iterdir()):
                where = f"{corpus_dir.name}/{entry_dir.name}"
                if entry_dir.name.startswith(".") or entry_dir.is_symlink() or \
                        not entry_dir.is_dir():
                    problems.append(_unexpected(entry_dir, where, "each entry is a folder "
                                                                  "named by its slug"))
                    continue
                if entry_dir.name in seen:
                    problems.append(f"{where}: duplicate slug {entry_dir.name!r} (also "
                                    f"{seen[entry_dir.name]}); slugs are unique across the board")
                seen.setdefault(entry_dir.name, where)
                entry, entry_problems = load_entry(entry_dir, corpus_dir.name, tasks,
                                                   aggregations)
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
