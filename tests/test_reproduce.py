"""`muse-quant reproduce`: the full-scale plan (--dry-run), SLURM arrays (--emit-slurm), resume,
and clear errors. No hub, no GPU: the plan is built from a constant table of model shapes."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from harness_ext import cli
from harness_ext.reproduce import (DEFAULT_QUANT, Assumptions, LLAMA2_7B,
                                   build_plan, estimate, model_shape)
from harness_ext.io import scheme_from_filename

REPO = Path(__file__).resolve().parent.parent
#: the default --methods: every registered method, the SURE variants last
ALL_METHODS = ("ga", "ga_gdr", "ga_klr", "npo", "npo_gdr", "npo_klr", "ga_sure", "ga_gdr_sure",
               "ga_klr_sure", "npo_sure", "npo_gdr_sure", "npo_klr_sure")
MODELS = ("target", "retrain") + ALL_METHODS


def _parse(command: str):
    """Parse a plan command with the real `muse-quant` argparse; returns the Namespace."""
    argv = shlex.split(command)
    assert argv[0] == "muse-quant", command
    return cli.build_parser().parse_args(argv[1:])


def _run(argv, capsys):
    rc = cli.main(argv)
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_dry_run_lists_every_method_and_scheme_with_parseable_commands(tmp_path, capsys):
    out_dir = tmp_path / "rep"
    rc, text, err = _run(["reproduce", "--corpus", "news", "--dry-run", "--out", str(out_dir)],
                         capsys)
    assert rc == 0, err
    assert not out_dir.exists(), "a dry run must not create anything"
    assert "TFLOP/s" in text and "Assumptions" in text
    commands = [line.strip() for line in text.splitlines()
                if line.strip().startswith("muse-quant ")]
    unlearn = [_parse(c) for c in commands if c.startswith("muse-quant unlearn")]
    sweeps = [_parse(c) for c in commands if c.startswith("muse-quant sweep")]
    adds = [_parse(c) for c in commands if c.startswith("muse-quant leaderboard add")]
    assert [a.method for a in unlearn] == list(ALL_METHODS)
    for a in unlearn:  # the paper's NEWS settings
        assert (a.epochs, a.precision, a.save, a.corpus) == (10, "bf16", "delta", "news")
        if a.method.endswith("_sure"):
            assert a.lr == 1e-4
            assert a.sure_threshold == ("99" if a.method == "ga_gdr_sure" else "90")
        else:
            assert (a.lr, a.alpha) == (1e-5, 1.0)
        # the paper's KL term is kl_div(batchmean): summed over tokens, so its alpha needs
        # --klr_reduction sum (recipes.PAPER_KLR_REDUCTION); the other methods keep the default
        assert a.klr_reduction == ("sum" if "_klr" in a.method else "mean"), a.method
    klr = [c for c in commands if c.startswith("muse-quant unlearn --method npo_klr ")]
    assert klr and klr[0].endswith("--klr_reduction sum")
    assert len(sweeps) == len(MODELS)
    for a in sweeps:
        assert a.quant.split(",") == list(DEFAULT_QUANT)
        assert a.tasks == "muse_news_quant" and a.metadata == "muse_data=hub"
        assert Path(a.output_path).name in MODELS
    # every model x scheme cell is listed
    for model in MODELS:
        for scheme in DEFAULT_QUANT:
            assert f"cell sweep/{model}/{scheme}:" in text
    assert sorted(a.slug for a in adds) == sorted(f"full-news-{m.replace('_', '-')}"
                                                  for m in MODELS)
    assert {a.kind for a in adds} == {"target", "retrain", "method"}
    # the numbers: positive, and plausible for a 7B full fine-tune
    stages = re.findall(r"\] (\S+): disk ([\d.]+) GB, peak GPU ([\d.]+) GB(?: !)?, ~([\d.]+) h",
                        text)
    assert len(stages) == 2 + len(ALL_METHODS) + 2 * len(MODELS)
    for name, disk, gpu, hours in stages:
        if name.startswith(("unlearn/", "sweep/")):
            assert float(gpu) > 0 and float(hours) > 0, name
        if name.startswith("unlearn/"):
            assert float(gpu) > 40, f"{name}: a 7B full fine-tune needs > 40 GB ({gpu})"
        if name.startswith("fetch/"):
            assert 12 < float(disk) < 15  # Llama-2-7B in bf16 ~13.5 GB


def test_estimates_follow_the_documented_formulas():
    a = Assumptions(tflops=400.0)
    ga = estimate("unlearn", LLAMA2_7B, a, method="ga", epochs=10, batch_size=1,
                  forget_tokens=1e6)
    npo_klr = estimate("unlearn", LLAMA2_7B, a, method="npo_klr", epochs=10, batch_size=1,
                       forget_tokens=1e6)
    # GA: 6 x params per token; NPO_KLR: 6+6 trained + 2 reference forwards (forget, retain)
    assert ga.hours == pytest.approx(1e6 * 10 * 6 * 6.74e9 / 400e12 / 3600)
    assert npo_klr.hours == pytest.approx(ga.hours * 16 / 6)
    # what each method needs comes from the registry: NPO one reference forward (6+2), GA_KLR
    # a retain pass and one reference forward on it (6+6+2), GA_GDR a retain pass (6+6)
    for method, flops in (("npo", 8), ("ga_klr", 14), ("ga_gdr", 12), ("npo_gdr_sure", 14)):
        est = estimate("unlearn", LLAMA2_7B, a, method=method, epochs=10, batch_size=1,
                       forget_tokens=1e6, sure_threshold=90.0)
        saliency = 6 / 10 if method.endswith("_sure") else 0  # one gradient pass, not 10 epochs
        assert est.hours == pytest.approx(ga.hours * (flops + saliency) / 6), method
    # bf16 weights+grads+AdamW = 8 bytes/param = 54 GB, plus the reference model for NPO/KLR
    assert 54 < ga.gpu_gb < 80 and npo_klr.gpu_gb > ga.gpu_gb + 13
    half = estimate("unlearn", LLAMA2_7B, Assumptions(tflops=200.0), method="ga", epochs=10,
                    batch_size=1, forget_tokens=1e6)
    assert half.hours == pytest.approx(2 * ga.hours)
    full_eval = estimate("eval", LLAMA2_7B, a)
    assert full_eval.hours > estimate("eval", LLAMA2_7B, a, limit=2).hours > 0
    assert estimate("eval", LLAMA2_7B, a, scheme="gptq:4").hours > full_eval.hours


def test_calibration_cost_follows_the_scheme_description(monkeypatch):
    from harness_ext.quantizers import QUANTIZERS, Quantizer, describe_scheme

    a = Assumptions(calib_minutes_7b=10.0)
    full = estimate("eval", LLAMA2_7B, a).hours
    calib_hours = 10 / 60  # 10 min per 6.74e9 params (Llama-2-7B has 6.74e9)
    for scheme in ("gptq:4", "awq:3:g64"):
        assert estimate("eval", LLAMA2_7B, a, scheme=scheme).hours == \
            pytest.approx(full + calib_hours), scheme
    for scheme in ("none", "bnb-int8", "bnb-fp4", "rtn:4:g64", "bnb-nf4-real"):
        assert estimate("eval", LLAMA2_7B, a, scheme=scheme).hours == full, scheme

    class Calibrated(Quantizer):  # a scheme with a new name: only its description says it
        usage, summary, family, needs_calibration = "zz-test", "test", "test", True

    describe_scheme("none")  # discover the real schemes first
    monkeypatch.setitem(QUANTIZERS._items, "zz-test", Calibrated)
    assert estimate("eval", LLAMA2_7B, a, scheme="zz-test").hours == \
        pytest.approx(full + calib_hours)


def test_model_shape_counts_a_local_model_exactly(small_model_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(small_model_dir)
    assert model_shape(str(small_model_dir))["params"] == sum(p.numel()
                                                              for p in model.parameters())
    assert model_shape("muse-bench/MUSE-News_target")["params"] == 6.74e9


def test_emit_slurm_writes_one_cell_per_model_and_scheme(tmp_path, capsys):
    slurm, out_dir = tmp_path / "slurm", tmp_path / "rep"
    rc, text, err = _run(["reproduce", "--corpus", "books", "--out", str(out_dir),
                          "--emit-slurm", str(slurm), "--limit", "20"], capsys)
    assert rc == 0, err
    assert not out_dir.exists(), "emitting must not run anything"
    sweep_script = (slurm / "sweep.sbatch").read_text()
    cells = (slurm / "sweep_cells.tsv").read_text().splitlines()
    assert len(cells) == len(MODELS) * len(DEFAULT_QUANT)
    assert f"#SBATCH --array=0-{len(cells) - 1}\n" in sweep_script
    seen = set()
    for line in cells:
        done, command = line.split("\t")
        a = _parse(command)
        assert a.command == "sweep" and a.limit == "20" and "," not in a.quant
        # the layout `leaderboard add --results DIR` collects: DIR/<scheme>.json
        done = Path(done)
        assert done.parent == Path(a.output_path)
        assert scheme_from_filename(done.name) == a.quant
        seen.add((done.parent.name, a.quant))
    assert seen == {(m, s) for m in MODELS for s in DEFAULT_QUANT}
    unlearn = (slurm / "unlearn_cells.tsv").read_text().splitlines()
    assert f"#SBATCH --array=0-{len(unlearn) - 1}\n" in (slurm / "unlearn.sbatch").read_text()
    assert sorted(_parse(l.split("\t")[1]).method for l in unlearn) == sorted(ALL_METHODS)
    for line in unlearn:  # BOOKS: MUSE's 5 epochs
        assert _parse(line.split("\t")[1]).epochs == 5
    adds = [_parse(l.split("\t")[1]) for l in
            (slurm / "leaderboard_cells.tsv").read_text().splitlines()]
    assert adds[0].kind == "target"  # added first: the others name it
    assert {Path(a.results) for a in adds} == {out_dir / "results" / m for m in MODELS}
    submit = (slurm / "submit.sh").read_text()
    for kind in ("fetch", "unlearn", "sweep", "leaderboard"):
        assert f"sbatch --parsable $DEP {kind}.sbatch" in submit
    assert "--dependency=afterok:$JOB" in submit
    for script in slurm.glob("*.s*"):
        assert subprocess.run(["bash", "-n", str(script)]).returncode == 0, script


def test_slurm_task_runs_its_cell_and_skips_done_cells(tmp_path, capsys):
    """Run the array script's own shell logic with a fake muse-quant on PATH."""
    slurm, out_dir = tmp_path / "slurm", tmp_path / "rep"
    rc, _, err = _run(["reproduce", "--corpus", "news", "--out", str(out_dir), "--methods",
                       "ga", "--quant", "none,bnb-int8,bnb-fp4", "--emit-slurm", str(slurm)],
                      capsys)
    assert rc == 0, err
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "calls.txt"
    (bin_dir / "muse-quant").write_text(f"#!/bin/bash\necho \"$@\" >> {log}\n")
    (bin_dir / "muse-quant").chmod(0o755)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "SLURM_ARRAY_TASK_ID": "1"}
    first, second = (slurm / "sweep_cells.tsv").read_text().splitlines()[:2]
    Path(first.split("\t")[0]).parent.mkdir(parents=True)
    Path(first.split("\t")[0]).write_text("{}")  # cell 0 is done
    assert subprocess.run(["bash", str(slurm / "sweep.sbatch")], env=env).returncode == 0
    assert log.read_text().split() == shlex.split(second.split("\t")[1])[1:]
    env["SLURM_ARRAY_TASK_ID"] = "0"
    assert subprocess.run(["bash", str(slurm / "sweep.sbatch")], env=env).returncode == 0
    assert len(log.read_text().splitlines()) == 1  # the done cell ran nothing


