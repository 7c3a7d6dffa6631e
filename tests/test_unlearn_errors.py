"""`muse-quant unlearn`'s user errors: error/fix, rc 2, no traceback, nothing loaded or written.

Every case here fails before a model or data set is read, so no model is needed.
"""

import pytest

from harness_ext.cli import main


def _error(capsys, tmp_path, *args) -> str:
    argv = ["unlearn", "--method", "ga", "--pretrained", str(tmp_path / "no_model"),
            "--out", str(tmp_path / "out"), "--muse_data", "embedded", "--no_progress", *args]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "error:" in err and "fix:" in err, err
    return err


@pytest.mark.parametrize("args, words", [
    (["--lr=-1e-4"], "--lr -0.0001: must be a finite positive number"),
    (["--lr", "0"], "--lr 0.0: must be a finite positive number"),
    (["--lr", "nan"], "--lr nan: must be a finite positive number"),
    (["--lr", "inf"], "--lr inf: must be a finite positive number"),
    (["--alpha", "inf"], "--alpha inf: must be a finite non-negative number"),
    (["--alpha", "nan"], "--alpha nan: beta must be positive and alpha non-negative"),
    (["--alpha=-1"], "alpha non-negative"),
    (["--beta", "inf"], "--beta inf: must be a finite positive number"),
    (["--beta", "0"], "beta must be positive"),
    (["--weight_decay", "nan"], "--weight_decay nan: must be a finite non-negative number"),
    (["--max_grad_norm=-1"], "--max_grad_norm -1.0: must be a finite non-negative number"),
    (["--epochs", "0"], "--epochs must be at least 1"),
    (["--epochs=-3"], "--epochs must be at least 1"),
])
def test_bad_hyperparameters_are_refused(args, words, capsys, tmp_path):
    assert words in _error(capsys, tmp_path, *args)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("content", ['{"config": {"method": "ga", "lr"', "", "[1, 2]",
                                     '{"config": {}}', '{"config": [], "step": 1, "epoch": 0}'])
def test_a_damaged_resume_state_says_how_to_restart(content, capsys, tmp_path):
    state = tmp_path / "out" / "resume" / "state.json"
    state.parent.mkdir(parents=True)
    state.write_text(content)
    err = _error(capsys, tmp_path, "--resume")
    assert "resume state" in err and "is damaged" in err and "--overwrite" in err
    assert state.read_text() == content  # nothing touched
