"""Bad input on the model and data paths: each gives `error: ... / fix: ...` and exit status 2
(no traceback, nothing executed, nothing evaluated); checkpoints with NaN/Inf are refused, a
checkpoint that changes nothing is flagged, and a checkpoint's content hash is recorded."""

import hashlib
import json
import logging
import os
import pickle

import pytest
import torch
from safetensors.torch import save_file

from harness_ext import checkpoints
from harness_ext.cli import main
from harness_ext.data import embedded, load_file, load_texts
from harness_ext.errors import MuseQuantError
from harness_ext.hashing import content_sha256
from harness_ext.toy.tiny import build_tiny_llama, save_model

Q = "model.layers.0.self_attn.q_proj.weight"


def small(seed=0, **kw):
    model, _ = build_tiny_llama(seed=seed, hidden_size=128, intermediate_size=384,
                                num_hidden_layers=1, **kw)
    return model


def eval_cli(model_args, out, tasks="muse_news_privleak", muse_data="embedded"):
    return main(["eval", "--model", "muse_quant", "--model_args", model_args, "--tasks", tasks,
                 "--metadata", f"muse_data={muse_data}", "--limit", "2", "--device", "cpu",
                 "--batch_size", "4", "--output_path", str(out)])


@pytest.fixture(autouse=True)
def no_handlers_on_closed_streams():
    """lm-eval's CLI binds a log handler to the stderr of the test that first ran it; writing to
    it once that capture is closed prints a logging traceback unrelated to the code under test."""
    loggers = [logging.getLogger()] + [logger for logger in
                                       logging.Logger.manager.loggerDict.values()
                                       if isinstance(logger, logging.Logger)]
    for logger in loggers:
        for handler in list(logger.handlers):
            if getattr(getattr(handler, "stream", None), "closed", False):
                logger.removeHandler(handler)


def assert_user_error(code, capsys, *expected):
    err = capsys.readouterr().err
    assert code == 2, err[-2000:]
    assert "error: " in err and "  fix: " in err and "Traceback" not in err
    for text in expected:
        assert text in err, err[-2000:]
    return err


# ------------------------------------------------------------------ checkpoints: NaN / Inf
@pytest.mark.parametrize("bad, label", [(float("nan"), "NaN"), (float("inf"), "Inf"),
                                        (float("-inf"), "Inf")])
def test_delta_with_nan_or_inf_is_refused_and_leaves_the_model(tmp_path, bad, label):
    model = small()
    delta = torch.zeros_like(dict(model.named_parameters())[Q])
    delta[0, :3] = bad
    save_file({Q: delta, "model.layers.0.mlp.up_proj.weight": torch.ones(384, 128)},
              tmp_path / "d.safetensors")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with pytest.raises(MuseQuantError, match=f"tensor {Q} holds 3 {label} value") as err:
        checkpoints.apply_unlearned(model, tmp_path / "d.safetensors")
    assert "lower learning rate" in err.value.fix
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


def test_full_checkpoint_with_inf_is_refused(tmp_path):
    other, tok = build_tiny_llama(seed=1, hidden_size=128, intermediate_size=384,
                                  num_hidden_layers=1)
    with torch.no_grad():
        other.model.layers[0].mlp.down_proj.weight[1, 1] = float("inf")
    save_model(other, tok, tmp_path / "full")
    model = small()
    with pytest.raises(MuseQuantError, match="mlp.down_proj.weight holds 1 Inf"):
        checkpoints.apply_unlearned(model, tmp_path / "full")


def test_peft_adapter_with_nan_is_refused(tmp_path):
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(small(), LoraConfig(r=4, target_modules=["q_proj"]))
    for name, p in peft_model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.constant_(p, float("nan"))
    peft_model.save_pretrained(tmp_path / "adapter")
    model = small()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with pytest.raises(MuseQuantError, match="holds .*NaN"):
        checkpoints.apply_unlearned(model, tmp_path / "adapter")
    assert {n: p for n, p in model.named_parameters()}.keys() == before.keys()  # unwrapped
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


def test_delta_that_changes_nothing_warns(tmp_path, caplog):
    model = small()
    save_file({Q: torch.zeros(128, 128)}, tmp_path / "zero.safetensors")
    with caplog.at_level(logging.WARNING, logger="harness_ext.checkpoints"):
        _, report = checkpoints.apply_unlearned(model, tmp_path / "zero.safetensors")
    assert report["tensors_changed"] == 0
    assert "changes no weight" in caplog.text
    caplog.clear()
    save_file({Q: torch.full((128, 128), 0.5)}, tmp_path / "half.safetensors")
    with caplog.at_level(logging.WARNING, logger="harness_ext.checkpoints"):
        checkpoints.apply_unlearned(model, tmp_path / "half.safetensors")
    assert "changes no weight" not in caplog.text


# ------------------------------------------------------------------ content hash
def test_report_records_the_content_hash(tmp_path):
    save_file({Q: torch.full((128, 128), 0.5)}, tmp_path / "d.safetensors")
    _, report = checkpoints.apply_unlearned(small(), tmp_path / "d.safetensors")
    assert report["sha256"] == hashlib.sha256((tmp_path / "d.safetensors").read_bytes()
                                              ).hexdigest()


def test_directory_hash_is_sha256sum_listing_and_survives_symlink_loops(tmp_path):
    d = tmp_path / "ckpt"
    (d / "sub").mkdir(parents=True)
    (d / "config.json").write_text("{}")
    (d / "sub" / "w.bin").write_bytes(b"\x00\x01")
    h = {rel: hashlib.sha256((d / rel).read_bytes()).hexdigest()
         for rel in ("config.json", "sub/w.bin")}
    listing = f"{h['config.json']}  config.json\n{h['sub/w.bin']}  sub/w.bin\n"
    expected = hashlib.sha256(listing.encode()).hexdigest()
    assert content_sha256(d) == (expected, "directory")
    os.symlink(d, d / "sub" / "loop")  # sub/loop -> ckpt: a loop, skipped (find -L skips it)
    os.symlink(d / "sub", d / "sub" / "loop2")
    assert content_sha256(d) == (expected, "directory")
    (d / "sub" / "w.bin").write_bytes(b"\x00\x02")  # changed content, changed hash
    assert content_sha256(d)[0] != expected


