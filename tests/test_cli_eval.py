"""End to end through the CLI: the muse_news_quant group on the embedded corpus, with and
without quantization, the error paths, and plain lm_eval with --include_path."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness_ext.cli import main

TASKS = ["muse_news_verbmem_f", "muse_news_knowmem_f", "muse_news_knowmem_r", "muse_news_privleak"]
METRICS = {
    "muse_news_verbmem_f": ["verbmem_rougeL_f1", "verbmem_rougeL_recall"],
    "muse_news_knowmem_f": ["knowmem_rougeL_f1", "knowmem_rougeL_recall"],
    "muse_news_knowmem_r": ["knowmem_rougeL_f1", "knowmem_rougeL_recall"],
    "muse_news_privleak": ["privleak", "mink40_auc", "privleak_retrain_auc"],
}


def run_eval(model_dir, out, *extra, limit=4, tasks="muse_news_quant", model_args=""):
    args = ["eval", "--model", "muse_quant",
            "--model_args", f"pretrained={model_dir}{model_args}", "--tasks", tasks,
            "--metadata", "muse_data=embedded", "--limit", str(limit), "--device", "cpu",
            "--batch_size", "8", "--output_path", str(out), *extra]
    return main(args)


def results_file(out: Path) -> dict:
    files = sorted(out.rglob("results_*.json"))
    assert len(files) == 1, files
    return json.loads(files[0].read_text())


@pytest.fixture(scope="module")
def float_and_fp4_results(tiny_model_dir, tmp_path_factory):
    out = {}
    for scheme in ("none", "bnb-fp4"):
        path = tmp_path_factory.mktemp(f"eval_{scheme}")
        assert run_eval(tiny_model_dir, path, "--log_samples", model_args=f",quant={scheme}") == 0
        out[scheme] = results_file(path)
        samples = sorted(path.rglob("samples_muse_news_privleak_*.jsonl"))[0]
        out[scheme]["privleak_samples"] = [json.loads(x) for x in samples.read_text().splitlines()]
    return out


@pytest.mark.slow
def test_group_results_json(float_and_fp4_results):
    for scheme, res in float_and_fp4_results.items():
        assert set(res["results"]) >= set(TASKS)
        assert res["group_subtasks"]["muse_news_quant"] == sorted(TASKS) or \
            set(res["group_subtasks"]["muse_news_quant"]) == set(TASKS)
        for task, keys in METRICS.items():
            for key in keys:
                value = res["results"][task][f"{key},none"]
                assert isinstance(value, float), (task, key)
            assert res["versions"][task] == 1.0
            assert res["configs"][task]["metadata"]["muse_data"] == "embedded"
        quant = res["config"]["muse_quant"]["quantization"]
        assert quant["scheme"] == scheme
        assert quant["n_modules"] == (0 if scheme == "none" else 28)
        assert quant["seconds"] >= 0
        gen = res["configs"]["muse_news_verbmem_f"]["generation_kwargs"]
        assert gen["until"] == [] and gen["max_gen_toks"] == 128
        # embedded data has no published retrain AUC: 0.5 is used and recorded
        assert res["results"]["muse_news_privleak"]["privleak_retrain_auc,none"] == 0.5
    assert "lm_head" not in float_and_fp4_results["bnb-fp4"]["config"]["muse_quant"][
        "quantization"]["modules"]


@pytest.mark.slow
def test_quantization_changes_the_model(float_and_fp4_results):
    """Same documents, different weights: every text's log-likelihood moves under FP4."""
    a = float_and_fp4_results["none"]["privleak_samples"]
    b = float_and_fp4_results["bnb-fp4"]["privleak_samples"]
    assert [s["doc"]["text"] for s in a] == [s["doc"]["text"] for s in b]
    assert [s["doc"]["label"] for s in a] == [0, 1, 0, 1]  # forget/holdout interleaved
    lla = [float(s["resps"][0][0]) for s in a]
    llb = [float(s["resps"][0][0]) for s in b]
    assert all(x != y for x, y in zip(lla, llb)) and all(x < 0 for x in lla)


def test_bad_scheme_is_a_clear_error(small_model_dir, tmp_path, capsys):
    code = run_eval(small_model_dir, tmp_path / "x", model_args=",quant=rtn:99")
    err = capsys.readouterr().err
    assert code == 2
    assert "bit width 99 is not supported" in err and "valid schemes:" in err
    assert not (tmp_path / "x").exists()  # nothing written on bad input


def test_group_size_error_names_module(small_model_dir, tmp_path, capsys):
    code = run_eval(small_model_dir, tmp_path / "g", model_args=",quant=rtn:4:g96")
    err = capsys.readouterr().err
    assert code == 2 and "group size 96 does not divide" in err


def test_missing_data_dir_is_a_clear_error(small_model_dir, tmp_path, capsys):
    code = main(["eval", "--model", "muse_quant", "--model_args", f"pretrained={small_model_dir}",
                 "--tasks", "muse_news_verbmem_f", "--metadata", f"muse_data={tmp_path}",
                 "--limit", "1", "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and "missing MUSE data file" in err and "verbmem/forget.json" in err


def test_unlearned_pickle_refused_before_loading(small_model_dir, tmp_path, capsys):
    (tmp_path / "delta.bin").write_bytes(b"not really a pickle")
    code = run_eval(small_model_dir, tmp_path / "p", model_args=f",unlearned={tmp_path}/delta.bin")
    err = capsys.readouterr().err
    assert code == 2 and "pickle" in err and "allow_pickle=True" in err


def _console(*args, **kwargs):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run(list(args), capture_output=True, text=True, env=env, timeout=600,
                          **kwargs)


def test_tasks_dir_command():
    proc = _console(sys.executable, "-m", "harness_ext.cli", "tasks-dir")
    assert proc.returncode == 0
    tasks = Path(proc.stdout.strip())
    assert (tasks / "muse_news" / "muse_news_quant.yaml").is_file()
    assert (tasks / "muse_books" / "muse_books_quant.yaml").is_file()


@pytest.mark.slow
def test_plain_lm_eval_with_include_path(tiny_model_dir, tmp_path):
    """Stock lm_eval finds the tasks via --include_path; generation tasks work with --model hf,
    and privleak fails (while the tasks are built, before any generation) with a message that
    says to run it with muse-quant eval --model muse_quant."""
    from harness_ext.plugin import tasks_dir

    lm_eval = [sys.executable, "-m", "lm_eval", "--include_path", tasks_dir(), "--model", "hf",
               "--model_args", f"pretrained={tiny_model_dir},add_bos_token=True",
               "--metadata", "muse_data=embedded", "--device", "cpu", "--limit", "2"]
    ok = _console(*lm_eval, "--tasks", "muse_news_verbmem_f,muse_news_knowmem_r",
                  "--output_path", str(tmp_path / "hf"))
    assert ok.returncode == 0, ok.stderr[-2000:]
    res = results_file(tmp_path / "hf")
    assert "verbmem_rougeL_f1,none" in res["results"]["muse_news_verbmem_f"]
    bad = _console(*lm_eval, "--tasks", "muse_news_privleak")
    assert bad.returncode != 0
    assert "needs per-token log-probs" in bad.stderr and "--model muse_quant" in bad.stderr
    assert "muse-quant eval --model muse_quant" in bad.stderr and "stopped before" in bad.stderr
