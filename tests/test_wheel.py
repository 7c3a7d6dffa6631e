"""The wheel really installs: built by pip from a copy of the sources, installed (not editable)
into a fresh virtual environment and used from outside the checkout. Torch, lm-eval and the
other dependencies come from the system site-packages (``--system-site-packages``); the package
itself must come from the venv's site-packages, which the test checks."""

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent

IMPORT_EVERYTHING = """
import importlib, json, pkgutil
import harness_ext, muse_quant_tasks, muse_quant_tasks.utils
from harness_ext.plugin import tasks_dir
from lm_eval.tasks import TaskManager

modules = [m.name for m in pkgutil.walk_packages(harness_ext.__path__, "harness_ext.")]
files = {name: importlib.import_module(name).__file__ for name in ["harness_ext", *modules]}
tasks = TaskManager(include_path=tasks_dir(), include_defaults=False).all_tasks
files["muse_quant_tasks.utils"] = muse_quant_tasks.utils.__file__
print(json.dumps({"files": files, "muse_quant_tasks": list(muse_quant_tasks.__path__),
                  "tasks_dir": tasks_dir(), "tasks": sorted(tasks)}))
"""


def _run(cmd, cwd, env, timeout=600):
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, f"{cmd}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def _inside(path, folder) -> bool:
    return Path(path).resolve().is_relative_to(Path(folder).resolve())


def test_wheel_installs_and_runs_outside_the_checkout(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               PIP_DISABLE_PIP_VERSION_CHECK="1")
    # Build from a clean copy: pip builds in the source tree, and a stale build/ there would
    # put deleted modules into the wheel.
    src = tmp_path / "src"
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(
        ".git", "build", "dist", "*.egg-info", "__pycache__", "*.pyc", ".pytest_cache", "out",
        "demo_out*", ".venv"))
    wheels = tmp_path / "wheels"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", wheels, src], tmp_path, env)
    (wheel,) = wheels.glob("muse_quant-*.whl")

    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {"harness_ext/toy/assets/tokenizer.json", "harness_ext/leaderboard/entry.schema.json"}
    expected |= {p.relative_to(REPO).as_posix() for p in (REPO / "harness_ext").rglob("*.py")}
    expected |= {"muse_quant_tasks/" + p.relative_to(REPO / "tasks").as_posix()
                 for p in (REPO / "tasks").rglob("*")
                 if p.is_file() and (p.suffix in (".py", ".yaml", ".md") or p.name.endswith("_yaml"))
                 and "__pycache__" not in p.parts}
    assert any(n.endswith(".yaml") for n in expected)
    assert expected - names == set()
    assert not any(n.startswith(("tests/", "leaderboard/", "tasks/")) for n in names)

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--system-site-packages", venv], tmp_path, env)
    python, bin_dir = venv / "bin" / "python", venv / "bin"
    _run([python, "-m", "pip", "install", "--no-deps", "--no-index", "--force-reinstall", wheel],
         tmp_path, env)

    run_dir = tmp_path / "elsewhere"  # not the checkout: nothing importable from the cwd
    run_dir.mkdir()
    report = json.loads(_run([python, "-c", IMPORT_EVERYTHING], run_dir, env).splitlines()[-1])
    site = venv / "lib"
    assert len(report["files"]) > 40
    for name, file in report["files"].items():
        assert _inside(file, site) and not _inside(file, REPO), (name, file)
    # muse_quant_tasks is a namespace package: an editable install in the system site-packages
    # adds its own folder after the venv's; the first one is what find_spec and tasks_dir use
    assert _inside(report["muse_quant_tasks"][0], site)
    assert _inside(report["tasks_dir"], site)
    assert {"muse_news_quant", "muse_books_quant", "muse_news_privleak"} <= set(report["tasks"])

    muse_quant = bin_dir / "muse-quant"
    assert "--fast" in _run([muse_quant, "demo", "--help"], run_dir, env)
    assert "check" in _run([muse_quant, "leaderboard", "--help"], run_dir, env)
    schemes = _run([muse_quant, "schemes"], run_dir, env)
    assert "bnb-fp4" in schemes and "gptq:" in schemes
    assert _inside(_run([muse_quant, "tasks-dir"], run_dir, env).strip(), site)
