"""What the board computes from the entries: retained knowledge, the baseline average, row order.

Retained knowledge (Zhang et al., ICLR 2025, "Catastrophic Failure of LLM Unlearning via
Quantization", the measure behind "21% -> 83%")::

    retained(entry, scheme) = 100 * VerbMem_f(entry, scheme) / VerbMem_f(target, scheme)

at the same precision, where VerbMem_f is MUSE's forget-set VerbMem (ROUGE-L F1 x 100) and the
target is the model before unlearning. The paper's 21% / 83% is the mean of this over the
utility-constrained baselines (GA_GDR, GA_KLR, NPO_GDR, NPO_KLR) at full precision / 4-bit.

Rows are sorted by retained knowledge at 4-bit FP4 (the paper's 4-bit, ``bnb-fp4``), lowest first,
ties broken by utility (KnowMem_r at 4-bit FP4, highest first), then by slug.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..recipes import REQUIRED_SCHEMES
from .validator import Board, Entry

# (scheme, column label); full, 8-bit and FP4 are on every entry, GPTQ/AWQ shown when present
PRECISIONS = (("none", "full"), ("bnb-int8", "8-bit"), ("bnb-fp4", "4-bit FP4"),
              ("gptq:4", "GPTQ-4"), ("awq:4", "AWQ-4"))
FULL = "none"
FOUR_BIT = ("bnb-fp4", "gptq:4", "awq:4")
SORT_SCHEME = "bnb-fp4"
PAPER_AVERAGE = (21, 83)  # Zhang et al. 2025, abstract: retained knowledge, full -> 4-bit

_REGULARIZED = re.compile(r"(^|[^a-z])(gdr|klr)$")


def retained(entry_verbmem: float | None, target_verbmem: float | None) -> float | None:
    """``100 * entry / target`` (percent); None when either is missing or the target's is 0."""
    if entry_verbmem is None or target_verbmem is None or target_verbmem <= 0:
        return None
    return 100.0 * entry_verbmem / target_verbmem


def is_utility_constrained_baseline(entry: Entry) -> bool:
    """A GDR / KLR variant without SURE: the methods the paper's 21% -> 83% averages.

    From the run card (``base_method`` or ``method``, and ``sure``) when there is one, else from
    the display name (``GA_KLR``, ``NPO-GDR``, ...; a name containing ``SURE`` is not a baseline).
    """
    if entry.kind != "method":
        return False
    card = entry.run_card
    if card:
        if card.get("sure"):
            return False
        name = str(card.get("base_method") or card.get("method") or "")
    else:
        name = entry.name
    name = name.lower()
    return "sure" not in name and bool(_REGULARIZED.search(name))


@dataclass
class Group:
    """One table: a target entry, the retrain entries and the methods compared with it."""

    corpus: str
    target: Entry
    references: list[Entry]  # target first, then retrain entries
    methods: list[Entry]  # sorted, best (lowest 4-bit retained knowledge) first
    schemes: list[str]  # precisions shown, in PRECISIONS order

    def retained(self, entry: Entry, scheme: str) -> float | None:
        return retained(entry.value(scheme, "verbmem_f"), self.target.value(scheme, "verbmem_f"))

    def baselines(self) -> list[Entry]:
        return [e for e in self.methods if is_utility_constrained_baseline(e)]

    def average_retained(self, scheme: str, entries: list[Entry] | None = None) -> float | None:
        """Mean retained knowledge at ``scheme`` over ``entries`` (default: the baselines)."""
        entries = self.baselines() if entries is None else entries
        values = [self.retained(e, scheme) for e in entries]
        if not values or any(v is None for v in values):
            return None
        return sum(values) / len(values)


def sort_key(group: Group, entry: Entry) -> tuple:
    kept = group.retained(entry, SORT_SCHEME)
    utility = entry.value(SORT_SCHEME, "knowmem_r")
    return (kept is None, kept if kept is not None else 0.0,
            -(utility if utility is not None else float("-inf")), entry.slug)


def groups(board: Board, corpus: str) -> list[Group]:
    """The tables of one corpus, one per target entry, in slug order."""
    entries = board.corpus_entries(corpus)
    out = []
    for target in sorted((e for e in entries if e.kind == "target"), key=lambda e: e.slug):
        members = [e for e in entries if e.target == target.slug]
        retrain = sorted((e for e in members if e.kind == "retrain"), key=lambda e: e.slug)
        methods = [e for e in members if e.kind == "method"]
        everyone = [target, *retrain, *methods]
        schemes = [s for s, _ in PRECISIONS
                   if s in REQUIRED_SCHEMES or any(s in e.results for e in everyone)]
        group = Group(corpus, target, [target, *retrain], [], schemes)
        group.methods = sorted(methods, key=lambda e: sort_key(group, e))
        out.append(group)
    return out
