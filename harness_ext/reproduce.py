"""The paper's setup at full scale: the plan behind ``muse-quant reproduce``.

A plan is a list of :class:`Stage` objects, each one existing ``muse-quant`` command (``hf
download``, ``unlearn``, ``sweep``, ``leaderboard add``) with the file that marks it done and an
estimate of its disk, GPU memory and time. ``reproduce`` runs the stages in order (skipping the
done ones), prints them (``--dry_run``) or writes them as SLURM job arrays (``--emit_slurm``).
Nothing here imports torch or needs the hub, so planning is instant and works on any machine.

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

from .errors import MuseQuantError
from .recipes import CORPORA, PAPER_SCHEMES as DEFAULT_QUANT, REQUIRED_SCHEMES, paper_hyperparameters
BASE_METHODS = ("ga", "ga_gdr", "ga_klr", "npo", "npo_gdr", "npo_klr")
ALL_METHODS = BASE_METHODS + tuple(f"{m}_sure" for m in BASE_METHODS)
HUB = {"news": ("muse-bench/MUSE-News_target", "muse-bench/MUSE-News_retrain"),
       "books": ("muse-bench/MUSE-Books_target", "muse-bench/MUSE-Books_retrain")}

#: Known model shapes (no hub access needed). MUSE's targets/retrains are Llama-2-7B fine-tunes.
LLAMA2_7B = {"params": 6.74e9, "hidden": 4096, "layers": 32, "vocab": 32000}
KNOWN_MODELS = {repo: LLAMA2_7B for pair in HUB.values() for repo in pair}

#: Forget-set size in tokens, used when the text is not on this machine: NEWS is MUSE's
#: raw/forget.json (3.28 M characters at ~4 characters per Llama-2 token); BOOKS is an assumption
#: of the same order (MUSE's Harry Potter forget set).
FORGET_TOKENS = {"news": 0.82e6, "books": 1.1e6}
CHARS_PER_TOKEN = 4.0
#: Evaluation per corpus (100 items per MUSE file): prompt tokens prefilled, tokens generated.
EVAL_ITEMS = {"verbmem": (100, 1000, 128), "knowmem": (200, 400, 32), "privleak": (200, 2000, 0)}


# ------------------------------------------------------------------------------ estimates
@dataclass
class Assumptions:
    """What the estimates assume; printed with the plan."""

    tflops: float = 400.0      # sustained bf16 TFLOP/s (H100 SXM ~40% of 989 peak; A100: ~150)
    hbm_tbs: float = 2.0       # sustained GPU memory bandwidth, TB/s (H100 3.35 peak)
    gpu_gb: float = 80.0       # memory of one GPU, GB
    eval_batch: int = 8
    calib_minutes_7b: float = 10.0  # GPTQ / AWQ calibration of a 7B model

    def lines(self) -> list[str]:
        return [
            f"throughput {self.tflops:g} TFLOP/s sustained bf16 (--tflops; H100 ~400, A100 ~150),"
            f" memory bandwidth {self.hbm_tbs:g} TB/s (--hbm_tbs), one GPU of {self.gpu_gb:g} GB",
            "training FLOPs = 6 x params per trained token (forward+backward) + 2 x params per "
            "token of a frozen reference forward; retain batches are as large as forget batches",
            "training memory = params x bytes/param (bf16: weights 2 + grads 2 + AdamW 4 [states "
            "in the weight dtype]; fp32: 16) + reference model (2 or 4 bytes/param, NPO/KLR) + "
            "activations 34 x hidden x layers x batch x max_len bytes per live graph (no "
            "recomputation; GDR/KLR keep forget and retain graphs) + fp32 logits 12 x vocab x "
            "batch x max_len bytes; rough, +10% allocator overhead",
            "evaluation: prefill 2 x params FLOPs per prompt token; decoding reads all weights "
            f"once per step at batch {self.eval_batch}; quantization here is simulated (weights "
            "stay bf16), so every scheme costs what bf16 costs; GPTQ/AWQ add "
            f"{self.calib_minutes_7b:g} min calibration per 7B params",
            "the sweep loads models in their stored dtype (the unlearning delta is saved in it); "
            "the estimates assume bf16 storage; "
            "disk: bf16 = 2 bytes/param (7B Llama-2 ~13.5 GB); unlearning keeps a resume "
            "checkpoint (trainable weights + AdamW states) until it finishes, then writes a "
            "delta (theta_u - theta_o) of the tensors it changed",
        ]


@dataclass
class Estimate:
    disk_gb: float
    gpu_gb: float
    hours: float


def estimate(kind: str, shape: dict, a: Assumptions, *, method: str = "", corpus: str = "news",
             epochs: int = 10, batch_size: int = 4, max_len: int = 2048,
             precision: str = "bf16", forget_tokens: float = 0.0, limit: int | None = None,
             sure_threshold: float = 90.0, scheme: str = "none") -> Estimate:
    """Disk (GB), peak GPU memory (GB) and hours of one stage; formulas in :class:`Assumptions`.

    ``kind``: ``fetch`` (download a model), ``unlearn`` (one method), ``eval`` (one scheme of a
    sweep), ``leaderboard`` (copy results, hash a checkpoint).
    """
    p, gb = shape["params"], 1e9
    if kind == "fetch":
        return Estimate(2 * p / gb, 0.0, 2 * p / gb / 100 / 3600)  # ~100 MB/s
    if kind == "leaderboard":
        return Estimate(0.001, 0.0, 2 * p / gb / 0.5 / 3600)  # sha256 at ~0.5 GB/s
    h, layers, vocab = shape["hidden"], shape["layers"], shape["vocab"]
    if kind == "unlearn":
        base = method[:-5] if method.endswith("_sure") else method
        retain, ref = base.endswith(("_gdr", "_klr")), base.startswith("npo") or \
            base.endswith("_klr")
        per_param = {"bf16": 8, "bf16-mixed": 16, "fp32": 16}[precision]
        w_bytes = 4 if precision == "fp32" else 2
        graphs = 2 if retain else 1
        act = graphs * (34 * h * layers + 12 * vocab) * batch_size * max_len
        gpu = (per_param * p + (w_bytes * p if ref else 0) + act) * 1.1
        # FLOPs per forget token: forget fwd+bwd, retain fwd+bwd, reference forwards
        ref_fwd = (1 if base.startswith("npo") else 0) + (1 if base.endswith("_klr") else 0)
        flops_tok = 6 * p * (1 + retain) + 2 * p * ref_fwd
        flops = forget_tokens * epochs * flops_tok
        if method.endswith("_sure"):
            flops += 6 * p * forget_tokens  # saliency: one gradient pass over the forget set
        trained = 1.0 - sure_threshold / 100.0 if method.endswith("_sure") else 1.0
        disk = (per_param - 2) * p * trained + w_bytes * p * trained  # resume ckpt + delta
        return Estimate(disk / gb, gpu / gb, flops / (a.tflops * 1e12) / 3600)
    if kind == "eval":
        prefill = gen = 0.0
        for n, prompt, new in EVAL_ITEMS.values():
            n = min(n, limit) if limit else n
            prefill += n * prompt
            gen += n * new
        seconds = 2 * p * prefill / (a.tflops * 1e12) + \
            (gen / a.eval_batch) * (2 * p) / (a.hbm_tbs * 1e12)
        from .quantizers import describe_scheme

        if describe_scheme(scheme).needs_calibration:
            seconds += a.calib_minutes_7b * 60 * p / 6.74e9
        kv = a.eval_batch * 4096 * 2 * layers * h * 2  # bf16 K and V, 4096-token context
        logits = a.eval_batch * 4096 * vocab * 4
        return Estimate(0.001, (2 * p + kv + logits) * 1.1 / gb, seconds / 3600)
    raise ValueError(kind)


def model_shape(pretrained: str) -> dict:
    """Parameter count etc. from the table, or from a local folder's config.json."""
    if pretrained in KNOWN_MODELS:
        return dict(KNOWN_MODELS[pretrained])
    config = Path(pretrained) / "config.json"
    if not config.is_file():
        raise MuseQuantError(f"--pretrained {pretrained}: not a known model and no config.json "
                             "there to count its parameters",
                             f"pass a local model folder or one of {', '.join(KNOWN_MODELS)}")
    try:
        c = json.loads(config.read_text(encoding="utf-8"))
        h, layers, vocab = int(c["hidden_size"]), int(c["num_hidden_layers"]), int(c["vocab_size"])
        inter = int(c.get("intermediate_size", 4 * h))
        heads = int(c.get("num_attention_heads", 1))
        kv = int(c.get("num_key_value_heads", heads))
    except (KeyError, TypeError, ValueError, json.JSONDecodeError) as exc:
        raise MuseQuantError(f"{config}: cannot read the model shape ({exc})",
                             "pass a Llama-style model folder with a complete config.json") \
            from None
    head_dim = int(c.get("head_dim") or h // heads)
    attn = h * head_dim * (2 * heads + 2 * kv)
    per_layer = attn + 3 * h * inter + 2 * h
    emb = vocab * h * (1 if c.get("tie_word_embeddings") else 2)
    return {"params": float(layers * per_layer + emb + h), "hidden": h, "layers": layers,
            "vocab": vocab}


# ------------------------------------------------------------------------------ the plan
@dataclass
class Stage:
    kind: str                  # fetch | unlearn | sweep | leaderboard
    name: str                  # e.g. unlearn/ga_gdr, sweep/target/bnb-fp4
    argv: list[str]            # starting with "muse-quant" (or "hf")
    done: Path                 # exists => the stage is done
    est: Estimate
    cells: list["Stage"] = field(default_factory=list)  # sweep: one per scheme (SLURM)

    def is_done(self) -> bool:
        return all(c.done.exists() for c in self.cells) if self.cells else self.done.exists()

    @property
    def command(self) -> str:
        return shlex.join(self.argv)


@dataclass
class Plan:
    corpus: str
    out: Path
    stages: list[Stage]
    assumptions: Assumptions
    notes: list[str]

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
    from .quantizers import parse_scheme  # validates the names; loads no model

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
               assumptions: Assumptions | None = None) -> Plan:
    if corpus not in CORPORA:
        raise MuseQuantError(f"unknown corpus {corpus!r}", f"use --corpus {' or '.join(CORPORA)}")
    methods = parse_list(methods, ALL_METHODS, ALL_METHODS, "method")
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
        argv = ["muse-quant", "unlearn", "--method", m, "--pretrained", target_dir,
                "--corpus", corpus, "--muse_data", muse_data, "--out", str(udir),
                "--epochs", str(hp["epochs"]), "--lr", f"{hp['lr']:g}",
                "--alpha", f"{hp['alpha']:g}", "--batch_size", str(batch_size),
                "--grad_accum", str(grad_accum), "--precision", precision, "--save", save,
                "--no_progress"]
        if "sure_threshold" in hp:
            argv += ["--sure_threshold", hp["sure_threshold"]]
        thr_text = str(hp.get("sure_threshold", "90"))
        thr = 90.0 if thr_text.startswith("abs:") else float(thr_text)
        est = estimate("unlearn", shape, a, method=m, corpus=corpus, epochs=hp["epochs"],
                       batch_size=batch_size, precision=precision,
                       forget_tokens=forget_tokens, sure_threshold=thr)
        stages.append(Stage("unlearn", f"unlearn/{m}", argv, udir / "run_card.json", est))
        models[m] = (target_dir, str(udir / ckpt_name), "method", str(udir / ckpt_name))
    too_big = [s for s in stages if s.kind == "unlearn" and s.est.gpu_gb > a.gpu_gb]
    if too_big:
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
                       rdir / (s.replace(":", "_") + ".json"),
                       estimate("eval", shape, a, limit=limit, scheme=s)) for s in schemes]
        total = Estimate(sum(c.est.disk_gb for c in cells), max(c.est.gpu_gb for c in cells),
                         sum(c.est.hours for c in cells))
        stages.append(Stage("sweep", f"sweep/{name}", sweep_argv(",".join(schemes)),
                            rdir / (schemes[-1].replace(":", "_") + ".json"), total, cells))

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
    return Plan(corpus, out, stages, a, notes)


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
            big = " !" if s.est.gpu_gb > plan.assumptions.gpu_gb else ""
            lines.append(f"[{status}] {s.name}: disk {s.est.disk_gb:.1f} GB, peak GPU "
                         f"{s.est.gpu_gb:.1f} GB{big}, ~{s.est.hours:.2f} h")
            lines.append(f"    {s.command}")
            for c in s.cells:
                lines.append(f"      cell {c.name}: peak GPU {c.est.gpu_gb:.1f} GB, "
                             f"~{c.est.hours * 60:.1f} min")
        totals[kind] = sum(s.est.hours for s in stages)
    disk = sum(s.est.disk_gb for s in plan.stages)
    lines += ["", "Total: " + ", ".join(f"{k} {v:.1f} h" for k, v in totals.items()) +
              f" = {sum(totals.values()):.1f} GPU-hours (one GPU, sequential); "
              f"disk up to {disk:.0f} GB"]
    return "\n".join(lines)


