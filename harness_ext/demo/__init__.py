"""``muse-quant demo``: the whole study on a laptop CPU (see :mod:`.pipeline` for the stages,
:mod:`.config` for the recipe and why, :mod:`.recovery_map` for the lr x precision map)."""

from .config import DEFAULT, FAST, DemoConfig
from .pipeline import DemoRun, prepare_out

__all__ = ["DEFAULT", "FAST", "DemoConfig", "DemoRun", "prepare_out"]
