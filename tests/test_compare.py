"""`muse-quant compare`: retained knowledge, utility kept, the verdict and bootstrap intervals on
crafted results files with hand-computed numbers; `sweep --target` end to end on a tiny model."""

import json
import math

import pytest

from harness_ext.cli import main
from harness_ext.errors import MuseQuantError
from harness_ext.evaluation import bootstrap, compare, verdict

TASKS = {"VerbMem_f": ("muse_news_verbmem_f", "verbmem_rougeL_f1"),
         "KnowMem_f": ("muse_news_knowmem_f", "knowmem_rougeL_f1"),
         "KnowMem_r": ("muse_news_knowmem_r", "knowmem_rougeL_f1"),
         "PrivLeak": ("muse_news_privleak", "privleak")}


def results(scheme, recorded=True, **values):
    data = {"results": {}, "config": {"model": "muse_quant"}}
    for column, value in values.items():
        task, key = TASKS[column]
        data["results"].setdefault(task, {})[f"{key},none"] = value
    if recorded:
        data["config"]["muse_quant"] = {"quantization": {"scheme": scheme}}
    else:
        data["config"]["model_args"] = f"pretrained=M,quant={scheme}"
    return data


def sweep_folder(path, per_scheme):
    """A muse-quant sweep --output_path folder: <scheme>.json per scheme, plus errors.json."""
    path.mkdir(parents=True)
    for scheme, values in per_scheme.items():
        (path / (scheme.replace(":", "_") + ".json")).write_text(
            json.dumps(results(scheme, **values)))
    (path / "errors.json").write_text(json.dumps({"failed": {}}))
    return path


def lm_eval_folder(path, per_scheme, docs):
    """An lm_eval --output_path folder with --log_samples files: VerbMem_f per document."""
    for i, (scheme, values) in enumerate(per_scheme.items()):
        folder = path / "model"
        folder.mkdir(parents=True, exist_ok=True)
        stamp = f"2026-01-0{i + 1}T00-00-00.0"
        (folder / f"results_{stamp}.json").write_text(
            json.dumps(results(scheme, recorded=False, **values)))
        lines = [json.dumps({"doc_id": d, "filter": "none", "doc": {"x": 1},
                             "metrics": ["verbmem_rougeL_f1", "verbmem_rougeL_recall"],
                             "verbmem_rougeL_f1": v, "verbmem_rougeL_recall": 0.0})
                 for d, v in docs[scheme].items()]
        (folder / f"samples_muse_news_verbmem_f_{stamp}.jsonl").write_text("\n".join(lines))
    return path


TARGET = {"none": dict(VerbMem_f=40.0, KnowMem_f=30.0, KnowMem_r=50.0, PrivLeak=-90.0),
          "bnb-int8": dict(VerbMem_f=40.0, KnowMem_f=30.0, KnowMem_r=50.0, PrivLeak=-90.0),
          "bnb-fp4": dict(VerbMem_f=38.0, KnowMem_f=29.0, KnowMem_r=48.0, PrivLeak=-85.0)}


@pytest.fixture
def folders(tmp_path):
    return {
        "target": sweep_folder(tmp_path / "target", TARGET),
        # retained 20.0 -> 50.0 at FP4 (+30.0): recovers; utility 45/50 = 90.0
        "recovering": sweep_folder(tmp_path / "recovering" / "results", {
            "none": dict(VerbMem_f=8.0, KnowMem_f=3.0, KnowMem_r=45.0, PrivLeak=5.0),
            "bnb-int8": dict(VerbMem_f=8.0, KnowMem_f=3.0, KnowMem_r=45.0, PrivLeak=5.0),
            "bnb-fp4": dict(VerbMem_f=19.0, KnowMem_f=9.0, KnowMem_r=43.2, PrivLeak=-40.0)}),
        # 20.0 -> 100*11/38 = 28.947...: +8.947 < 10: robust
        "robust": sweep_folder(tmp_path / "robust", {
            "none": dict(VerbMem_f=8.0, KnowMem_f=3.0, KnowMem_r=40.0, PrivLeak=2.0),
            "bnb-fp4": dict(VerbMem_f=11.0, KnowMem_f=4.0, KnowMem_r=40.0, PrivLeak=1.0)}),
        # utility 10/50 = 20% < 50%: utility lost, although FP4 would count as recovery
        "destroyed": sweep_folder(tmp_path / "destroyed", {
            "none": dict(VerbMem_f=0.0, KnowMem_f=0.0, KnowMem_r=10.0, PrivLeak=60.0),
            "bnb-fp4": dict(VerbMem_f=19.0, KnowMem_f=0.0, KnowMem_r=10.0, PrivLeak=50.0)}),
        # 100*38/40 = 95% retained at full precision: nothing forgotten
        "untouched": sweep_folder(tmp_path / "untouched", {
            "none": dict(VerbMem_f=38.0, KnowMem_f=30.0, KnowMem_r=50.0, PrivLeak=-88.0),
            "bnb-fp4": dict(VerbMem_f=38.0, KnowMem_f=30.0, KnowMem_r=48.0, PrivLeak=-85.0)}),
    }