# ------------------------------------------------------------------------------ SLURM
SBATCH = """#!/bin/bash
#SBATCH --job-name=muse-{corpus}-{kind}
#SBATCH --array=0-{last}
#SBATCH --gpus=1
#SBATCH --time={time}
#SBATCH --output={logs}/{kind}_%A_%a.log
# One array task per line of {cells} ("DONE_FILE<TAB>COMMAND"); a task whose DONE_FILE exists exits.
set -euo pipefail
cd {cwd}
LINE=$(sed -n "$((SLURM_ARRAY_TASK_ID + 1))p" {cells})
DONE=${{LINE%%$'\\t'*}}
CMD=${{LINE#*$'\\t'}}
if [ -e "$DONE" ]; then echo "already done: $DONE"; exit 0; fi
echo "$CMD"
eval "$CMD"
"""

SUBMIT = """#!/bin/bash
# Submit the reproduction as dependent SLURM jobs (written by muse-quant reproduce --emit_slurm).
# fetch -> unlearn array (one method per task) -> sweep array (one model x scheme per task)
# -> leaderboard entries. afterok: a later array starts when every task of the earlier one
# succeeded. Re-running this script resubmits; finished cells exit at once.
set -euo pipefail
cd "$(dirname "$0")"
DEP=""
{body}
"""


