"""``muse-quant leaderboard add``: turn a sweep's output folder into a leaderboard entry.

Copies the ``<scheme>.json`` results files and their per-document scores
(``<scheme>.samples.jsonl``) byte for byte, hashes the checkpoint and checks that it is the one the
results were computed from (the sweep records its hash in ``config.muse_quant.unlearned.sha256``),
writes a filled-in ``entry.yaml`` and validates the new entry (the same validation as ``check``
and ``build``) before it appears under ``submissions/<corpus>/<slug>/``. An existing slug is
never overwritten.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import yaml

from ..errors import MuseQuantError
from ..evaluation.samples import samples_path
from ..io import recorded_scheme, scheme_from_filename
from ..recipes import CORPORA, REQUIRED_SCHEMES

from .bounds import entry_number_problems
from .entry import ENTRY_FILE, KINDS, RESULTS_DIR, SLUG_RE, SUBMISSIONS_DIR, data_source_kind
from .loading import plain_problems
from .results_check import structure_problems
from .validator import load_board, load_entry, schema_problems, target_problems

def checkpoint_sha256(path: str | Path, progress: bool = False) -> tuple[str, str]:
    """``(hex digest, "file" | "directory")``: :func:`harness_ext.hashing.content_sha256`, the hash
    the sweep records in the results (``config.muse_quant.unlearned.sha256``).

    A file: sha256 of its bytes. A directory: sha256 of the ``sha256sum`` listing of its files
    (links followed, loops skipped) in sorted relative-path order, i.e. the output of
    ``cd DIR && find -L . -type f | sed 's|^\\./||' | LC_ALL=C sort | xargs sha256sum | sha256sum``.
    """
    from ..hashing import content_sha256

    path = Path(path)
    if not path.exists():
        raise MuseQuantError(f"checkpoint {path} not found",
                             "pass the unlearned checkpoint (file or folder) with --checkpoint")
    return content_sha256(path, progress=progress)


def find_results(results_dir: str | Path) -> dict[str, Path]:
    """``{scheme: path}`` of the lm-eval results files ``<scheme>.json`` in a sweep's folder."""
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise MuseQuantError(f"--results {results_dir}: no such folder",
                             "pass the --output_path folder of `muse-quant sweep`")
    found, problems = {}, []
    for path in sorted(results_dir.glob("*.json")):
        try:  # UnicodeDecodeError, JSONDecodeError, an integer of > 4300 digits: ValueError
            data = json.loads(path.read_text(encoding="utf-8"))
            scheme = scheme_from_filename(path.name)
        except (OSError, ValueError, RecursionError):
            continue
        if not isinstance(data, dict) or "results" not in data:
            continue
        file_problems = plain_problems(data, path.name) or structure_problems(data, path.name)
        if file_problems:
            problems += file_problems
        elif recorded_scheme(data):
            found[scheme] = path
    if problems:
        raise MuseQuantError(f"results files in {results_dir} are damaged:\n  "
                             + "\n  ".join(problems),
                             "add the files `muse-quant sweep` wrote, unedited (or re-run it)")
    if not found:
        raise MuseQuantError(f"no <scheme>.json results files in {results_dir}",
                             f"run `muse-quant sweep --quant {','.join(REQUIRED_SCHEMES)},... "
                             f"--output_path {results_dir}` first")
    return found


def recorded_checkpoint_hashes(files: dict[str, Path]) -> dict[str, object]:
    """``{scheme: config.muse_quant.unlearned.sha256}`` of each results file (None when the file
    records no unlearned checkpoint or no hash)."""
    out = {}
    for scheme, path in files.items():
        data = json.loads(path.read_text(encoding="utf-8"))
        info = (data.get("config") or {}).get("muse_quant") or {}
        unlearned = info.get("unlearned") if isinstance(info, dict) else None
        out[scheme] = unlearned.get("sha256") if isinstance(unlearned, dict) else None
    return out


def verify_checkpoint(files: dict[str, Path], digest: str, checkpoint, kind: str) -> None:
    """A method entry's checkpoint must be the one every results file was computed from."""
    if kind != "method":
        return
    recorded = recorded_checkpoint_hashes(files)
    missing = sorted(s for s, h in recorded.items() if h is None)
    if missing:
        raise MuseQuantError(f"the results files {', '.join(missing)} record no unlearned "
                             f"checkpoint hash (config.muse_quant.unlearned.sha256), so they "
                             f"cannot be tied to --checkpoint {checkpoint}",
                             "re-run `muse-quant sweep --model_args pretrained=...,unlearned="
                             "CKPT` with this version of muse-quant and add its output")
    wrong = sorted(s for s, h in recorded.items() if h != digest)
    if wrong:
        theirs = sorted({str(recorded[s])[:12] for s in wrong})
        raise MuseQuantError(f"--checkpoint {checkpoint} has sha256 {digest[:12]}…, but the "
                             f"results {', '.join(wrong)} were computed from a checkpoint with "
                             f"sha256 {', '.join(t + '…' for t in theirs)}",
                             "pass the checkpoint given as unlearned= to the sweep that wrote "
                             "these results (or re-run the sweep on this checkpoint)")


