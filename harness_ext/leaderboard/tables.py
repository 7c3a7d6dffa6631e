"""The leaderboard's tables, per group (one target): the compact main table, the methods that lost
utility (listed apart), the deployment formats and the per-precision metrics in ``<details>``.

Every number in them is what ``muse-quant compare`` computes for the entry's results files against
its target's (:func:`answers`): retained knowledge, the change from full precision, utility kept,
the bootstrap intervals over documents (from the ``<scheme>.samples.jsonl`` beside a results file;
"CI n/a" without one) and the verdict, by the rule of :mod:`harness_ext.evaluation.verdict`.
A scheme an entry (or its target) was not evaluated at shows "—".
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .entry import RESULTS_DIR, Entry
from .scores import DEPLOYMENT, FULL, PRECISIONS, Group

LABELS = dict((*PRECISIONS, *DEPLOYMENT))
COLUMNS = (("verbmem_f", "VerbMem_f ↓"), ("knowmem_f", "KnowMem_f ↓"),
           ("privleak", "PrivLeak → 0"), ("knowmem_r", "KnowMem_r ↑"))
NO_VALUE = "—"


# ---------------------------------------------------------------- formatting
def fmt(value: float | None, digits: int = 1, sign: bool = False) -> str:
    if value is None:
        return NO_VALUE
    text = f"{value:.{digits}f}"
    if text.startswith("-") and float(text) == 0:
        text = text[1:]
    if sign:
        return "±" + text if float(text) == 0 else ("" if text.startswith("-") else "+") + text
    return text


def fmt_pct(value: float | None) -> str:
    return NO_VALUE if value is None else f"{fmt(value)}%"


def fmt_ci(ci, sign: bool = False) -> str:
    """``<sub>[low, high]</sub>``, or ``<sub>CI n/a</sub>`` without per-document samples."""
    if ci is None:
        return "<sub>CI n/a</sub>"
    return f"<sub>[{fmt(ci[0], sign=sign)}, {fmt(ci[1], sign=sign)}]</sub>"


_ESCAPE = {c: "\\" + c for c in "\\`*_[]<>|#"}


def md(text) -> str:
    """Submitted text as inert Markdown inside a table or list: one line, specials escaped."""
    flat = " ".join(str(text).split())
    return "".join(_ESCAPE.get(c, c) for c in flat)


def label(scheme: str) -> str:
    return LABELS.get(scheme, scheme)


# ---------------------------------------------------------------- the numbers
@dataclass
class Answer:
    """One entry against its target: compare's row per scheme, and its verdict."""

    rows: dict[str, dict] = field(default_factory=dict)
    verdict: str | None = None  # None for the target itself
    reason: str = ""

    def row(self, scheme: str) -> dict | None:
        row = self.rows.get(scheme)
        return row if row is not None and row["retained"] is not None else None


def _run(entry: Entry):
    from ..evaluation.compare import Run

    folder = entry.path / RESULTS_DIR
    return Run(name=entry.slug, path=entry.path,
               files={s: folder / name for s, name in entry.files.items()},
               results=dict(entry.results))


def answers(group: Group) -> dict[str, Answer]:
    """``{slug: Answer}`` for every entry of the group, from ``muse-quant compare``'s numbers
    (the target compared with itself: 100% everywhere, no verdict)."""
    from ..evaluation import compare

    entries = [*group.references, *group.methods]
    report = compare.compare(_run(group.target), [_run(e) for e in entries])
    corpus = next(c for c in report["corpora"] if c["corpus"] == group.corpus)
    out = {}
    for entry, model in zip(entries, corpus["models"]):  # same order as the runs
        is_target = entry is group.target
        out[entry.slug] = Answer(rows={r["scheme"]: r for r in model["rows"]},
                                 verdict=None if is_target else model["verdict"],
                                 reason="" if is_target else model["reason"])
    return out


# ---------------------------------------------------------------- cells
def retained_cell(answer: Answer, scheme: str) -> str:
    """Retained % [CI]; away from full precision also Δ (points) [CI of Δ]. The target's own
    row: the value alone (100% by definition)."""
    row = answer.row(scheme)
    if row is None:
        return NO_VALUE
    if answer.verdict is None:
        return fmt_pct(row["retained"])
    text = f"{fmt_pct(row['retained'])} {fmt_ci(row['retained_ci'])}"
    if scheme != FULL and row["change"] is not None:
        text += f"<br>Δ {fmt(row['change'], sign=True)} {fmt_ci(row['change_ci'], sign=True)}"
    return text