def emit_slurm(plan: Plan, directory: str | Path) -> dict:
    """Write the SLURM scripts into an empty/new ``directory``; returns ``{name: path}``."""
    d = Path(directory)
    if d.exists() and (not d.is_dir() or any(d.iterdir())):
        raise MuseQuantError(f"--emit_slurm {d} exists and is not an empty folder",
                             "pass a new folder (nothing is overwritten)")
    d.mkdir(parents=True, exist_ok=True)
    cwd = shlex.quote(str(Path.cwd()))
    logs = d.resolve() / "logs"
    logs.mkdir()
    written, body = {}, []
    groups = {"fetch": plan.by_kind("fetch"), "unlearn": plan.by_kind("unlearn"),
              "sweep": [c for s in plan.by_kind("sweep") for c in s.cells],
              "leaderboard": plan.by_kind("leaderboard")}
    for kind, cells in groups.items():
        if not cells:
            continue
        cell_file = d / f"{kind}_cells.tsv"
        cell_file.write_text("".join(f"{c.done}\t{c.command}\n" for c in cells),
                             encoding="utf-8")
        hours = max(c.est.hours for c in cells) * 2 + 0.5  # 2x the estimate + 30 min margin
        script = SBATCH.format(corpus=plan.corpus, kind=kind, last=len(cells) - 1,
                               time=f"{int(hours)}:{int(hours % 1 * 60):02d}:00", logs=logs,
                               cells=shlex.quote(str(cell_file.resolve())), cwd=cwd)
        if kind in ("fetch", "leaderboard"):
            script = script.replace("#SBATCH --gpus=1", "#SBATCH --gpus=0")
        if kind == "leaderboard":  # entries are added one after the other (target first)
            script = script.replace(f"--array=0-{len(cells) - 1}",
                                    f"--array=0-{len(cells) - 1}%1")
        path = d / f"{kind}.sbatch"
        path.write_text(script, encoding="utf-8")
        written[kind] = path
        written[f"{kind}_cells"] = cell_file
        body.append(f"JOB=$(sbatch --parsable $DEP {kind}.sbatch)\n"
                    f"echo \"{kind}: job $JOB ({len(cells)} tasks)\"\n"
                    f"DEP=\"--dependency=afterok:$JOB\"")
    submit = d / "submit.sh"
    submit.write_text(SUBMIT.format(body="\n".join(body)), encoding="utf-8")
    submit.chmod(0o755)
    written["submit"] = submit
    return written


def cell_argv(command: str) -> list[str]:
    """A plan command as ``muse-quant`` CLI arguments (without the program name)."""
    argv = shlex.split(command)
    return argv[1:] if argv and argv[0] == "muse-quant" else argv