def test_retained_utility_change_and_verdicts(folders):
    report = compare.compare(folders["target"], [folders[k] for k in
                                                 ("recovering", "robust", "destroyed",
                                                  "untouched")])
    (news,) = report["corpora"]
    assert news["corpus"] == "news" and list(news["target"]) == ["none", "bnb-int8", "bnb-fp4"]
    models = {m["name"]: m for m in news["models"]}
    assert list(models) == ["recovering", "robust", "destroyed", "untouched"]  # results/ -> parent
    rows = {r["scheme"]: r for r in models["recovering"]["rows"]}
    assert list(rows) == ["none", "bnb-int8", "bnb-fp4"]  # full, 8-bit, 4-bit
    assert rows["none"]["retained"] == 20.0 and rows["none"]["utility"] == 90.0
    assert rows["none"]["change"] is None
    assert rows["bnb-int8"]["retained"] == 20.0 and rows["bnb-int8"]["change"] == 0.0
    assert rows["bnb-fp4"]["retained"] == 50.0 and rows["bnb-fp4"]["change"] == 30.0
    assert rows["bnb-fp4"]["utility"] == pytest.approx(90.0)  # 43.2 / 48
    assert rows["bnb-fp4"]["metrics"] == {"VerbMem_f": 19.0, "KnowMem_f": 9.0,
                                          "KnowMem_r": 43.2, "PrivLeak": -40.0}
    assert rows["bnb-fp4"]["retained_ci"] is None and rows["bnb-fp4"]["change_ci"] is None
    assert models["recovering"]["verdict"] == "recovers"
    assert models["recovering"]["reason"] == "bnb-fp4: retained 20.0% -> 50.0% (+30.0 >= 10 " \
                                             "points)"
    robust = {r["scheme"]: r for r in models["robust"]["rows"]}
    assert robust["bnb-fp4"]["change"] == pytest.approx(100 * 11 / 38 - 20)
    assert models["robust"]["verdict"] == "robust"
    assert models["robust"]["reason"] == "largest 4-bit change +8.9 points (bnb-fp4) < 10"
    assert models["destroyed"]["verdict"] == "utility lost"
    assert models["destroyed"]["reason"] == "utility kept 20.0% < 50% at full precision"
    assert models["untouched"]["verdict"] == "n/a"
    assert "nothing forgotten" in models["untouched"]["reason"]


def test_verdict_rule_edges():
    assert verdict.recovers(90.0, 100.0) and not verdict.recovers(90.1, 100.1)
    assert not verdict.recovers(20.0, 29.99) and verdict.recovers(20.0, 30.0)
    assert verdict.verdict(20.0, {"bnb-fp4": 30.0}, 50.0)[0] == "recovers"  # gate is strict <
    assert verdict.verdict(20.0, {"bnb-fp4": 30.0}, 49.9)[0] == "utility lost"
    assert verdict.verdict(20.0, {"bnb-fp4": 29.0, "gptq:4": 31.0}, None) == \
        ("recovers", "gptq:4: retained 20.0% -> 31.0% (+11.0 >= 10 points)")
    assert verdict.verdict(20.0, {}, 90.0) == ("n/a", "no 4-bit results")
    assert verdict.verdict(None, {"bnb-fp4": 30.0}, 90.0)[0] == "n/a"


def test_command_prints_and_writes_json_and_markdown(folders, tmp_path, capsys):
    out_json, out_md = tmp_path / "c.json", tmp_path / "c.md"
    assert main(["compare", str(folders["target"]), str(folders["recovering"]),
                 str(folders["destroyed"]), "--json", str(out_json), "--markdown",
                 str(out_md)]) == 0
    printed = capsys.readouterr().out
    assert "recovering: RECOVERS (bnb-fp4: retained 20.0% -> 50.0%" in printed
    assert "destroyed: UTILITY LOST (utility kept 20.0% < 50%" in printed
    line = next(x for x in printed.splitlines() if x.startswith("recovering") and "bnb-fp4" in x)
    assert line.split() == ["recovering", "bnb-fp4", "19.0", "9.0", "43.2", "-40.0", "50.0",
                            "n/a", "+30.0", "n/a", "90.0"]
    target_line = next(x for x in printed.splitlines() if x.startswith("target (target)  none"))
    assert target_line.split()[3:] == ["40.0", "30.0", "50.0", "-90.0"]
    assert verdict.rule_text() in printed
    data = json.loads(out_json.read_text())
    assert data["rule"]["utility_gate"] == 50.0 and data["rule"]["recovery_points"] == 10.0
    assert [m["verdict"] for m in data["corpora"][0]["models"]] == ["recovers", "utility lost"]
    md = out_md.read_text()
    assert "| recovering | bnb-fp4 | 19.0 | 9.0 | 43.2 | -40.0 | 50.0 | n/a | +30.0 | n/a | " \
           "90.0 |" in md
    assert "| destroyed | **utility lost** |" in md


