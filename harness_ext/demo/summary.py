"""The demo's outputs: leaderboard entries, the printed summary and the retained-knowledge plot.

Retained knowledge (Zhang et al. 2025, the "21% -> 83%" measure; :mod:`leaderboard.scores`):
``100 * VerbMem_f(unlearned, Q) / VerbMem_f(target, Q)`` at the same precision Q, averaged over
the utility-constrained baselines (GA/NPO with GDR or KLR). The rules (retained knowledge, which
entries are baselines, recovery) are :mod:`harness_ext.leaderboard.scores`; this module only reports
them.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

from ..leaderboard.scores import RECOVERY_POINTS
from ..recipes import FULL_PRECISION as FULL, PAPER_4BIT as FOUR
from .stages import model_names, run_command


def slug(corpus: str, name: str) -> str:
    return f"toy-{corpus}-{name.replace('_', '-')}"


def _relative(path: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def add_entries(demo, corpus: str, root: Path) -> None:
    """``muse-quant leaderboard add`` for every demo model not on the demo board yet."""
    models = demo.out / corpus / "models"
    recipe = demo.config.model
    base_model = (f"toy Llama ({recipe.num_hidden_layers} layers, hidden {recipe.hidden_size}), "
                  f"embedded {corpus} corpus")
    for name in model_names(demo.config):
        if (root / "submissions" / corpus / slug(corpus, name)).exists():
            continue
        kind = name if name in ("target", "retrain") else "method"
        checkpoint = models / name if kind != "method" else demo.checkpoint(corpus, name)
        # where others get it: rebuilt by the demo (a path relative to where it was run)
        location = f"muse-quant demo: {_relative(checkpoint)}"
        argv = ["leaderboard", "add", "--root", str(root), "--corpus", corpus,
                "--slug", slug(corpus, name), "--results",
                str(demo.out / corpus / "sweep" / name / "results"), "--checkpoint",
                str(checkpoint), "--checkpoint_location", location, "--kind", kind,
                "--submitted_by", "muse-quant demo",
                "--base_model", base_model, "--reproducible", "toy",
                "--description", f"muse-quant demo ({demo.config.name} configuration)"]
        if kind != "target":
            argv += ["--target", slug(corpus, "target")]
        run_command(argv, f"adding {name} to the demo leaderboard")


def corpus_summary(root: Path, corpus: str, schemes: list[str], diagnoses: dict) -> dict:
    """Retained knowledge per method and scheme, the baseline average and the diagnose ratios."""
    from ..leaderboard import scores
    from ..leaderboard.validator import load_board

    board = load_board(root)
    (group,) = scores.groups(board, corpus)
    rows = []
    for entry in group.methods:
        method = entry.slug.removeprefix(f"toy-{corpus}-").replace("-", "_")
        report = diagnoses.get(method, {})
        rows.append({
            "method": method,
            "baseline": scores.is_utility_constrained_baseline(entry),
            "retained": {s: group.retained(entry, s) for s in schemes},
            "verbmem_f": {s: entry.value(s, "verbmem_f") for s in schemes},
            "knowmem_f": {s: entry.value(s, "knowmem_f") for s in schemes},
            "knowmem_r": {s: entry.value(s, "knowmem_r") for s in schemes},
            "survival_ratio": {s: d["overall"]["survival_ratio"]
                               for s, d in report.get("schemes", {}).items()},
            "projection": {s: d["overall"].get("projection")
                           for s, d in report.get("schemes", {}).items()},
            "unchanged_fraction": {s: d["overall"].get("unchanged_fraction")
                                   for s, d in report.get("schemes", {}).items()},
            "sub_half_step_share": {s: d["overall"]["sub_half_step_share"]
                                    for s, d in report.get("schemes", {}).items()},
        })
    references = {e.kind: {s: {"verbmem_f": e.value(s, "verbmem_f"),
                               "knowmem_f": e.value(s, "knowmem_f"),
                               "knowmem_r": e.value(s, "knowmem_r")} for s in schemes}
                  for e in group.references}
    average = {s: group.average_retained(s) for s in schemes}
    # recovery of forgotten text, on the baselines' average (the rule of the recovery map)
    recovered = scores.recovered(average.get(FULL), average.get(FOUR))
    return {"corpus": corpus, "schemes": schemes, "rows": rows, "references": references,
            "baseline_average": average, "paper_average": list(scores.PAPER_AVERAGE),
            "recovery": recovered}


def _fmt(x, width=7, digits=1):
    return f"{'-':>{width}}" if x is None else f"{x:>{width}.{digits}f}"


def format_summary(s: dict) -> str:
    schemes = s["schemes"]
    lines = [f"MUSE-{s['corpus']} toy: retained knowledge % = 100 * VerbMem_f(unlearned) / "
             f"VerbMem_f(target), same precision", ""]
    head = f"{'method':<14}" + "".join(f"{x:>11}" for x in schemes) + \
        f"{'KnowMem_r':>11}{'survival':>10}{'projection':>12}{'unchanged':>11}"
    lines += [head, "-" * len(head)]
    for kind in ("target", "retrain"):
        ref = s["references"].get(kind)
        if ref:
            lines.append(f"{kind + ' VerbMem':<14}" + "".join(
                f"{_fmt(ref[x]['verbmem_f'], 11)}" for x in schemes)
                + _fmt(ref[FULL]["knowmem_r"], 11))
    for row in s["rows"]:
        lines.append(f"{row['method']:<14}" + "".join(
            _fmt(row["retained"][x], 11) for x in schemes) + _fmt(row["knowmem_r"][FULL], 11)
            + _fmt(row["survival_ratio"].get(FOUR), 10, 2)
            + _fmt(row.get("projection", {}).get(FOUR), 12, 2)
            + _fmt(row.get("unchanged_fraction", {}).get(FOUR), 11, 3))
    avg = s["baseline_average"]
    lines.append(f"{'GDR/KLR avg':<14}" + "".join(_fmt(avg[x], 11) for x in schemes))
    paper = s["paper_average"]
    lines += ["", f"GDR/KLR baselines, retained knowledge full -> 4-bit ({FOUR}): "
              f"{_fmt(avg.get(FULL), 0)}% -> {_fmt(avg.get(FOUR), 0)}% "
              f"(paper, Llama-2-7B: {paper[0]}% -> {paper[1]}%)"]
    if s["recovery"] is None:
        lines.append("recovery: not measured (a scheme is missing)")
    elif s["recovery"]:
        lines.append(f"recovery: YES, 4-bit quantization brings back >= {RECOVERY_POINTS:g} "
                     "points of forgotten text on average in this toy")
    else:
        lines.append("recovery: NO, this toy does not reproduce the paper's recovery: 4-bit "
                     f"quantization brings back < {RECOVERY_POINTS:g} points on average "
                     "(see `muse-quant demo --recovery_map` for the explored boundary)")
    lines.append(f"survival = ||Q(theta_u) - Q(theta_o)|| / ||theta_u - theta_o|| at {FOUR} "
                 "(muse-quant diagnose: size only)")
    lines.append(f"projection = <Q(theta_u) - Q(theta_o), theta_u - theta_o> / "
                 f"||theta_u - theta_o||^2 at {FOUR}: the share of the update 4-bit keeps in its "
                 "own direction (1 = all, 0 = erased); unchanged = weights the update left "
                 "bit-identical (docs/diagnostics.md)")
    return "\n".join(lines)


def plot_retained(s: dict, path: Path) -> Path:
    """Bars: retained knowledge at full precision vs the paper's 4-bit per method (SVG)."""
    import matplotlib
    from matplotlib.figure import Figure

    rows = s["rows"]
    labels = [r["method"] for r in rows] + ["GDR/KLR avg", "paper avg"]
    full = [r["retained"][FULL] for r in rows] + [s["baseline_average"][FULL],
                                                  s["paper_average"][0]]
    four = [r["retained"][FOUR] for r in rows] + [s["baseline_average"][FOUR],
                                                  s["paper_average"][1]]
    with matplotlib.rc_context({"svg.hashsalt": "muse-quant-demo", "svg.fonttype": "none",
                                "font.size": 9}):
        fig = Figure(figsize=(8, 3.8), layout="constrained")
        ax = fig.add_subplot()
        x = list(range(len(labels)))
        ax.bar([i - 0.2 for i in x], [v or 0 for v in full], 0.4, label="full precision",
               color="#1f77b4")
        ax.bar([i + 0.2 for i in x], [v or 0 for v in four], 0.4, label=f"4-bit ({FOUR})",
               color="#d62728")
        ax.set_xticks(x, labels, rotation=30, ha="right")
        ax.set_ylabel("retained knowledge % (VerbMem_f vs target)")
        ax.set_title(f"muse-quant demo, {s['corpus']}: does the forgetting survive 4-bit "
                     "quantization?")
        ax.axvline(len(rows) - 0.5, color="grey", lw=0.8, ls=":")
        ax.legend(loc="upper left")
        buffer = io.BytesIO()
        fig.savefig(buffer, format="svg", metadata={"Date": None})
    path.write_bytes(buffer.getvalue())
    return path


def write_summary(demo, root: Path, seconds: float) -> dict:
    summaries = {}
    text = []
    for corpus in demo.corpora:
        diagnoses = {}
        for method in demo.config.methods:
            report = demo.out / corpus / "diagnose" / method / "report" / "diagnose.json"
            if report.exists():
                diagnoses[method] = json.loads(report.read_text())
        s = corpus_summary(root, corpus, list(demo.config.schemes), diagnoses)
        summaries[corpus] = s
        plot_retained(s, demo.out / f"{corpus}_retained.svg")
        text.append(format_summary(s))
    text.append(f"\nwall time of this run: {seconds:.0f} s; everything is in {demo.out}/ "
                f"(leaderboard: {root / 'README.md'})")
    report = "\n\n".join(text)
    (demo.out / "summary.md").write_text("```\n" + report + "\n```\n")
    (demo.out / "summary.json").write_text(json.dumps(summaries, indent=2) + "\n")
    demo.log(report)
    return summaries
