"""Sweep folders keep their provenance and are locked; per-document samples reproduce every
aggregate exactly."""

import json
import math
import os
import random
import socket
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import save_file

from harness_ext.cli import main
from harness_ext.errors import MuseQuantError
from harness_ext.evaluation import samples, sweep
from harness_ext.evaluation.samples import samples_path
from harness_ext.io import acquire_lock, load_results, lock_is_held, release_lock

TASKS = "muse_news_knowmem_f,muse_news_privleak"
Q = "model.layers.0.self_attn.q_proj.weight"


def sweep_cli(model_args, out, quant="none", limit=2, tasks=TASKS):
    return main(["sweep", "--model_args", model_args, "--quant", quant, "--tasks", tasks,
                 "--metadata", "muse_data=embedded", "--limit", str(limit), "--device", "cpu",
                 "--batch_size", "4", "--output_path", str(out)])


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.fixture
def no_model_load(monkeypatch):
    """Fail the test if a sweep gets as far as loading the model."""
    import harness_ext.lm

    def refuse(*a, **k):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(harness_ext.lm.MuseQuantLM, "__init__", refuse)


def test_provenance_resume_and_refusal(small_model_dir, tmp_path, capsys, monkeypatch):
    delta = {Q: torch.full((128, 128), 1e-3)}
    save_file(delta, tmp_path / "delta.safetensors")
    args = f"pretrained={small_model_dir},unlearned={tmp_path / 'delta.safetensors'}"
    out = tmp_path / "out"
    out.mkdir()
    stale = out / ".none.lock"  # left by a sweep that died: taken over
    stale.write_text(json.dumps({"pid": dead_pid(), "host": socket.gethostname()}))
    assert sweep_cli(args, out) == 0
    assert sorted(p.name for p in out.iterdir()) == ["none.json", "none.samples.jsonl",
                                                      "provenance.json"]
    record = json.loads((out / "provenance.json").read_text())
    res = load_results(out / "none.json")
    digest = res["config"]["muse_quant"]["unlearned"]["sha256"]
    assert record["unlearned_sha256"] == digest and len(digest) == 64
    assert record["tasks"] == TASKS.split(",") and record["limit"] == 2
    assert record["data"] == {"source": "embedded"}
    assert record["packages"]["lm_eval"] and record["model_args"]["pretrained"] == \
        str(small_model_dir)
    # a sweep's results equal the aggregates recomputed from its samples (mean and agg_*)
    per_doc = samples.read(out / "none.samples.jsonl")
    assert samples.aggregate_mismatches(res, per_doc) == []
    assert [line["task"] for line in per_doc["tasks"]] == TASKS.split(",")

    # the same settings resume (nothing to do); another scheme is added to the folder
    capsys.readouterr()
    assert sweep_cli(args, out, quant="none,rtn:8") == 0
    printed = capsys.readouterr().out
    assert "skipped (already done): none" in printed and "rtn_8.json" in printed

    # anything else that the results depend on: refused before loading anything
    import harness_ext.lm

    monkeypatch.setattr(harness_ext.lm.MuseQuantLM, "__init__",
                        lambda *a, **k: pytest.fail("the model was loaded"))
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    cases = [(args, 3, "limit: 2 recorded, now 3"),
             (args + ",dtype=float32", 2, "model_args.dtype: None recorded, now 'float32'")]
    for model_args, limit, message in cases:
        code = sweep_cli(model_args, out, quant="none,bnb-fp4", limit=limit)
        err = capsys.readouterr().err
        assert code == 2 and "holds results of a different sweep" in err and message in err
    save_file({Q: torch.full((128, 128), 2e-3)}, tmp_path / "delta.safetensors")  # same path
    assert sweep_cli(args, out, quant="bnb-fp4") == 2
    assert "unlearned_sha256: " in capsys.readouterr().err
    assert sweep_cli(args, out, quant="bnb-fp4", tasks="muse_news_privleak") == 2
    assert "tasks: " in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # nothing touched


def test_a_second_sweep_on_a_scheme_in_progress_refuses(small_model_dir, tmp_path, capsys,
                                                        no_model_load):
    out = tmp_path / "out"
    holder = acquire_lock(out / ".bnb-fp4.lock", "scheme bnb-fp4")  # a live sweep (this pid)
    code = sweep_cli(f"pretrained={small_model_dir}", out, quant="none,bnb-fp4")
    err = capsys.readouterr().err
    assert code == 2 and "scheme bnb-fp4 is locked by pid " f"{os.getpid()} on " in err
    assert "fix: wait for it to finish" in err
    assert not (out / ".none.lock").exists()  # the locks it took are given back
    # a sweep with other model args must not write into the folder while that one runs
    (out / "provenance.json").write_text(json.dumps({
        **json.loads((out / "provenance.json").read_text()), "limit": 99}))
    assert sweep_cli(f"pretrained={small_model_dir}", out, quant="none") == 2
    assert "limit: 99 recorded, now 2" in capsys.readouterr().err
    release_lock(out / ".bnb-fp4.lock", holder)
    assert not (out / ".bnb-fp4.lock").exists()


