"""`accelerate launch` data-parallel evaluation on CPU gives exactly the single-process metrics.

lm-eval 0.4.13's HFLM sets rank / world size only when it counts several GPUs; muse_quant takes
them from accelerate, so on CPU the two processes split the documents and rank 0 gathers the
per-document results (also the Min-K% scores computed from per-token log-probs) and writes them.

accelerate 1.x's ``accelerate launch --cpu --num_processes 2`` starts ONE process (its simple
launcher; multi-CPU needs MPI), so two CPU processes are launched with torchrun under accelerate:
``ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2`` (gloo backend).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _results(out: Path) -> dict:
    files = list(out.glob("*/results_*.json"))
    assert len(files) == 1, f"expected one results file (rank 0 only), found {files}"
    return json.loads(files[0].read_text())


@pytest.mark.slow
def test_two_cpu_processes_match_one_exactly(small_model_dir, tmp_path):
    model = small_model_dir
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "OMP_NUM_THREADS": "1"}
    eval_args = ["-m", "harness_ext.cli", "eval", "--model", "muse_quant", "--model_args",
                 f"pretrained={model},quant=bnb-fp4", "--tasks", "muse_news_quant",
                 "--metadata", "muse_data=embedded", "--limit", "4", "--device", "cpu"]
    single = subprocess.run([sys.executable, *eval_args, "--output_path", str(tmp_path / "one")],
                            env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr[-3000:]
    launch = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
                             "--num_processes", "2", "--num_machines", "1", "--mixed_precision",
                             "no", "--dynamo_backend", "no", *eval_args,
                             "--output_path", str(tmp_path / "two")],
                            env={**env, "ACCELERATE_USE_CPU": "1"}, cwd=tmp_path,
                            capture_output=True, text=True, timeout=300)
    log = launch.stdout + launch.stderr
    assert launch.returncode == 0, log[-3000:]
    assert "rank 0 of 2" in log and "rank 1 of 2" in log  # really two processes, split
    assert "Building contexts for muse_news_privleak on rank 1" in log
    one, two = _results(tmp_path / "one"), _results(tmp_path / "two")
    assert one["n-samples"] == two["n-samples"]
    compared = 0
    for task, metrics in one["results"].items():
        for key, value in metrics.items():
            if "_stderr" in key and isinstance(value, float):
                # the gathered per-document values arrive rank by rank: the standard error
                # is the same sum in another order (last-bit differences)
                assert two["results"][task][key] == pytest.approx(value, rel=1e-12), key
            else:
                assert two["results"][task][key] == value, (task, key)
                compared += isinstance(value, float)
    # the Min-K% AUC needs forget (rank 0's docs) and holdout (rank 1's docs) together
    assert 0.0 <= two["results"]["muse_news_privleak"]["mink40_auc,none"] <= 1.0
    assert compared >= 8
