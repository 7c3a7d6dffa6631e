"""``muse-quant leaderboard check --reproduce SLUG``: re-run one toy entry on CPU and compare.

The unlearning is rebuilt from the run card's hyperparameters through an allow-list
(:mod:`.allowlist`: never ``--plugin``, paths or free-form arguments), run by this checkout's
``muse-quant unlearn`` from the base model the checker names (``--pretrained``; no path from the
submission is loaded), then ``muse-quant sweep`` over the schemes of the committed results files
(each validated against the scheme registry) with the allowed ``model_args``, and every value of
every committed results file's ``results`` section is compared exactly. This is the only check
that catches a consistent forgery of the per-document scores (``.samples.jsonl``) together with
the aggregates computed from them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from ..errors import MuseQuantError

from .allowlist import model_args_settings, unlearn_settings
from .entry import Board, Entry, corpus_group
from .validator import load_board


def _command_options(name: str) -> set[str]:
    """Option strings accepted by ``muse-quant <name>``; raises when it is not a command here."""
    import argparse

    from ..cli import commands

    mods = commands()
    if name not in mods:
        raise MuseQuantError(f"this checkout has no `muse-quant {name}` command, which "
                             f"`check --reproduce` needs", "update muse-quant (git pull; pip "
                                                           "install -e .)")
    parser = argparse.ArgumentParser(add_help=False)
    mods[name].add_arguments(parser)
    return {opt for action in parser._actions for opt in action.option_strings}


def unlearn_arguments(command: list[str], out: str | Path, pretrained: str | None = None,
                      corpus: str = "news") -> list[str]:
    """The ``muse-quant unlearn`` arguments rebuilt from the allowed hyperparameters of the run
    card's ``command`` (:func:`.allowlist.unlearn_settings`), plus the checker's own
    ``--pretrained``, ``--corpus``, ``--muse_data embedded`` and ``--out``."""
    from ..unlearning.config import UnlearnConfig

    settings = unlearn_settings(command, corpus)
    argv = []
    for name, value in settings.items():
        argv += [UnlearnConfig.option(name), str(value)]
    if pretrained is not None:
        argv += ["--pretrained", str(pretrained)]
    return argv + ["--corpus", corpus, "--muse_data", "embedded", "--out", str(out)]


def compare_results(committed: dict, reproduced: dict, name: str) -> list[str]:
    """Every value of every task in ``committed['results']`` must equal the reproduced one."""
    diffs = []
    for task, values in sorted(committed["results"].items()):
        other = reproduced.get("results", {}).get(task)
        if other is None:
            diffs.append(f"{name}: task {task} missing from the reproduced results")
            continue
        for key in sorted(set(values) | set(other)):
            a, b = values.get(key, "<absent>"), other.get(key, "<absent>")
            if a != b:
                diffs.append(f"{name}: {task} {key}: committed {a!r}, reproduced {b!r}")
    return diffs


def _run(argv: list[str], what: str) -> None:
    env = dict(os.environ)
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("HF_DATASETS_OFFLINE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    cmd = [sys.executable, "-m", "harness_ext.cli", *argv]
    print("$ muse-quant " + " ".join(argv), flush=True)
    if subprocess.run(cmd, env=env).returncode != 0:
        raise MuseQuantError(f"{what} failed (exit status above)",
                             "fix the error printed above; the committed entry is unchanged")


def _checkpoint_from_out(out: Path) -> Path:
    """The checkpoint our own ``muse-quant unlearn`` wrote in ``out`` (its run card says)."""
    card = out / "run_card.json"
    if card.is_file():
        data = json.loads(card.read_text(encoding="utf-8"))
        for key in ("checkpoint", "save"):
            value = data.get(key)
            if isinstance(value, str) and value:
                path = Path(value)
                for candidate in (path, out / path):
                    if candidate.exists():
                        return candidate
    return out


def _model_args(entry: Entry, pretrained: str, unlearned: str | None) -> str:
    """``pretrained`` / ``unlearned`` are the checker's; of the recorded model_args only the
    allowed keys (:data:`.allowlist.MODEL_ARGS_ALLOWED`) are kept, in their order."""
    first = entry.results[sorted(entry.results)[0]]
    args = {"pretrained": pretrained}
    if unlearned:
        args["unlearned"] = unlearned
    args.update(model_args_settings((first.get("config") or {}).get("model_args") or {}))
    return ",".join(f"{k}={v}" for k, v in args.items())


def _sha256_matches(entry: Entry, path: str) -> str:
    from .add import checkpoint_sha256

    digest, _ = checkpoint_sha256(path)
    return "matches the entry" if digest == entry.meta["checkpoint"]["sha256"] else \
        f"differs from the entry ({digest[:12]}… vs {entry.meta['checkpoint']['sha256'][:12]}…)"


def _schemes(entry: Entry) -> list[str]:
    from ..quantizers import parse_scheme

    schemes = sorted(entry.results)
    for scheme in schemes:
        parse_scheme(scheme)  # a registered scheme, or MuseQuantError
    return schemes


def _samples_diffs(entry: Entry, name: str, folder: Path) -> list[str]:
    from ..evaluation import samples

    committed = samples.samples_path(entry.path / "results" / name)
    reproduced = samples.samples_path(folder / name)
    if not reproduced.is_file():
        return [f"{reproduced.name}: the sweep wrote no such file"]
    if samples.read(committed)["tasks"] != samples.read(reproduced)["tasks"]:
        return [f"{committed.name}: the per-document scores differ from the reproduced ones"]
    return []


def reproduce(root: str | Path, slug: str, pretrained: str | None = None,
              workdir: str | Path | None = None) -> tuple[bool, list[str]]:
    """Re-run one toy entry and compare. Returns ``(all equal, report lines)``."""
    if workdir is not None and not Path(workdir).is_dir():
        raise MuseQuantError(f"--workdir {workdir} is not an existing folder",
                             f"create it first (mkdir -p {workdir}) or leave --workdir out to "
                             f"use the system's temporary folder")
    board: Board = load_board(root)
    entry = board.find(slug)
    if entry.reproducible != "toy" or entry.muse_data != "embedded":
        raise MuseQuantError(f"{entry.slug} is a {entry.reproducible}-scale entry on "
                             f"muse_data={entry.muse_data}; --reproduce re-runs toy entries on "
                             f"the embedded corpus (CPU)", "pick a `reproducible: toy` entry")
    if not pretrained or not Path(pretrained).is_dir():
        what = "the target model it was unlearned from" if entry.kind == "method" else \
            f"the {entry.kind} model itself"
        raise MuseQuantError(f"--pretrained {pretrained or '(not given)'}: reproducing "
                             f"{entry.slug} needs the base model folder ({what}) on this "
                             f"machine; no path named by a submission is loaded",
                             "pass --pretrained DIR (for the demo's toy entries: "
                             "demo_out/<corpus>/models/target, or models/retrain for a retrain "
                             "entry)")
    card = entry.run_card
    if entry.kind == "method" and not card:
        raise MuseQuantError(f"{entry.slug} has no run card, so its unlearning cannot be re-run",
                             "reproduce re-runs entries added with the run_card.json of "
                             "`muse-quant unlearn`")
    unlearn_argv = None  # everything taken from the submission is checked before any run
    if entry.kind == "method":
        unlearn_argv = unlearn_arguments(card["command"], "OUT", pretrained, entry.corpus)
    model_args = _model_args(entry, pretrained, "UNLEARNED" if unlearn_argv else None)
    schemes = _schemes(entry)
    first = entry.results[schemes[0]]
    sweep_options = _command_options("sweep")
    if unlearn_argv is not None:
        _command_options("unlearn")
    lines = []
    with tempfile.TemporaryDirectory(prefix=f"reproduce-{entry.slug}-", dir=workdir) as tmp:
        tmp = Path(tmp)
        unlearned = None
        if unlearn_argv is not None:
            _run(["unlearn", *unlearn_argv[:-1], str(tmp / "unlearned")],
                 "re-running the unlearning")
            unlearned = str(_checkpoint_from_out(tmp / "unlearned"))
            lines.append(f"checkpoint sha256 {_sha256_matches(entry, unlearned)}")
            model_args = _model_args(entry, pretrained, unlearned)
        else:  # target / retrain: the checkpoint is the model itself
            lines.append(f"model sha256 {_sha256_matches(entry, pretrained)}")
        argv = ["sweep", "--model_args", model_args,
                "--quant", ",".join(schemes), "--tasks", corpus_group(entry.corpus),
                "--metadata", "muse_data=embedded", "--output_path", str(tmp / "sweep"),
                "--device", "cpu"]
        config = first["config"]
        if config.get("limit") is not None and "--limit" in sweep_options:
            argv += ["--limit", str(int(config["limit"]))]
        batch = str(config.get("batch_size") or "")
        if batch.isdigit() and 0 < int(batch) <= 4096 and "--batch_size" in sweep_options:
            argv += ["--batch_size", batch]
        _run(argv, "the sweep")
        diffs = []
        for scheme in schemes:
            name = entry.files[scheme]
            path = tmp / "sweep" / name
            if not path.is_file():
                diffs.append(f"{name}: the sweep wrote no such file")
                continue
            diffs += compare_results(entry.results[scheme],
                                     json.loads(path.read_text(encoding="utf-8")), name)
            diffs += _samples_diffs(entry, name, tmp / "sweep")
        n_values = sum(len(v) for d in entry.results.values() for v in d["results"].values())
        if diffs:
            lines += [f"{entry.slug}: {len(diffs)} value(s) differ from the committed results:",
                      *diffs]
        else:
            lines.append(f"{entry.slug}: reproduced exactly ({len(schemes)} results files, "
                         f"{n_values} values, and their per-document scores)")
    return not diffs, lines
