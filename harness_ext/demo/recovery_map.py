"""``muse-quant demo --recovery_map``: where (if anywhere) does 4-bit quantization bring the
forgotten text back in the toy?

For each unlearning precision p, method m and learning rate lr (everything else as in the demo):
unlearn the target, evaluate VerbMem_f at full precision and at 4-bit (``bnb-fp4``, the paper's
4-bit) and run ``diagnose`` at ``bnb-fp4``. A point is

* ``retained_full``  = 100 * VerbMem_f(theta_u) / VerbMem_f(theta_o),
* ``retained_4bit``  = 100 * VerbMem_f(Q(theta_u)) / VerbMem_f(Q(theta_o)),
* ``survival_ratio`` = ||Q(theta_u) - Q(theta_o)|| / ||theta_u - theta_o|| (diagnose),

and it shows **recovery** when the unlearning forgot something at full precision
(``retained_full <= 100 - 10``) and 4-bit brings at least 10 points of it back
(``retained_4bit - retained_full >= 10``). Retained knowledge, the rule and its threshold are
defined once, in :mod:`harness_ext.leaderboard.scores` (``retained``, ``recovered``,
``RECOVERY_POINTS``). For ``bf16`` the target is first rounded to bf16 and stored so (MUSE's
models are 16-bit), unlearned in pure bf16, and both are evaluated with fp32 arithmetic on their
(exactly representable) bf16 weights, so only the weights differ.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..leaderboard.scores import RECOVERY_POINTS, recovered, retained
from ..recipes import FULL_PRECISION as FULL, PAPER_4BIT as FOUR, RECOVERY_MAP_SCHEMES

SCHEMES = RECOVERY_MAP_SCHEMES
POINT_FILE = "point.json"


def _verbmem(results_dir: Path, corpus: str) -> dict:
    from ..io import load_results, metric, scheme_filename

    return {s: metric(load_results(results_dir / scheme_filename(s)),
                      f"muse_{corpus}_verbmem_f", "verbmem_rougeL_f1") for s in SCHEMES}


def _bf16_target(target: Path, folder: Path) -> Path:
    """The target rounded to bf16 and saved in bf16 (cached)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = folder / "target_bf16"
    if not (out / "config.json").exists():
        model = AutoModelForCausalLM.from_pretrained(target, dtype=torch.bfloat16)
        model.save_pretrained(out)
        AutoTokenizer.from_pretrained(target).save_pretrained(out)
    return out


def run_recovery_map(demo, corpus: str, precisions=("fp32",), lrs=None) -> dict:
    from tqdm.auto import tqdm

    config = demo.config
    lrs = tuple(lrs or config.map_lrs)
    demo.data()
    target = demo.models(corpus) / "target"
    root = demo.out / corpus / "recovery_map"
    root.mkdir(parents=True, exist_ok=True)
    points = []
    cells = [(p, m, lr) for p in precisions for m in config.map_methods for lr in lrs]
    bar = tqdm(cells, desc="recovery map", unit="run", disable=not demo.progress)
    references = {}
    for precision, method, lr in bar:
        bar.set_postfix_str(f"{method} lr {lr:g} {precision}")
        if precision not in references:
            base = target if precision != "bf16" else _bf16_target(target, root)
            results = demo.sweep(corpus, f"target-{precision}", base, None, schemes=SCHEMES,
                                 tasks=f"muse_{corpus}_verbmem_f",
                                 folder=root / f"target-{precision}")
            references[precision] = (base, _verbmem(results, corpus))
        base, reference = references[precision]
        cell = root / f"{method}-{precision}-lr{lr:g}"
        run = demo.unlearn(corpus, method, base, folder=cell / "unlearn", lr=lr,
                           precision=precision, save="full")
        unlearned = run / "model"
        results = demo.sweep(corpus, cell.name, unlearned, None, schemes=SCHEMES,
                             tasks=f"muse_{corpus}_verbmem_f", folder=cell / "sweep")
        verbmem = _verbmem(results, corpus)
        report = demo.diagnose(corpus, method, base, unlearned, schemes=(FOUR,),
                               folder=cell / "diagnose",
                               dtype="bfloat16" if precision == "bf16" else "auto")
        overall = report["schemes"][FOUR]["overall"]
        kept = {s: retained(verbmem[s], reference[s]) for s in SCHEMES}
        point = {
            "method": method, "precision": precision, "lr": lr,
            "verbmem_f": verbmem, "target_verbmem_f": reference,
            "retained_full": kept[FULL], "retained_4bit": kept[FOUR],
            "survival_ratio": overall["survival_ratio"],
            "sub_half_step_share": overall["sub_half_step_share"],
            "unchanged_fraction": overall["unchanged_fraction"],
        }
        (cell / POINT_FILE).write_text(json.dumps(point, indent=2) + "\n")
    bar.close()
    # the map shows every point measured in this folder (earlier runs with other lrs/precisions)
    points = [json.loads(p.read_text()) for p in sorted(root.glob(f"*/{POINT_FILE}"))]
    points.sort(key=lambda p: (p["precision"], p["method"], p["lr"]))
    found = [p for p in points if is_recovery(p)]
    report = {"corpus": corpus, "methods": sorted({p["method"] for p in points}),
              "lrs": sorted({p["lr"] for p in points}),
              "precisions": sorted({p["precision"] for p in points}),
              "recovery_points": RECOVERY_POINTS,
              "points": points, "recovery_found": [
                  {k: p[k] for k in ("method", "precision", "lr")} for p in found]}
    (root / "points.json").write_text(json.dumps(report, indent=2) + "\n")
    plot_map(report, root / "recovery_map.svg")
    demo.log(format_map(report) + f"\n\nplot: {root / 'recovery_map.svg'}")
    return report


