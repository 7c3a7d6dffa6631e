"""`muse-quant eval` around lm_eval: its own --help, --model muse_quant by default, a privleak
task refused before anything is generated (here and in plain lm-eval), the known-harmless
warnings hidden unless -v, direction arrows and constants in the printed table."""

import json
import logging
import os
import subprocess
import sys
import time

import pytest

from harness_ext.cli import main
from harness_ext.errors import MuseQuantError

NO_PRIVLEAK = "muse_news_verbmem_f,muse_news_knowmem_f,muse_news_knowmem_r"


def _python(code: str, timeout=300):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          timeout=timeout)


@pytest.fixture
def lm_eval_argv(monkeypatch):
    """The argv `muse-quant eval` hands to lm_eval (lm_eval itself is not run)."""
    from harness_ext.quantizers import compat

    calls = []
    monkeypatch.setattr(compat, "run_lm_eval_cli", lambda argv: calls.append(list(argv)))
    monkeypatch.setattr("harness_ext.plugin.register", lambda: None)  # no model is loaded
    return calls


def test_help_lists_model_args_schemes_data_and_examples():
    from harness_ext.lm import MUSE_MODEL_ARGS
    from harness_ext.quantizers import available_schemes

    proc = _python("import sys; from harness_ext.cli import main; rc = main(['eval', '--help']);"
                   " print('TORCH', 'torch' in sys.modules); sys.exit(rc)")
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    assert "TORCH False" in text  # the help builds without torch
    for name in MUSE_MODEL_ARGS:
        assert f"  {name}=" in text, name
    for _, usage, _ in available_schemes():
        assert f"  {usage} " in text, usage
    assert "muse_data=embedded|hub|DIR" in text and "retrain_auc=" in text
    assert text.count("\n  muse-quant eval ") == 3  # three examples
    assert "`lm_eval run --help`" in text and "-v, --verbose" in text
    assert "``" not in text and ":func:" not in text


def test_model_defaults_to_muse_quant(lm_eval_argv):
    assert main(["eval", "--model_args", "pretrained=M,quant=bnb-fp4", "--tasks",
                 "muse_news_quant", "--limit", "1"]) == 0
    assert lm_eval_argv[0][:2] == ["--model", "muse_quant"]
    assert main(["eval", "--model", "hf", "--tasks", NO_PRIVLEAK]) == 0
    assert lm_eval_argv[1][:2] == ["--model", "hf"] and lm_eval_argv[1].count("--model") == 1


def test_verbose_flag_is_taken_and_verbosity_passed_on(lm_eval_argv):
    task_logger = logging.getLogger("lm_eval.api.task")
    try:
        assert main(["eval", "--tasks", NO_PRIVLEAK]) == 0
        assert task_logger.filters  # quiet by default
        assert main(["eval", "-v", "--tasks", NO_PRIVLEAK]) == 0
        assert "-v" not in lm_eval_argv[-1] and not task_logger.filters
        assert main(["eval", "--verbosity", "DEBUG", "--tasks", NO_PRIVLEAK]) == 0
        argv = lm_eval_argv[-1]
        assert argv[argv.index("--verbosity") + 1] == "DEBUG" and not task_logger.filters
    finally:
        from harness_ext.quantizers import compat

        compat.quiet_lm_eval(False)


def test_privleak_under_hf_stops_in_seconds_before_loading_anything(small_model_dir):
    """The issue's case: nothing loaded (no torch), exit status 2, the problem and the fix."""
    start = time.perf_counter()
    proc = _python(
        "import sys; from harness_ext.cli import main; "
        f"rc = main(['eval', '--tasks', 'muse_news_quant', '--model', 'hf', '--model_args', "
        f"'pretrained={small_model_dir}', '--limit', '2']); "
        "print('TORCH', 'torch' in sys.modules); sys.exit(rc)")
    elapsed = time.perf_counter() - start
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "TORCH False" in proc.stdout  # no model was loaded, so nothing was generated
    assert elapsed < 60  # a few seconds on an idle machine
    assert "muse_news_privleak needs per-token log-probs, which --model hf does not return" \
        in proc.stderr
    assert "fix: use --model muse_quant" in proc.stderr
    assert f"--tasks {NO_PRIVLEAK}" in proc.stderr


@pytest.mark.parametrize("tasks, kept", [
    (["muse_books_privleak"], None),
    (["muse_news_verbmem_f", "muse_books_quant"],
     "muse_news_verbmem_f,muse_books_verbmem_f,muse_books_knowmem_f,muse_books_knowmem_r"),
])
def test_the_fix_keeps_every_other_requested_task(tasks, kept):
    from harness_ext.evaluation.task_check import check_command_line

    with pytest.raises(MuseQuantError) as err:
        check_command_line("vllm", tasks)
    assert "muse_books_privleak needs per-token log-probs" in err.value.problem
    assert (f"--tasks {kept}" in err.value.fix) if kept else err.value.fix.endswith(
        "leave muse_books_privleak out")


def test_muse_quant_and_tasks_without_privleak_pass_the_check():
    from harness_ext.evaluation.task_check import check_command_line

    check_command_line("muse_quant", ["muse_news_quant"])
    check_command_line("hf", NO_PRIVLEAK.split(","))
    check_command_line("no_such_model", ["muse_news_quant"])  # left to lm-eval


