"""Unlearning checkpoints: read, detect and apply them, and write the delta format.

* :func:`apply_unlearned` applies an unlearning checkpoint: a full model directory, a
  ``.safetensors`` weight delta (theta_u - theta_o by parameter name) or a PEFT/LoRA adapter
  directory (merged). Tied weights are changed once.
* :func:`weight_delta` / :func:`save_delta` write the delta format (``muse-quant unlearn``).

Checkpoints are read as safetensors; pickle files (``.bin``, ``.pt``) are refused unless
``allow_pickle=True``, and even then are loaded with ``torch.load(weights_only=True)``: a pickle
holding anything but tensors is refused. A checkpoint holding NaN or Inf is refused before the
model is changed; one that changes nothing is applied with a warning. The report of
:func:`apply_unlearned` (recorded in results files as ``config.muse_quant.unlearned``) carries the
checkpoint's content hash (:func:`harness_ext.hashing.content_sha256`).
Writing quantized weights back into a model lives in :mod:`harness_ext.quantizers.apply`.
"""

from .reading import (DELTA_METADATA, DELTA_METADATA_KEY, EXACT_INDEX, EXACT_VALUE,
                      PICKLE_SUFFIXES, ROUNDED, check_finite, check_pretrained,
                      detect_checkpoint_kind, load_state_file, read_adapter_config)
from .applying import apply_unlearned, parameter_aliases
from .delta import (BASE_ROUNDING_FILE, delta_base_rounding, round_parameters, save_delta,
                    weight_delta, write_base_rounding)

__all__ = ["BASE_ROUNDING_FILE", "DELTA_METADATA", "DELTA_METADATA_KEY", "EXACT_INDEX", "EXACT_VALUE",
           "PICKLE_SUFFIXES", "ROUNDED", "apply_unlearned", "check_finite",
           "check_pretrained", "delta_base_rounding", "detect_checkpoint_kind",
           "load_state_file", "parameter_aliases", "read_adapter_config",
           "round_parameters", "save_delta", "weight_delta", "write_base_rounding"]
