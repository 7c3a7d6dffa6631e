"""A configuration of each unlearning stage that fits ``--gpus N`` GPUs of ``--gpu_mem`` GB
(:func:`fit_unlearning`), and its ``accelerate launch`` prefix (:func:`launch_prefix`).

The effective batch (``batch_size x grad_accum x processes``) is the plan's ``--batch_size x
--grad_accum``. Candidates are tried from the cheapest: without gradient checkpointing before
with it (recomputation costs a third more compute), DDP (or one GPU) before FSDP, the largest
micro-batch first; the first whose estimated peak fits one GPU is taken. No torch here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import MuseQuantError
from .estimate import Assumptions, Estimate, estimate

#: FSDP through accelerate: full sharding of each decoder layer (the model's _no_split_modules),
#: a full state dict gathered on rank 0 for saving; every rank loads the whole target (SURE's
#: saliency pass runs before sharding), so no rank-0-only loading
FSDP_ARGS = ("--use_fsdp", "--fsdp_version", "2", "--fsdp_auto_wrap_policy",
             "TRANSFORMER_BASED_WRAP", "--fsdp_state_dict_type", "FULL_STATE_DICT",
             "--fsdp_reshard_after_forward", "true", "--fsdp_cpu_ram_efficient_loading", "false")


@dataclass
class Fit:
    """How one unlearning stage runs: ``strategy`` single | ddp | fsdp on ``gpus`` GPUs."""

    strategy: str
    gpus: int
    batch_size: int
    grad_accum: int
    checkpointing: bool
    est: Estimate

    @property
    def effective_batch(self) -> int:
        return self.batch_size * self.grad_accum * self.gpus

    def describe(self) -> str:
        where = "1 GPU" if self.gpus == 1 else f"{self.strategy.upper()} on {self.gpus} GPUs"
        ref = ", reference model sharded" if self.strategy == "fsdp" else ""
        return (f"{where}: batch {self.batch_size} x accum {self.grad_accum} x {self.gpus} = "
                f"{self.effective_batch}, checkpointing {'on' if self.checkpointing else 'off'}"
                f"{ref}")


def check_gpus(gpus, gpu_mem) -> tuple[int, float]:
    """``--gpus`` / ``--gpu_mem`` as numbers, or a clear error."""
    try:
        n = int(str(gpus))
    except ValueError:
        n = 0
    if not 1 <= n <= 4096:
        raise MuseQuantError(f"--gpus {gpus!r} is not a number of GPUs",
                             "pass a whole number from 1 (e.g. --gpus 8 for a node of 8 GPUs)")
    try:
        mem = float(str(gpu_mem))
    except ValueError:
        mem = math.nan
    if not (math.isfinite(mem) and 1 <= mem <= 100000):
        raise MuseQuantError(f"--gpu_mem {gpu_mem!r} is not a GPU memory size in GB",
                             "pass the memory of one GPU in GB, e.g. --gpu_mem 80 (A100/H100) "
                             "or --gpu_mem 141 (H200)")
    return n, mem


def fit_unlearning(shape: dict, a: Assumptions, *, gpus: int, gpu_mem: float, batch_size: int,
                   grad_accum: int, **kw) -> tuple[Fit | None, str]:
    """The first configuration that fits (see the module), and a note; ``(None, why)`` if none.
    ``kw``: the rest of :func:`~.estimate.estimate`'s unlearning arguments."""
    wanted = batch_size * grad_accum
    per_gpu = max(1, math.ceil(wanted / gpus))
    note = "" if wanted % gpus == 0 else (
        f"effective batch {wanted} is not a multiple of {gpus} GPUs")
    sizes = [b for b in range(min(batch_size, per_gpu), 0, -1) if per_gpu % b == 0]
    strategies = ("single",) if gpus == 1 else ("ddp", "fsdp")
    for checkpointing in (False, True):
        for strategy in strategies:
            for b in sizes:
                est = estimate("unlearn", shape, a, batch_size=b, checkpointing=checkpointing,
                               gpus=gpus, strategy=strategy, **kw)
                if est.gpu_gb <= gpu_mem:
                    return Fit(strategy, gpus, b, per_gpu // b, checkpointing, est), note
    last = strategies[-1]
    need = estimate("unlearn", shape, a, batch_size=1, checkpointing=True, gpus=gpus,
                    strategy=last, **kw)
    fix = ("more GPUs (--gpus N shards it with FSDP)" if gpus == 1 else
           "more GPUs or GPUs with more memory")
    return None, (f"needs {need.gpu_gb:.1f} GB per GPU even at batch 1 with checkpointing"
                  f"{' and FSDP' if last == 'fsdp' else ''} (> {gpu_mem:g} GB); use {fix}")


def launch_prefix(fit: Fit) -> list[str]:
    """``accelerate launch ...`` for a multi-GPU stage (the module after it: ``-m
    harness_ext.cli``); empty for one GPU."""
    if fit.gpus == 1:
        return []
    mode = list(FSDP_ARGS) if fit.strategy == "fsdp" else ["--multi_gpu"]
    return ["accelerate", "launch", *mode, "--num_processes", str(fit.gpus), "--num_machines",
            "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
