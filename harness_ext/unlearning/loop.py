"""The unlearning trainer behind ``muse-quant unlearn``: :class:`UnlearningRun` and :func:`unlearn`.

MUSE's recipe (``muse_bench/baselines``, HF Trainer): AdamW, constant learning rate, no warm-up,
weight decay 0 and gradient clipping at norm 1 (the HF Trainer defaults MUSE keeps), lr 1e-5,
10 epochs (NEWS) / 5 (BOOKS), max_len 2048, 4 examples per device on 8 GPUs (here: batch 4 x
gradient accumulation 8 = 32), training examples = ``max_len``-token chunks of the forget split
(:meth:`TokenizedTexts.muse_chunks`). Each forget micro-batch is paired with a retain
micro-batch of the same size, drawn from a seeded permutation of the retain examples that is
cycled through (:class:`.data.RetainSampler`).

Deterministic on CPU for a given seed: fixed shuffling generators, no dropout. A resumable
checkpoint is written at the end of every epoch to ``OUT/resume/``; ``--resume`` continues bit
for bit. At the end the weights are written (``OUT/model/`` or ``OUT/delta.safetensors``), then
``OUT/run_card.json`` (:mod:`.checkpoint`). Settings: :class:`.config.UnlearnConfig`. Under
``accelerate launch`` several processes share each step (:mod:`.distributed`).
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from contextlib import nullcontext
from dataclasses import fields
from pathlib import Path

import torch

from ..errors import MuseQuantError
from ..io import write_json
from ..recipes import MUSE_EPOCHS as DEFAULT_EPOCHS
from . import checkpoint as ckpt
from .config import GRANULARITIES, PRECISIONS, UnlearnConfig
from .data import RetainSampler, load_forget, load_retain, tokenize
from .distributed import Parallel, auto_checkpointing, check_resume, mask_digest

log = logging.getLogger(__name__)


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


class UnlearningRun:
    """One run of ``muse-quant unlearn``: ``UnlearningRun(cfg).run()`` returns the run card."""

    def __init__(self, cfg: UnlearnConfig):
        from . import load_plugin, make_method
        from .lora import LORA_LR, parse_lora
        from .sure import parse_threshold

        cfg.validate()
        self.cfg = cfg
        self.out = Path(cfg.out).expanduser()
        if cfg.plugin:
            load_plugin(cfg.plugin)
        self.method = make_method(cfg.method, alpha=cfg.alpha, beta=cfg.beta,
                                  klr_reduction=cfg.klr_reduction)
        self.lora = parse_lora(cfg.lora)
        self.threshold = parse_threshold(cfg.sure_threshold) if self.method.sure else None
        if self.method.sure and cfg.sure_granularity not in GRANULARITIES:
            raise MuseQuantError(f"unknown --sure_granularity {cfg.sure_granularity!r}",
                                 f"use one of {', '.join(GRANULARITIES)}")
        if self.method.sure and self.lora:
            raise MuseQuantError("SURE and --lora cannot be combined (SURE selects modules of "
                                 "the full model, LoRA trains adapters)",
                                 "drop the _sure suffix or --lora")
        self.lr = cfg.lr if cfg.lr is not None else (
            LORA_LR if self.lora else self.method.default_lr)
        self.epochs = cfg.epochs if cfg.epochs is not None else DEFAULT_EPOCHS[cfg.corpus]
        self.parallel = Parallel.from_env()  # one process, or an accelerate launch
        self.device = _resolve_device(cfg.device)
        if self.parallel.active and cfg.device == "auto":  # the launcher's device ("cpu:0" is
            device = self.parallel.accelerator.device    # cpu: torch.load knows only "cpu")
            self.device = torch.device("cpu") if device.type == "cpu" else device
        self.parallel.check_supported(cfg, self.method.sure, bool(self.lora))
        self.precision = resolve_precision(cfg.precision, self.device)
        self.checkpointing = auto_checkpointing(cfg, self.device, self.precision)
        self.train_dtype = torch.bfloat16 if self.precision == "bf16" else torch.float32
        self.sure_mask = None
        self.target_rounded_to = None  # set in run() once the target's stored dtype is known
        self.state = ckpt.TrainingState()

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
        par = self.parallel
        if par.is_main or not cfg.overwrite:  # only rank 0 removes (--overwrite)
            ckpt.check_out(self.out, cfg.resume, cfg.overwrite)
        par.barrier()
        # read (and check) the resume state before loading anything
        resume_state = ckpt.load_resume_state(self.out, cfg.training_fields()) \
            if cfg.resume else None
        if resume_state is not None:
            check_resume(par, resume_state, self.out)
        forget_set = load_forget(cfg)
        retain_set = load_retain(cfg, method.needs_retain, cfg.method)
        try:
            tokenizer = AutoTokenizer.from_pretrained(cfg.pretrained)
            save_dtype = _stored_dtype(AutoConfig.from_pretrained(cfg.pretrained))
        except (OSError, ValueError) as exc:
            raise MuseQuantError(f"cannot load --pretrained {cfg.pretrained}: "
                                 f"{type(exc).__name__}: {str(exc)[:300]}",
                                 "pass a Hugging Face model directory or hub id") from None
        # fp32 (or bf16-mixed, fp32 master weights) training from a target stored narrower:
        # saving in the stored dtype would round the update back onto the target's bf16 grid and
        # erase every change under half a bf16 ulp (the mechanism this tool measures), so the
        # weights are saved in the training dtype
        if save_dtype.is_floating_point and self.train_dtype.itemsize > save_dtype.itemsize:
            log.warning("--precision %s: the target %s is stored in %s; the unlearned weights "
                        "are saved in %s (in %s most of the update would round away); evaluate "
                        "them with dtype=float32", self.precision, cfg.pretrained,
                        str(save_dtype).replace("torch.", ""),
                        str(self.train_dtype).replace("torch.", ""),
                        str(save_dtype).replace("torch.", ""))
            save_dtype = self.train_dtype
        # bf16 training from a target stored wider trains the target rounded to bf16: the update
        # is saved relative to that rounded target (see checkpoint.save_weights)
        self.target_rounded_to = self.train_dtype if (
            self.precision == "bf16" and save_dtype != self.train_dtype) else None
        if self.target_rounded_to is not None:
            log.warning("--precision bf16: the target %s is stored in %s; training starts from "
                        "its weights rounded to bfloat16, and the saved update (and everything "
                        "evaluated from it) is relative to that rounded target",
                        cfg.pretrained, str(save_dtype).replace("torch.", ""))
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
        self.steps_per_epoch = math.ceil(micro_per_epoch / (cfg.grad_accum * par.world_size))
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
        if self.checkpointing:  # recomputes the same values: no number changes
            model.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False})
        if par.active:
            log.info("rank %d of %d (%s): effective batch %d = batch_size %d x grad_accum %d x "
                     "%d processes", par.rank, par.world_size, par.strategy,
                     cfg.batch_size * cfg.grad_accum * par.world_size, cfg.batch_size,
                     cfg.grad_accum, par.world_size)

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
            self.state = ckpt.restore(self.out, resume_state, model, optimizer, forget_gen,
                                      retain_sampler, self.device)
        if par.active:  # DDP / FSDP wrap the model (FSDP shards the reference model too)
            model, optimizer = par.accelerator.prepare(model, optimizer)
            if ref_model is not None and par.strategy == "fsdp" and not self.lora:
                ref_model = par.accelerator.prepare(ref_model)

        self._train(model, ref_model, optimizer, trainable, forget, retain, forget_gen,
                    retain_sampler)
        if self.state.step < self.total_steps:  # stopped early (--stop_after_epochs)
            log.info("stopped after epoch %d (step %d/%d); continue with --resume",
                     self.state.epoch, self.state.step, self.total_steps)
            return {}

        model.eval()
        if par.active:
            model = self._gather(model)
            if model is None:  # not rank 0: rank 0 evaluates and writes
                par.barrier()
                return {}
        final_losses = {"forget_nll": self._mean_nll(model, forget),
                        "retain_nll": self._mean_nll(model, retain) if retain is not None else None}
        if self.lora:
            model = merge(model)
        checkpoint = ckpt.save_weights(self.out, cfg, model, tokenizer, save_dtype,
                                       self.sure_mask, self.target_rounded_to)
        card = ckpt.run_card(self, forget_set, retain_set, final_losses, checkpoint, save_dtype,
                             self._wall_time())
        write_json(self.out / ckpt.LOSSES, {"step_losses": self.state.losses})
        write_json(self.out / ckpt.RUN_CARD, card)
        shutil.rmtree(self.out / ckpt.RESUME_DIR, ignore_errors=True)
        log.info("wrote %s and %s", self.out / checkpoint, self.out / ckpt.RUN_CARD)
        par.barrier()
        return card

    def _gather(self, model):
        """The trained model on rank 0 (None on the others): DDP's copy, or FSDP's full state
        dict gathered (every rank takes part) into a model loaded on rank 0."""
        par = self.parallel
        if par.strategy != "fsdp":
            return par.unwrap(model) if par.is_main else None
        state = par.accelerator.get_state_dict(model)
        if not par.is_main:
            return None
        full = self._load_model(self.train_dtype)
        full.load_state_dict(state)
        return full.eval()

    # ---------------------------------------------------------------- SURE
    def _sure_mask(self, model, ref_model, forget, resume_state):
        from .saliency import SureMask, compute_saliency

        cfg = self.cfg
        if resume_state is not None:
            return SureMask.from_tensors(ckpt.load_sure_rows(self.out), self.threshold,
                                         cfg.sure_granularity, resume_state["sure"]["gamma"])
        batches = [self._batch(forget, list(range(i, min(i + cfg.batch_size, len(forget)))))
                   for i in range(0, len(forget), cfg.batch_size)]
        par = self.parallel
        if par.active:  # each rank a share of the batches, the gradients summed over ranks
            scores = compute_saliency(model, self.method, ref_model,
                                      batches[par.rank::par.world_size], cfg.sure_granularity,
                                      progress=cfg.progress, autocast=self.autocast,
                                      n_batches=len(batches), reduce=par.all_reduce_grads)
            scores = par.broadcast(scores)  # rank 0's scores: one mask on every rank
        else:
            scores = compute_saliency(model, self.method, ref_model, batches,
                                      cfg.sure_granularity, progress=cfg.progress,
                                      autocast=self.autocast)
        mask = SureMask.from_scores(scores, self.threshold, cfg.sure_granularity)
        log.info("SURE: %s", mask.summary())
        if par.active:
            log.info("SURE mask on rank %d: sha256 %s", par.rank, mask_digest(mask))
        return mask

    # ---------------------------------------------------------------- training loop
    def _train(self, model, ref_model, optimizer, trainable, forget, retain, forget_gen,
               retain_sampler) -> None:
        from tqdm.auto import tqdm

        from ..data.tokenized import epoch_batches

        cfg, method, state, par = self.cfg, self.method, self.state, self.parallel
        params = [p for _, p in trainable]
        plain = par.unwrap(model)  # parameter names without the DDP wrapper's prefix
        bar = tqdm(total=self.total_steps, initial=state.step, desc=f"unlearn {cfg.method}",
                   disable=not cfg.progress)
        stop_epoch = None if cfg.stop_after_epochs is None else \
            state.epoch + cfg.stop_after_epochs
        while state.step < self.total_steps:
            batches = epoch_batches(len(forget), cfg.batch_size, forget_gen)
            per_step = cfg.grad_accum * par.world_size  # micro-batches of all ranks
            groups = [batches[i:i + per_step] for i in range(0, len(batches), per_step)]
            for group in groups:
                if state.step >= self.total_steps:
                    break
                optimizer.zero_grad(set_to_none=True)
                total = 0.0 if not par.active else self._parallel_micro_batches(
                    model, ref_model, forget, retain, group, retain_sampler)
                for indices in group if not par.active else ():  # one process: as always
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
                    self.sure_mask.mask_gradients(plain)
                if cfg.max_grad_norm and cfg.max_grad_norm > 0:
                    if par.active:
                        par.accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
                    else:
                        torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
                if self.sure_mask is not None:
                    self.sure_mask.decay_rows(plain, self.lr, cfg.weight_decay)
                optimizer.step()
                state.step += 1
                state.losses.append(total)
                bar.update(1)
                bar.set_postfix(loss=f"{total:.4f}")
            state.epoch += 1
            if state.step < self.total_steps and par.strategy != "fsdp":
                if par.is_main:  # DDP: every rank holds the same weights and optimizer states
                    ckpt.save_resume(self.out, plain, optimizer, forget_gen, retain_sampler,
                                     self.sure_mask, state, cfg.training_fields(),
                                     self._wall_time(), world_size=par.world_size)
                par.barrier()
                if stop_epoch is not None and state.epoch >= stop_epoch:
                    break
        bar.close()

    def _parallel_micro_batches(self, model, ref_model, forget, retain, group,
                                retain_sampler) -> float:
        """One optimizer step's forward/backward passes on this rank (see :mod:`.distributed`);
        returns the step's mean loss over all ranks."""
        par, n = self.parallel, len(group)
        retains = [retain_sampler.next() if retain_sampler else None for _ in group]
        share = par.share(group, retains)
        local = 0.0
        for k, (indices, retain_indices, weight) in enumerate(share):
            forget_batch = self._batch(forget, indices)
            retain_batch = self._batch(retain, retain_indices) if retain_indices else None
            with par.no_sync(model, last=k == len(share) - 1):
                with self.autocast():
                    loss = self.method.loss(model, ref_model, forget_batch, retain_batch)
                (loss * weight).backward()
            if weight:
                local += float(loss.detach()) / n
        return par.sum(local)

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

    def _wall_time(self) -> float:
        """Seconds spent on this run, earlier (resumed) sessions included."""
        return self.state.wall_time + time.perf_counter() - self._session_start


def unlearn(**kwargs) -> dict:
    """Python entry point: ``unlearn(method="npo", pretrained=DIR, out=OUT, ...)`` -> run card."""
    names = {f.name for f in fields(UnlearnConfig)}
    unknown = sorted(set(kwargs) - names)
    if unknown:
        raise MuseQuantError(f"unknown unlearn option(s) {unknown}",
                             f"use: {', '.join(sorted(names))}")
    return UnlearningRun(UnlearnConfig(**kwargs)).run()


__all__ = ["UnlearnConfig", "UnlearningRun", "unlearn"]
