"""``muse-quant leaderboard check``: validate every entry, rebuild into a temporary folder and
fail with a diff when the committed README or plots are out of date.

``--reproduce SLUG`` re-runs one toy entry on CPU: the unlearning from its run card (only the
arguments after ``unlearn`` are used, given to this checkout's ``muse-quant unlearn`` with
``--out`` redirected; nothing from the submission is executed), then ``muse-quant sweep`` over
the schemes of its committed results files, and compares every value in every committed results
file's ``results`` section exactly.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import MuseQuantError
from ..io import parse_kv

from . import builder
from .entry import Board, Entry, corpus_group
from .validator import load_board

MAX_DIFF_LINES = 200
MAX_SVG_DIFF_LINES = 40
_SVG_META = re.compile(r"<dc:description>plotted data sha256 ([0-9a-f]{64})</dc:description>.*?"
                       r"matplotlib v([^)<]+)\)", re.S)


@dataclass
class CheckReport:
    problems: list[str] = field(default_factory=list)  # invalid entries
    stale: list[str] = field(default_factory=list)  # diffs of out-of-date generated files
    notes: list[str] = field(default_factory=list)
    entries: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems and not self.stale


def _diff(committed: bytes, rebuilt: bytes, name: str, limit: int) -> str:
    lines = list(difflib.unified_diff(committed.decode("utf-8", "replace").splitlines(True),
                                      rebuilt.decode("utf-8").splitlines(True),
                                      f"{name} (committed)", f"{name} (rebuilt)"))
    if len(lines) > limit:
        lines = lines[:limit] + [f"... {len(lines) - limit} more diff lines\n"]
    return "".join(line if line.endswith("\n") else line + "\n" for line in lines)


def svg_identity(content: bytes) -> tuple[str, str] | None:
    """``(plotted-data sha256, matplotlib version)`` recorded in a generated SVG."""
    match = _SVG_META.search(content.decode("utf-8", "replace"))
    return (match.group(1), match.group(2)) if match else None


def check(root: str | Path) -> CheckReport:
    """Validate the submissions under ``root`` and compare the committed generated files with a
    fresh build."""
    root = Path(root)
    board = load_board(root)
    report = CheckReport(problems=list(board.problems), entries=len(board.entries))
    if board.problems:
        report.notes.append("the board was not rebuilt: fix the entries first")
        return report
    with tempfile.TemporaryDirectory(prefix="muse-quant-leaderboard-") as tmp:
        builder.build(root, tmp, board=board)
        for name in builder.output_names():
            rebuilt = (Path(tmp) / name).read_bytes()
            path = root / name
            committed = path.read_bytes() if path.is_file() else None
            if committed == rebuilt:
                continue
            if committed is not None and name.endswith(".svg"):
                old, new = svg_identity(committed), svg_identity(rebuilt)
                if old and new and old[0] == new[0]:
                    report.notes.append(f"{name}: drawn by matplotlib {old[1]}, here {new[1]}; "
                                        f"the plotted data is the same, so it is up to date")
                    continue
            fix = "run `muse-quant leaderboard build` and commit the result"
            if committed is None:
                report.stale.append(f"{root / name} is missing; {fix}")
                continue
            limit = MAX_SVG_DIFF_LINES if name.endswith(".svg") else MAX_DIFF_LINES
            report.stale.append(f"{root / name} is out of date; {fix}:\n"
                                f"{_diff(committed, rebuilt, name, limit)}")
    return report


# ---------------------------------------------------------------- reproduce
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


def unlearn_arguments(command: list[str], out: str | Path, pretrained: str | None = None) \
        -> list[str]:
    """The run card's arguments after ``unlearn``, with ``--out`` (and ``--pretrained``) replaced."""
    from ..unlearning.config import UnlearnConfig

    if not isinstance(command, list) or "unlearn" not in command:
        raise MuseQuantError("the run card's command is not a `muse-quant unlearn` command line",
                             "reproduce needs the run_card.json that `muse-quant unlearn` wrote")
    argv = [str(a) for a in command[command.index("unlearn") + 1:]]
    settings = {"out": out} if pretrained is None else {"out": out, "pretrained": pretrained}
    return UnlearnConfig.set_in_argv(argv, **settings)


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
    first = entry.results[sorted(entry.results)[0]]
    recorded = (first.get("config") or {}).get("model_args") or {}
    if isinstance(recorded, str):
        recorded = parse_kv(recorded, "the recorded model_args")
    args = {"pretrained": pretrained}
    if unlearned:
        args["unlearned"] = unlearned
    for key, value in recorded.items():
        if key not in ("pretrained", "unlearned", "quant", "keep_float_weights"):
            args[key] = value
    return ",".join(f"{k}={v}" for k, v in args.items())


