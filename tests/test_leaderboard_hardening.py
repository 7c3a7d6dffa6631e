"""Hostile and broken submissions (issue 11): unknown and hidden files, out-of-range numbers,
wrong types, deep nesting, huge integers, edited aggregates, `check --reproduce` from an
allow-list, `add` tying the checkpoint to the results. Every failure is a named problem or
`error:` / `fix:` with rc 2, never a traceback, and nothing from a submission runs."""

import json
import threading

import pytest
import yaml
from leaderboard_helpers import edited_board, make_results, problems_of, small_board, write_results

from harness_ext.cli import main
from harness_ext.errors import MuseQuantError
from harness_ext.hashing import content_sha256
from harness_ext.leaderboard import builder
from harness_ext.leaderboard.allowlist import (MODEL_ARGS_ALLOWED, UNLEARN_ALLOWED,
                                               UNLEARN_REFUSED, UNLEARN_SUPPLIED,
                                               model_args_settings, unlearn_settings)
from harness_ext.leaderboard.validator import load_board
from harness_ext.unlearning.config import UnlearnConfig

NEWS = ("submissions", "news")
PLUGIN = "from pathlib import Path\nPath({marker!r}).write_text('ran')\n"


def entry_dir(root, slug="npo-klr"):
    return root.joinpath(*NEWS, slug)


def edit_json(path, edit):
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def edit_meta(root, edit, slug="npo-klr"):
    path = entry_dir(root, slug) / "entry.yaml"
    meta = yaml.safe_load(path.read_text())
    edit(meta)
    path.write_text(yaml.safe_dump(meta))


def fails_cleanly(argv, capsys, *words):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "fix:" in err and "Traceback" not in err, err
    for word in words:
        assert word in err, err
    return err


# ---------------------------------------------------------------- submissions are data
@pytest.mark.parametrize("where", [
    ("submissions", ".cache"), ("submissions", "news", ".cache"),
    ("submissions", "news", "npo-klr", ".cache"),
    ("submissions", "news", "npo-klr", "results", ".cache")])
def test_hidden_folders_are_refused_at_every_level_and_never_run(tmp_path, where):
    root = small_board(tmp_path / "lb")
    marker = tmp_path / "RAN"
    hidden = root.joinpath(*where)
    hidden.mkdir()
    (hidden / "p.py").write_text(PLUGIN.format(marker=str(marker)))
    found = problems_of(root)
    assert "/.cache: hidden files and folders are not allowed" in found, found
    with pytest.raises(MuseQuantError, match="problem"):
        builder.build(root, tmp_path / "out")
    assert not marker.exists()


@pytest.mark.parametrize("name", [".x.json", ".env", "notes.txt", "none.samples.jsonl.bak"])
def test_unknown_and_hidden_files_in_results_are_refused(tmp_path, name):
    root = small_board(tmp_path / "lb")
    (entry_dir(root) / "results" / name).write_text("{}")
    assert f"results/{name}:" in problems_of(root)


def test_hidden_file_beside_the_corpora_and_orphan_samples(tmp_path):
    root = small_board(tmp_path / "lb")
    (root / "submissions" / ".hidden.yaml").write_text("a: 1")
    results = entry_dir(root) / "results"
    (results / "awq_4.samples.jsonl").write_bytes((results / "none.samples.jsonl").read_bytes())
    found = problems_of(root)
    assert "submissions/.hidden.yaml: hidden files" in found
    assert "awq_4.samples.jsonl: per-document scores without their results file" in found


# ---------------------------------------------------------------- numbers in range
def _set(task, key, value, scheme="none"):
    def apply(root):
        edit_json(entry_dir(root) / "results" / f"{scheme}.json",
                  lambda d: d["results"][task].update({key: value}))
    return apply


def _raw(scheme, old, new):
    def apply(root):
        path = entry_dir(root) / "results" / f"{scheme}.json"
        text = path.read_text()
        assert old in text
        path.write_text(text.replace(old, new, 1))
    return apply


