"""muse-quant: does LLM unlearning survive quantization? An lm-evaluation-harness plugin.

Parts: ``lm`` (the ``muse_quant`` lm-eval model), ``quantizers`` (one file per scheme),
``weights`` (every in-place weight change), ``unlearning`` (one file per unlearning method and the
``muse-quant unlearn`` trainer), ``metrics`` (MUSE definitions), ``data`` (hub / local /
embedded sources), ``tiny`` (offline tiny Llama), ``cli`` (the ``muse-quant`` command).
"""

__version__ = "0.1.0"
