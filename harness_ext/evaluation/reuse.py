"""What a sweep computes once for all its schemes: everything that does not depend on the weights.

* task datasets: :mod:`harness_ext.data.memo` (always on; lm-eval rebuilds every task, and calls
  its ``custom_dataset``, in each ``simple_evaluate``);
* token ids of prompts and PrivLeak texts: kept on the model
  (:func:`harness_ext.fast_generate.context_ids`, ``MuseQuantLM._encode_with_bos``);
* the environment description lm-eval writes into every results file: torch's
  ``get_pretty_env_info`` runs subprocesses (~1.3 s); within one process its text does not change,
  so :func:`environment_described_once` computes it once.
"""

from __future__ import annotations

from contextlib import contextmanager

_ENV_INFO: list[str] = []


@contextmanager
def environment_described_once():
    """Within the block, torch's ``get_pretty_env_info`` returns the text it gave the first time
    in this process (lm-eval's ``add_env_info`` imports it at each call, so the patch is seen)."""
    import torch.utils.collect_env as collect_env

    original = collect_env.get_pretty_env_info

    def once():
        if not _ENV_INFO:
            _ENV_INFO.append(original())
        return _ENV_INFO[0]

    collect_env.get_pretty_env_info = once
    try:
        yield
    finally:
        collect_env.get_pretty_env_info = original