BAD_NUMBERS = {
    "metric of 1e9": (_set("muse_news_verbmem_f", "verbmem_rougeL_f1,none", 1e9),
                      "verbmem_rougeL_f1,none is 1000000000.0, outside 0 to 100 points"),
    "negative ROUGE": (_set("muse_news_knowmem_r", "knowmem_rougeL_f1,none", -1.0),
                       "outside 0 to 100 points"),
    "AUC above 1": (_set("muse_news_privleak", "mink40_auc,none", 1.5), "outside 0 to 1"),
    "privleak below -100": (_set("muse_news_privleak", "privleak,none", -150.0),
                            "privleak,none is -150.0, outside -100 to 100"),
    "privleak above its range": (_set("muse_news_privleak", "privleak,none", 101.0),
                                 "outside -100 to 100 (PrivLeak with retrain AUC 0.5)"),
    "NaN in a metric the board does not show": (
        _set("muse_news_verbmem_f", "verbmem_rougeL_recall,none", float("nan")),
        "verbmem_rougeL_recall,none is nan, not a finite number"),
    "Infinity in a field no check reads": (_raw("none", '"random_seed": 0',
                                                '"random_seed": Infinity'),
                                           "config.random_seed is inf, not a finite number"),
    "negative stderr": (_set("muse_news_verbmem_f", "verbmem_rougeL_f1_stderr,none", -1.0),
                        "must be a finite number >= 0"),
    "5000-digit integer": (_raw("none", '"random_seed": 0', '"random_seed": ' + "9" * 5000),
                           "none.json: not valid JSON (Exceeds the limit"),
    "70-bit integer": (_raw("none", '"random_seed": 0', '"random_seed": ' + str(2 ** 70)),
                       "config.random_seed is an integer of 71 bits, out of range"),
}


@pytest.mark.parametrize("case", sorted(BAD_NUMBERS))
def test_numbers_out_of_range_are_refused(tmp_path, case):
    edit, message = BAD_NUMBERS[case]
    _, found = edited_board(tmp_path / "lb", edit)
    assert message in found, found


@pytest.mark.parametrize("text, message", [
    ("lr: .inf", "hyperparameters.lr is inf, not a finite number"),
    ("lr: .nan", "is nan, not a finite number"),
    ("lr: -1.0e-4", "lr is -0.0001; it must be finite, > 0"),
    ("lr: '-1e-4'", "lr is -0.0001; it must be finite, > 0"),
    ("lr: fast", "lr must be a number, got 'fast'"),
    ("max_len: 1", "max_len is 1; it must be finite, >= 2"),
    ("grad_accum: 2.5", "grad_accum must be an integer, got 2.5"),
    ("alpha: -1.0", "alpha is -1.0"),
    ("seed: " + "7" * 5000, "a value cannot be read (Exceeds the limit"),
])
def test_hyperparameters_must_be_finite_and_in_range(tmp_path, text, message):
    root = small_board(tmp_path / "lb")
    path = entry_dir(root) / "entry.yaml"
    meta = path.read_text().replace("  lr: 1.0e-05\n", "  " + text + "\n")
    assert meta != path.read_text()
    path.write_text(meta)
    found = problems_of(root)
    assert message in found, found


def test_run_card_hyperparameters_are_bounded_too(tmp_path):
    root = small_board(tmp_path / "lb")
    edit_meta(root, lambda m: m.update(run_card={
        "method": "ga", "hyperparameters": {"lr": 1e-5, "max_len": 1},
        "command": ["muse-quant", "unlearn", "--method", "ga"]}))
    assert "run_card.hyperparameters: max_len is 1" in problems_of(root)


