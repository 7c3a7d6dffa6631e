"""``muse-quant demo --recovery_map``: where (if anywhere) does 4-bit quantization bring the
forgotten text back in the toy, and what happens to the update in the weights?

Axes: model width x unlearning precision x learning rate (x method x seed); the defaults and the
measurements behind them are in :mod:`harness_ext.recipes` (``RECOVERY_MAP_*``). Per cell
(everything else as in the demo): unlearn the width's target, evaluate VerbMem_f at full
precision and at 4-bit (``bnb-fp4``, the paper's 4-bit) and run ``diagnose`` at ``bnb-fp4``.
A point is

* ``retained_full``  = 100 * VerbMem_f(theta_u) / VerbMem_f(theta_o),
* ``retained_4bit``  = 100 * VerbMem_f(Q(theta_u)) / VerbMem_f(Q(theta_o)),
* ``projection``     = <Q(theta_u) - Q(theta_o), theta_u - theta_o> / ||theta_u - theta_o||^2
  (the share of the update 4-bit keeps in its own direction; docs/diagnostics.md), with
  diagnose's other mechanism numbers (unchanged weights, largest moved |w|, near-zero edge),

and it shows **recovery** when the unlearning forgot something at full precision
(``retained_full <= 100 - 10``) and 4-bit brings at least 10 points of it back. Retained
knowledge, the rule and its threshold are defined once, in :mod:`harness_ext.leaderboard.scores`.

Targets: the demo's own at its width, else a 2-layer model of that width built with the demo's
recipe (cached per width under ``recovery_map/targets/``, named by the recipe's hash). For
``bf16`` the target is rounded to bf16 and stored so (MUSE's models are 16-bit), unlearned in
pure bf16, and both are evaluated with fp32 arithmetic on their (exactly representable) bf16
weights, so only the weights differ. Every cell is cached (``point.json``); a run with other
axes adds cells, and the table and plot show every point measured under ``--out``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from ..errors import MuseQuantError
from ..recipes import (FULL_PRECISION as FULL, PAPER_4BIT as FOUR, RECOVERY_MAP_HEAD_DIM,
                       RECOVERY_MAP_INTERMEDIATE, RECOVERY_MAP_LAYERS, RECOVERY_MAP_LRS,
                       RECOVERY_MAP_PRECISIONS, RECOVERY_MAP_SCHEMES, RECOVERY_MAP_SEEDS,
                       RECOVERY_MAP_WIDTH_MULTIPLE, RECOVERY_MAP_WIDTHS)
from .map_report import format_map, is_recovery, plot_map, write_tables

SCHEMES = RECOVERY_MAP_SCHEMES
POINT_FILE = "point.json"
PRECISIONS = ("fp32", "bf16", "bf16-mixed")
#: diagnose's overall numbers a point keeps (docs/diagnostics.md)
DIAGNOSE_KEYS = ("projection", "survival_ratio", "sub_half_step_share", "unchanged_fraction",
                 "code_flip_rate", "code_share_of_dq", "near_zero_update_share", "movable_cap",
                 "near_zero_edge_mean")

__all__ = ["MapAxes", "format_map", "is_recovery", "plot_map", "run_recovery_map"]


@dataclass(frozen=True)
class MapAxes:
    """The cells to run: every combination of these."""

    widths: tuple[int, ...] = RECOVERY_MAP_WIDTHS
    precisions: tuple[str, ...] = RECOVERY_MAP_PRECISIONS
    lrs: tuple[float, ...] = RECOVERY_MAP_LRS
    methods: tuple[str, ...] = ()  # () = the config's map_methods
    seeds: tuple[int, ...] = RECOVERY_MAP_SEEDS

    @classmethod
    def parse(cls, config, widths: str | None = None, precisions: str | None = None,
              lrs: str | None = None, methods: str | None = None,
              seeds: str | None = None) -> "MapAxes":
        """The axes from the command line's comma-separated strings (None: the default;
        ``--fast``: the config's own width, fp32 and its ``map_lrs``)."""
        fast = config.name == "fast"
        default = cls(widths=(config.model.hidden_size,), precisions=("fp32",),
                      lrs=tuple(config.map_lrs)) if fast else cls()
        return cls(widths=_parse_widths(widths) if widths else default.widths,
                   precisions=_parse_precisions(precisions) if precisions
                   else default.precisions,
                   lrs=_parse_numbers("--lrs", lrs, float, "1e-5,3e-5") if lrs else default.lrs,
                   methods=_parse_methods(methods) if methods else tuple(config.map_methods),
                   seeds=_parse_numbers("--seeds", seeds, int, "0,1") if seeds
                   else default.seeds)

    def cells(self):
        return [(w, p, m, lr, s) for w in self.widths for p in self.precisions
                for m in self.methods for lr in self.lrs for s in self.seeds]


