"""The muse-quant command line as a whole: --version, one (snake_case) spelling of every flag with
the old kebab-case spellings still accepted, the same names for the model and the data source
across subcommands, and --help texts without reStructuredText markup."""

import argparse
import re
import subprocess
import sys

import pytest

from harness_ext import __version__
from harness_ext.cli import build_parser, main, snake_case_options

RST = re.compile(r"``|:(func|class|mod|data|meth|attr):`")


def _subparsers(parser, prefix=()):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*prefix, name), sub
                yield from _subparsers(sub, (*prefix, name))


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"muse-quant {__version__}"


def test_help_texts_have_no_rst_markup():
    parser = build_parser()
    texts = {("muse-quant",): parser.format_help()}
    texts.update({("muse-quant", *name): sub.format_help() for name, sub in _subparsers(parser)})
    assert len(texts) > 12
    for name, text in texts.items():
        assert not RST.search(text), (name, RST.search(text).group(0))


def test_every_flag_is_snake_case():
    for name, sub in _subparsers(build_parser()):
        for option in sub._option_string_actions:
            if option.startswith("--"):
                assert "-" not in option[2:], (name, option)


@pytest.mark.parametrize("old, new", [
    (["demo", "--recovery-map", "--lrs=1e-5"], ["demo", "--recovery_map", "--lrs=1e-5"]),
    (["reproduce", "--corpus", "news", "--dry-run"], ["reproduce", "--corpus", "news",
                                                       "--dry_run"]),
    (["reproduce", "--emit-slurm=DIR", "--quant", "bnb-fp4"],
     ["reproduce", "--emit_slurm=DIR", "--quant", "bnb-fp4"]),
    (["tiny-model", "--out", "my-dir", "--tie-embeddings"],
     ["tiny-model", "--out", "my-dir", "--tie_embeddings"]),
    (["sweep", "--quant", "none,bnb-fp4", "--no-such-flag"],
     ["sweep", "--quant", "none,bnb-fp4", "--no-such-flag"]),  # unknown: argparse says so
])
def test_old_kebab_case_spellings_are_accepted_but_not_listed(old, new):
    parser = build_parser()
    assert snake_case_options(parser, old) == new
    helps = {name[0]: sub.format_help() for name, sub in _subparsers(parser)}
    for arg in old[1:]:
        if arg.startswith("--") and "-" in arg[2:].partition("=")[0]:
            assert arg.partition("=")[0] not in helps[old[0]]


def test_an_old_spelling_runs(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "harness_ext.cli", "reproduce", "--corpus",
                           "news", "--dry-run", "--out", str(tmp_path / "r")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "stages" in proc.stdout


def test_model_and_data_source_named_alike(monkeypatch, capsys):
    """--pretrained and --muse_data mean the same in sweep and eval as in unlearn / diagnose /
    reproduce (the --model_args / --metadata spellings keep working)."""
    from harness_ext.evaluation import sweep
    from harness_ext.quantizers import compat

    calls = {}

    def fake_sweep(model_args, schemes, tasks, output_path, metadata=None, **kwargs):
        calls["sweep"] = (model_args, metadata)
        return sweep.SweepResult(output_path=output_path)

    monkeypatch.setattr(sweep, "run_sweep", fake_sweep)
    monkeypatch.setattr("harness_ext.plugin.register", lambda: None)  # no model needed here
    monkeypatch.setattr(compat, "run_lm_eval_cli", lambda argv: calls.__setitem__("eval", argv))
    assert main(["sweep", "--pretrained", "M", "--model_args", "unlearned=U", "--muse_data",
                 "embedded", "--metadata", "retrain_auc=0.5", "--quant", "none", "--tasks",
                 "muse_news_verbmem_f", "--output_path", "OUT"]) == 0
    assert calls["sweep"] == ("pretrained=M,unlearned=U",
                              {"retrain_auc": 0.5, "muse_data": "embedded"})
    assert main(["eval", "--pretrained", "M", "--muse_data=embedded", "--tasks",
                 "muse_news_verbmem_f"]) == 0
    argv = calls["eval"]
    assert argv[argv.index("--model_args") + 1] == "pretrained=M"
    assert argv[argv.index("--metadata") + 1] == "muse_data=embedded"
    for command in ("unlearn", "reproduce"):
        assert "--muse_data" in build_parser()._subparsers._group_actions[0].choices[
            command].format_help()
    assert "--pretrained" in build_parser()._subparsers._group_actions[0].choices[
        "diagnose"].format_help()
    compat.quiet_lm_eval(False)
