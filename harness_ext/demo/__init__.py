"""``muse-quant demo``: the whole study on a laptop CPU (see :mod:`.pipeline` for the stages,
:mod:`.stages` for their cache, :mod:`.config` for the recipe and why, :mod:`.summary` for the
outputs, :mod:`.recovery_map` for the width x lr x precision map)."""

from .config import DEFAULT, FAST, MEDIUM, SCALES, DemoConfig
from .pipeline import DemoRun
from .stages import prepare_out

__all__ = ["DEFAULT", "FAST", "MEDIUM", "SCALES", "DemoConfig", "DemoRun", "prepare_out"]
