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
from ..recipes import DEMO_DEPLOYMENT_SCHEMES, FULL_PRECISION as FULL, PAPER_4BIT as FOUR
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


def tensor_types(results_dir: Path, scheme: str) -> dict | None:
    """The per-tensor types a scheme chose (GGUF), from its results file: the type counts and
    the llama.cpp shape fallbacks (``"Q4_K->Q5_0": n``); None for schemes without types."""
    from ..io import load_results, scheme_filename

    path = Path(results_dir) / scheme_filename(scheme)
    if not path.exists():
        return None
    report = (load_results(path).get("config", {}).get("muse_quant", {})
              .get("quantization") or {})
    tensors = report.get("tensors")
    if not tensors:
        return None
    fallbacks: dict[str, int] = {}
    for info in tensors.values():
        if info.get("fallback_from"):
            key = f"{info['fallback_from']}->{info['type']}"
            fallbacks[key] = fallbacks.get(key, 0) + 1
    return {"type_counts": report.get("type_counts", {}), "fallbacks": dict(sorted(
        fallbacks.items())), "tensors": len(tensors)}


def corpus_summary(root: Path, corpus: str, schemes: list[str], diagnoses: dict,
                   target_results: Path | None = None) -> dict:
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
    deployment = [(s, label) for s, label in DEMO_DEPLOYMENT_SCHEMES if s in schemes]
    types = {s: tensor_types(target_results, s) for s, _ in deployment} if target_results else {}
    return {"corpus": corpus, "schemes": schemes, "rows": rows, "references": references,
            "baseline_average": average, "paper_average": list(scores.PAPER_AVERAGE),
            "recovery": recovered, "deployment": [s for s, _ in deployment],
            "deployment_labels": dict(deployment),
            "tensor_types": {s: t for s, t in types.items() if t}}


def _fmt(x, width=7, digits=1):
    return f"{'-':>{width}}" if x is None else f"{x:>{width}.{digits}f}"


def _table(s: dict, schemes: list[str], labels: dict, extra: bool) -> list[str]:
    """One table of retained knowledge: the references' VerbMem_f, the methods, the average."""
    names = [labels.get(x, x) for x in schemes]
    widths = [max(11, len(name) + 2) for name in names]

    def cells(values):
        return "".join(_fmt(v, w) for v, w in zip(values, widths))

    head = f"{'method':<14}" + "".join(f"{name:>{w}}" for name, w in zip(names, widths))
    if extra:
        head += f"{'KnowMem_r':>11}{'survival':>10}{'projection':>12}{'unchanged':>11}"
    lines = [head, "-" * len(head)]
    for kind in ("target", "retrain"):
        ref = s["references"].get(kind)
        if ref:
            lines.append(f"{kind + ' VerbMem':<14}" + cells(ref[x]["verbmem_f"] for x in schemes)
                         + (_fmt(ref[FULL]["knowmem_r"], 11) if extra else ""))
    for row in s["rows"]:
        lines.append(f"{row['method']:<14}" + cells(row["retained"][x] for x in schemes) + (
            _fmt(row["knowmem_r"][FULL], 11) + _fmt(row["survival_ratio"].get(FOUR), 10, 2)
            + _fmt(row.get("projection", {}).get(FOUR), 12, 2)
            + _fmt(row.get("unchanged_fraction", {}).get(FOUR), 11, 3) if extra else ""))
    avg = s["baseline_average"]
    lines.append(f"{'GDR/KLR avg':<14}" + cells(avg[x] for x in schemes))
    return lines


def format_deployment(s: dict) -> list[str]:
    """The deployment formats' table (full precision first), their average line and what the
    GGUF types became on this model (llama.cpp's shape fallbacks)."""
    deployment, labels = s.get("deployment", []), s.get("deployment_labels", {})
    if not deployment:
        return []
    avg = s["baseline_average"]
    lines = ["", "deployment formats (GGUF = llama.cpp / Ollama / LM Studio, FP8 = vLLM, "
             "weights only):"]
    lines += _table(s, [FULL, *deployment], {FULL: "full", **labels}, extra=False)
    lines += ["", "GDR/KLR baselines, retained knowledge full -> deployment formats: "
              f"{_fmt(avg.get(FULL), 0)}% -> " + ", ".join(
                  f"{labels[x]} {_fmt(avg.get(x), 0)}%" for x in deployment)]
    for scheme, types in s.get("tensor_types", {}).items():
        counts = ", ".join(f"{t} x{n}" for t, n in types["type_counts"].items())
        line = f"{labels.get(scheme, scheme)} here: {counts}"
        if types["fallbacks"]:
            line += ("; rows not a multiple of 256, so llama.cpp's fallback applies: "
                     + ", ".join(f"{k} x{n}" for k, n in types["fallbacks"].items()))
        lines.append(line)
    return lines


def format_summary(s: dict) -> str:
    deployment = set(s.get("deployment", []))
    schemes = [x for x in s["schemes"] if x not in deployment]
    lines = [f"MUSE-{s['corpus']} toy: retained knowledge % = 100 * VerbMem_f(unlearned) / "
             f"VerbMem_f(target), same precision", ""]
    lines += _table(s, schemes, {}, extra=True)
    avg = s["baseline_average"]
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
    lines += format_deployment(s)
    return "\n".join(lines)


def plot_retained(s: dict, path: Path) -> Path:
    """Bars per method: retained knowledge at full precision, the paper's 4-bit and the
    deployment formats (GGUF Q4_K_M, Q8_0, FP8) (SVG)."""
    import matplotlib
    from matplotlib.figure import Figure

    rows = s["rows"]
    labels = [r["method"] for r in rows] + ["GDR/KLR avg", "paper avg"]
    paper = dict(zip((FULL, FOUR), s["paper_average"]))
    deployment = s.get("deployment", [])
    series = [(FULL, "full precision", "#1f77b4"), (FOUR, f"4-bit ({FOUR})", "#d62728")]
    colours = ("#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")
    series += [(x, s["deployment_labels"].get(x, x), colours[i % len(colours)])
               for i, x in enumerate(deployment)]
    width = 0.8 / len(series)
    with matplotlib.rc_context({"svg.hashsalt": "muse-quant-demo", "svg.fonttype": "none",
                                "font.size": 9}):
        fig = Figure(figsize=(8 + len(deployment), 3.8), layout="constrained")
        ax = fig.add_subplot()
        x = list(range(len(labels)))
        for k, (scheme, name, colour) in enumerate(series):
            values = [r["retained"].get(scheme) for r in rows] + [
                s["baseline_average"].get(scheme), paper.get(scheme)]
            offset = (k - (len(series) - 1) / 2) * width
            ax.bar([i + offset for i in x], [v or 0 for v in values], width, label=name,
                   color=colour)
        ax.set_xticks(x, labels, rotation=30, ha="right")
        ax.set_ylabel("retained knowledge % (VerbMem_f vs target)")
        ax.set_title(f"muse-quant demo, {s['corpus']}: does the forgetting survive 4-bit "
                     "quantization and the deployment formats?")
        ax.axvline(len(rows) - 0.5, color="grey", lw=0.8, ls=":")
        ax.legend(loc="upper left", fontsize=7)
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
        s = corpus_summary(root, corpus, list(demo.config.schemes), diagnoses,
                           demo.out / corpus / "sweep" / "target" / "results")
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