# ---------------------------------------------------------------- types and nesting
TYPE_ERRORS = {
    "limit as a list": (lambda d: d["config"].update(limit=[4]),
                        "config.limit must be a number or null, got list"),
    "task results as a list": (lambda d: d["results"].update(muse_news_verbmem_f=[1]),
                               "none.json: results.muse_news_verbmem_f must be an object, got "
                               "list"),
    "results as a string": (lambda d: d.update(results="x"), "results must be an object, got "
                                                             "string"),
    "config.muse_quant as a list": (lambda d: d["config"].update(muse_quant=[]),
                                    "config.muse_quant must be an object, got list"),
    "configs of a task as a number": (lambda d: d["configs"].update(muse_news_privleak=3),
                                      "configs.muse_news_privleak must be an object, got number"),
    "n-samples as a list": (lambda d: d.update({"n-samples": []}),
                            "n-samples must be an object, got list"),
    "model_args as a list": (lambda d: d["config"].update(model_args=[1]),
                             "config.model_args must be an object or a string, got list"),
}


@pytest.mark.parametrize("case", sorted(TYPE_ERRORS))
def test_wrong_types_have_named_messages(tmp_path, case):
    root = small_board(tmp_path / "lb")
    edit, message = TYPE_ERRORS[case]
    edit_json(entry_dir(root) / "results" / "none.json", edit)
    found = problems_of(root)
    assert message in found, found


def test_a_results_file_that_is_a_list(tmp_path):
    root = small_board(tmp_path / "lb")
    (entry_dir(root) / "results" / "none.json").write_text("[1, 2]")
    assert "none.json: must be an object (an lm-eval results file), got list" in \
        problems_of(root)


@pytest.mark.parametrize("depth", [40, 100_000])
def test_deep_nesting_is_refused(tmp_path, depth):
    root = small_board(tmp_path / "lb")
    (entry_dir(root) / "results" / "none.json").write_text("[" * depth + "]" * depth)
    (entry_dir(root, "retrain") / "entry.yaml").write_text("a: " + "[" * depth + "]" * depth)
    found = problems_of(root)
    assert "news/npo-klr/results/none.json: " in found and "nested" in found, found
    assert "news/retrain/entry.yaml" in found


def test_every_entrys_problems_are_collected_before_failing(tmp_path, capsys):
    root = small_board(tmp_path / "lb")
    edit_json(entry_dir(root) / "results" / "none.json",
              lambda d: d["config"].update(limit=[4]))
    edit_json(entry_dir(root, "target") / "results" / "bnb-int8-real.json",
              lambda d: d["results"].update(muse_news_knowmem_f=[]))
    edit_meta(root, lambda m: m.update(notes=float("nan")), slug="retrain")
    for argv in (["leaderboard", "check", "--root", str(root)],
                 ["leaderboard", "build", "--root", str(root), "--out", str(tmp_path / "o")]):
        err = fails_cleanly(argv, capsys, "config.limit must be", "results.muse_news_knowmem_f "
                            "must be an object", "news/retrain/entry.yaml: notes is nan")
        assert err.count("config.limit must be") == 1


# ---------------------------------------------------------------- aggregates recomputed
def test_an_aggregate_edited_by_hand_fails_check_naming_the_metric(tmp_path, capsys):
    root = small_board(tmp_path / "lb")
    assert main(["leaderboard", "build", "--root", str(root)]) == 0
    assert main(["leaderboard", "check", "--root", str(root)]) == 0
    edit_json(entry_dir(root) / "results" / "bnb-fp4.json",
              lambda d: d["results"]["muse_news_knowmem_r"].update(
                  {"knowmem_rougeL_f1,none": d["results"]["muse_news_knowmem_r"][
                      "knowmem_rougeL_f1,none"] + 7.0}))
    err = fails_cleanly(["leaderboard", "check", "--root", str(root)], capsys,
                        "news/npo-klr/results/bnb-fp4.json: muse_news_knowmem_r: "
                        "knowmem_rougeL_f1,none is 32.0 in the results, 25.0 recomputed from "
                        "the per-document scores", "caught only by `muse-quant leaderboard check "
                                                   "--reproduce`")
    assert "knowmem_rougeL_recall" not in err