def test_plain_lm_eval_stops_at_task_building_before_any_request(monkeypatch):
    """Plain lm-eval (simple_evaluate, a built-in model): the privleak dataset builder refuses
    the model before a single request runs, and names the fix for lm_eval users."""
    import lm_eval
    from lm_eval.models.dummy import DummyLM
    from lm_eval.tasks import TaskManager

    from harness_ext.plugin import tasks_dir

    calls = []
    for method in ("generate_until", "loglikelihood", "loglikelihood_rolling"):
        monkeypatch.setattr(DummyLM, method, lambda self, *a, _m=method, **k: calls.append(_m))
    manager = TaskManager(include_path=tasks_dir(), include_defaults=False,
                          metadata={"muse_data": "embedded"})
    with pytest.raises(MuseQuantError) as err:
        lm_eval.simple_evaluate(model="dummy", tasks=["muse_news_knowmem_r",
                                                      "muse_news_privleak"],
                                task_manager=manager, limit=2)
    assert calls == []
    assert "muse_news_privleak needs per-token log-probs, which --model dummy" in \
        err.value.problem
    assert "muse-quant eval --model muse_quant" in err.value.fix
    assert err.value.fix.endswith("--tasks muse_news_knowmem_r")


def test_building_the_task_outside_an_evaluation_is_not_refused():
    from harness_ext.evaluation.task_check import check_running_model

    check_running_model("muse_news_privleak")  # no simple_evaluate on the stack


# ------------------------------------------------------------------ output
def test_known_harmless_warnings_hidden_unless_verbose(tmp_path, monkeypatch, capfd):
    import lm_eval.evaluator as evaluator
    from lm_eval.loggers import utils as logger_utils

    from harness_ext.quantizers import compat

    messages = {"lm_eval.api.task": "muse_news_privleak: Custom kwargs can be passed to "
                                    "`--metadata` in console (as json string)",
                "lm_eval.evaluator_utils": "Higher_is_better values for metric "
                                           "knowmem_rougeL_f1 in group muse_news_quant are not "
                                           "consistent. Defaulting to None."}
    shown = []

    class Collect(logging.Handler):
        def emit(self, record):
            shown.append(record.getMessage())

    handler = Collect(level=logging.WARNING)
    for name in messages:  # what reaches the loggers' handlers (filters run before them)
        logger = logging.getLogger(name)
        monkeypatch.setattr(logger, "propagate", False)
        monkeypatch.setattr(logger, "level", logging.WARNING)
        logger.addHandler(handler)
    monkeypatch.chdir(tmp_path)  # not a git checkout: git prints "fatal: ..."
    try:
        for verbose in (False, True):
            compat.quiet_lm_eval(verbose)
            shown.clear()
            for name, message in messages.items():
                logging.getLogger(name).warning(message)
            logging.getLogger("lm_eval.api.task").warning("a real warning")
            assert "a real warning" in shown
            assert all((m in shown) == verbose for m in messages.values())
            capfd.readouterr()
            value = evaluator.get_git_commit_hash()
            assert ("fatal" in capfd.readouterr().err) == verbose
            assert value == logger_utils.get_commit_from_path(tmp_path)  # same value either way
    finally:
        compat.quiet_lm_eval(False)
        for name in messages:
            logging.getLogger(name).removeHandler(handler)


def test_directions_in_the_task_yamls():
    """lm-eval prints ↑ for higher_is_better true, ↓ for false, nothing for null: VerbMem_f and
    KnowMem_f ↓, KnowMem_r ↑, PrivLeak (best at 0), the AUC and the constant without arrow."""
    from lm_eval.tasks import TaskManager

    from harness_ext.plugin import tasks_dir

    TaskManager = getattr(TaskManager, "_muse_base", TaskManager)  # lm-eval's own
    index = TaskManager(include_path=tasks_dir(), include_defaults=False).task_index
    for corpus in ("news", "books"):
        directions = {(task, m["metric"]): m.get("higher_is_better", "missing")
                      for task in ("verbmem_f", "knowmem_f", "knowmem_r", "privleak")
                      for m in index[f"muse_{corpus}_{task}"].cfg["metric_list"]}
        assert directions == {
            ("verbmem_f", "verbmem_rougeL_f1"): False, ("verbmem_f", "verbmem_rougeL_recall"): False,
            ("knowmem_f", "knowmem_rougeL_f1"): False, ("knowmem_f", "knowmem_rougeL_recall"): False,
            ("knowmem_r", "knowmem_rougeL_f1"): True, ("knowmem_r", "knowmem_rougeL_recall"): True,
            ("privleak", "privleak"): None, ("privleak", "mink40_auc"): None,
            ("privleak", "privleak_retrain_auc"): None}


def test_printed_table_has_no_constant_rows(monkeypatch):
    import lm_eval.utils as lm_utils

    from harness_ext.metrics import CONSTANT_RESULTS
    from harness_ext.quantizers import compat

    monkeypatch.setattr(lm_utils, "make_table", lm_utils.make_table)  # undone after the test
    results = {"results": {"muse_news_privleak": {
        "alias": "muse_news_privleak", "privleak,none": -12.5, "privleak_stderr,none": "N/A",
        "mink40_auc,none": 0.4, "privleak_retrain_auc,none": 0.5,
        "privleak_retrain_auc_stderr,none": 0.0}},
        "versions": {"muse_news_privleak": 1.0},
        "higher_is_better": {"muse_news_privleak": {"privleak": None, "mink40_auc": None,
                                                    "privleak_retrain_auc": None}}}
    before = json.dumps(results, sort_keys=True)
    compat.hide_constants_in_table(CONSTANT_RESULTS)
    table = lm_utils.make_table(results)
    rows = [line for line in table.splitlines() if line.startswith("|")]
    assert len(rows) == 4  # header, rule, privleak, mink40_auc
    assert not any("privleak_retrain_auc" in r for r in rows)
    assert not any("↑" in r or "↓" in r for r in rows)
    assert "muse_news_privleak: privleak_retrain_auc = 0.5 (a constant, not a metric)" in table
    assert json.dumps(results, sort_keys=True) == before  # the results are not touched
