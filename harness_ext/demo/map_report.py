"""The recovery map's outputs: the printed table, ``recovery_map.md`` (markdown + the rule) and
``recovery_map.svg`` (retained % at full precision and 4-bit, and the projection, per width x lr
x precision). :mod:`.recovery_map` measures; this module only formats a report."""

from __future__ import annotations

import io
from pathlib import Path

from ..leaderboard.scores import recovered
from ..recipes import PAPER_4BIT as FOUR

#: the table's columns: (title, key, digits)
COLUMNS = (("width", "width", None), ("layers", "layers", None), ("precision", "precision", None),
           ("method", "method", None), ("lr", "lr", "e"), ("seeds", "seeds", None),
           ("retained % full", "retained_full", 1), ("retained % 4-bit", "retained_4bit", 1),
           ("4-bit − full", "gap", 1), ("projection", "projection", 2),
           ("unchanged", "unchanged_fraction", 3), ("largest moved \\|w\\|", "movable_cap", 4),
           ("FP4 near-zero edge", "near_zero_edge_mean", 4), ("recovery", "recovery", None))


def is_recovery(point: dict) -> bool:
    """The recovery rule of :mod:`harness_ext.leaderboard.scores` on one point or row (False
    when a number is missing)."""
    return bool(recovered(point["retained_full"], point["retained_4bit"]))


def _rows(report: dict) -> list[dict]:
    return report.get("rows") or report["points"]


def _gap(row: dict):
    if row.get("retained_full") is None or row.get("retained_4bit") is None:
        return None
    return row["retained_4bit"] - row["retained_full"]


def _cell(row: dict, key: str, digits) -> str:
    value = _gap(row) if key == "gap" else row.get(key)
    if key == "recovery":
        return "YES" if is_recovery(row) else "no"
    if key == "seeds":
        return ",".join(map(str, value)) if value else "0"
    if value is None:
        return "-"
    if digits == "e":
        return f"{value:.0e}"
    if isinstance(digits, int):
        return f"{value:.{digits}f}"
    return str(value)


def _where(report: dict) -> str:
    found = report["recovery_found"]
    rule = (f"(full <= {100 - report['recovery_points']:g}, 4-bit >= full + "
            f"{report['recovery_points']:g} points)")
    if found:
        where = ", ".join((f"width {p['width']} " if p.get("width") else "")
                          + f"{p['method']} {p['precision']} lr {p['lr']:g}" for p in found)
        return f"recovery {rule} at: {where}"
    widths = report.get("widths") or []
    return (f"no recovery {rule} anywhere in the explored region: "
            + (f"width {', '.join(map(str, widths))} x " if widths else "")
            + f"methods {', '.join(report['methods'])} x lr "
            f"{', '.join(f'{x:g}' for x in report['lrs'])} x precision "
            f"{', '.join(report['precisions'])}")


def format_map(report: dict) -> str:
    """The printed table: one row per cell (means over seeds)."""
    columns = [c for c in COLUMNS if c[1] not in ("layers", "near_zero_edge_mean")]
    titles = [t.replace("retained % ", "").replace("\\", "") for t, _, _ in columns]
    rows = [[_cell(r, k, d) for _, k, d in columns] for r in _rows(report)]
    widths = [max(len(t), *(len(r[i]) for r in rows)) if rows else len(t)
              for i, t in enumerate(titles)]
    lines = [f"recovery map, {report['corpus']}: retained knowledge % (VerbMem_f vs target), "
             f"full precision vs 4-bit ({FOUR}); projection = <ΔQ, Δθ>/||Δθ||² at {FOUR}",
             "  ".join(t.rjust(w) for t, w in zip(titles, widths))]
    lines += ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in rows]
    lines.append(_where(report))
    return "\n".join(lines)