def test_missing_samples_have_a_clear_message(tmp_path):
    root = small_board(tmp_path / "lb")
    (entry_dir(root) / "results" / "none.samples.jsonl").unlink()
    found = problems_of(root)
    assert "news/npo-klr/results/none.json: none.samples.jsonl (its per-document scores) is " \
           "missing" in found
    assert "news/npo-klr: every results file comes with the <scheme>.samples.jsonl file" in found


def _edit_samples(root, edit):
    path = entry_dir(root) / "results" / "none.samples.jsonl"
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    edit(lines)
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))


def test_samples_must_use_the_task_aggregation_and_valid_values(tmp_path):
    root = small_board(tmp_path / "lb")

    def privleak_line(lines):
        return next(x for x in lines if x.get("task") == "muse_news_privleak")

    _edit_samples(root, lambda lines: privleak_line(lines)["metrics"]["privleak"].update(
        aggregation="mean"))
    assert "muse_news_privleak privleak: aggregation 'mean', but the task YAML aggregates it " \
           "with 'agg_privleak'" in problems_of(root)
    root = small_board(tmp_path / "lb2")
    _edit_samples(root, lambda lines: privleak_line(lines)["metrics"]["mink40_auc"][
        "values"][0].__setitem__(1, 7))
    assert "muse_news_privleak mink40_auc: a value [1.0, 7]: need [score, label 0|1" in \
        problems_of(root)
    root = small_board(tmp_path / "lb3")
    _edit_samples(root, lambda lines: lines[1]["metrics"][next(iter(lines[1]["metrics"]))][
        "values"].__setitem__(0, 1e9))
    assert "a value 1000000000.0 outside 0 to 100" in problems_of(root)
    root = small_board(tmp_path / "lb4")
    (entry_dir(root) / "results" / "none.samples.jsonl").write_text("9" * 5000)
    assert "none.samples.jsonl: not JSON Lines (Exceeds the limit" in problems_of(root)


# ---------------------------------------------------------------- reproduce: allow-list
def test_the_allow_list_classifies_every_unlearn_setting():
    names = {f for f in UnlearnConfig.__dataclass_fields__}
    classified = set(UNLEARN_ALLOWED) | set(UNLEARN_SUPPLIED) | set(UNLEARN_REFUSED) | \
        set(UnlearnConfig.RUNTIME_FIELDS)
    assert classified == names, "classify each new UnlearnConfig field in allowlist.py"
    assert not set(UNLEARN_ALLOWED) & {"plugin", "pretrained", "out", "forget", "retain",
                                       "muse_data", "device"}


def test_unlearn_settings_keep_valid_hyperparameters():
    command = ["muse-quant", "unlearn", "--method", "npo_klr_sure", "--pretrained", "/x",
               "--corpus", "news", "--muse_data", "embedded", "--out", "/y", "--lr=0.001",
               "--epochs", "5", "--alpha", "20.0", "--klr_reduction", "sum", "--precision",
               "fp32", "--seed", "3", "--sure_threshold", "abs:0.5", "--lora",
               "r=8,alpha=16,targets=q_proj+v_proj", "--save", "delta"]
    assert unlearn_settings(command, "news") == {
        "method": "npo_klr_sure", "lr": 0.001, "epochs": 5, "alpha": 20.0,
        "klr_reduction": "sum", "precision": "fp32", "seed": 3, "sure_threshold": "abs:0.5",
        "lora": "r=8,alpha=16,targets=q_proj+v_proj", "save": "delta"}


