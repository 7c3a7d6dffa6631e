"""``muse-quant leaderboard check``: validate every entry (all problems of all entries are
collected and reported together), rebuild into a temporary folder and fail with a diff when the
committed README or plots are out of date.

``--reproduce SLUG`` is :mod:`.reproduce` (re-exported here).
"""

from __future__ import annotations

import difflib
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from . import builder
from .reproduce import compare_results, reproduce, unlearn_arguments
from .validator import load_board

__all__ = ["CheckReport", "check", "compare_results", "reproduce", "svg_identity",
           "unlearn_arguments"]

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