def test_run_skips_stages_whose_outputs_exist(tmp_path, small_model_dir, capsys):
    out_dir = tmp_path / "rep"
    plan = build_plan("news", methods="npo", quant="none", out=out_dir,
                      pretrained=str(small_model_dir), retrain=str(small_model_dir),
                      muse_data="embedded")
    assert [s.kind for s in plan.stages] == ["unlearn", "sweep", "sweep", "sweep"]
    for stage in plan.stages:
        for marker in [c.done for c in stage.cells] or [stage.done]:
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.write_text("{}")
    rc, text, err = _run(["reproduce", "--corpus", "news", "--methods", "npo", "--quant",
                          "none", "--out", str(out_dir), "--pretrained", str(small_model_dir),
                          "--retrain", str(small_model_dir), "--muse_data", "embedded"], capsys)
    assert rc == 0, err
    assert text.count("skipped (done)") == 4 and "running" not in text


@pytest.mark.parametrize("extra, problem", [
    (["--corpus", "poems"], "unknown corpus 'poems'"),
    (["--corpus", "news", "--methods", "ga,forget_it"], "unknown method forget_it"),
    (["--corpus", "news", "--quant", "none,int3"], "unknown scheme 'int3'"),
    (["--corpus", "news", "--sure_threshold", "high"], "is not a percentile"),
    (["--corpus", "news", "--limit", "0"], "must be a positive integer"),
    (["--corpus", "news", "--pretrained", "/nonexistent/model"], "not a known model"),
])
def test_bad_input_is_a_clear_error(extra, problem, capsys):
    rc, _, err = _run(["reproduce", *extra, "--dry-run"], capsys)
    assert rc == 2
    assert problem in err and "fix:" in err and "Traceback" not in err


