"""Several processes for one unlearning run, through HF accelerate (DDP or FSDP).

``accelerate launch --num_processes N ... muse-quant unlearn ...`` starts N copies of the
trainer; :class:`Parallel` is what each copy knows about the others. One process (no launcher,
or ``WORLD_SIZE`` 1) is :data:`SINGLE`, and the trainer then runs exactly the code it always ran.

With N processes an optimizer step takes ``batch_size x grad_accum x N`` forget examples (the
effective batch): the same global micro-batches, in the same order, as one process with
``--grad_accum grad_accum x N`` would take, dealt round-robin to the ranks (rank r takes
micro-batches r, r+N, ...). Every rank draws the whole step's retain batches, so the retain
sampler is in the same state on every rank. Gradients are averaged by DDP (or reduce-scattered by
FSDP); each rank scales its losses by ``N / micro-batches of the step``, so the average is the
one-process mean. The result equals the one-process run up to the order of the floating-point
sums (see docs/scale.md for the measured difference).
"""

from __future__ import annotations

import hashlib
import logging
import os
from contextlib import nullcontext
from dataclasses import dataclass

from ..errors import MuseQuantError

log = logging.getLogger(__name__)


@dataclass
class Parallel:
    """The processes of a run: rank, world size, strategy (single | ddp | fsdp)."""

    world_size: int = 1
    rank: int = 0
    strategy: str = "single"
    accelerator: object = None

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls) -> "Parallel":
        """The launcher's processes (``WORLD_SIZE`` > 1: accelerate / torchrun), else one."""
        try:
            world = int(os.environ.get("WORLD_SIZE", "1"))
        except ValueError:
            world = 1
        if world <= 1:
            return SINGLE
        try:
            from accelerate import Accelerator
            from accelerate.utils import DistributedType
        except ImportError:
            raise MuseQuantError(f"WORLD_SIZE={world}: several processes need HF accelerate, "
                                 "which is not installed",
                                 "pip install accelerate (or run one process)") from None
        acc = Accelerator()
        fsdp = acc.distributed_type == DistributedType.FSDP
        if not fsdp and os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true":
            raise MuseQuantError(
                f"accelerate launch --use_fsdp: accelerate runs {acc.distributed_type} here, "
                "not FSDP (accelerate shards only on GPUs; on CPU it falls back to DDP)",
                "run FSDP on GPUs, or drop --use_fsdp to train data-parallel (DDP) on CPU")
        if fsdp and os.environ.get("FSDP_CPU_RAM_EFFICIENT_LOADING", "").lower() == "true":
            raise MuseQuantError("FSDP with cpu_ram_efficient_loading loads the target on rank 0 "
                                 "only; every rank needs it (SURE's saliency pass, the "
                                 "reference model)",
                                 "launch with --fsdp_cpu_ram_efficient_loading false (as "
                                 "`muse-quant reproduce --gpus N` writes)")
        return cls(acc.num_processes, acc.process_index, "fsdp" if fsdp else "ddp", acc)

    def check_supported(self, cfg, sure: bool, lora: bool) -> None:
        """What FSDP does not run here: resume checkpoints, neuron masks, LoRA."""
        if self.strategy != "fsdp":
            return
        if cfg.stop_after_epochs or cfg.resume:
            raise MuseQuantError("--stop_after_epochs / --resume: FSDP runs write no resume "
                                 "checkpoint (their optimizer states are sharded)",
                                 "run to the end under FSDP, or use DDP (no --use_fsdp)")
        if sure and cfg.sure_granularity == "neuron":
            raise MuseQuantError("--sure_granularity neuron masks rows of sharded tensors, "
                                 "which FSDP does not support here",
                                 "use --sure_granularity module, or DDP (no --use_fsdp)")
        if lora:
            raise MuseQuantError("--lora under FSDP is not supported (the merged adapters are "
                                 "gathered from a sharded PEFT model)",
                                 "use DDP (no --use_fsdp): LoRA's few trained parameters and "
                                 "their AdamW states fit on every GPU")

    # ------------------------------------------------------------------ collectives
    def barrier(self) -> None:
        if self.active:
            self.accelerator.wait_for_everyone()

    def sum(self, value: float) -> float:
        """The sum over ranks of a float (float64)."""
        if not self.active:
            return value
        import torch
        import torch.distributed as dist

        t = torch.tensor([value], dtype=torch.float64)
        dist.all_reduce(t)
        return float(t[0])

    def all_reduce_grads(self, model) -> None:
        """Sum the parameters' gradients over the ranks (SURE's saliency pass)."""
        if not self.active:
            return
        import torch
        import torch.distributed as dist

        for p in model.parameters():
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            dist.all_reduce(p.grad)

    def broadcast(self, tensors: dict) -> dict:
        """Rank 0's tensors on every rank (in place, same keys and shapes on every rank)."""
        if self.active:
            import torch.distributed as dist

            for name in sorted(tensors):
                dist.broadcast(tensors[name], src=0)
        return tensors

    # ------------------------------------------------------------------ the model
    def no_sync(self, model, last: bool):
        """No gradient reduction for every micro-batch of a step but the last one."""
        return nullcontext() if last or not self.active else self.accelerator.no_sync(model)

    def unwrap(self, model):
        return self.accelerator.unwrap_model(model) if self.active else model

    def share(self, group: list, retain: list) -> list[tuple]:
        """This rank's micro-batches of one optimizer step, padded so that every rank runs
        the same number: ``(forget indices, retain indices or None, weight)``; padding has
        weight 0 (a backward pass that adds nothing, so DDP's collectives match)."""
        n, w = len(group), self.world_size
        mine = [(group[j], retain[j], w / n) for j in range(self.rank, n, w)]
        per = -(-n // w)
        while len(mine) < per:
            mine.append((group[0], retain[0], 0.0))
        return mine

    def run_card(self, batch_size: int, grad_accum: int, checkpointing: bool) -> dict:
        return {"world_size": self.world_size, "strategy": self.strategy,
                "effective_batch": batch_size * grad_accum * self.world_size,
                "gradient_checkpointing": checkpointing}


SINGLE = Parallel()


def mask_digest(mask) -> str:
    """sha256 of a SURE mask's units (to show that every rank holds the same mask)."""
    h = hashlib.sha256()
    for name in sorted(mask.mask):
        h.update(name.encode())
        h.update(mask.mask[name].reshape(-1).to("cpu").numpy().tobytes())
        h.update(mask.scores[name].reshape(-1).to("cpu").float().numpy().tobytes())
    return h.hexdigest()


def check_resume(parallel: Parallel, state: dict, out) -> None:
    """A resumed run continues with the world size it started with (the effective batch and the
    micro-batches each rank takes depend on it); FSDP writes no resume checkpoint."""
    saved = int(state.get("world_size", 1))
    if saved != parallel.world_size:
        raise MuseQuantError(
            f"--resume: the run in {out} was started with {saved} process(es), this launch has "
            f"{parallel.world_size} (the effective batch batch_size x grad_accum x processes "
            "would change)",
            f"resume with the original world size (accelerate launch --num_processes {saved}"
            + (", or no launcher" if saved == 1 else "") + ")")


def auto_checkpointing(cfg, device, precision: str) -> bool:
    """``--gradient_checkpointing auto``: on when the plan's memory estimate of this run (without
    recomputation) exceeds the GPU's memory; off on CPU."""
    if cfg.gradient_checkpointing != "auto":
        return cfg.gradient_checkpointing == "on"
    if device.type != "cuda":
        return False
    import torch

    from ..reproduce.estimate import Assumptions, estimate, model_shape

    try:
        shape = model_shape(cfg.pretrained)
    except MuseQuantError:
        return False
    need = estimate("unlearn", shape, Assumptions(), method=cfg.method,
                    batch_size=cfg.batch_size, max_len=cfg.max_len, precision=precision).gpu_gb
    have = torch.cuda.get_device_properties(device).total_memory / 1e9
    if need > have:
        log.info("--gradient_checkpointing auto: on (the run needs ~%.0f GB without it, the GPU "
                 "has %.0f GB)", need, have)
    return need > have