def _git_user() -> str | None:
    try:
        out = subprocess.run(["git", "config", "user.name"], capture_output=True, text=True,
                             timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def _parse_value(text: str):
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    return value if isinstance(value, (int, float, bool, str)) or value is None else text


def parse_hyperparameters(pairs: list[str] | None) -> dict:
    out = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise MuseQuantError(f"--hyperparameter {pair!r} is not KEY=VALUE",
                                 "e.g. --hyperparameter lr=1e-5 --hyperparameter epochs=10")
        out[key.strip()] = _parse_value(value.strip())
    return out


def _default_target(root: Path, corpus: str, reproducible: str, muse_data: str) -> str:
    board = load_board(root)
    targets = sorted(e.slug for e in board.corpus_entries(corpus) if e.kind == "target"
                     and e.reproducible == reproducible and e.muse_data == muse_data)
    if len(targets) != 1:
        listing = ", ".join(targets) or "none"
        raise MuseQuantError(f"cannot choose the target entry for a {reproducible}-scale "
                             f"{corpus} entry on muse_data={muse_data} (candidates: {listing})",
                             "pass --target SLUG; add the target model first with "
                             "--kind target if the board has none")
    return targets[0]


def _warn_if_other_base(pretrained, target) -> None:
    """Retained knowledge assumes the method started from the target's model: say so when the
    base model the results were computed with is here and hashes differently."""
    if not pretrained or not Path(pretrained).exists():
        return
    digest, _ = checkpoint_sha256(pretrained)
    if digest != target.meta["checkpoint"]["sha256"]:
        print(f"warning: the results were computed from the base model {pretrained}, whose sha256 "
              f"({digest[:12]}…) differs from the checkpoint of the target entry {target.slug} "
              f"({target.meta['checkpoint']['sha256'][:12]}…). Retained knowledge is only "
              f"meaningful against the model you unlearned from: if that is another model, add it "
              f"with --kind target and pass --target.")


HEADER = """\
# Leaderboard entry, written by `muse-quant leaderboard add`.
# Text fields may be edited; results/*.json must stay exactly as `muse-quant sweep` wrote them.
# Schema: harness_ext/leaderboard/entry.schema.json. Then run `muse-quant leaderboard check`.
"""


def add_entry(root: str | Path, corpus: str, slug: str, results: str | Path,
              checkpoint: str | Path, *, kind: str = "method", run_card: str | Path | None = None,
              method: str | None = None, description: str | None = None,
              submitted_by: str | None = None, reproducible: str | None = None,
              target: str | None = None, base_model: str | None = None,
              checkpoint_location: str | None = None, paper: str | None = None,
              code: str | None = None, hyperparameters: dict | None = None,
              notes: str | None = None, progress: bool = True) -> Path:
    """Create ``root/submissions/<corpus>/<slug>/``; returns its path."""
    root = Path(root)
    if not root.is_dir():
        raise MuseQuantError(f"leaderboard folder {root} not found",
                             "run from the repository root or pass --root <checkout>/leaderboard")
    if corpus not in CORPORA:
        raise MuseQuantError(f"unknown corpus {corpus!r}", f"use one of {', '.join(CORPORA)}")
    if kind not in KINDS:
        raise MuseQuantError(f"unknown kind {kind!r}", f"use one of {', '.join(KINDS)}")
    if not SLUG_RE.match(slug):
        raise MuseQuantError(f"--slug {slug!r} is not a valid slug",
                             "use lowercase letters, digits and '-', e.g. npo-klr-news")
    subs = root / SUBMISSIONS_DIR
    for other in CORPORA:
        if (subs / other / slug).exists():
            raise MuseQuantError(f"the entry {subs / other / slug} already exists",
                                 "choose another --slug (existing entries are never overwritten)")
    files = find_results(results)
    first = json.loads(files[sorted(files)[0]].read_text(encoding="utf-8"))
    sources = {data_source_kind(((first.get("configs") or {}).get(t) or {})
                                .get("metadata", {}).get("muse_data"))
               for t in (first.get("configs") or {}) if t.startswith(f"muse_{corpus}_")}
    muse_data = sources.pop() if len(sources) == 1 else "hub"
    card = None
    card_path = Path(run_card) if run_card else None
    if card_path is None:
        ckpt = Path(checkpoint)
        for candidate in (ckpt / "run_card.json", ckpt.parent / "run_card.json"):
            if kind == "method" and candidate.is_file():
                card_path = candidate
                print(f"using the run card {candidate}")
                break
    if card_path is not None:
        try:
            card = json.loads(card_path.read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError) as exc:
            raise MuseQuantError(f"--run_card {card_path}: not a readable JSON file "
                                 f"({str(exc)[:200]})",
                                 "pass the run_card.json written by `muse-quant unlearn`") \
                from None
    if kind == "method" and card is None and not hyperparameters:
        raise MuseQuantError("a method entry needs its unlearning settings",
                             "pass --run_card run_card.json (from `muse-quant unlearn`) or "
                             "--hyperparameter KEY=VALUE for each setting")
    reproducible = reproducible or ("toy" if muse_data == "embedded" else "full")
    if kind != "target" and target is None:
        target = _default_target(root, corpus, reproducible, muse_data)
    submitted_by = submitted_by or _git_user()
    if not submitted_by:
        raise MuseQuantError("who ran it is unknown (no --submitted_by, no git user.name)",
                             "pass --submitted_by 'Your Name'")
    info = (first.get("config") or {}).get("muse_quant") or {}
    if method is None:
        method = {"target": "Target", "retrain": "Retrain"}.get(kind) or \
            (card or {}).get("method") or slug
    if description is None:
        description = {
            "target": "The model before unlearning (no unlearning).",
            "retrain": "Trained without the forget set: the gold standard unlearning aims at.",
        }.get(kind) or f"{method} unlearning" + (" (settings in the run card)" if card else "")
    if base_model is None:
        pretrained = (card or {}).get("pretrained") or info.get("pretrained") or "unknown"
        n_params = (first.get("config") or {}).get("model_num_parameters")
        base_model = Path(str(pretrained)).name + \
            (f" ({n_params / 1e6:.1f}M parameters)" if isinstance(n_params, (int, float)) else "")
    digest, ckpt_kind = checkpoint_sha256(checkpoint, progress=progress)

    meta = {"schema_version": 1, "kind": kind, "corpus": corpus, "method": method,
            "description": description}
    links = {k: v for k, v in (("paper", paper), ("code", code)) if v}
    if links:
        meta["links"] = links
    meta["base_model"] = base_model
    meta["checkpoint"] = {"location": checkpoint_location or str(checkpoint), "sha256": digest,
                          "kind": ckpt_kind}
    if target is not None:
        meta["target"] = target
    if hyperparameters:
        meta["hyperparameters"] = hyperparameters
    if card is not None:
        meta["run_card"] = card
    meta.update({"muse_data": muse_data, "reproducible": reproducible,
                 "submitted_by": submitted_by})
    if notes:
        meta["notes"] = notes
    problems = plain_problems(meta, ENTRY_FILE) or schema_problems(meta, ENTRY_FILE) or \
        entry_number_problems(meta, ENTRY_FILE)
    if problems:
        raise MuseQuantError("the entry would not be valid:\n  " + "\n  ".join(problems),
                             "fix the options above")

    final = subs / corpus / slug
    staging_root = subs / corpus / f".adding-{slug}"
    staging = staging_root / slug
    if staging_root.exists():
        shutil.rmtree(staging_root)
    try:
        (staging / RESULTS_DIR).mkdir(parents=True)
        for path in files.values():
            shutil.copyfile(path, staging / RESULTS_DIR / path.name)
            if samples_path(path).is_file():  # missing: the validation below says so
                shutil.copyfile(samples_path(path),
                                staging / RESULTS_DIR / samples_path(path).name)
        text = yaml.safe_dump(meta, sort_keys=False, allow_unicode=True, width=100)
        (staging / ENTRY_FILE).write_text(HEADER + text, encoding="utf-8")
        entry, problems = load_entry(staging, corpus)
        if entry is not None and kind != "target":
            board = load_board(root)
            found = [e for e in board.corpus_entries(corpus) if e.slug == target]
            problems = target_problems(entry, found[0] if found else None)
            if not problems and kind == "method":
                _warn_if_other_base(info.get("pretrained"), found[0])
        if problems:
            raise MuseQuantError(f"the new entry {corpus}/{slug} is not valid:\n  "
                                 + "\n  ".join(problems),
                                 "fix the results files or options above; nothing was added")
        verify_checkpoint(files, digest, checkpoint, kind)
        if final.exists():  # appeared meanwhile
            raise MuseQuantError(f"the entry {final} already exists",
                                 "choose another --slug (existing entries are never overwritten)")
        staging.rename(final)
    finally:
        if staging_root.exists():
            shutil.rmtree(staging_root)
    return final
