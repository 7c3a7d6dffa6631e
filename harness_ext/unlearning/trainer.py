"""The unlearning trainer behind ``muse-quant unlearn``.

MUSE's recipe (``muse_bench/baselines``, HF Trainer): AdamW, constant learning rate, no warm-up,
weight decay 0 and gradient clipping at norm 1 (the HF Trainer defaults MUSE keeps), lr 1e-5,
10 epochs (NEWS) / 5 (BOOKS), max_len 2048, 4 examples per device on 8 GPUs (here: batch 4 x
gradient accumulation 8 = 32), training examples = ``max_len``-token chunks of the forget split
(:meth:`TokenizedTexts.muse_chunks`). Each forget micro-batch is paired with a retain
micro-batch of the same size, drawn from a seeded permutation of the retain examples that is
cycled through.

Deterministic on CPU for a given seed: fixed shuffling generators, no dropout. A resumable
checkpoint (trainable weights, optimizer state, RNG states, step, SURE mask) is written at the end
of every epoch to ``OUT/resume/``; ``--resume`` continues bit for bit. At the end the weights
are written (``OUT/model/`` or ``OUT/delta.safetensors``), then ``OUT/run_card.json``; a
directory with a run card is a finished run and is never overwritten without ``--overwrite``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch

from ..errors import MuseQuantError
from ..recipes import MUSE_EPOCHS as DEFAULT_EPOCHS

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "bf16", "bf16-mixed")
SAVE_FORMATS = ("full", "delta")
PACKINGS = ("muse", "documents")
RUN_CARD = "run_card.json"
RESUME_DIR = "resume"
SURE_ROWS = "sure_rows.safetensors"
LOSSES = "losses.json"  # the mean loss of every optimizer step
CHECKPOINT_NAMES = {"full": "model", "delta": "delta.safetensors"}
#: files this trainer writes into --out (the only ones --overwrite removes)
OUTPUTS = (RUN_CARD, RESUME_DIR, RESUME_DIR + ".tmp", SURE_ROWS, LOSSES,
           *CHECKPOINT_NAMES.values())


@dataclass
class UnlearnConfig:
    """Everything that defines an unlearning run (``muse-quant unlearn --help`` documents it)."""

    method: str
    pretrained: str
    out: str
    corpus: str = "news"
    muse_data: str | None = None
    forget: str | None = None
    retain: str | None = None
    lr: float | None = None  # None: the method's default (1e-5; 1e-4 for SURE and LoRA)
    epochs: int | None = None  # None: 10 (news) / 5 (books)
    max_steps: int | None = None  # stop after this many optimizer steps (overrides epochs)
    batch_size: int = 4
    grad_accum: int = 8
    max_len: int = 2048
    alpha: float = 1.0
    beta: float = 0.1
    seed: int = 0
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0  # 0 disables clipping
    packing: str = "muse"
    precision: str = "auto"
    device: str = "auto"
    save: str = "full"
    sure_threshold: str = "90"
    sure_granularity: str = "module"
    lora: str | None = None
    plugin: str | None = None
    # how to run, not what to compute:
    resume: bool = False
    overwrite: bool = False
    stop_after_epochs: int | None = None
    progress: bool = True

    #: fields that do not change the result (a resumed run may differ in these)
    RUNTIME_FIELDS = ("resume", "overwrite", "stop_after_epochs", "progress", "device")

    def training_fields(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k not in self.RUNTIME_FIELDS}


# --------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------

def _versions() -> dict:
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


def texts_sha256(texts: list[str]) -> str:
    """sha256 of the texts as a JSON list (UTF-8), independent of the file format they came in."""
    return hashlib.sha256(json.dumps(texts, ensure_ascii=False).encode("utf-8")).hexdigest()


def _write_json(path: Path, obj) -> None:
    from ..io import write_json

    write_json(path, obj)


def _resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise MuseQuantError(f"unknown --device {name!r}",
                             "use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise MuseQuantError("--device cuda but no CUDA GPU is available", "use --device cpu")
    return device


def resolve_precision(precision: str, device: torch.device) -> str:
    if precision not in PRECISIONS:
        raise MuseQuantError(f"unknown --precision {precision!r}", f"use one of {PRECISIONS}")
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    return precision


def _stored_dtype(config) -> torch.dtype:
    """The dtype the pretrained checkpoint declares (what lm-eval's dtype=auto loads)."""
    value = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    if isinstance(value, str):
        value = getattr(torch, value.replace("torch.", ""), None)
    return value if isinstance(value, torch.dtype) else torch.float32


# --------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------

@dataclass
class TextSet:
    texts: list[str]
    source: str

    def card(self) -> dict:
        return {"source": self.source, "sha256": texts_sha256(self.texts),
                "n_texts": len(self.texts)}


def load_forget(cfg: UnlearnConfig) -> TextSet:
    from ..data import load_file, load_texts, resolve_source

    if cfg.forget:
        return TextSet(load_texts(cfg.forget), str(Path(cfg.forget).expanduser().resolve()))
    source = resolve_source(cfg.muse_data)
    return TextSet(load_file(cfg.corpus, "raw/forget.json", source),
                   f"{source}:{cfg.corpus}/raw/forget.json")


def load_retain(cfg: UnlearnConfig, required: bool, method_name: str) -> TextSet | None:
    """retain1 of the corpus (or ``--retain FILE``). When not ``required`` (the method does not
    train on it; it is only scored at the end) a missing retain set gives None."""
    from ..data import load_file, load_texts, resolve_source

    if cfg.retain:
        return TextSet(load_texts(cfg.retain), str(Path(cfg.retain).expanduser().resolve()))
    source = resolve_source(cfg.muse_data)
    try:
        return TextSet(load_file(cfg.corpus, "raw/retain1.json", source),
                       f"{source}:{cfg.corpus}/raw/retain1.json")
    except MuseQuantError as err:
        if not required:
            log.info("no retain set (%s); retain_nll will be null", err.problem)
            return None
        raise MuseQuantError(
            f"method {method_name!r} trains on a retain set, but it cannot be loaded: "
            f"{err.problem}",
            f"pass --retain FILE (a JSON list of texts, JSONL of {{\"text\": ...}} or a .txt file "
            f"with blank-line separated documents), or a --muse_data source with "
            f"{cfg.corpus}/raw/retain1.json",
        ) from None


def tokenize(tokenizer, texts: list[str], max_len: int, packing: str):
    from ..data.tokenized import TokenizedTexts

    if packing == "muse":
        return TokenizedTexts.muse_chunks(tokenizer, texts, max_len)
    return TokenizedTexts.from_texts(tokenizer, texts, max_len)


class RetainSampler:
    """Retain micro-batches from a seeded permutation, cycled through (state is resumable)."""

    def __init__(self, n: int, batch_size: int, seed: int):
        self.n, self.batch_size = n, batch_size
        self.generator = torch.Generator().manual_seed(seed)
        self.queue: list[int] = []

    def next(self) -> list[int]:
        out = []
        while len(out) < self.batch_size:
            if not self.queue:
                self.queue = torch.randperm(self.n, generator=self.generator).tolist()
            out.append(self.queue.pop(0))
        return out


# --------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------

@dataclass
class _State:
    step: int = 0
    epoch: int = 0  # completed epochs
    losses: list = field(default_factory=list)  # mean loss of every optimizer step
    wall_time: float = 0.0  # seconds spent in earlier sessions (resume)


class UnlearningRun:
    """One run of ``muse-quant unlearn``: ``UnlearningRun(cfg).run()`` returns the run card."""

    def __init__(self, cfg: UnlearnConfig):
        from . import load_plugin, make_method
        from .lora import LORA_LR, parse_lora
        from .sure import GRANULARITIES, parse_threshold

        self.cfg = cfg
        self.out = Path(cfg.out).expanduser()
        if cfg.plugin:
            load_plugin(cfg.plugin)
        self.method = make_method(cfg.method, alpha=cfg.alpha, beta=cfg.beta)
        self.lora = parse_lora(cfg.lora)
        self.threshold = parse_threshold(cfg.sure_threshold) if self.method.sure else None
        if self.method.sure and cfg.sure_granularity not in GRANULARITIES:
            raise MuseQuantError(f"unknown --sure_granularity {cfg.sure_granularity!r}",
                                 f"use one of {', '.join(GRANULARITIES)}")
        if self.method.sure and self.lora:
            raise MuseQuantError("SURE and --lora cannot be combined (SURE selects modules of "
                                 "the full model, LoRA trains adapters)",
                                 "drop the _sure suffix or --lora")
        if cfg.corpus not in DEFAULT_EPOCHS:
            raise MuseQuantError(f"unknown --corpus {cfg.corpus!r}", "use news or books")
        if cfg.save not in SAVE_FORMATS:
            raise MuseQuantError(f"unknown --save {cfg.save!r}", f"use one of {SAVE_FORMATS}")
        if cfg.packing not in PACKINGS:
            raise MuseQuantError(f"unknown --packing {cfg.packing!r}", f"use one of {PACKINGS}")
        for key in ("batch_size", "grad_accum", "max_len"):
            if getattr(cfg, key) < (2 if key == "max_len" else 1):
                raise MuseQuantError(f"--{key} must be positive", f"pass a larger --{key}")
        if cfg.max_steps is not None and cfg.max_steps < 1:
            raise MuseQuantError("--max_steps must be at least 1", "omit it to train for --epochs")
        if cfg.resume and cfg.overwrite:
            raise MuseQuantError("--resume and --overwrite contradict each other",
                                 "pass --resume to continue the run, --overwrite to start over")
        if cfg.stop_after_epochs is not None and cfg.stop_after_epochs < 1:
            raise MuseQuantError("--stop_after_epochs must be at least 1",
                                 "omit it to train to the end")
        if cfg.epochs is not None and cfg.epochs < 1:
            raise MuseQuantError("--epochs must be at least 1", "pass --epochs 1 or more")
        if not cfg.beta > 0 or not cfg.alpha >= 0:
            raise MuseQuantError(f"--beta {cfg.beta} / --alpha {cfg.alpha}: beta must be positive "
                                 "and alpha non-negative", "MUSE uses --beta 0.1 --alpha 1")
        self.lr = cfg.lr if cfg.lr is not None else (
            LORA_LR if self.lora else self.method.default_lr)
        self.epochs = cfg.epochs if cfg.epochs is not None else DEFAULT_EPOCHS[cfg.corpus]
        self.device = _resolve_device(cfg.device)
        self.precision = resolve_precision(cfg.precision, self.device)
        self.train_dtype = torch.bfloat16 if self.precision == "bf16" else torch.float32
        self.sure_mask = None
        self.state = _State()

    # ---------------------------------------------------------------- output directory
    def _check_out(self) -> None:
        cfg, out = self.cfg, self.out
        finished = (out / RUN_CARD).exists()
        resumable = (out / RESUME_DIR / "state.json").exists()
        if cfg.overwrite:
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
        if cfg.resume and not resumable:
            raise MuseQuantError(f"--resume: {out / RESUME_DIR} has no checkpoint to resume from",
                                 "run without --resume to start a new run")
        if resumable and not cfg.resume:
            raise MuseQuantError(f"{out} holds an unfinished run ({RESUME_DIR}/ checkpoint)",
                                 "pass --resume to continue it, or --overwrite to start over")
        if not resumable and any((out / n).exists() for n in OUTPUTS):
            raise MuseQuantError(f"{out} holds outputs of an earlier run",
                                 "choose another --out, or pass --overwrite to replace them")

    # ---------------------------------------------------------------- loading
    def _load_model(self, dtype):
        from transformers import AutoModelForCausalLM

        try:
            model = AutoModelForCausalLM.from_pretrained(self.cfg.pretrained, dtype=dtype)
        except (OSError, ValueError) as exc:
            raise MuseQuantError(f"cannot load --pretrained {self.cfg.pretrained}: "
                                 f"{type(exc).__name__}: {str(exc)[:300]}",
                                 "pass a Hugging Face model directory or hub id") from None
        return model.to(self.device)

    def autocast(self):
        if self.precision == "bf16-mixed":
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return nullcontext()

    def _batch(self, data, indices) -> dict:
        return {k: v.to(self.device) for k, v in data.batch(indices).items()}

    # ---------------------------------------------------------------- main
    def run(self) -> dict:
        from transformers import AutoConfig, AutoTokenizer

        from .lora import AdaptersDisabled, merge, wrap

        cfg, method = self.cfg, self.method
        self._session_start = time.perf_counter()
        self._check_out()
        forget_set = load_forget(cfg)
        retain_set = load_retain(cfg, method.needs_retain, cfg.method)
        try:
            tokenizer = AutoTokenizer.from_pretrained(cfg.pretrained)
            save_dtype = _stored_dtype(AutoConfig.from_pretrained(cfg.pretrained))
        except (OSError, ValueError) as exc:
            raise MuseQuantError(f"cannot load --pretrained {cfg.pretrained}: "
                                 f"{type(exc).__name__}: {str(exc)[:300]}",
                                 "pass a Hugging Face model directory or hub id") from None
        forget = tokenize(tokenizer, forget_set.texts, cfg.max_len, cfg.packing)
        if not len(forget):
            raise MuseQuantError(f"the forget set {forget_set.source} has no text left after "
                                 "tokenization", "pass a forget set with at least one document")
        retain = tokenize(tokenizer, retain_set.texts, cfg.max_len, cfg.packing) \
            if retain_set else None
        if method.needs_retain and not len(retain):
            raise MuseQuantError(f"the retain set {retain_set.source} is empty after tokenization",
                                 "pass a retain set with at least one document (--retain FILE)")

        micro_per_epoch = math.ceil(len(forget) / cfg.batch_size)
        self.steps_per_epoch = math.ceil(micro_per_epoch / cfg.grad_accum)
        self.total_steps = cfg.max_steps or self.epochs * self.steps_per_epoch
        log.info("unlearn %s: %d forget examples%s, %d steps (%d per epoch), lr %g, %s",
                 cfg.method, len(forget),
                 f", {len(retain)} retain examples" if retain is not None else "",
                 self.total_steps, self.steps_per_epoch, self.lr, self.precision)

        torch.manual_seed(cfg.seed)
        model = self._load_model(self.train_dtype)
        ref_model = None
        if method.needs_reference and not self.lora:
            ref_model = self._load_model(self.train_dtype).eval().requires_grad_(False)
        model.train()

        resume_state = self._load_resume_state() if cfg.resume else None

        if method.sure:
            self.sure_mask = self._sure_mask(model, ref_model, forget, resume_state)
            self.sure_mask.freeze_unselected(model)
        if self.lora:
            model = wrap(model, self.lora)
            if method.needs_reference:
                ref_model = AdaptersDisabled(model)

        trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        row_masked = bool(self.sure_mask and self.sure_mask.granularity == "neuron")
        optimizer = torch.optim.AdamW([p for _, p in trainable], lr=self.lr,
                                      weight_decay=0.0 if row_masked else cfg.weight_decay)
        forget_gen = torch.Generator().manual_seed(cfg.seed)
        retain_sampler = RetainSampler(len(retain), cfg.batch_size, cfg.seed + 1) \
            if method.needs_retain else None
        if resume_state is not None:
            self._restore(resume_state, model, optimizer, forget_gen, retain_sampler)

        self._train(model, ref_model, optimizer, trainable, forget, retain, forget_gen,
                    retain_sampler)
        if self.state.step < self.total_steps:  # stopped early (--stop_after_epochs)
            log.info("stopped after epoch %d (step %d/%d); continue with --resume",
                     self.state.epoch, self.state.step, self.total_steps)
            return {}

        model.eval()
        final_losses = {"forget_nll": self._mean_nll(model, forget),
                        "retain_nll": self._mean_nll(model, retain) if retain is not None else None}
        if self.lora:
            model = merge(model)
        checkpoint = self._save_weights(model, tokenizer, save_dtype)
        card = self._run_card(forget_set, retain_set, final_losses, checkpoint, save_dtype,
                              self._wall_time())
        _write_json(self.out / LOSSES, {"step_losses": self.state.losses})
        _write_json(self.out / RUN_CARD, card)
        shutil.rmtree(self.out / RESUME_DIR, ignore_errors=True)
        log.info("wrote %s and %s", self.out / checkpoint, self.out / RUN_CARD)
        return card

    # ---------------------------------------------------------------- SURE
    def _sure_mask(self, model, ref_model, forget, resume_state):
        from .sure import SureMask, compute_saliency

        cfg = self.cfg
        if resume_state is not None:
            from safetensors.torch import load_file

            info = resume_state["sure"]
            return SureMask.from_tensors(load_file(str(self.out / RESUME_DIR / SURE_ROWS)),
                                         self.threshold, cfg.sure_granularity, info["gamma"])
        batches = [self._batch(forget, list(range(i, min(i + cfg.batch_size, len(forget)))))
                   for i in range(0, len(forget), cfg.batch_size)]
        scores = compute_saliency(model, self.method, ref_model, batches, cfg.sure_granularity,
                                  progress=cfg.progress, autocast=self.autocast)
        mask = SureMask.from_scores(scores, self.threshold, cfg.sure_granularity)
        log.info("SURE: %s", mask.summary())
        return mask

    # ---------------------------------------------------------------- training loop
    def _train(self, model, ref_model, optimizer, trainable, forget, retain, forget_gen,
               retain_sampler) -> None:
        from tqdm.auto import tqdm

        from ..data.tokenized import epoch_batches

        cfg, method, state = self.cfg, self.method, self.state
        params = [p for _, p in trainable]
        bar = tqdm(total=self.total_steps, initial=state.step, desc=f"unlearn {cfg.method}",
                   disable=not cfg.progress)
        stop_epoch = None if cfg.stop_after_epochs is None else \
            state.epoch + cfg.stop_after_epochs
        while state.step < self.total_steps:
            batches = epoch_batches(len(forget), cfg.batch_size, forget_gen)
            groups = [batches[i:i + cfg.grad_accum] for i in range(0, len(batches), cfg.grad_accum)]
            for group in groups:
                if state.step >= self.total_steps:
                    break
                optimizer.zero_grad(set_to_none=True)
                total = 0.0
                for indices in group:
                    forget_batch = self._batch(forget, indices)
                    retain_batch = self._batch(retain, retain_sampler.next()) \
                        if retain_sampler else None
                    with self.autocast():
                        loss = method.loss(model, ref_model, forget_batch, retain_batch)
                    (loss / len(group)).backward()
                    total += float(loss.detach()) / len(group)
                if not math.isfinite(total):
                    raise MuseQuantError(f"the {cfg.method} loss became {total} at step "
                                         f"{state.step + 1}", "lower --lr")
                if self.sure_mask is not None:
                    self.sure_mask.mask_gradients(model)
                if cfg.max_grad_norm and cfg.max_grad_norm > 0:
                    torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
                if self.sure_mask is not None:
                    self.sure_mask.decay_rows(model, self.lr, cfg.weight_decay)
                optimizer.step()
                state.step += 1
                state.losses.append(total)
                bar.update(1)
                bar.set_postfix(loss=f"{total:.4f}")
            state.epoch += 1
            if state.step < self.total_steps:
                self._save_resume(model, optimizer, forget_gen, retain_sampler)
                if stop_epoch is not None and state.epoch >= stop_epoch:
                    break
        bar.close()

    @torch.no_grad()
    def _mean_nll(self, model, data) -> float:
        """Token-mean NLL over the whole set (all tokens weighted equally)."""
        from .losses import sequence_nll

        total, count = 0.0, 0
        for i in range(0, len(data), self.cfg.batch_size):
            batch = self._batch(data, list(range(i, min(i + self.cfg.batch_size, len(data)))))
            with self.autocast():
                total += float(sequence_nll(model, batch, "sum_per_sequence").sum())
            count += int((batch["labels"][:, 1:] != -100).sum())
        return total / max(count, 1)

    # ---------------------------------------------------------------- resume checkpoints
    def _wall_time(self) -> float:
        """Seconds spent on this run, earlier (resumed) sessions included."""
        return self.state.wall_time + time.perf_counter() - self._session_start

    def _save_resume(self, model, optimizer, forget_gen, retain_sampler) -> None:
        from safetensors.torch import save_file

        tmp = self.out / (RESUME_DIR + ".tmp")
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
        if self.sure_mask is not None:
            save_file(self.sure_mask.tensors(), str(tmp / SURE_ROWS))
        state = {"config": self.cfg.training_fields(), "step": self.state.step,
                 "epoch": self.state.epoch, "losses": self.state.losses,
                 "wall_time": self._wall_time(),
                 "retain_queue": retain_sampler.queue if retain_sampler else None,
                 "sure": {"gamma": self.sure_mask.gamma} if self.sure_mask else None}
        (tmp / "state.json").write_text(json.dumps(state))
        final = self.out / RESUME_DIR
        if final.exists():
            shutil.rmtree(final)
        tmp.replace(final)

    def _load_resume_state(self) -> dict:
        state = json.loads((self.out / RESUME_DIR / "state.json").read_text())
        saved, now = state["config"], self.cfg.training_fields()
        changed = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
        if changed:
            raise MuseQuantError(
                f"--resume: the run in {self.out} was started with different settings: " +
                ", ".join(f"{k}={saved.get(k)!r} (now {now.get(k)!r})" for k in changed),
                "resume with the original arguments (see the run's resume/state.json)")
        return state

    def _restore(self, state, model, optimizer, forget_gen, retain_sampler) -> None:
        from safetensors.torch import load_file

        folder = self.out / RESUME_DIR
        weights = load_file(str(folder / "trainable.safetensors"))
        params = dict(model.named_parameters())
        with torch.no_grad():
            for name, tensor in weights.items():
                params[name].copy_(tensor.to(params[name].device))
        optimizer.load_state_dict(torch.load(folder / "optimizer.pt", map_location=self.device,
                                             weights_only=True))
        rng = load_file(str(folder / "rng.safetensors"))
        forget_gen.set_state(rng["forget_generator"])
        torch.set_rng_state(rng["torch"])
        if retain_sampler is not None:
            retain_sampler.generator.set_state(rng["retain_generator"])
            retain_sampler.queue = list(state["retain_queue"])
        self.state = _State(step=state["step"], epoch=state["epoch"], losses=state["losses"],
                            wall_time=state["wall_time"])
        log.info("resumed from %s at epoch %d, step %d", folder, self.state.epoch, self.state.step)

    # ---------------------------------------------------------------- outputs
    def _save_weights(self, model, tokenizer, save_dtype) -> str:
        from .. import checkpoints

        self.out.mkdir(parents=True, exist_ok=True)
        name = CHECKPOINT_NAMES[self.cfg.save]
        if self.sure_mask is not None and self.sure_mask.granularity == "neuron":
            from safetensors.torch import save_file

            save_file(self.sure_mask.tensors(), str(self.out / SURE_ROWS))
        if self.cfg.save == "full":
            model = model.to(device="cpu", dtype=save_dtype)
            model.save_pretrained(self.out / name)
            tokenizer.save_pretrained(self.out / name)
            return name
        from transformers import AutoModelForCausalLM

        original = AutoModelForCausalLM.from_pretrained(self.cfg.pretrained, dtype=save_dtype)
        delta, patched = checkpoints.weight_delta(model, original)
        log.info("delta: %d tensors changed; %d elements near zero stored exactly",
                 sum(1 for k in delta if k in dict(original.named_parameters())), patched)
        del original
        checkpoints.save_delta(delta, self.out / name)
        return name

    def command(self) -> list[str]:
        """The argv that re-runs this run (every setting explicit)."""
        cfg = self.cfg
        from ..data import resolve_source

        argv = ["muse-quant", "unlearn", "--method", cfg.method, "--pretrained", cfg.pretrained,
                "--corpus", cfg.corpus, "--muse_data", resolve_source(cfg.muse_data),
                "--out", cfg.out]
        for key in ("forget", "retain", "plugin", "lora"):
            if getattr(cfg, key):
                argv += [f"--{key}", str(getattr(cfg, key))]
        argv += ["--lr", repr(self.lr), "--epochs", str(self.epochs)]
        if cfg.max_steps:
            argv += ["--max_steps", str(cfg.max_steps)]
        for key in ("batch_size", "grad_accum", "max_len", "alpha", "beta", "seed",
                    "weight_decay", "max_grad_norm", "packing", "save"):
            argv += [f"--{key}", str(getattr(cfg, key))]
        argv += ["--precision", self.precision]
        if self.method.sure:
            argv += ["--sure_threshold", cfg.sure_threshold,
                     "--sure_granularity", cfg.sure_granularity]
        return argv

    def _run_card(self, forget_set, retain_set, final_losses, checkpoint, save_dtype,
                  wall_time) -> dict:
        from ..data import resolve_source, source_label

        cfg = self.cfg
        base = cfg.method[:-len("_sure")] if self.method.sure else cfg.method
        hyper = {"lr": self.lr, "epochs": self.epochs, "max_steps": cfg.max_steps,
                 "batch_size": cfg.batch_size, "grad_accum": cfg.grad_accum,
                 "max_len": cfg.max_len, "alpha": cfg.alpha, "beta": cfg.beta, "seed": cfg.seed,
                 "optimizer": "adamw", "lr_schedule": "constant",
                 "weight_decay": cfg.weight_decay, "max_grad_norm": cfg.max_grad_norm,
                 "packing": cfg.packing, "steps": self.state.step,
                 "steps_per_epoch": self.steps_per_epoch,
                 "checkpoint_dtype": str(save_dtype).replace("torch.", ""),
                 "device": self.device.type}
        return {
            "method": cfg.method,
            "base_method": base,
            "sure": self.sure_mask.run_card() if self.sure_mask is not None else None,
            "lora": self.lora.run_card() if self.lora else None,
            "hyperparameters": hyper,
            "precision": self.precision,
            "seed": cfg.seed,
            "pretrained": cfg.pretrained,
            "corpus": cfg.corpus,
            "muse_data": source_label(resolve_source(cfg.muse_data)),
            "data": {"forget": forget_set.card(),
                     "retain": retain_set.card() if retain_set is not None else None},
            "versions": _versions(),
            "wall_time_seconds": round(wall_time, 3),
            "final_losses": final_losses,
            "save": cfg.save,
            "checkpoint": checkpoint,
            "command": self.command(),
        }


def unlearn(**kwargs) -> dict:
    """Python entry point: ``unlearn(method="npo", pretrained=DIR, out=OUT, ...)`` -> run card."""
    names = {f.name for f in fields(UnlearnConfig)}
    unknown = sorted(set(kwargs) - names)
    if unknown:
        raise MuseQuantError(f"unknown unlearn option(s) {unknown}",
                             f"use: {', '.join(sorted(names))}")
    return UnlearningRun(UnlearnConfig(**kwargs)).run()


__all__ = ["UnlearnConfig", "UnlearningRun", "unlearn", "texts_sha256"]
