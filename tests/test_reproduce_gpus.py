"""`muse-quant reproduce --gpus N --gpu_mem GB`: a configuration per unlearning stage that fits
(batch, accumulation, gradient checkpointing, DDP/FSDP through accelerate launch), or why not."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from harness_ext import cli
from harness_ext.reproduce import LLAMA2_7B, Assumptions, build_plan, estimate
from harness_ext.reproduce.fit import fit_unlearning

REPO = Path(__file__).resolve().parent.parent
LINE = re.compile(r"\[todo\] (unlearn/\S+): disk [\d.]+ GB, peak GPU ([\d.]+) GB( !)?, "
                  r"~[\d.]+ h \| (.*)")


def _dry_run(capsys, *extra):
    rc = cli.main(["reproduce", "--corpus", "news", "--dry-run", *extra])
    out = capsys.readouterr()
    assert rc == 0, out.err
    return out.out


def _inner(command: str):
    """An `accelerate launch ... -m harness_ext.cli unlearn ...` command: (accelerate's parsed
    launch arguments, the muse-quant Namespace)."""
    from accelerate.commands.launch import launch_command_parser

    argv = shlex.split(command)
    assert argv[:2] == ["accelerate", "launch"], command
    launch = launch_command_parser().parse_args(argv[2:])
    assert launch.module and launch.training_script == "harness_ext.cli"
    return launch, cli.build_parser().parse_args(launch.training_script_args)


def test_eight_80gb_gpus_fit_every_stage(capsys):
    text = _dry_run(capsys, "--gpus", "8", "--gpu_mem", "80")
    assert "8 GPU(s) of 80 GB: every stage fits" in text and "cannot fit" not in text
    lines = text.splitlines()
    stages = [(i, LINE.match(l)) for i, l in enumerate(lines) if LINE.match(l)]
    assert len(stages) == 12  # every registered method
    for i, m in stages:
        name, peak, marked, setup = m.groups()
        assert not marked and float(peak) <= 80, (name, peak)
        assert re.match(r"(DDP|FSDP) on 8 GPUs: batch \d x accum \d+ x 8 = 32, checkpointing "
                        r"(on|off)", setup), setup
        launch, args = _inner(lines[i + 1].strip())
        assert args.method == name.split("/")[1] and launch.num_processes == 8
        assert args.batch_size * args.grad_accum * 8 == 32  # MUSE's effective batch
        assert setup.startswith(f"batch {args.batch_size}", setup.index(": ") + 2)
        assert launch.use_fsdp == setup.startswith("FSDP")
        assert (args.gradient_checkpointing == "on") == ("checkpointing on" in setup)
    assert re.search(r"On 8 GPU\(s\): ~[\d.]+ h wall-clock", text)


def test_fsdp_launch_configures_accelerate_without_running(capsys):
    """FSDP cannot run on CPU (accelerate falls back to DDP there; see test_scale): its
    configuration path is checked here up to the environment accelerate gives the processes."""
    from accelerate.commands.launch import _validate_launch_command
    from accelerate.utils.launch import prepare_multi_gpu_env

    text = _dry_run(capsys, "--gpus", "2", "--gpu_mem", "80", "--methods", "npo_klr")
    command = next(l.strip() for l in text.splitlines() if l.strip().startswith("accelerate"))
    launch, args = _inner(command)
    assert launch.use_fsdp and args.method == "npo_klr"
    env = prepare_multi_gpu_env(_validate_launch_command(launch)[0])
    assert env["ACCELERATE_USE_FSDP"] == "true" and env["FSDP_VERSION"] == "2"
    assert env["FSDP_SHARDING_STRATEGY"] == "FULL_SHARD"
    assert env["FSDP_STATE_DICT_TYPE"] == "FULL_STATE_DICT"
    assert env["FSDP_CPU_RAM_EFFICIENT_LOADING"] == "false"  # every rank loads the target


def test_fitted_memory_follows_the_documented_formulas():
    a, p, h, layers, vocab = Assumptions(), 6.74e9, 4096, 32, 32000
    tokens = 2 * 2048  # batch 2 x max_len 2048
    # NPO_KLR (retain pass: two live graphs; reference model) under FSDP on 8 GPUs
    fsdp = estimate("unlearn", LLAMA2_7B, a, method="npo_klr", batch_size=2, gpus=8,
                    strategy="fsdp")
    act = 2 * (34 * h * layers + 12 * vocab) * tokens
    assert fsdp.gpu_gb == pytest.approx((8 * p / 8 + 2 * p / 8 + 2 * 2 * p / layers + act)
                                        * 1.1 / 1e9)
    ckpt = estimate("unlearn", LLAMA2_7B, a, method="npo_klr", batch_size=2,
                    checkpointing=True)
    act_ckpt = 2 * (2 * h * layers + 34 * h + 12 * vocab) * tokens
    assert ckpt.gpu_gb == pytest.approx((8 * p + 2 * p + act_ckpt) * 1.1 / 1e9)
    ddp = estimate("unlearn", LLAMA2_7B, a, method="npo_klr", batch_size=2, checkpointing=True,
                   gpus=8, strategy="ddp")
    assert ddp.gpu_gb == pytest.approx(ckpt.gpu_gb + 2 * p * 1.1 / 1e9)  # gradient buckets
    # recomputation: +2 x params FLOPs per trained token (forget and retain)
    plain = estimate("unlearn", LLAMA2_7B, a, method="npo_klr", forget_tokens=1e6)
    recomputed = estimate("unlearn", LLAMA2_7B, a, method="npo_klr", forget_tokens=1e6,
                          checkpointing=True)
    assert recomputed.hours == pytest.approx(plain.hours * (16 + 4) / 16)


def test_one_gpu_fits_with_checkpointing_or_says_why(capsys):
    text = _dry_run(capsys, "--gpus", "1", "--gpu_mem", "80", "--methods", "ga,npo_klr")
    lines = text.splitlines()
    found = {m.group(1): (i, m.group(4)) for i, l in enumerate(lines) if (m := LINE.match(l))}
    i, setup = found["unlearn/npo_klr"]
    assert setup.startswith("1 GPU: batch 1 x accum 32 x 1 = 32, checkpointing on")
    command = lines[i + 1].strip()
    assert command.startswith("muse-quant unlearn") and \
        command.endswith("--gradient_checkpointing on")
    assert "checkpointing off" in found["unlearn/ga"][1]
    small = _dry_run(capsys, "--gpus", "2", "--gpu_mem", "24", "--methods", "npo")
    assert "2 GPU(s) of 24 GB: cannot fit unlearn/npo" in small
    assert re.search(r"unlearn/npo: disk [\d.]+ GB, peak GPU [\d.]+ GB !, ", small)
    assert "cannot fit: needs" in small and "with checkpointing and FSDP (> 24 GB)" in small
    fit, why = fit_unlearning(LLAMA2_7B, Assumptions(), gpus=1, gpu_mem=40, batch_size=4,
                              grad_accum=8, method="ga")
    assert fit is None and "more GPUs (--gpus N shards it with FSDP)" in why


def test_without_gpus_the_plan_is_the_single_gpu_plan(capsys):
    plain = _dry_run(capsys)
    assert "accelerate launch" not in plain and " | " not in plain
    assert "--gradient_checkpointing" not in plain


@pytest.mark.parametrize("extra, problem", [
    (["--gpus", "0"], "--gpus '0' is not a number of GPUs"),
    (["--gpus", "eight"], "--gpus 'eight' is not a number of GPUs"),
    (["--gpus", "8", "--gpu_mem", "-80"], "--gpu_mem '-80' is not a GPU memory size"),
    (["--gpus", "8", "--gpu_mem", "nan"], "--gpu_mem 'nan' is not a GPU memory size"),
    (["--gpu_mem", "lots"], "--gpu_mem 'lots' is not a GPU memory size"),
])
def test_bad_gpus_are_a_clear_error(extra, problem, capsys):
    rc = cli.main(["reproduce", "--corpus", "news", "--dry-run", *extra])
    err = capsys.readouterr().err
    assert rc == 2 and problem in err and "fix:" in err and "Traceback" not in err


def test_emit_slurm_writes_accelerate_launch_for_multi_gpu_stages(tmp_path, capsys):
    slurm = tmp_path / "slurm"
    rc = cli.main(["reproduce", "--corpus", "news", "--out", str(tmp_path / "rep"), "--gpus",
                   "8", "--gpu_mem", "80", "--methods", "ga,npo_klr", "--quant", "none",
                   "--emit-slurm", str(slurm)])
    assert rc == 0, capsys.readouterr().err
    assert "#SBATCH --gpus=8\n" in (slurm / "unlearn.sbatch").read_text()
    assert "#SBATCH --gpus=1\n" in (slurm / "sweep.sbatch").read_text()
    assert "#SBATCH --gpus=0\n" in (slurm / "fetch.sbatch").read_text()
    for line in (slurm / "unlearn_cells.tsv").read_text().splitlines():
        launch, args = _inner(line.split("\t")[1])
        assert launch.num_processes == 8 and args.command == "unlearn"
    assert subprocess.run(["bash", "-n", str(slurm / "unlearn.sbatch")]).returncode == 0


def test_reproduce_runs_a_multi_gpu_stage_through_accelerate(tmp_path, monkeypatch):
    from harness_ext.commands import reproduce

    plan = build_plan("news", methods="ga", quant="none", out=tmp_path, gpus=4, gpu_mem=80)
    stage = plan.by_kind("unlearn")[0]
    calls = []
    monkeypatch.setattr(subprocess, "call", lambda argv: calls.append(argv) or 0)
    reproduce._execute(stage)
    argv = calls[0]
    assert argv[:3] == [sys.executable, "-m", "accelerate.commands.launch"]
    assert argv[3:] == stage.full_argv[2:] and "--num_processes" in argv
    assert argv[argv.index("-m", 3):][:3] == ["-m", "harness_ext.cli", "unlearn"]


def test_fitting_the_plan_loads_neither_torch_nor_numpy():
    code = ("import sys; from harness_ext.reproduce import build_plan, format_plan; "
            "format_plan(build_plan('news', gpus=8, gpu_mem=80)); "
            "print(sorted(m for m in ('torch', 'numpy') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
