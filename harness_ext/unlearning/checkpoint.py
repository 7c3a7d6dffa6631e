"""What an unlearning run writes to ``--out``: the resume checkpoint (after every epoch), the
weights (``model/`` or ``delta.safetensors``), ``losses.json`` and ``run_card.json``.

A directory with a run card is a finished run and is never overwritten without ``--overwrite``;
``--resume`` continues from ``resume/`` bit for bit (trainable weights, optimizer state, RNG
states, step, SURE mask) and refuses other training settings.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from ..errors import MuseQuantError
from ..recipes import SURE_SUFFIX
from .config import UnlearnConfig

log = logging.getLogger(__name__)

RUN_CARD = "run_card.json"
RESUME_DIR = "resume"
SURE_ROWS = "sure_rows.safetensors"
LOSSES = "losses.json"  # the mean loss of every optimizer step
CHECKPOINT_NAMES = {"full": "model", "delta": "delta.safetensors"}
#: files this trainer writes into --out (the only ones --overwrite removes)
OUTPUTS = (RUN_CARD, RESUME_DIR, RESUME_DIR + ".tmp", SURE_ROWS, LOSSES,
           *CHECKPOINT_NAMES.values())
#: the settings the run card's command line spells out, in its order
COMMAND_KEYS = ("method", "pretrained", "corpus", "muse_data", "out", "forget", "retain", "plugin",
                "lora", "lr", "epochs", "max_steps", "batch_size", "grad_accum", "max_len",
                "alpha", "beta", "seed", "weight_decay", "max_grad_norm", "packing", "save",
                "precision")
SURE_COMMAND_KEYS = ("sure_threshold", "sure_granularity")


@dataclass
class TrainingState:
    step: int = 0
    epoch: int = 0  # completed epochs
    losses: list = field(default_factory=list)  # mean loss of every optimizer step
    wall_time: float = 0.0  # seconds spent in earlier sessions (resume)


# --------------------------------------------------------------------------------------
# The output directory
# --------------------------------------------------------------------------------------

def check_out(out: Path, resume: bool, overwrite: bool) -> None:
    """Refuse to mix runs in ``out``; ``overwrite`` removes this trainer's earlier outputs."""
    finished = (out / RUN_CARD).exists()
    resumable = (out / RESUME_DIR / "state.json").exists()
    if overwrite:
        for name in OUTPUTS:
            path = out / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
        return
    if finished:
        raise MuseQuantError(f"{out} holds a finished run ({RUN_CARD} exists)",
                             "choose another --out, or pass --overwrite to replace it")
    if resume and not resumable:
        raise MuseQuantError(f"--resume: {out / RESUME_DIR} has no checkpoint to resume from",
                             "run without --resume to start a new run")
    if resumable and not resume:
        raise MuseQuantError(f"{out} holds an unfinished run ({RESUME_DIR}/ checkpoint)",
                             "pass --resume to continue it, or --overwrite to start over")
    if not resumable and any((out / n).exists() for n in OUTPUTS):
        raise MuseQuantError(f"{out} holds outputs of an earlier run",
                             "choose another --out, or pass --overwrite to replace them")


# --------------------------------------------------------------------------------------
# Resume checkpoints
# --------------------------------------------------------------------------------------