def test_lock_files(tmp_path):
    path = tmp_path / "x.lock"
    holder = acquire_lock(path, "thing")
    assert json.loads(path.read_text())["pid"] == os.getpid() and lock_is_held(path)
    with pytest.raises(MuseQuantError, match=f"thing is locked by pid {os.getpid()}"):
        acquire_lock(path, "thing")
    release_lock(path, holder)
    assert not path.exists()
    path.write_text(json.dumps({"pid": dead_pid(), "host": socket.gethostname()}))
    assert not lock_is_held(path)
    holder = acquire_lock(path, "thing")  # stale: taken over
    assert json.loads(path.read_text())["token"] == holder["token"]
    release_lock(path, holder)
    for other in ({"pid": dead_pid(), "host": socket.gethostname() + "-elsewhere"}, None):
        path.write_text(json.dumps(other) if other else "")  # unverifiable: kept
        with pytest.raises(MuseQuantError, match="delete .*x.lock"):
            acquire_lock(path, "thing")
        assert path.exists()


def test_two_processes_racing_for_a_lock(tmp_path):
    code = ("import sys, time; from harness_ext.io import acquire_lock\n"
            "time.sleep(max(0, float(sys.argv[1]) - time.time()))\n"
            "try:\n    acquire_lock(sys.argv[2], 'race'); print('won'); time.sleep(2)\n"
            "except Exception as e:\n    print('lost')\n")
    start = str(time.time() + 3)
    procs = [subprocess.Popen([sys.executable, "-c", code, start, str(tmp_path / "r.lock")],
                              stdout=subprocess.PIPE, text=True) for _ in range(4)]
    outcomes = sorted(p.communicate(timeout=60)[0].strip() for p in procs)
    assert outcomes == ["lost", "lost", "lost", "won"]


def test_errors_json_keeps_failures_of_concurrent_sweeps(tmp_path):
    started = time.time()
    (tmp_path / "errors.json").write_text(json.dumps({"failed": {
        "gptq:4": {"message": "ended while we ran", "ended": started + 1},
        "awq:4": {"message": "an earlier run", "ended": started - 1},
        "none": {"message": "now done", "ended": started + 1}}}))
    result = sweep.SweepResult(output_path=tmp_path, written=["none"],
                               failed={"rtn:3": {"message": "ours"}})
    sweep._write_errors(tmp_path, result, started)
    errors = json.loads((tmp_path / "errors.json").read_text())
    assert sorted(errors["failed"]) == ["gptq:4", "rtn:3"]
    sweep._write_errors(tmp_path, sweep.SweepResult(output_path=tmp_path), time.time() + 5)
    assert not (tmp_path / "errors.json").exists()


# ------------------------------------------------------------------ samples
def test_float_sum_is_pythons_sum():
    rng = random.Random(0)
    for _ in range(200):
        values = [rng.uniform(-1, 1) * 10 ** rng.randint(-8, 8) for _ in range(rng.randint(1, 60))]
        assert samples.float_sum(values, samples.python_float_sum()) == sum(values)
    # by hand: naive loses the 1.0 next to 1e16; Neumaier's compensation keeps it
    assert samples.float_sum([1e16, 1.0, -1e16], "naive") == 0.0
    assert samples.float_sum([1e16, 1.0, -1e16], "neumaier") == 1.0
    assert math.copysign(1, samples.float_sum([-0.0], "naive")) == 1  # 0 + -0.0 == 0.0
    assert samples.float_sum([1, 2, 3], "naive") == 6
    with pytest.raises(MuseQuantError, match="mix integers and floats"):
        samples.float_sum([1, 2.0], "naive")


