"""The paper's setup at full scale: ``muse-quant reproduce``'s plan (:mod:`.plan`), its cost
estimates (:mod:`.estimate`) and its SLURM job arrays (:mod:`.slurm`). No torch, no hub."""

from __future__ import annotations

from .estimate import LLAMA2_7B, Assumptions, Estimate, estimate, model_shape
from .plan import DEFAULT_QUANT, Plan, Stage, build_plan, format_plan
from .slurm import cell_argv, emit_slurm

__all__ = ["DEFAULT_QUANT", "LLAMA2_7B", "Assumptions", "Estimate", "Plan", "Stage", "build_plan",
           "cell_argv", "emit_slurm", "estimate", "format_plan", "model_shape"]