def save_resume(out: Path, model, optimizer, forget_gen, retain_sampler, sure_mask,
                state: TrainingState, config: dict, wall_time: float,
                world_size: int = 1) -> None:
    from safetensors.torch import save_file

    tmp = out / (RESUME_DIR + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    weights = {n: p.detach().cpu().contiguous()
               for n, p in model.named_parameters() if p.requires_grad}
    save_file(weights, str(tmp / "trainable.safetensors"))
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    rng = {"forget_generator": forget_gen.get_state(), "torch": torch.get_rng_state()}
    if retain_sampler is not None:
        rng["retain_generator"] = retain_sampler.generator.get_state()
    save_file(rng, str(tmp / "rng.safetensors"))
    if sure_mask is not None:
        save_file(sure_mask.tensors(), str(tmp / SURE_ROWS))
    saved = {"config": config, "step": state.step, "epoch": state.epoch, "losses": state.losses,
             "wall_time": wall_time,
             "retain_queue": retain_sampler.queue if retain_sampler else None,
             "sure": {"gamma": sure_mask.gamma} if sure_mask else None}
    if world_size != 1:  # processes of an accelerate launch (resume checks it)
        saved["world_size"] = world_size
    (tmp / "state.json").write_text(json.dumps(saved))
    final = out / RESUME_DIR
    if final.exists():
        shutil.rmtree(final)
    tmp.replace(final)


def load_resume_state(out: Path, config: dict) -> dict:
    """The saved ``state.json``; refuses a run started with other training settings."""
    path = out / RESUME_DIR / "state.json"
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
        saved = state["config"]
        if not isinstance(saved, dict) or not all(
                isinstance(state[k], int) for k in ("step", "epoch")):
            raise TypeError("unexpected structure")
    except (OSError, ValueError, KeyError, TypeError) as exc:  # JSONDecodeError is a ValueError
        raise MuseQuantError(
            f"--resume: the resume state {path} is damaged ({type(exc).__name__}: "
            f"{str(exc)[:200]}); the run in {out} cannot be continued",
            "start the run over with --overwrite instead of --resume (the same arguments)"
        ) from None
    changed = sorted(k for k in set(saved) | set(config) if saved.get(k) != config.get(k))
    if changed:
        raise MuseQuantError(
            f"--resume: the run in {out} was started with different settings: " +
            ", ".join(f"{k}={saved.get(k)!r} (now {config.get(k)!r})" for k in changed),
            "resume with the original arguments (see the run's resume/state.json)")
    return state


def load_sure_rows(out: Path) -> dict:
    """The SURE scores and mask of the resume checkpoint (``SureMask.from_tensors``)."""
    from safetensors.torch import load_file

    return load_file(str(out / RESUME_DIR / SURE_ROWS))


def restore(out: Path, state: dict, model, optimizer, forget_gen, retain_sampler,
            device) -> TrainingState:
    from safetensors.torch import load_file

    folder = out / RESUME_DIR
    weights = load_file(str(folder / "trainable.safetensors"))
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, tensor in weights.items():
            params[name].copy_(tensor.to(params[name].device))
    optimizer.load_state_dict(torch.load(folder / "optimizer.pt", map_location=device,
                                         weights_only=True))
    rng = load_file(str(folder / "rng.safetensors"))
    forget_gen.set_state(rng["forget_generator"])
    torch.set_rng_state(rng["torch"])
    if retain_sampler is not None:
        retain_sampler.generator.set_state(rng["retain_generator"])
        retain_sampler.queue = list(state["retain_queue"])
    restored = TrainingState(step=state["step"], epoch=state["epoch"], losses=state["losses"],
                             wall_time=state["wall_time"])
    log.info("resumed from %s at epoch %d, step %d", folder, restored.epoch, restored.step)
    return restored


# --------------------------------------------------------------------------------------
# Outputs
# --------------------------------------------------------------------------------------

def save_weights(out: Path, cfg: UnlearnConfig, model, tokenizer, save_dtype, sure_mask,
                 target_rounded_to=None) -> str:
    """Write ``model/`` (``--save full``) or ``delta.safetensors``; returns its name.

    ``target_rounded_to`` (bf16 training from a target stored in a wider dtype): the delta is
    theta_u - round(theta_o), so tensors the run did not change are absent from it (no rounding
    noise), and its metadata tells :func:`harness_ext.checkpoints.apply_unlearned` to round the
    base the same way. A full model holds the trained (bf16) weights in the stored dtype, and a
    mark of the rounding (:func:`harness_ext.checkpoints.write_base_rounding`)."""
    from .. import checkpoints

    out.mkdir(parents=True, exist_ok=True)
    name = CHECKPOINT_NAMES[cfg.save]
    if sure_mask is not None and sure_mask.granularity == "neuron":
        from safetensors.torch import save_file

        save_file(sure_mask.tensors(), str(out / SURE_ROWS))
    if cfg.save == "full":
        model = model.to(device="cpu", dtype=save_dtype)
        model.save_pretrained(out / name)
        tokenizer.save_pretrained(out / name)
        if target_rounded_to is not None:  # diagnose compares against the rounded target
            checkpoints.write_base_rounding(out / name, target_rounded_to)
        return name
    from transformers import AutoModelForCausalLM

    original = AutoModelForCausalLM.from_pretrained(cfg.pretrained, dtype=save_dtype)
    if target_rounded_to is not None:
        checkpoints.round_parameters(original, target_rounded_to)
    delta, patched = checkpoints.weight_delta(model, original)
    log.info("delta: %d tensors changed; %d elements near zero stored exactly",
             sum(1 for k in delta if k in dict(original.named_parameters())), patched)
    del original
    checkpoints.save_delta(delta, out / name, base_rounded_to=target_rounded_to)
    return name


def versions() -> dict:
    from importlib import metadata

    from .. import __version__

    out = {"harness_ext": __version__}
    for key, dist in (("torch", "torch"), ("transformers", "transformers"), ("peft", "peft"),
                      ("lm_eval", "lm_eval")):
        try:
            out[key] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[key] = None
    return out


def regularizer_options(run) -> dict:
    """The retain regularizer's own settings (``klr_reduction`` of a ``_klr`` method) where they
    differ from the default; run cards of default settings stay as they were before the option."""
    from dataclasses import fields

    reg = run.method.regularizer
    defaults = {f.name: f.default for f in fields(UnlearnConfig)}
    return {k: getattr(run.cfg, k) for k in (reg.options if reg is not None else ())
            if getattr(run.cfg, k) != defaults[k]}


def command(run) -> list[str]:
    """The argv that re-runs ``run`` (an :class:`~.loop.UnlearningRun`; every setting explicit,
    defaults resolved)."""
    from ..data import resolve_source

    cfg = replace(run.cfg, muse_data=resolve_source(run.cfg.muse_data), lr=run.lr,
                  epochs=run.epochs, precision=run.precision)
    keys = COMMAND_KEYS + (SURE_COMMAND_KEYS if run.method.sure else ()) + \
        tuple(regularizer_options(run))
    return ["muse-quant", "unlearn", *cfg.to_argv(keys)]


def run_card(run, forget_set, retain_set, final_losses, checkpoint, save_dtype,
             wall_time) -> dict:
    from ..data import resolve_source, source_label

    cfg = run.cfg
    base = cfg.method[:-len(SURE_SUFFIX)] if run.method.sure else cfg.method
    hyper = {"lr": run.lr, "epochs": run.epochs, "max_steps": cfg.max_steps,
             "batch_size": cfg.batch_size, "grad_accum": cfg.grad_accum,
             "max_len": cfg.max_len, "alpha": cfg.alpha, "beta": cfg.beta, "seed": cfg.seed,
             "optimizer": "adamw", "lr_schedule": "constant",
             "weight_decay": cfg.weight_decay, "max_grad_norm": cfg.max_grad_norm,
             "packing": cfg.packing, "steps": run.state.step,
             "steps_per_epoch": run.steps_per_epoch,
             "checkpoint_dtype": str(save_dtype).replace("torch.", ""),
             "device": run.device.type, **regularizer_options(run),
             **run.parallel.run_card(cfg.batch_size, cfg.grad_accum, run.checkpointing)}
    card = {
        "method": cfg.method,
        "base_method": base,
        "sure": run.sure_mask.run_card() if run.sure_mask is not None else None,
        "lora": run.lora.run_card() if run.lora else None,
        "hyperparameters": hyper,
        "precision": run.precision,
        "seed": cfg.seed,
        "pretrained": cfg.pretrained,
        "corpus": cfg.corpus,
        "muse_data": source_label(resolve_source(cfg.muse_data)),
        "data": {"forget": forget_set.card(),
                 "retain": retain_set.card() if retain_set is not None else None},
        "versions": versions(),
        "wall_time_seconds": round(wall_time, 3),
        "final_losses": final_losses,
        "save": cfg.save,
        "checkpoint": checkpoint,
        "command": command(run),
    }
    if run.target_rounded_to is not None:  # only then: other run cards stay as they were
        card["target_rounded_to"] = str(run.target_rounded_to).replace("torch.", "")
    return card