def _split(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def _parse_numbers(flag: str, text: str, kind, example: str) -> tuple:
    try:
        values = tuple(kind(x) for x in _split(text))
    except ValueError:
        raise MuseQuantError(f"{flag} {text!r} is not a list of numbers",
                             f"e.g. {flag} {example}") from None
    if not values or any(x < 0 for x in values) or (kind is float and 0 in values):
        raise MuseQuantError(f"{flag} {text!r}: values must be "
                             + ("positive" if kind is float else "non-negative integers"),
                             f"e.g. {flag} {example}")
    return values


def _parse_widths(text: str) -> tuple[int, ...]:
    fix = f"e.g. --widths 128,512 (multiples of {RECOVERY_MAP_WIDTH_MULTIPLE})"
    try:
        widths = tuple(int(x) for x in _split(text))
    except ValueError:
        raise MuseQuantError(f"--widths {text!r} is not a list of integers", fix) from None
    bad = [w for w in widths if w <= 0 or w % RECOVERY_MAP_WIDTH_MULTIPLE]
    if bad or not widths:
        raise MuseQuantError(
            f"--widths {text!r}: {', '.join(map(str, bad)) or 'no width'} is not a positive "
            f"multiple of {RECOVERY_MAP_WIDTH_MULTIPLE} (bitsandbytes blocks of 64 and GPTQ/AWQ "
            "groups of 128 need it)", fix)
    return widths


def _parse_subset(text: str, flag: str, known, sep: str = ", ") -> tuple[str, ...]:
    """A non-empty comma-separated subset of ``known`` (else error/fix naming ``flag``)."""
    chosen = tuple(_split(text))
    if not chosen or any(x not in known for x in chosen):
        raise MuseQuantError(f"unknown {flag} {text!r}",
                             f"use a comma-separated subset of {sep.join(known)}")
    return chosen


def _parse_precisions(text: str) -> tuple[str, ...]:
    return _parse_subset(text, "--precisions", PRECISIONS, sep=",")


def _parse_methods(text: str) -> tuple[str, ...]:
    from ..unlearning import available_methods

    return _parse_subset(text, "--map_methods", sorted(name for name, _ in available_methods()))


# ------------------------------------------------------------------ targets (cached per width)
def width_recipe(recipe, width: int):
    """The demo's model recipe at ``width`` (the demo's own when the width is the demo's)."""
    if width == recipe.hidden_size:
        return recipe
    return replace(recipe, hidden_size=width, intermediate_size=RECOVERY_MAP_INTERMEDIATE * width,
                   num_hidden_layers=RECOVERY_MAP_LAYERS,
                   num_attention_heads=width // RECOVERY_MAP_HEAD_DIM)


def target_folder(root: Path, recipe) -> Path:
    """``targets/w<width>-<hash of the recipe>``: a changed recipe never reuses a stale target."""
    digest = hashlib.sha256(json.dumps(asdict(recipe), sort_keys=True).encode()).hexdigest()
    return root / "targets" / f"w{recipe.hidden_size}-{digest[:10]}"


def map_target(demo, corpus: str, width: int, root: Path) -> tuple[Path, str]:
    """``(target folder, name)`` of ``width`` (built and cached on first use)."""
    from .models import build_models
    from .stages import Stage

    if width == demo.config.model.hidden_size:
        return demo.models(corpus) / "target", f"w{width}-demo"
    recipe = width_recipe(demo.config.model, width)
    folder = target_folder(root, recipe)
    with Stage(folder, f"target of width {width}") as stage:
        if not stage.done:
            demo.log(f"[{corpus}] training a target of width {width} "
                     f"({recipe.num_hidden_layers} layers)")
            build_models(corpus, recipe, folder, progress=demo.progress, names=("target",))
            (folder / "recipe.json").write_text(json.dumps(asdict(recipe), indent=2) + "\n")
    return folder / "target", folder.name


def bf16_target(target: Path, folder: Path) -> Path:
    """The target rounded to bf16 and saved in bf16 (cached)."""
    from .stages import Stage

    with Stage(folder, "target rounded to bf16") as stage:
        if not stage.done:
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer

            model = AutoModelForCausalLM.from_pretrained(target, dtype=torch.bfloat16)
            model.save_pretrained(folder / "model")
            AutoTokenizer.from_pretrained(target).save_pretrained(folder / "model")
    return folder / "model"


# ------------------------------------------------------------------ the map
def _verbmem(results_dir: Path, corpus: str) -> dict:
    from ..io import load_results, metric, scheme_filename

    return {s: metric(load_results(results_dir / scheme_filename(s)),
                      f"muse_{corpus}_verbmem_f", "verbmem_rougeL_f1") for s in SCHEMES}


def cell_name(method: str, precision: str, lr: float, seed: int) -> str:
    return f"{method}-{precision}-lr{lr:g}-seed{seed}"


def run_cell(demo, corpus: str, root: Path, cell: Path, base: Path, reference: dict,
             width: int, precision: str, method: str, lr: float, seed: int) -> dict:
    """Unlearn, evaluate and diagnose one cell; returns (and writes) its point."""
    from ..leaderboard.scores import retained
    from .stages import stage_seconds

    # a full model (in the training dtype): the sweep evaluates it with fp32 arithmetic, which
    # a bf16 delta on an fp32-loaded base would refuse
    run = demo.unlearn(corpus, method, base, folder=cell / "unlearn", lr=lr,
                       precision=precision, seed=seed, save="full")
    unlearned = run / "model"
    results = demo.sweep(corpus, cell.name, unlearned, None, schemes=SCHEMES,
                         tasks=f"muse_{corpus}_verbmem_f", folder=cell / "sweep")
    verbmem = _verbmem(results, corpus)
    report = demo.diagnose(corpus, method, base, unlearned, schemes=(FOUR,),
                           folder=cell / "diagnose",
                           dtype="bfloat16" if precision == "bf16" else "float32")
    overall = report["schemes"][FOUR]["overall"]
    card = json.loads((run / "run_card.json").read_text())
    kept = {s: retained(verbmem[s], reference[s]) for s in SCHEMES}
    point = {"width": width, "layers": json.loads((base / "config.json").read_text())
             ["num_hidden_layers"], "method": method, "precision": precision, "lr": lr,
             "seed": seed, "steps": card["hyperparameters"]["steps"],
             "verbmem_f": verbmem, "target_verbmem_f": reference,
             "retained_full": kept[FULL], "retained_4bit": kept[FOUR],
             **{k: overall.get(k) for k in DIAGNOSE_KEYS},
             "unlearn_seconds": stage_seconds(cell / "unlearn")}
    (cell / POINT_FILE).write_text(json.dumps(point, indent=2) + "\n")
    return point


def run_recovery_map(demo, corpus: str, axes: MapAxes | None = None) -> dict:
    """Run the cells of ``axes`` not done yet, then write the map of every point under
    ``OUT/<corpus>/recovery_map/`` (``recovery_map.md``, ``points.json``, ``recovery_map.svg``)."""
    from tqdm.auto import tqdm

    axes = axes or MapAxes.parse(demo.config)
    demo.data()
    root = demo.out / corpus / "recovery_map"
    root.mkdir(parents=True, exist_ok=True)
    cells = axes.cells()
    bar = tqdm(cells, desc="recovery map", unit="run", disable=not demo.progress)
    targets, references = {}, {}
    for width, precision, method, lr, seed in bar:
        cell = root / f"w{width}" / cell_name(method, precision, lr, seed)
        if (cell / POINT_FILE).exists():
            continue
        bar.set_postfix_str(f"width {width} {method} lr {lr:g} {precision} seed {seed}")
        if width not in targets:
            targets[width] = map_target(demo, corpus, width, root)
        target, name = targets[width]
        if (width, precision) not in references:
            base = bf16_target(target, root / "targets" / f"{name}-bf16") \
                if precision == "bf16" else target
            results = demo.sweep(corpus, f"target-{precision}", base, None, schemes=SCHEMES,
                                 tasks=f"muse_{corpus}_verbmem_f",
                                 folder=root / "targets" / f"{name}-{precision}-eval")
            references[(width, precision)] = (base, _verbmem(results, corpus))
        base, reference = references[(width, precision)]
        run_cell(demo, corpus, root, cell, base, reference, width, precision, method, lr, seed)
    bar.close()
    # the map shows every point measured in this folder (earlier runs with other axes too)
    points = [json.loads(p.read_text()) for p in sorted(root.glob(f"w*/*/{POINT_FILE}"))]
    report = build_report(corpus, points)
    (root / "points.json").write_text(json.dumps(report, indent=2) + "\n")
    write_tables(report, root / "recovery_map.md")
    plot_map(report, root / "recovery_map.svg")
    demo.log(format_map(report) + f"\n\ntable: {root / 'recovery_map.md'}\n"
             f"plot: {root / 'recovery_map.svg'}")
    return report


def build_report(corpus: str, points: list[dict]) -> dict:
    """Points, and rows: the mean over seeds of each (width, precision, method, lr)."""
    from ..leaderboard.scores import RECOVERY_POINTS

    points = sorted(points, key=lambda p: (p.get("width") or 0, p["precision"], p["method"],
                                           p["lr"], p.get("seed") or 0))
    groups: dict[tuple, list[dict]] = {}
    for p in points:
        groups.setdefault((p.get("width"), p["precision"], p["method"], p["lr"]), []).append(p)
    rows = [aggregate(group) for group in groups.values()]
    found = [r for r in rows if is_recovery(r)]
    return {"corpus": corpus, "methods": sorted({p["method"] for p in points}),
            "lrs": sorted({p["lr"] for p in points}),
            "precisions": sorted({p["precision"] for p in points}),
            "widths": sorted({p.get("width") for p in points if p.get("width")}),
            "recovery_points": RECOVERY_POINTS, "rows": rows, "points": points,
            "recovery_found": [{k: r[k] for k in ("width", "method", "precision", "lr")}
                               for r in found]}


def aggregate(group: list[dict]) -> dict:
    """Mean of each number over the seeds of one cell (with min and max of the retained %)."""
    def mean(key):
        values = [p.get(key) for p in group if p.get(key) is not None]
        return sum(values) / len(values) if values else None

    first = group[0]
    row = {k: first.get(k) for k in ("width", "layers", "method", "precision", "lr", "steps")}
    row["seeds"] = [p.get("seed", 0) for p in group]
    for key in ("retained_full", "retained_4bit", *DIAGNOSE_KEYS):
        row[key] = mean(key)
    for key in ("retained_full", "retained_4bit"):
        values = [p[key] for p in group if p.get(key) is not None]
        row[key + "_range"] = [min(values), max(values)] if values else None
    row["target_verbmem_f"] = first.get("target_verbmem_f")
    return row