def _sha256_matches(entry: Entry, path: str) -> str:
    from .add import checkpoint_sha256

    if not Path(path).exists():
        return "not found"
    digest, _ = checkpoint_sha256(path)
    return "matches the entry" if digest == entry.meta["checkpoint"]["sha256"] else \
        f"differs from the entry ({digest[:12]}… vs {entry.meta['checkpoint']['sha256'][:12]}…)"


def reproduce(root: str | Path, slug: str, pretrained: str | None = None,
              workdir: str | Path | None = None) -> tuple[bool, list[str]]:
    """Re-run one toy entry and compare. Returns ``(all equal, report lines)``."""
    board: Board = load_board(root)
    entry = board.find(slug)
    if entry.reproducible != "toy" or entry.muse_data != "embedded":
        raise MuseQuantError(f"{entry.slug} is a {entry.reproducible}-scale entry on "
                             f"muse_data={entry.muse_data}; --reproduce re-runs toy entries on "
                             f"the embedded corpus (CPU)", "pick a `reproducible: toy` entry")
    sweep_options = _command_options("sweep")
    first = entry.results[sorted(entry.results)[0]]
    recorded = (first.get("config") or {}).get("muse_quant") or {}
    card = entry.run_card
    lines = []
    with tempfile.TemporaryDirectory(prefix=f"reproduce-{entry.slug}-",
                                     dir=workdir) as tmp:
        tmp = Path(tmp)
        unlearned = None
        if entry.kind == "method" and card:
            _command_options("unlearn")
            base = pretrained or card.get("pretrained") or recorded.get("pretrained")
            if not base or not Path(base).exists():
                raise MuseQuantError(f"the model {entry.slug} was unlearned from ({base}) is not on "
                                     f"this machine", "pass --pretrained DIR (the toy target)")
            _run(["unlearn", *unlearn_arguments(card["command"], tmp / "unlearned", base)],
                 "re-running the unlearning")
            unlearned = str(_checkpoint_from_out(tmp / "unlearned"))
            lines.append(f"checkpoint sha256 {_sha256_matches(entry, unlearned)}")
        elif entry.kind == "method":
            location = entry.meta["checkpoint"]["location"]
            base = pretrained or recorded.get("pretrained")
            if not Path(location).exists() or not base or not Path(base).exists():
                raise MuseQuantError(f"{entry.slug} has no run card and its checkpoint {location} "
                                     f"or base model {base} is not on this machine",
                                     "reproduce needs the run card of `muse-quant unlearn`, or the "
                                     "checkpoint files plus --pretrained DIR")
            unlearned = location
            lines.append(f"checkpoint sha256 {_sha256_matches(entry, location)}")
        else:  # target / retrain: the checkpoint is the model itself
            candidates = [pretrained, entry.meta["checkpoint"]["location"],
                          recorded.get("pretrained")]
            base = next((c for c in candidates if c and Path(c).exists()), None)
            if base is None:
                raise MuseQuantError(f"the {entry.kind} model of {entry.slug} is not on this machine",
                                     "pass --pretrained DIR")
            lines.append(f"model sha256 {_sha256_matches(entry, base)}")
        schemes = sorted(entry.results)
        argv = ["sweep", "--model_args", _model_args(entry, base, unlearned),
                "--quant", ",".join(schemes), "--tasks", corpus_group(entry.corpus),
                "--metadata", "muse_data=embedded", "--output_path", str(tmp / "sweep"),
                "--device", "cpu"]
        config = first.get("config") or {}
        if config.get("limit") is not None and "--limit" in sweep_options:
            argv += ["--limit", str(int(config["limit"]))]
        if config.get("batch_size") not in (None, "") and "--batch_size" in sweep_options:
            argv += ["--batch_size", str(config["batch_size"])]
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
        n_values = sum(len(v) for d in entry.results.values() for v in d["results"].values())
        if diffs:
            lines += [f"{entry.slug}: {len(diffs)} value(s) differ from the committed results:",
                      *diffs]
        else:
            lines.append(f"{entry.slug}: reproduced exactly ({len(schemes)} results files, "
                         f"{n_values} values)")
    return not diffs, lines
