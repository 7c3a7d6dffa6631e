"""The paper's setup at full scale: the plan behind ``muse-quant reproduce``.

A plan is a list of :class:`Stage` objects, each one existing ``muse-quant`` command (``hf
download``, ``unlearn``, ``sweep``, ``leaderboard add``) with the file that marks it done and an
estimate of its disk, GPU memory and time. ``reproduce`` runs the stages in order (skipping the
done ones), prints them (``--dry_run``) or writes them as SLURM job arrays (``--emit_slurm``).
Nothing here imports torch or needs the hub, so planning is instant and works on any machine.
The methods are every method the package registers; their settings come from
:mod:`harness_ext.recipes`, their command lines from
:class:`~harness_ext.unlearning.config.UnlearnConfig`.

Output layout under ``--out`` (what ``muse-quant leaderboard add`` collects)::

    models/target/  models/retrain/        hf download of the MUSE checkpoints
    unlearn/<method>/delta.safetensors     + run_card.json (muse-quant unlearn --save delta)
    results/<model>/<scheme>.json          muse-quant sweep, one file per scheme
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import MuseQuantError
from ..io import scheme_filename
from ..recipes import (CORPORA, PAPER_SCHEMES as DEFAULT_QUANT, REQUIRED_SCHEMES,
                       paper_hyperparameters)
from .fit import check_gpus, fit_unlearning, launch_prefix
from .estimate import (CHARS_PER_TOKEN, FORGET_TOKENS, HUB, KNOWN_MODELS, LLAMA2_7B, Assumptions,
                       Estimate, estimate, model_shape)

#: the settings of an unlearning stage's command line, in its order (sure_threshold: SURE only)
UNLEARN_KEYS = ("method", "pretrained", "corpus", "muse_data", "out", "epochs", "lr", "alpha",
                "batch_size", "grad_accum", "precision", "save", "progress")


# ------------------------------------------------------------------------------ the plan
@dataclass
class Stage:
    kind: str                  # fetch | unlearn | sweep | leaderboard
    name: str                  # e.g. unlearn/ga_gdr, sweep/target/bnb-fp4
    argv: list[str]            # starting with "muse-quant" (or "hf")
    done: Path                 # exists => the stage is done
    est: Estimate
    cells: list["Stage"] = field(default_factory=list)  # sweep: one per scheme (SLURM)
    launch: list[str] = field(default_factory=list)  # accelerate launch ... (multi-GPU)
    gpus: int = 1
    setup: str = ""  # --gpus: the configuration that fits, or why none does
    fits: bool = True

    def is_done(self) -> bool:
        return all(c.done.exists() for c in self.cells) if self.cells else self.done.exists()

    @property
    def full_argv(self) -> list[str]:
        """The command as run: ``argv``, or ``accelerate launch ... -m harness_ext.cli ...``."""
        return [*self.launch, "-m", "harness_ext.cli", *self.argv[1:]] if self.launch \
            else self.argv

    @property
    def command(self) -> str:
        return shlex.join(self.full_argv)


@dataclass
class Plan:
    corpus: str
    out: Path
    stages: list[Stage]
    assumptions: Assumptions
    notes: list[str]
    gpus: int | None = None  # --gpus: stages fitted to that many GPUs

    def by_kind(self, kind: str) -> list[Stage]:
        return [s for s in self.stages if s.kind == kind]


def parse_list(text: str | None, allowed: tuple, default: tuple, what: str) -> list[str]:
    if text in (None, "", "all"):
        return list(default)
    items = [t.strip() for t in str(text).split(",") if t.strip()]
    bad = [t for t in items if t not in allowed]
    if bad or not items:
        raise MuseQuantError(f"unknown {what} {', '.join(bad) or repr(text)}",
                             f"use a comma-separated list of: {', '.join(allowed)}")
    return list(dict.fromkeys(items))


def parse_schemes(text: str | None) -> list[str]:
    if text in (None, "", "all"):
        return list(DEFAULT_QUANT)
    schemes = list(dict.fromkeys(t.strip() for t in str(text).split(",") if t.strip()))
    if not schemes:
        raise MuseQuantError(f"--quant {text!r} names no scheme", "e.g. --quant none,bnb-fp4")
    from ..quantizers import parse_scheme  # validates the names; loads no model

    for s in schemes:
        try:
            parse_scheme(s)
        except MuseQuantError as err:
            raise MuseQuantError(f"--quant: unknown scheme {s!r} ({err.problem})",
                                 err.fix or "see `muse-quant schemes`") from None
    return schemes


def slug(corpus: str, model: str, prefix: str = "full") -> str:
    return f"{prefix}-{corpus}-{model.replace('_', '-')}"


def build_plan(corpus: str, *, methods=None, quant=None, limit=None, out=None,
               muse_data: str = "hub", pretrained: str | None = None,
               retrain: str | None = None, save: str = "delta", precision: str = "bf16",
               sure_threshold: str | None = None, batch_size: int = 4, grad_accum: int = 8,
               eval_batch_size: int = 8, leaderboard_root: str = "leaderboard",
               slug_prefix: str = "full", submitted_by: str | None = None,
               assumptions: Assumptions | None = None, gpus=None, gpu_mem=None) -> Plan:
    """The stages; ``gpus`` (with ``gpu_mem`` GB each, default the assumptions' GPU): fit every
    unlearning stage to them (:mod:`.fit`), else the requested batch on one GPU, marked."""
    if corpus not in CORPORA:
        raise MuseQuantError(f"unknown corpus {corpus!r}", f"use --corpus {' or '.join(CORPORA)}")
    from ..unlearning import builtin_method_names
    from ..unlearning.config import UnlearnConfig

    registered = tuple(builtin_method_names())
    methods = parse_list(methods, registered, registered, "method")
    if sure_threshold is not None and not str(sure_threshold).startswith("abs:"):
        try:
            ok = 0 <= float(sure_threshold) <= 100
        except ValueError:
            ok = False
        if not ok:
            raise MuseQuantError(f"--sure_threshold {sure_threshold!r} is not a percentile",
                                 "pass P in 0..100 (e.g. 90) or abs:G")
    schemes = parse_schemes(quant)
    if limit is not None and int(limit) < 1:
        raise MuseQuantError(f"--limit {limit} must be a positive integer", "e.g. --limit 20")
    a = assumptions or Assumptions(eval_batch=eval_batch_size)
    if gpus is not None:
        gpus, a.gpu_gb = check_gpus(gpus, a.gpu_gb if gpu_mem is None else gpu_mem)
    out = Path(out or f"reproduce_{corpus}")
    target_id, retrain_id = HUB[corpus]
    notes = []
    stages: list[Stage] = []

    def local_model(role: str, given: str | None, hub_id: str) -> tuple[str, str]:
        if given and Path(given).is_dir():
            return str(given), str(given)
        repo = given or hub_id
        folder = out / "models" / role
        shape = model_shape(repo) if repo in KNOWN_MODELS else None
        est = estimate("fetch", shape or LLAMA2_7B, a)
        stages.append(Stage("fetch", f"fetch/{role}",
                            ["hf", "download", repo, "--local-dir", str(folder)],
                            folder / "config.json", est))
        return str(folder), repo

    target_dir, target_loc = local_model("target", pretrained, target_id)
    retrain_dir, retrain_loc = local_model("retrain", retrain, retrain_id)
    shape = model_shape(pretrained if pretrained and Path(pretrained).is_dir() else
                        (pretrained or target_id)) if (pretrained or target_id) else LLAMA2_7B
    forget_tokens = FORGET_TOKENS[corpus]
    if muse_data not in ("hub", "embedded"):
        raw = Path(muse_data) / corpus / "raw" / "forget.json"
        if raw.is_file():
            try:
                texts = json.loads(raw.read_text(encoding="utf-8"))
                forget_tokens = sum(len(t) for t in texts) / CHARS_PER_TOKEN
            except (OSError, ValueError, TypeError):
                pass
    notes.append(f"forget set ~{forget_tokens / 1e6:.2f} M tokens "
                 f"({CHARS_PER_TOKEN:g} characters per token); "
                 f"unlearning writes --save {save} (theta_u - theta_o) next to its run card")

    models = {"target": (target_dir, None, "target", target_loc),
              "retrain": (retrain_dir, None, "retrain", retrain_loc)}
    ckpt_name = "delta.safetensors" if save == "delta" else "model"
    for m in methods:
        hp = paper_hyperparameters(corpus, m, sure_threshold)
        udir = out / "unlearn" / m
        thr_text = str(hp.get("sure_threshold", "90"))
        thr = 90.0 if thr_text.startswith("abs:") else float(thr_text)
        cost = dict(method=m, corpus=corpus, epochs=hp["epochs"], precision=precision,
                    forget_tokens=forget_tokens, sure_threshold=thr)
        fit, why = fit_unlearning(shape, a, gpus=gpus, gpu_mem=a.gpu_gb, batch_size=batch_size,
                                  grad_accum=grad_accum, **cost) if gpus else (None, "")
        run = dict(batch_size=fit.batch_size, grad_accum=fit.grad_accum,
                   gradient_checkpointing="on" if fit.checkpointing else "auto") if fit else \
            dict(batch_size=batch_size, grad_accum=grad_accum)
        cfg = UnlearnConfig.from_hyperparameters(
            hp, method=m, pretrained=target_dir, corpus=corpus, muse_data=muse_data,
            out=str(udir), precision=precision, save=save, progress=False, **run)
        # the recipe's settings beyond UNLEARN_KEYS (sure_threshold, klr_reduction), in order
        keys = UNLEARN_KEYS + tuple(k for k in hp if k not in UNLEARN_KEYS)
        if fit and fit.checkpointing:
            keys += ("gradient_checkpointing",)
        argv = ["muse-quant", "unlearn", *cfg.to_argv(keys, compact=True)]
        est = fit.est if fit else estimate("unlearn", shape, a, batch_size=batch_size, **cost)
        stage = Stage("unlearn", f"unlearn/{m}", argv, udir / "run_card.json", est)
        if gpus:
            stage.fits = fit is not None
            stage.setup = (fit.describe() + (f" ({why})" if why else "")) if fit else \
                f"cannot fit: {why}"
            if fit:
                stage.launch, stage.gpus = launch_prefix(fit), fit.gpus
        stages.append(stage)
        models[m] = (target_dir, str(udir / ckpt_name), "method", str(udir / ckpt_name))
    too_big = [s for s in stages if s.kind == "unlearn" and s.est.gpu_gb > a.gpu_gb]
    if not gpus and too_big:
        small = {s.name: estimate("unlearn", shape, a, method=s.name.split("/")[1],
                                  epochs=1, batch_size=1, precision=precision).gpu_gb
                 for s in too_big}
        fits = [n for n, g in small.items() if g <= a.gpu_gb]
        notes.append(f"{len(too_big)} unlearning stage(s) exceed one {a.gpu_gb:g} GB GPU at "
                     f"--batch_size {batch_size} (marked !)" +
                     (f"; at --batch_size 1 --grad_accum {batch_size * grad_accum} (the same "
                      f"effective batch) these fit: {', '.join(fits)}" if fits else "") +
                     (f"; still too large at --batch_size 1 (use a larger GPU, e.g. a 141 GB "
                      f"H200): "
                      f"{', '.join(n for n in small if n not in fits)}"
                      if len(fits) < len(small) else ""))

    task = f"muse_{corpus}_quant"
    for name, (base, unlearned, _, _) in models.items():
        # the stored dtype (HFLM's dtype=auto): deltas are saved in it, so they apply exactly
        margs = f"pretrained={base}" + (f",unlearned={unlearned}" if unlearned else "")
        rdir = out / "results" / name

        def sweep_argv(schemes_text):
            argv = ["muse-quant", "sweep", "--model_args", margs, "--quant", schemes_text,
                    "--tasks", task, "--output_path", str(rdir), "--metadata",
                    f"muse_data={muse_data}", "--batch_size", str(eval_batch_size)]
            return argv + (["--limit", str(limit)] if limit else [])

        cells = [Stage("sweep", f"sweep/{name}/{s}", sweep_argv(s),
                       rdir / scheme_filename(s),
                       estimate("eval", shape, a, limit=limit, scheme=s)) for s in schemes]
        total = Estimate(sum(c.est.disk_gb for c in cells), max(c.est.gpu_gb for c in cells),
                         sum(c.est.hours for c in cells))
        stages.append(Stage("sweep", f"sweep/{name}", sweep_argv(",".join(schemes)),
                            rdir / scheme_filename(schemes[-1]), total, cells))
        if gpus and total.gpu_gb > a.gpu_gb:
            stages[-1].fits = False
            stages[-1].setup = (f"cannot fit: evaluation needs {total.gpu_gb:.1f} GB on one GPU "
                                f"(> {a.gpu_gb:g} GB); use a smaller --eval_batch_size or larger "
                                "GPUs")
    if gpus:
        unfit = [s.name for s in stages if not s.fits]
        notes.append(f"{gpus} GPU(s) of {a.gpu_gb:g} GB: " + (
            f"cannot fit {', '.join(unfit)} (see each stage)" if unfit else
            "every stage fits (the unlearning configuration is printed per stage)") +
            "; the sweep runs one model x scheme cell per GPU (the SLURM array spreads them)")

    if all(s in schemes for s in REQUIRED_SCHEMES):
        for name, (_, _, kind, ckpt) in models.items():
            s = slug(corpus, name, slug_prefix)
            ckpt_path = {"target": target_dir, "retrain": retrain_dir}.get(name, ckpt)
            argv = ["muse-quant", "leaderboard", "add", "--root", leaderboard_root,
                    "--corpus", corpus, "--slug", s, "--results", str(out / "results" / name),
                    "--checkpoint", ckpt_path, "--kind", kind, "--reproducible", "full",
                    "--base_model", f"Llama-2-7B MUSE-{corpus.capitalize()} {name}"
                    if name in ("target", "retrain") else
                    f"Llama-2-7B MUSE-{corpus.capitalize()} target"]
            if name in ("target", "retrain"):
                argv += ["--checkpoint_location", ckpt]
            if kind != "target":
                argv += ["--target", slug(corpus, "target", slug_prefix)]
            if kind == "method":
                argv += ["--run_card", str(out / "unlearn" / name / "run_card.json")]
            if submitted_by:
                argv += ["--submitted_by", submitted_by]
            stages.append(Stage("leaderboard", f"leaderboard/{s}", argv,
                                Path(leaderboard_root) / "submissions" / corpus / s /
                                "entry.yaml", estimate("leaderboard", shape, a)))
    else:
        notes.append(f"no leaderboard entries: they need the schemes {', '.join(REQUIRED_SCHEMES)}")
    return Plan(corpus, out, stages, a, notes, gpus)


def format_plan(plan: Plan) -> str:
    lines = [f"muse-quant reproduce --corpus {plan.corpus}: {len(plan.stages)} stages, "
             f"outputs under {plan.out}/", "", "Assumptions:"]
    lines += [f"  - {x}" for x in plan.assumptions.lines() + plan.notes]
    totals = {}
    for kind in ("fetch", "unlearn", "sweep", "leaderboard"):
        stages = plan.by_kind(kind)
        if not stages:
            continue
        lines += ["", f"== {kind} ({len(stages)}) =="]
        for s in stages:
            status = "done" if s.is_done() else "todo"
            big = " !" if s.est.gpu_gb > plan.assumptions.gpu_gb or not s.fits else ""
            lines.append(f"[{status}] {s.name}: disk {s.est.disk_gb:.1f} GB, peak GPU "
                         f"{s.est.gpu_gb:.1f} GB{big}, ~{s.est.hours:.2f} h" +
                         (f" | {s.setup}" if s.setup else ""))
            lines.append(f"    {s.command}")
            for c in s.cells:
                lines.append(f"      cell {c.name}: peak GPU {c.est.gpu_gb:.1f} GB, "
                             f"~{c.est.hours * 60:.1f} min")
        totals[kind] = sum(s.est.hours for s in stages)
    disk = sum(s.est.disk_gb for s in plan.stages)
    lines += ["", "Total: " + ", ".join(f"{k} {v:.1f} h" for k, v in totals.items()) +
              f" = {sum(totals.values()):.1f} GPU-hours (one GPU, sequential); "
              f"disk up to {disk:.0f} GB"]
    if plan.gpus:  # unlearning stages use their GPUs together; other cells run side by side
        wall = sum(s.est.hours / s.gpus if s.kind == "unlearn" else s.est.hours / plan.gpus
                   for s in plan.stages)
        lines.append(f"On {plan.gpus} GPU(s): ~{wall:.1f} h wall-clock if the GPUs stay busy")
    return "\n".join(lines)

