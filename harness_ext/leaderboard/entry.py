"""What a leaderboard entry is: the layout names, the metrics the board shows, and the
:class:`Entry` / :class:`Board` records the validator builds (see :mod:`.validator`)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import MuseQuantError

KINDS = ("method", "target", "retrain")
ENTRY_FILE = "entry.yaml"
RESULTS_DIR = "results"
SUBMISSIONS_DIR = "submissions"
SLUG_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,62}[a-z0-9])?$")
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