def test_emit_slurm_refuses_a_non_empty_folder(tmp_path):
    slurm = tmp_path / "slurm"
    slurm.mkdir()
    (slurm / "mine.txt").write_text("keep me")
    proc = subprocess.run([sys.executable, "-m", "harness_ext.cli", "reproduce", "--corpus",
                           "news", "--emit-slurm", str(slurm)], capture_output=True, text=True,
                          cwd=REPO, env={**__import__("os").environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 2
    assert "exists and is not an empty folder" in proc.stderr and "fix:" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert sorted(p.name for p in slurm.iterdir()) == ["mine.txt"]


def test_planning_and_the_method_registry_load_without_torch():
    """The plan reads the method registry (what each method needs), still without torch."""
    code = ("import sys; from harness_ext.reproduce import build_plan; build_plan('news'); "
            "from harness_ext import cli; cli.build_parser(); "
            "from harness_ext.unlearning import available_methods; available_methods(); "
            "print(sorted(m for m in ('torch', 'numpy') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                          env={**__import__("os").environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_eval_estimate_from_measured_per_token_costs(tmp_path, capsys):
    """``--eval_costs``: the eval time is the profile's per-token costs x MUSE's token counts,
    scaled by parameter count (hand-computed below)."""
    from harness_ext.reproduce.estimate import EvalCosts, load_eval_costs

    costs = EvalCosts(params=LLAMA2_7B["params"], prefill=1e-4, decode=1e-2, logprob=2e-4)
    # prompt tokens: VerbMem 100 x 1000 + KnowMem 200 x 400 = 180,000 -> 18 s; generated:
    # 100 x 128 + 200 x 32 = 19,200 -> 192 s; PrivLeak 200 x 2000 = 400,000 scored -> 80 s
    assert estimate("eval", LLAMA2_7B, Assumptions(eval_costs=costs)).hours * 3600 == \
        pytest.approx(290.0)
    half = EvalCosts(params=LLAMA2_7B["params"] / 2, prefill=1e-4, decode=1e-2, logprob=2e-4)
    assert estimate("eval", LLAMA2_7B, Assumptions(eval_costs=half)).hours * 3600 == \
        pytest.approx(580.0)
    # --limit 10 (caps each EVAL_ITEMS row): 10 x 1000 + 10 x 400 = 14,000 -> 1.4 s;
    # 10 x 128 + 10 x 32 = 1,600 -> 16 s; 10 x 2000 = 20,000 scored -> 4 s
    assert estimate("eval", LLAMA2_7B, Assumptions(eval_costs=costs), limit=10).hours * 3600 \
        == pytest.approx(21.4)

    path = tmp_path / "costs.json"
    path.write_text(json.dumps({"params": 6.74e9, "prefill": 1e-4, "decode": 1e-2,
                                "logprob": 2e-4, "batch_size": 32}))
    assert load_eval_costs(str(path)).decode == 1e-2
    rc, text, err = _run(["reproduce", "--corpus", "news", "--dry-run", "--out",
                          str(tmp_path / "rep"), "--eval_costs", str(path)], capsys)
    assert rc == 0, err
    assert f"per-token costs measured by benchmarks/eval_profile.py ({path})" in text
    (tmp_path / "bad.json").write_text('{"params": 1}')
    for bad, problem in ((tmp_path / "none.json", "no such file"),
                         (tmp_path / "bad.json", "not a per-token costs file")):
        rc, _, err = _run(["reproduce", "--corpus", "news", "--dry-run", "--eval_costs",
                           str(bad)], capsys)
        assert rc == 2 and problem in err and "fix:" in err and "Traceback" not in err