def utility_cell(group: Group, entry: Entry) -> str:
    full = group.utility(entry, FULL)
    text = fmt_pct(full)
    four = group.utility(entry, PRECISIONS[2][0])
    if full is not None and four is not None:
        text += f"<br><sub>{label(PRECISIONS[2][0])}: {fmt_pct(four)}</sub>"
    return text


def verdict_cell(answer: Answer) -> str:
    return "reference" if answer.verdict is None else f"**{answer.verdict}**"


def anchor(entry: Entry) -> str:
    return f"{entry.corpus}-{entry.slug}"


def row_label(entry: Entry) -> str:
    link = f"[`{entry.slug}`](#{anchor(entry)})"
    if entry.kind == "method":
        return f"**{md(entry.name)}**<br>{link}"
    role = {"target": "no unlearning", "retrain": "gold"}[entry.kind]
    return f"*{md(entry.name)}* ({entry.kind}, {role})<br>{link}"


# ---------------------------------------------------------------- tables
def _head(cells: list[str], left: int, text_last: bool = False) -> list[str]:
    """Header and alignment row: ``left`` text columns, numbers, and a last text column."""
    align = ["---"] * left + ["--:"] * (len(cells) - left)
    if text_last:
        align[-1] = "---"
    return ["| " + " | ".join(cells) + " |", "|" + "|".join(align) + "|"]


def main_table(group: Group, found: dict[str, Answer], rows: list[tuple[str, Entry]]) \
        -> list[str]:
    """# | Entry | retained at each main precision | utility kept | verdict (9 columns);
    ``rows``: (rank, entry)."""
    head = ["#", "Entry", *(f"Retained<br>{lab}" for _, lab in PRECISIONS),
            "Utility kept", "Verdict"]
    lines = _head(head, 2, text_last=True)
    for rank, entry in rows:
        answer = found[entry.slug]
        cells = [rank, row_label(entry)]
        cells += [retained_cell(answer, s) for s, _ in PRECISIONS]
        cells += [utility_cell(group, entry), verdict_cell(answer)]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def main_rows(group: Group) -> list[tuple[str, Entry]]:
    """The references (no rank), then the ranked methods 1, 2, ..."""
    return [("", e) for e in group.references] + \
        [(str(i), e) for i, e in enumerate(group.ranked, 1)]


def utility_lost_rows(group: Group) -> list[tuple[str, Entry]]:
    """The methods listed apart: no rank."""
    return [(NO_VALUE, e) for e in group.utility_lost]


def deployment_table(group: Group, found: dict[str, Answer]) -> list[str]:
    lines = _head(["Entry", *(f"Retained<br>{lab}" for _, lab in DEPLOYMENT)], 1)
    for entry in [*group.references, *group.methods]:
        cells = [row_label(entry), *(retained_cell(found[entry.slug], s) for s, _ in DEPLOYMENT)]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def metrics_details(group: Group, found: dict[str, Answer]) -> list[str]:
    """One collapsed ``<details>`` block per scheme: the four metrics of every entry, retained %
    and utility kept %."""
    out = []
    entries = [*group.references, *group.methods]
    for scheme in group.schemes:
        name = label(scheme)
        title = f"{name} (<code>{scheme}</code>)" if name != scheme else f"<code>{scheme}</code>"
        out += ["<details>", f"<summary>Metrics at {title}</summary>", ""]
        out += _head(["Entry", *(lab for _, lab in COLUMNS), "Retained", "Utility kept"], 1)
        for entry in entries:
            row = found[entry.slug].rows.get(scheme)
            cells = [f"[`{entry.slug}`](#{anchor(entry)})"]
            cells += [fmt(entry.value(scheme, col)) if scheme in entry.results else NO_VALUE
                      for col, _ in COLUMNS]
            cells += [retained_cell(found[entry.slug], scheme) if row else NO_VALUE,
                      fmt_pct(group.utility(entry, scheme))]
            out.append("| " + " | ".join(cells) + " |")
        out += ["", "</details>", ""]
    return out
