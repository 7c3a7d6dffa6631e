"""The leaderboard plot of one corpus: retained knowledge % (y) against utility kept % (x), one
marker per entry at full precision, an arrow to the same entry at 4-bit FP4 (``bnb-fp4``), and
the entry's name beside the arrow's head. An arrow that goes up means quantization brings
forgotten text back; entries left of the utility gate (shaded) lost their utility.

Same data -> byte-identical SVG: fixed rcParams (bundled DejaVu Sans, ``svg.hashsalt``, text
kept as text), no date, a fixed figure and axes geometry, and label positions computed here from
the data alone (:func:`place_labels`, no renderer involved). The SVG records the matplotlib
version and a sha256 of everything plotted (:func:`fingerprint`), so ``check`` can tell a
different matplotlib from different data.
"""

from __future__ import annotations

import hashlib
import io
import json

from ..recipes import LEADERBOARD_MARKERS
from .scores import FULL, SORT_SCHEME, Group

PLOT_VERSION = 2  # bump when the drawing code changes what a fingerprint covers
MARKERS = LEADERBOARD_MARKERS
COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2",
           "#17becf", "#bcbd22", "#393b79", "#ad494a", "#637939", "#7b4173", "#843c39")
REFERENCE_COLOURS = {"target": "#000000", "retrain": "#7f7f7f"}
RC = {
    "font.family": "DejaVu Sans",  # bundled with matplotlib: same metrics everywhere
    "font.size": 9,
    "svg.fonttype": "none",  # text as <text>: small files, readable diffs
    "svg.hashsalt": "muse-quant-leaderboard",
    "axes.unicode_minus": True,
    "path.simplify": False,
}
# geometry (inches): every panel has the same axes box, so label sizes are known in advance
PANEL_W, FIG_H = 7.2, 5.6
AX_LEFT, AX_W, AX_BOTTOM, AX_H = 0.8, 6.1, 0.75, 4.2
LABEL_PT = 7.5
CHAR_W = 0.56  # average DejaVu Sans character width, in font sizes
LINE_H = 1.3  # label height, in font sizes
MAX_LABEL = 28


def short_label(text: str) -> str:
    """Submitted text as a plot label: one line, at most MAX_LABEL characters, no mathtext."""
    flat = " ".join(str(text).split())
    if len(flat) > MAX_LABEL:
        flat = flat[:MAX_LABEL - 1] + "…"
    return flat.replace("$", r"\$")


def plot_data(groups: list[Group]) -> list[dict]:
    """Everything the plot shows, as plain data (also what the SVG fingerprint covers)."""
    from ..evaluation.verdict import UTILITY_GATE

    panels = []
    for group in groups:
        points, n = [], 0
        for entry in [*group.references, *group.methods]:
            if entry.kind in REFERENCE_COLOURS:
                colour = REFERENCE_COLOURS[entry.kind]
            else:
                colour, n = COLOURS[n % len(COLOURS)], n + 1
            xy = {}
            for scheme in (FULL, SORT_SCHEME):
                x, y = group.utility(entry, scheme), group.retained(entry, scheme)
                if x is not None and y is not None:
                    xy[scheme] = [round(x, 6), round(y, 6)]
            suffix = {"target": " (target)", "retrain": " (retrain)"}.get(entry.kind, "")
            points.append({"slug": entry.slug, "label": short_label(entry.name) + suffix,
                           "colour": colour, "points": xy,
                           "utility_lost": entry.kind == "method" and group.lost_utility(entry)})
        panels.append({"title": f"compared with target {group.target.slug} "
                                f"({group.target.reproducible} scale)",
                       "gate": UTILITY_GATE, "entries": points})
    return panels