def is_recovery(point: dict) -> bool:
    """The recovery rule of :mod:`harness_ext.leaderboard.scores` on one point (False when a
    number is missing)."""
    return bool(recovered(point["retained_full"], point["retained_4bit"]))


def format_map(report: dict) -> str:
    def f(x, d=1):
        return "-" if x is None else f"{x:.{d}f}"

    lines = [f"recovery map, {report['corpus']}: retained knowledge % (VerbMem_f vs target), "
             f"full precision vs 4-bit ({FOUR})",
             f"{'method':<10}{'precision':>10}{'lr':>9}{'full':>8}{'4-bit':>8}{'4bit-full':>11}"
             f"{'survival':>10}{'<Δ/2 share':>12}{'unchanged':>11}"]
    for p in report["points"]:
        gap = None if None in (p["retained_full"], p["retained_4bit"]) else \
            p["retained_4bit"] - p["retained_full"]
        lines.append(f"{p['method']:<10}{p['precision']:>10}{p['lr']:>9.0e}"
                     f"{f(p['retained_full']):>8}{f(p['retained_4bit']):>8}{f(gap):>11}"
                     f"{f(p['survival_ratio'], 2):>10}{f(p['sub_half_step_share'], 3):>12}"
                     f"{f(p['unchanged_fraction'], 3):>11}")
    if report["recovery_found"]:
        where = ", ".join(f"{p['method']} {p['precision']} lr {p['lr']:g}"
                          for p in report["recovery_found"])
        lines.append(f"recovery (full <= {100 - report['recovery_points']:g}, 4-bit >= full + "
                     f"{report['recovery_points']:g} points) at: {where}")
    else:
        lines.append(f"no recovery (full <= {100 - report['recovery_points']:g}, 4-bit >= full + "
                     f"{report['recovery_points']:g} points) anywhere "
                     f"in the explored region: methods {', '.join(report['methods'])} x lr "
                     f"{', '.join(f'{x:g}' for x in report['lrs'])} x precision "
                     f"{', '.join(report['precisions'])}")
    return "\n".join(lines)


def plot_map(report: dict, path: Path) -> Path:
    """Left: 4-bit vs full-precision retained knowledge (y = x: no change). Right: the 4-bit gap
    against diagnose's survival ratio."""
    import io
    import math

    import matplotlib
    from matplotlib.figure import Figure

    markers = {"fp32": "o", "bf16": "s", "bf16-mixed": "^"}
    colours = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd")
    with matplotlib.rc_context({"svg.hashsalt": "muse-quant-demo", "svg.fonttype": "none",
                                "font.size": 9}):
        fig = Figure(figsize=(10, 4.2), layout="constrained")
        left, right = fig.subplots(1, 2)
        top = 5.0
        for i, method in enumerate(report["methods"]):
            for precision in report["precisions"]:
                pts = [p for p in report["points"] if p["method"] == method
                       and p["precision"] == precision and p["retained_full"] is not None
                       and p["retained_4bit"] is not None]
                if not pts:
                    continue
                label = f"{method} ({precision})"
                xs = [p["retained_full"] for p in pts]
                ys = [p["retained_4bit"] for p in pts]
                top = max(top, *xs, *ys)
                left.plot(xs, ys, marker=markers.get(precision, "o"), color=colours[i % 4],
                          label=label, lw=0.8)
                for p in pts:
                    left.annotate(f"{p['lr']:g}", (p["retained_full"], p["retained_4bit"]),
                                  fontsize=7, xytext=(3, 3), textcoords="offset points")
                surv = [(p["survival_ratio"], p["retained_4bit"] - p["retained_full"])
                        for p in pts if p["survival_ratio"]]
                if surv:
                    right.scatter([s for s, _ in surv], [g for _, g in surv],
                                  marker=markers.get(precision, "o"), color=colours[i % 4],
                                  label=label)
        lim = math.ceil(top / 10 + 0.5) * 10
        left.plot([0, lim], [0, lim], color="grey", ls=":", lw=0.8, label="no change")
        left.plot([0, lim], [RECOVERY_POINTS, lim + RECOVERY_POINTS], color="grey", ls="--",
                  lw=0.8, label=f"recovery (+{RECOVERY_POINTS:g} points)")
        left.set(xlim=(0, lim), ylim=(0, lim), xlabel="retained knowledge %, full precision",
                 ylabel=f"retained knowledge %, 4-bit ({FOUR})",
                 title="labels: unlearning learning rate")
        left.legend(fontsize=7)
        right.axhline(RECOVERY_POINTS, color="grey", ls="--", lw=0.8)
        right.axhline(0, color="grey", ls=":", lw=0.8)
        right.set(xscale="log",
                  xlabel=f"survival ratio ||Q(θu)−Q(θo)|| / ||θu−θo|| ({FOUR})",
                  ylabel="4-bit minus full (points)", title="does the update survive?")
        fig.suptitle(f"recovery map, {report['corpus']} toy")
        buffer = io.BytesIO()
        fig.savefig(buffer, format="svg", metadata={"Date": None})
    path.write_bytes(buffer.getvalue())
    return path