def write_tables(report: dict, path: Path, header: str = "") -> Path:
    """``recovery_map.md``: the markdown table (means over seeds), the rule and every point."""
    lines = [header] if header else []
    lines += ["| " + " | ".join(t for t, _, _ in COLUMNS) + " |",
              "|" + "---|" * len(COLUMNS)]
    for row in _rows(report):
        lines.append("| " + " | ".join(_cell(row, k, d) for _, k, d in COLUMNS) + " |")
    lines += ["", _where(report) + ".", "",
              "Retained % = 100 × VerbMem_f(unlearned) / VerbMem_f(target) at the same precision "
              f"(full, or 4-bit {FOUR}); projection = ⟨Q(θu) − Q(θo), θu − θo⟩ / ‖θu − θo‖² at "
              f"{FOUR} (1: 4-bit keeps the whole update, 0: it erases it); unchanged = share of "
              "weights the update left bit-identical; largest moved |w| = the largest target "
              "weight that moved; FP4 near-zero edge = 0.0859375 × block absmax (mean over "
              "blocks): weights below it sit in FP4's zero / subnormal codes. Rows with several "
              "seeds show means; the points below are single runs.", "",
              "| width | precision | method | lr | seed | full | 4-bit | projection |",
              "|---|---|---|---|---|---|---|---|"]
    for p in report["points"]:
        lines.append(f"| {p.get('width', '-')} | {p['precision']} | {p['method']} | "
                     f"{p['lr']:.0e} | {p.get('seed', 0)} | {_cell(p, 'retained_full', 1)} | "
                     f"{_cell(p, 'retained_4bit', 1)} | {_cell(p, 'projection', 2)} |")
    path.write_text("\n".join(lines) + "\n")
    return path


def plot_map(report: dict, path: Path) -> Path:
    """One column per precision. Top: retained % vs width, full precision (solid) and 4-bit
    (dashed), one colour per method x lr. Bottom: the projection at 4-bit vs width."""
    import matplotlib
    from matplotlib.figure import Figure

    rows = _rows(report)
    precisions = report["precisions"] or ["fp32"]
    series = sorted({(r["method"], r["lr"]) for r in rows}, key=lambda s: (s[0], s[1]))
    colours = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf")
    markers = ("o", "s", "^", "D", "v")
    with matplotlib.rc_context({"svg.hashsalt": "muse-quant-demo", "svg.fonttype": "none",
                                "font.size": 9}):
        fig = Figure(figsize=(4.2 * len(precisions) + 1.5, 6.4), layout="constrained")
        axes = fig.subplots(2, len(precisions), squeeze=False, sharex=True)
        for col, precision in enumerate(precisions):
            top, bottom = axes[0][col], axes[1][col]
            for i, (method, lr) in enumerate(series):
                pts = sorted((r for r in rows if r["method"] == method and r["lr"] == lr
                              and r["precision"] == precision),
                             key=lambda r: r.get("width") or 0)
                if not pts:
                    continue
                colour, marker = colours[i % len(colours)], markers[i % len(markers)]
                xs = [r.get("width") or 0 for r in pts]
                label = f"{method} lr {lr:g}"
                top.plot(xs, [r["retained_full"] for r in pts], color=colour, marker=marker,
                         lw=1.2, label=f"{label}, full")
                top.plot(xs, [r["retained_4bit"] for r in pts], color=colour, marker=marker,
                         lw=1.2, ls="--", mfc="none", label=f"{label}, 4-bit")
                bottom.plot(xs, [r["projection"] for r in pts], color=colour, marker=marker,
                            lw=1.2, label=label)
            top.axhline(100, color="grey", ls=":", lw=0.8)
            top.axhline(100 - report["recovery_points"], color="grey", ls="--", lw=0.6)
            top.set(title=f"unlearning in {precision}",
                    ylabel="retained % (VerbMem_f vs target)" if col == 0 else None)
            bottom.set(ylim=(0, 1.05), xlabel="model width (hidden size)",
                       ylabel=f"projection at {FOUR}" if col == 0 else None)
            bottom.axhline(1, color="grey", ls=":", lw=0.8)
            widths = report.get("widths") or []
            if widths:
                bottom.set_xscale("log", base=2)
                bottom.set_xticks(widths, [str(w) for w in widths])
                bottom.minorticks_off()
        handles, labels = axes[0][0].get_legend_handles_labels()
        for ax in axes[0][1:]:
            more = ax.get_legend_handles_labels()
            for h, l in zip(*more):
                if l not in labels:
                    handles.append(h), labels.append(l)
        if handles:
            fig.legend(handles, labels, loc="outside right center", fontsize=7)
        fig.suptitle(f"recovery map, {report['corpus']} toy: solid = full precision, dashed = "
                     f"4-bit ({FOUR}); bottom: share of the update 4-bit keeps")
        buffer = io.BytesIO()
        fig.savefig(buffer, format="svg", metadata={"Date": None})
    path.write_bytes(buffer.getvalue())
    return path