def test_recompute_by_hand_and_against_lm_eval():
    from lm_eval.api.metrics import mean, mean_stderr

    per_doc = samples.loads(
        '{"format":"muse-quant-samples","version":1,"bootstrap_iters":100000,'
        '"float_sum":"%s"}\n' % samples.python_float_sum() +
        '{"task":"t","filter":"none","doc_id":[0,1,2],"metrics":{"m":{"aggregation":"mean",'
        '"values":[1.0,2.0,4.0]}}}\n'
        '{"task":"p","filter":"none","doc_id":[0,1,2,3],"metrics":{'
        '"privleak":{"aggregation":"agg_privleak","values":[[1.0,0,0.5],[2.0,1,0.5],'
        '[3.0,0,0.5],[4.0,1,0.5]]},'
        '"mink40_auc":{"aggregation":"agg_mink40_auc","values":[[1.0,0],[2.0,1],[3.0,0],'
        '[4.0,1]]}}}\n')
    got = samples.recompute_aggregates(per_doc)
    # mean 7/3; sample stddev sqrt((16/9 + 1/9 + 25/9) / 2) = sqrt(7/3); / sqrt(3) = sqrt(7)/3
    assert got["t"]["m,none"] == pytest.approx(7 / 3) and got["t"]["sample_len"] == 3
    assert got["t"]["m_stderr,none"] == pytest.approx(math.sqrt(7) / 3)
    # AUC of -score, holdout (label 1) = {-2, -4} vs forget {-1, -3}: 1 pair of 4 -> 0.25;
    # PrivLeak (0.25 - 0.5) / 0.5 * 100 = -50
    assert got["p"]["mink40_auc,none"] == 0.25 and got["p"]["privleak,none"] == -50.0
    assert got["p"]["privleak_stderr,none"] == "N/A"
    rng = random.Random(1)
    values = [100 * rng.random() for _ in range(97)]
    line = per_doc["tasks"][0]
    line["doc_id"], line["metrics"]["m"]["values"] = list(range(97)), values
    got = samples.recompute_aggregates(per_doc)["t"]
    assert got["m,none"] == mean(values) and got["m_stderr,none"] == mean_stderr(values)
    per_doc["header"]["bootstrap_iters"] = 0
    assert samples.recompute_aggregates(per_doc)["t"]["m_stderr,none"] == "N/A"


def test_an_edited_aggregate_is_found(tmp_path):
    per_doc = samples.loads(
        '{"format":"muse-quant-samples","version":1,"bootstrap_iters":100000,'
        '"float_sum":"naive"}\n'
        '{"task":"t","filter":"none","doc_id":[0,1],"metrics":{"m":{"aggregation":"mean",'
        '"values":[1.5,2.5]}}}\n')
    results = {"results": {"t": {"m,none": 2.0, "m_stderr,none": 0.5, "sample_len": 2}},
               "n-samples": {"t": {"original": 2, "effective": 2}}}
    assert samples.aggregate_mismatches(results, per_doc) == []
    results["results"]["t"]["m,none"] += 7.0
    results["results"]["t"]["x,none"] = 1.0
    results["results"]["u"] = {"m,none": 1.0}
    problems = samples.aggregate_mismatches(results, per_doc)
    assert "t: m,none is 9.0 in the results, 2.0 recomputed from the per-document scores" in \
        problems
    assert any("x,none cannot be recomputed" in p for p in problems)
    assert "u: no per-document scores in the samples file" in problems


@pytest.mark.parametrize("text, message", [
    ("", "header"), ("{}\n", "header"), ("[1]\n", "header"), ("{\n", "not JSON Lines"),
    ('{"format":"muse-quant-samples","version":1,"bootstrap_iters":"1","float_sum":"naive"}',
     "integer bootstrap_iters"),
    ('{"format":"muse-quant-samples","version":1,"bootstrap_iters":1,"float_sum":"naive"}\n'
     '{"task":"t","filter":"none","doc_id":[0],"metrics":{"m":{"aggregation":"mean",'
     '"values":[1.0,2.0]}}}', "one value per doc_id"),
    ('{"format":"muse-quant-samples","version":1,"bootstrap_iters":1,"float_sum":"naive"}\n'
     '{"task":"t","filter":"none","doc_id":[0],"metrics":{"m":{"aggregation":"mean",'
     '"values":[true]}}}', "not a number"),
    ('{"format":"muse-quant-samples","version":1,"bootstrap_iters":1,"float_sum":"naive"}\n'
     '{"task":"t","filter":"none","doc_id":[0],"metrics":{}}\n'
     '{"task":"t","filter":"none","doc_id":[0],"metrics":{}}', "appears twice"),
])
def test_malformed_samples_files(text, message):
    with pytest.raises(MuseQuantError, match=message):
        samples.loads(text)


def test_unknown_aggregations_are_refused():
    per_doc = samples.loads(
        '{"format":"muse-quant-samples","version":1,"bootstrap_iters":1,"float_sum":"naive"}\n'
        '{"task":"t","filter":"none","doc_id":[0],"metrics":{"m":{"aggregation":"%s",'
        '"values":[1.0]}}}')
    for name in ("os.system", "agg_nope", "median"):
        per_doc["tasks"][0]["metrics"]["m"]["aggregation"] = name
        with pytest.raises(MuseQuantError, match="aggregation"):
            samples.recompute_aggregates(per_doc)


def test_samples_path():
    assert samples_path("out/rtn_4_g128.json").name == "rtn_4_g128.samples.jsonl"