def test_a_single_results_file_and_bad_inputs(folders, tmp_path):
    run = compare.load_run(folders["robust"] / "bnb-fp4.json")
    assert list(run.results) == ["bnb-fp4"] and run.name == "robust"
    with pytest.raises(MuseQuantError, match="does not exist"):
        compare.load_run(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(MuseQuantError, match="no lm-eval results files"):
        compare.load_run(tmp_path / "empty")
    (folders["robust"] / "copy.json").write_text((folders["robust"] / "none.json").read_text())
    with pytest.raises(MuseQuantError, match="hold results at scheme none"):
        compare.load_run(folders["robust"])
    with pytest.raises(MuseQuantError, match="no muse_<corpus>_verbmem_f results"):
        compare.compare(sweep_folder(tmp_path / "t2", {"none": dict(KnowMem_r=1.0)}),
                        [folders["untouched"]])


# ------------------------------------------------------------------ bootstrap
def test_bootstrap_degenerate_interval_is_the_value():
    """Every document of the unlearned model scores half the target's: every resample's ratio
    is exactly 50, so the interval is [50, 50]."""
    u, t = {0: 5.0, 1: 10.0, 2: 20.0}, {0: 10.0, 1: 20.0, 2: 40.0}
    assert bootstrap.retained_ci(u, t) == (50.0, 50.0)
    # 4-bit: three quarters of the target's on every document: the change is 75 - 50 = 25
    uq, tq = {0: 6.0, 1: 15.0, 2: 30.0}, {0: 8.0, 1: 20.0, 2: 40.0}
    low, high = bootstrap.change_ci(u, t, uq, tq)
    assert low == pytest.approx(25.0) and high == pytest.approx(25.0)


def test_bootstrap_two_documents_by_hand():
    """Two documents, u = (0, 10), t = (10, 10): a resample takes (0,0), (0,10)/(10,0) or
    (10,10) with probability 1/4, 1/2, 1/4, i.e. retained 0, 50 or 100. In 1000 resamples 0 and
    100 each come far more often than 2.5% of the time, so the 95% interval is [0, 100]."""
    u, t = {"a": 0.0, "b": 10.0}, {"a": 10.0, "b": 10.0}
    assert bootstrap.retained_ci(u, t) == (0.0, 100.0)
    assert bootstrap.retained_ci(u, t) == bootstrap.retained_ci(u, t)  # fixed seed
    # only the documents both have count: here only "b", where u = t
    assert bootstrap.retained_ci({"b": 10.0, "c": 0.0}, t) == (100.0, 100.0)


def test_bootstrap_undefined_ratio_is_none():
    assert bootstrap.retained_ci({0: 1.0, 1: 2.0}, {0: 0.0, 1: 0.0}) is None
    assert bootstrap.retained_ci({0: 1.0}, {1: 1.0}) is None  # no common document
    assert math.isnan(bootstrap.ratio([1.0], [0.0]))


def test_intervals_from_lm_eval_samples(tmp_path):
    """lm_eval --log_samples output (scheme from model_args quant=): the per-document values
    give the intervals; degenerate documents give a point interval at the point estimate."""
    docs_t = {"none": {0: 40.0, 1: 20.0, 2: 60.0}, "bnb-fp4": {0: 40.0, 1: 20.0, 2: 60.0}}
    docs_u = {"none": {0: 10.0, 1: 5.0, 2: 15.0}, "bnb-fp4": {0: 20.0, 1: 10.0, 2: 30.0}}
    target = lm_eval_folder(tmp_path / "t", {"none": dict(VerbMem_f=40.0, KnowMem_r=50.0),
                                             "bnb-fp4": dict(VerbMem_f=40.0, KnowMem_r=50.0)},
                            docs_t)
    unlearned = lm_eval_folder(tmp_path / "u", {"none": dict(VerbMem_f=10.0, KnowMem_r=50.0),
                                                "bnb-fp4": dict(VerbMem_f=20.0,
                                                                KnowMem_r=50.0)}, docs_u)
    run = compare.load_run(unlearned)
    assert sorted(run.results) == ["bnb-fp4", "none"]
    assert compare.doc_scores(run.files["none"]) == {
        "muse_news_verbmem_f": {"verbmem_rougeL_f1": {0: 10.0, 1: 5.0, 2: 15.0},
                                "verbmem_rougeL_recall": {0: 0.0, 1: 0.0, 2: 0.0}}}
    assert compare.doc_scores(tmp_path / "t" / "model" / "other.json") is None
    (model,) = compare.compare(target, [unlearned])["corpora"][0]["models"]
    rows = {r["scheme"]: r for r in model["rows"]}
    assert rows["none"]["retained"] == 25.0 and rows["none"]["retained_ci"] == (25.0, 25.0)
    assert rows["bnb-fp4"]["retained"] == 50.0 and rows["bnb-fp4"]["retained_ci"] == (50.0, 50.0)
    assert rows["bnb-fp4"]["change"] == 25.0
    assert rows["bnb-fp4"]["change_ci"] == (25.0, 25.0)
    assert model["verdict"] == "recovers"
    table = compare.format_table(compare.compare(target, [unlearned]))
    assert "50.0  [50.0, 50.0]      +25.0  [+25.0, +25.0]" in table


# ------------------------------------------------------------------ end to end
@pytest.mark.slow
def test_sweep_target_and_compare_on_the_tiny_model(tiny_model_dir, small_model_dir, tmp_path,
                                                    capsys):
    """The trained tiny model as the target, a random one as the "unlearned" model: sweep
    --target prints the table; compare on lm_eval --log_samples output prints intervals."""
    from harness_ext.io import load_results

    common = ["--tasks", "muse_news_verbmem_f,muse_news_knowmem_r", "--metadata",
              "muse_data=embedded", "--limit", "3", "--device", "cpu", "--batch_size", "8"]
    target, unlearned = tmp_path / "target", tmp_path / "unlearned"
    assert main(["sweep", "--model_args", f"pretrained={tiny_model_dir}", "--quant",
                 "none,bnb-fp4", *common, "--output_path", str(target)]) == 0
    capsys.readouterr()
    assert main(["sweep", "--model_args", f"pretrained={small_model_dir}", "--quant",
                 "none,bnb-fp4", *common, "--output_path", str(unlearned), "--target",
                 str(target)]) == 0
    printed = capsys.readouterr().out
    assert "MUSE-news: retained % = 100 * VerbMem_f(unlearned) / VerbMem_f(target)" in printed
    assert "\nunlearned: " in printed and verdict.rule_text() in printed
    (model,) = compare.compare(target, [unlearned])["corpora"][0]["models"]
    for row in model["rows"]:
        name = row["scheme"].replace(":", "_") + ".json"
        u = load_results(unlearned / name)["results"]["muse_news_verbmem_f"]
        t = load_results(target / name)["results"]["muse_news_verbmem_f"]
        assert t["verbmem_rougeL_f1,none"] > 0  # the tiny model was trained on these texts
        assert row["retained"] == pytest.approx(100 * u["verbmem_rougeL_f1,none"]
                                                / t["verbmem_rougeL_f1,none"])
        # the sweep's .samples.jsonl gives per-document values, so intervals
        low, high = row["retained_ci"]
        assert low <= row["retained"] + 1e-9 and row["retained"] <= high + 1e-9

    # lm_eval --log_samples output: per-document values, so intervals
    for model_dir, folder in ((tiny_model_dir, "t"), (small_model_dir, "u")):
        for scheme in ("none", "bnb-fp4"):
            assert main(["eval", "--model_args", f"pretrained={model_dir},quant={scheme}",
                         *common, "--log_samples", "--output_path",
                         str(tmp_path / folder / scheme)]) == 0
    out_json = tmp_path / "compare.json"
    capsys.readouterr()
    assert main(["compare", str(tmp_path / "t"), str(tmp_path / "u"), "--json",
                 str(out_json)]) == 0
    printed = capsys.readouterr().out
    (model,) = json.loads(out_json.read_text())["corpora"][0]["models"]
    rows = {r["scheme"]: r for r in model["rows"]}
    for row in rows.values():
        low, high = row["retained_ci"]
        assert low <= row["retained"] + 1e-9 and row["retained"] <= high + 1e-9
    low, high = rows["bnb-fp4"]["change_ci"]
    assert low <= rows["bnb-fp4"]["change"] + 1e-9 <= high + 2e-9
    assert f"[{low:+.1f}, {high:+.1f}]" in printed