def fingerprint(panels: list[dict]) -> str:
    blob = json.dumps({"plot_version": PLOT_VERSION, "panels": panels}, sort_keys=True,
                      ensure_ascii=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def limits(entries: list[dict]) -> tuple[tuple[float, float], tuple[float, float]]:
    xs = [p[0] for e in entries for p in e["points"].values()]
    ys = [p[1] for e in entries for p in e["points"].values()]
    return ((min([0.0, *xs]) - 5.0, max([110.0, *xs]) + 25.0),
            (min([0.0, *ys]) - 5.0, max([105.0, *ys]) + 8.0))


def _rect(x0, x1, y0, y1):
    return (min(x0, x1), max(x0, x1), min(y0, y1), max(y0, y1))


def _overlaps(a, b) -> bool:
    return a[0] < b[1] and b[0] < a[1] and a[2] < b[3] and b[2] < a[3]


def place_labels(entries: list[dict], xlim, ylim) -> dict[str, dict]:
    """``{slug: {"xy": anchor, "text": position, "ha": ..., "moved": bool}}`` in data units.

    A label's anchor is the entry's 4-bit point (else its full-precision one). Obstacles are
    every marker, points along every arrow and the labels already placed (lowest anchor first).
    Candidates, first free one wins: beside the anchor on the side away from the arrow, then on
    the other side, then moved up past what it hits, then down. The figure geometry is fixed, so
    sizes in points convert to data units without a renderer."""
    sx = (xlim[1] - xlim[0]) / (AX_W * 72)  # data units per point
    sy = (ylim[1] - ylim[0]) / (AX_H * 72)
    height, gap, radius = LABEL_PT * LINE_H * sy, 6 * sx, 4.5
    obstacles = []
    for item in entries:
        pts = item["points"]
        for x, y in pts.values():
            obstacles.append((item["slug"], _rect(x - radius * sx, x + radius * sx,
                                                  y - radius * sy, y + radius * sy)))
        if FULL in pts and SORT_SCHEME in pts:
            (x0, y0), (x1, y1) = pts[FULL], pts[SORT_SCHEME]
            for i in range(1, 20):
                x, y = x0 + (x1 - x0) * i / 20, y0 + (y1 - y0) * i / 20
                obstacles.append((None, _rect(x - sx, x + sx, y - sy, y + sy)))
    todo = []
    for item in entries:
        pts = item["points"]
        anchor = pts.get(SORT_SCHEME) or pts.get(FULL)
        if anchor is not None:
            leftward = FULL in pts and SORT_SCHEME in pts and pts[FULL][0] > anchor[0] + 1e-9
            todo.append((anchor[1], anchor[0], item["slug"], anchor, leftward,
                         len(item["label"]) * LABEL_PT * CHAR_W * sx))
    placed: dict[str, dict] = {}
    for _, _, slug, anchor, leftward, width in sorted(todo):
        sides = ["right", "left"] if not leftward else ["left", "right"]
        sides = [s for s in sides if (anchor[0] + gap + width <= xlim[1] if s == "right"
                                      else anchor[0] - gap - width >= xlim[0])] or sides[:1]
        boxes = [r for owner, r in obstacles if owner != slug or r[0] > anchor[0] or
                 r[1] < anchor[0] or r[2] > anchor[1] or r[3] < anchor[1]]

        def box(side, y):
            x0 = anchor[0] + gap if side == "right" else anchor[0] - gap - width
            return _rect(x0, x0 + width, y - height / 2, y + height / 2)

        def hits(side, y):
            return [b for b in boxes if _overlaps(box(side, y), b)]

        choice = next(((side, anchor[1]) for side in sides if not hits(side, anchor[1])), None)
        for step in (1, -1):
            if choice is not None:
                break
            y = anchor[1]
            while hits(sides[0], y):
                found = hits(sides[0], y)
                y = max(b[3] for b in found) + height / 2 + 0.5 * sy if step > 0 else \
                    min(b[2] for b in found) - height / 2 - 0.5 * sy
            if ylim[0] <= y - height / 2 and y + height / 2 <= ylim[1]:
                choice = (sides[0], y)
        side, y = choice or (sides[0], y)
        rect = box(side, y)
        obstacles.append((None, rect))
        placed[slug] = {"xy": anchor, "text": [rect[0] if side == "right" else rect[1], y],
                        "ha": "left" if side == "right" else "right",
                        "moved": abs(y - anchor[1]) > height / 2}
    return placed


def render_svg(groups: list[Group], title: str, fmt: str = "svg") -> bytes:
    """The plot of one corpus's groups (``fmt="png"`` for a quick look)."""
    import matplotlib

    panels = plot_data(groups)
    with matplotlib.rc_context():
        matplotlib.rcdefaults()
        matplotlib.rcParams.update(RC)
        fig = _figure(panels, title)
        buffer = io.BytesIO()
        metadata = {
            "Date": None,
            "Creator": f"muse-quant leaderboard build (matplotlib v{matplotlib.__version__})",
            "Description": f"plotted data sha256 {fingerprint(panels)}",
            "Title": title,
        } if fmt == "svg" else None
        fig.savefig(buffer, format=fmt, metadata=metadata, dpi=110)
    return buffer.getvalue()


def _figure(panels: list[dict], title: str):
    from matplotlib.backends.backend_svg import FigureCanvasSVG
    from matplotlib.figure import Figure

    n = max(1, len(panels))
    width = PANEL_W * n
    fig = Figure(figsize=(width, FIG_H))
    FigureCanvasSVG(fig)
    fig.suptitle(title, y=0.975)
    axes = [fig.add_axes([(i * PANEL_W + AX_LEFT) / width, AX_BOTTOM / FIG_H, AX_W / width,
                          AX_H / FIG_H]) for i in range(n)]
    if not panels:
        axes[0].text(0.5, 0.5, "no entries yet", ha="center", va="center",
                     transform=axes[0].transAxes, color="#7f7f7f")
        axes[0].set_xlim(0, 100)
        axes[0].set_ylim(0, 100)
    for ax, panel in zip(axes, panels):
        _panel(ax, panel)
    for ax in axes:
        ax.set_xlabel("utility kept % = KnowMem_r vs the target's, same precision (→ better)")
        ax.set_ylabel("retained knowledge % = VerbMem_f vs the target's (↓ better)")
        ax.grid(True, color="#e5e5e5", linewidth=0.6)
        ax.set_axisbelow(True)
    return fig


def _panel(ax, panel: dict) -> None:
    from matplotlib.lines import Line2D

    entries = panel["entries"]
    xlim, ylim = limits(entries)
    ax.set_xlim(*xlim)
    ax.set_ylim(*ylim)
    ax.set_xticks([t for t in range(0, int(xlim[1]) + 1, 20) if t <= max(100.0, xlim[1] - 25)])
    gate = panel["gate"]
    ax.axvspan(xlim[0], gate, color="#f2dede", zorder=0, linewidth=0)
    ax.text(gate - 1.0, (ylim[0] + ylim[1]) / 2, f"utility lost (< {gate:g}% kept)", fontsize=7,
            color="#a94442", va="center", ha="right", rotation=90)
    ax.axhline(100.0, color="#bbbbbb", linewidth=0.8, linestyle="--", zorder=1)
    for item in entries:
        colour, pts = item["colour"], item["points"]
        for scheme, (x, y) in sorted(pts.items()):
            ax.plot([x], [y], linestyle="none", marker=MARKERS[scheme], markersize=6.5,
                    color=colour, markeredgecolor="white", markeredgewidth=0.6,
                    zorder=5 if scheme == FULL else 4)
        if FULL in pts and SORT_SCHEME in pts and pts[FULL] != pts[SORT_SCHEME]:
            ax.annotate("", xy=pts[SORT_SCHEME], xytext=pts[FULL], zorder=3,
                        arrowprops={"arrowstyle": "-|>", "color": colour, "lw": 1.3,
                                    "shrinkA": 3.5, "shrinkB": 3.5, "alpha": 0.85})
    spots = place_labels(entries, xlim, ylim)
    for item in entries:
        spot = spots.get(item["slug"])
        if spot is None:
            continue
        arrow = {"arrowstyle": "-", "color": item["colour"], "lw": 0.5, "alpha": 0.6,
                 "shrinkA": 0, "shrinkB": 3} if spot["moved"] else None
        ax.annotate(item["label"], xy=spot["xy"], xytext=spot["text"], fontsize=LABEL_PT,
                    color=item["colour"], ha=spot["ha"], va="center", arrowprops=arrow,
                    zorder=6)
    handles = [Line2D([], [], linestyle="none", marker=MARKERS[FULL], color="#555555",
                      label="full precision"),
               Line2D([], [], linestyle="none", marker=MARKERS[SORT_SCHEME], color="#555555",
                      label=f"4-bit FP4 ({SORT_SCHEME})"),
               Line2D([], [], color="#555555", marker=">", markersize=4,
                      label="full → 4-bit (up: knowledge comes back)"),
               Line2D([], [], color="#bbbbbb", linestyle="--", label="the target (100%)")]
    ax.legend(handles=handles, loc="upper left", frameon=True, framealpha=0.9, fontsize=7)
    ax.set_title(panel["title"], fontsize=9)