@pytest.mark.parametrize("extra, words", [
    (["--plugin", "evil.py"], "passes --plugin"),
    (["--plugin=evil.py"], "passes --plugin"),
    (["--forget", "/etc/passwd"], "passes --forget"),
    (["--device", "cuda"], "passes --device"),
    (["--resume"], "passes --resume"),
    (["positional"], "'positional', which is not an option"),
    (["--exec", "x"], "'--exec', which is not an option"),
    (["--lr", "-1e-4"], "--lr '-1e-4', which is not a valid value"),
    (["--lr", "nan"], "--lr 'nan'"),
    (["--lr", "inf"], "--lr 'inf'"),
    (["--epochs", "1" * 5000], "--epochs"),
    (["--lora", "r=8,targets=../../x"], "--lora"),
    (["--sure_threshold", "150"], "--sure_threshold"),
    (["--method", "Ga;rm"], "--method"),
    (["--lr"], "ends after --lr"),
    (["--lr", "1e-5", "--lr", "1e-4"], "passes --lr twice"),
    (["--corpus", "books"], "unlearns corpus 'books'"),
    (["--muse_data", "/data"], "other than the embedded corpus"),
    (["--beta", "0"], "--beta '0'"),
])
def test_unlearn_settings_refuse_everything_else(extra, words):
    command = ["muse-quant", "unlearn", "--method", "ga", *extra]
    with pytest.raises(MuseQuantError, match="run card's command") as err:
        unlearn_settings(command, "news")
    assert words in err.value.problem and err.value.fix


def test_model_args_are_filtered_to_the_allow_list():
    assert model_args_settings("pretrained=/p,unlearned=/u,quant=none,dtype=float32,calib=generic,"
                               "calib_samples=4,quant_lm_head=True") == \
        {"dtype": "float32", "calib": "generic", "calib_samples": 4, "quant_lm_head": True}
    for bad in ({"calib_data": "/etc/passwd"}, {"trust_remote_code": True},
                {"allow_pickle": True}, {"quant_cache_dir": "/tmp"}, {"calib": "/evil.txt"},
                {"dtype": "float32; rm"}, {"calib_samples": 1.5}, {"calib_samples": [1]}):
        with pytest.raises(MuseQuantError, match="model_args"):
            model_args_settings(bad)
    assert "revision" not in MODEL_ARGS_ALLOWED and "trust_remote_code" not in MODEL_ARGS_ALLOWED


def test_reproduce_refuses_a_plugin_before_running_anything(tmp_path, capsys):
    root = small_board(tmp_path / "lb")
    marker = tmp_path / "RAN"
    plugin = tmp_path / "evil.py"
    plugin.write_text(PLUGIN.format(marker=str(marker)))
    edit_meta(root, lambda m: m.update(run_card={
        "method": "ga", "hyperparameters": {"lr": 1e-5},
        "command": ["muse-quant", "unlearn", "--method", "ga", "--plugin", str(plugin)]}))
    assert load_board(root).problems == []
    base = ["leaderboard", "check", "--root", str(root), "--reproduce", "npo-klr"]
    fails_cleanly(base + ["--pretrained", str(tmp_path)], capsys, "passes --plugin")
    fails_cleanly(base, capsys, "--pretrained (not given)", "no path named by a submission")
    assert not marker.exists()


def test_reproduce_refuses_model_args_paths(tmp_path, capsys):
    root = small_board(tmp_path / "lb")
    for scheme in ("none", "bnb-int8-real", "bnb-fp4"):
        edit_json(entry_dir(root, "target") / "results" / f"{scheme}.json",
                  lambda d: d["config"].update(model_args={
                      "pretrained": "/p", "calib_data": "/etc/passwd"}))
    fails_cleanly(["leaderboard", "check", "--root", str(root), "--reproduce", "target",
                   "--pretrained", str(tmp_path)], capsys, "model_args has 'calib_data'")


def test_reproduce_workdir_must_exist(tmp_path, capsys):
    root = small_board(tmp_path / "lb")
    fails_cleanly(["leaderboard", "check", "--root", str(root), "--reproduce", "npo-klr",
                   "--pretrained", str(tmp_path), "--workdir", str(tmp_path / "nope")], capsys,
                  "--workdir", "not an existing folder", "mkdir -p")


# ---------------------------------------------------------------- add
def _sweep_out(folder, unlearned, **kwargs):
    for scheme in ("none", "bnb-int8-real", "bnb-fp4"):
        write_results(folder, make_results(scheme=scheme, unlearned=str(unlearned), **kwargs))
    return folder