# ------------------------------------------------------------------ through the CLI
def test_nan_and_inf_deltas_fail_before_evaluating(small_model_dir, tmp_path, capsys,
                                                   monkeypatch):
    import lm_eval.evaluator

    def never(*a, **k):
        raise AssertionError("evaluated a model with a NaN/Inf checkpoint")

    monkeypatch.setattr(lm_eval.evaluator, "evaluate", never)
    for bad, label in ((float("nan"), "NaN"), (float("inf"), "Inf")):
        state = {Q: torch.zeros(128, 128)}
        state[Q][5, 5] = bad
        path = tmp_path / f"{label}.safetensors"
        save_file(state, path)
        code = eval_cli(f"pretrained={small_model_dir},unlearned={path}", tmp_path / "o")
        assert_user_error(code, capsys, f"tensor {Q} holds 1 {label}")
        code = main(["sweep", "--model_args", f"pretrained={small_model_dir},unlearned={path}",
                     "--quant", "none,rtn:4", "--tasks", "muse_news_privleak", "--metadata",
                     "muse_data=embedded", "--limit", "2", "--device", "cpu", "--output_path",
                     str(tmp_path / f"s{label}")])
        assert_user_error(code, capsys, f"tensor {Q} holds 1 {label}")
        assert [p.name for p in (tmp_path / f"s{label}").iterdir()] == ["provenance.json"]
    assert not (tmp_path / "o").exists()


def test_malicious_pickle_is_not_executed(small_model_dir, tmp_path, capsys):
    marker = tmp_path / "PWNED"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({Q: Payload()}, tmp_path / "evil.pt")  # a torch checkpoint with a payload
    (tmp_path / "evil.bin").write_bytes(pickle.dumps({Q: Payload()}))  # a bare pickle
    for name, detail in (("evil.pt", "GLOBAL posix.system"), ("evil.bin", "Unsupported")):
        code = eval_cli(f"pretrained={small_model_dir},unlearned={tmp_path / name},"
                        "allow_pickle=True", tmp_path / "o")
        err = assert_user_error(code, capsys, "contains objects other than tensors", detail,
                                ".safetensors")
        assert "weights_only" not in err and "Weights only" not in err
        assert not marker.exists()
    with pytest.raises(MuseQuantError, match="expected a dict of tensors by name"):
        torch.save([torch.ones(2)], tmp_path / "list.pt")
        checkpoints.load_state_file(tmp_path / "list.pt", allow_pickle=True)


def test_invalid_adapter_config(small_model_dir, tmp_path, capsys):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_model.safetensors").write_bytes(b"")
    for text, message in (("{not json", "adapter_config.json is not valid JSON"),
                          ('["lora"]', "is not a PEFT adapter config"),
                          (b"\xff\xfe{}", "adapter_config.json is not valid JSON")):
        target = adapter / "adapter_config.json"
        target.write_bytes(text) if isinstance(text, bytes) else target.write_text(text)
        code = eval_cli(f"pretrained={small_model_dir},unlearned={adapter}", tmp_path / "o")
        assert_user_error(code, capsys, message, "PeftModel.save_pretrained")


def test_missing_pretrained_folder(tmp_path, capsys):
    code = eval_cli(f"pretrained={tmp_path / 'no' / 'such' / 'model'}", tmp_path / "o")
    assert_user_error(code, capsys, "no such model folder")
    (tmp_path / "empty").mkdir()
    code = eval_cli(f"pretrained={tmp_path / 'empty'}", tmp_path / "o")
    assert_user_error(code, capsys, "has no config.json")
    code = main(["sweep", "--model_args", f"pretrained={tmp_path / 'gone'}", "--quant", "none",
                 "--tasks", "muse_news_privleak", "--output_path", str(tmp_path / "s")])
    assert_user_error(code, capsys, "no such model folder")
    assert not (tmp_path / "s").exists()


def test_non_utf8_data_file(small_model_dir, tmp_path, capsys):
    embedded.write(tmp_path / "data", ["news"])
    forget = tmp_path / "data" / "news" / "privleak" / "forget.json"
    forget.write_bytes(json.dumps(["caf\u00e9 au lait"], ensure_ascii=False).encode("latin-1"))
    with pytest.raises(MuseQuantError, match="not UTF-8 text"):
        load_file("news", "privleak/forget.json", str(tmp_path / "data"))
    code = eval_cli(f"pretrained={small_model_dir}", tmp_path / "o",
                    muse_data=tmp_path / "data")
    assert_user_error(code, capsys, f"{forget}: not UTF-8 text", "UTF-8")
    (tmp_path / "texts.txt").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(MuseQuantError, match="not UTF-8 text"):
        load_texts(tmp_path / "texts.txt")


def test_privleak_texts_all_empty(small_model_dir, tmp_path, capsys):
    embedded.write(tmp_path / "data", ["news"])
    for split in ("forget", "holdout"):
        (tmp_path / "data" / "news" / "privleak" / f"{split}.json").write_text('["", "", " "]')
    code = eval_cli(f"pretrained={small_model_dir}", tmp_path / "o",
                    muse_data=tmp_path / "data")
    assert_user_error(code, capsys, "privleak/forget.json: item 0 is an empty text",
                      "remove the empty texts")