def _add(root, out, ckpt, slug="m"):
    return ["leaderboard", "add", "--root", str(root), "--corpus", "news", "--slug", slug,
            "--results", str(out), "--checkpoint", str(ckpt), "--submitted_by", "Ada",
            "--hyperparameter", "lr=1e-5", "--target", "target"]


def test_add_checks_the_checkpoint_is_the_evaluated_one(tmp_path, capsys):
    root = small_board(tmp_path / "lb")
    ckpt = tmp_path / "delta.safetensors"
    ckpt.write_bytes(b"weights")
    other = tmp_path / "other.safetensors"
    other.write_bytes(b"other weights")
    out = _sweep_out(tmp_path / "out", ckpt)
    fails_cleanly(_add(root, out, other), capsys, "were computed from a checkpoint with sha256 "
                  + content_sha256(ckpt)[0][:12], "pass the checkpoint given as unlearned=")
    assert not entry_dir(root, "m").exists()
    assert main(_add(root, out, ckpt)) == 0
    assert load_board(root).problems == []
    unhashed = _sweep_out(tmp_path / "old", ckpt)
    for path in unhashed.glob("*.json"):
        edit_json(path, lambda d: d["config"]["muse_quant"]["unlearned"].pop("sha256"))
    fails_cleanly(_add(root, unhashed, ckpt, "m2"), capsys, "record no unlearned checkpoint hash")


def test_add_refuses_damaged_results_with_named_errors(tmp_path, capsys):
    root = small_board(tmp_path / "lb")
    ckpt = tmp_path / "delta.safetensors"
    ckpt.write_bytes(b"weights")
    out = _sweep_out(tmp_path / "out", ckpt)
    edit_json(out / "none.json", lambda d: d["results"].update(muse_news_verbmem_f=[1]))
    fails_cleanly(_add(root, out, ckpt), capsys,
                  "none.json: results.muse_news_verbmem_f must be an object, got list")
    (out / "none.json").write_text('{"results": {}, "x": ' + "[" * 50 + "]" * 50 + "}")
    fails_cleanly(_add(root, out, ckpt), capsys, "nested more than 32 levels")


def test_add_on_a_folder_with_a_symlink_loop_does_not_hang(tmp_path, capsys):
    root = small_board(tmp_path / "lb")
    ckpt = tmp_path / "ckpt"
    (ckpt / "sub").mkdir(parents=True)
    (ckpt / "model.safetensors").write_bytes(b"w")
    (ckpt / "sub" / "loop").symlink_to(ckpt)
    out = _sweep_out(tmp_path / "out", tmp_path / "elsewhere", unlearned_sha256="0" * 64)
    rc = []
    thread = threading.Thread(target=lambda: rc.append(main(_add(root, out, ckpt))), daemon=True)
    thread.start()
    thread.join(60)
    assert not thread.is_alive(), "leaderboard add hangs on a symbolic-link loop"
    assert rc == [2]
    assert "error:" in capsys.readouterr().err


def test_the_committed_run_cards_and_model_args_pass_the_allow_list():
    """The demo's own entries (written by `muse-quant unlearn` / `sweep`) are reproducible."""
    from pathlib import Path

    repo = Path(__file__).resolve().parent.parent / "leaderboard" / "submissions"
    cards = 0
    for path in sorted(repo.glob("*/*/entry.yaml")):
        meta = yaml.safe_load(path.read_text())
        if meta.get("run_card"):
            settings = unlearn_settings(meta["run_card"]["command"], meta["corpus"])
            assert settings["method"] == meta["run_card"]["method"]
            assert settings["lr"] == meta["run_card"]["hyperparameters"]["lr"]
            cards += 1
        for results in path.parent.glob("results/*.json"):
            model_args_settings(json.loads(results.read_text())["config"]["model_args"])
    assert cards >= 8
