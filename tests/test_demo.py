"""`muse-quant demo`: --fast runs every stage and writes the summary, the demo leaderboard and the
plots; a re-run reuses the cache; bad --out is refused without touching anything."""

import json

import pytest

from harness_ext.cli import main
from harness_ext.demo.config import DEFAULT, FAST, METHODS, SCHEMES
from harness_ext.demo.recovery_map import format_map, is_recovery, plot_map


@pytest.fixture(scope="module")
def fast_demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "demo_out"
    assert main(["demo", "--fast", "--out", str(out), "--no_progress"]) == 0
    return out


@pytest.mark.slow
def test_fast_demo_runs_every_stage(fast_demo):
    out = fast_demo
    summary = json.loads((out / "summary.json").read_text())["news"]
    assert [r["method"] for r in summary["rows"]] != []
    assert sorted(r["method"] for r in summary["rows"]) == sorted(FAST.methods)
    for row in summary["rows"]:
        # every scheme was evaluated and gave a retained-knowledge number
        assert set(row["retained"]) == set(SCHEMES)
        assert all(isinstance(v, float) for v in row["retained"].values()), row
        assert "bnb-fp4" in row["survival_ratio"]  # diagnose ran
    by_method = {r["method"]: r for r in summary["rows"]}
    # GA_GDR moves every quantized weight a little: a survival ratio exists
    assert by_method["ga_gdr"]["survival_ratio"]["bnb-fp4"] > 0
    baselines = [r for r in summary["rows"] if r["baseline"]]
    assert [r["method"] for r in baselines] == ["ga_gdr"]  # SURE is not a baseline
    assert summary["baseline_average"]["none"] == pytest.approx(baselines[0]["retained"]["none"])
    text = (out / "summary.md").read_text()
    assert "GDR/KLR baselines, retained knowledge full -> 4-bit" in text and "recovery:" in text
    assert (out / "news_retained.svg").read_text().lstrip().startswith("<?xml")
    board = out / "leaderboard"
    assert "toy-news-ga-gdr" in (board / "README.md").read_text()
    assert (board / "news_forget_vs_utility.svg").exists()
    from harness_ext.leaderboard.validator import load_board

    loaded = load_board(board)
    assert loaded.problems == []
    assert {e.slug for e in loaded.entries} == {
        "toy-news-target", "toy-news-retrain", "toy-news-ga-gdr", "toy-news-npo-klr-sure"}
    for scheme in ("none", "bnb-fp4", "gptq_4", "awq_4", "rtn_4_g64", "bnb-int8",
                   "bnb-int8-real", "gguf_q4__k__m", "gguf_q8__0", "fp8_e4m3"):
        assert (out / "news" / "sweep" / "target" / "results" / f"{scheme}.json").exists()
    # the deployment formats, next to the paper's schemes
    assert summary["deployment"] == ["gguf:q4_k_m", "gguf:q8_0", "fp8:e4m3"]
    assert "GDR/KLR baselines, retained knowledge full -> deployment formats" in text
    # the toy's rows (128, 384) are not multiples of 256: llama.cpp's fallback types, recorded
    q4km = summary["tensor_types"]["gguf:q4_k_m"]
    assert q4km["fallbacks"] and set(q4km["fallbacks"]) <= {"Q4_K->Q5_0", "Q6_K->Q8_0"}
    assert "fallback applies: Q4_K->Q5_0" in text
    assert "Q4_K_M" in (out / "news_retained.svg").read_text()


@pytest.mark.slow
def test_rerun_reuses_every_stage(fast_demo, capsys):
    done = sorted(fast_demo.rglob(".done.json"))
    before = {p: p.stat().st_mtime_ns for p in done}
    assert main(["demo", "--fast", "--out", str(fast_demo), "--no_progress"]) == 0
    assert {p: p.stat().st_mtime_ns for p in done} == before
    assert "wall time of this run" in capsys.readouterr().out


@pytest.mark.slow
def test_another_configuration_or_folder_is_refused(fast_demo, tmp_path, capsys):
    # the default configuration does not silently reuse a --fast cache
    assert main(["demo", "--out", str(fast_demo), "--no_progress"]) == 2
    assert "another configuration" in capsys.readouterr().err
    # a folder the demo did not make is never used, nor deleted by --fresh
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "results.json").write_text("{}")
    for extra in ([], ["--fresh"]):
        assert main(["demo", "--fast", "--out", str(mine), "--no_progress", *extra]) == 2
        assert "was not made by `muse-quant demo`" in capsys.readouterr().err
        assert (mine / "results.json").read_text() == "{}"


def test_default_configuration_is_the_issue_list():
    assert DEFAULT.methods == METHODS
    assert set(METHODS) >= {"ga", "ga_gdr", "ga_klr", "npo", "npo_gdr", "npo_klr",
                            "ga_gdr_sure", "npo_klr_sure"}
    assert DEFAULT.schemes == ("none", "bnb-int8-real", "bnb-fp4", "gptq:4", "awq:4",
                               "gguf:q4_k_m", "gguf:q8_0", "fp8:e4m3")
    assert FAST.schemes == (*DEFAULT.schemes, "bnb-int8", "rtn:4:g64")
    args = DEFAULT.unlearn.arguments("npo_klr_sure")
    # the demo's lrs are MUSE's x10 with the paper's SURE:baseline ratio of 10 (see config.py)
    assert args[args.index("--lr") + 1] == "0.001"
    assert args[args.index("--sure_threshold") + 1] == "90" and args.count("--alpha") == 1
    assert args[args.index("--alpha") + 1] == "20"  # the paper's NPO_KLR_SURE alpha
    ga = DEFAULT.unlearn.arguments("ga")
    assert ga[ga.index("--lr") + 1] == "0.0001" and "--sure_threshold" not in ga


def _point(method, lr, full, four, survival):
    return {"method": method, "precision": "fp32", "lr": lr, "verbmem_f": {},
            "target_verbmem_f": {}, "retained_full": full, "retained_4bit": four,
            "survival_ratio": survival, "sub_half_step_share": 0.9, "unchanged_fraction": 0.0}


def test_recovery_map_reports_where_recovery_appears(tmp_path):
    report = {"corpus": "news", "methods": ["ga_gdr"], "lrs": [1e-5, 1e-4],
              "precisions": ["fp32"], "recovery_points": 10.0,
              "points": [_point("ga_gdr", 1e-5, 20.0, 45.0, 0.1),
                         _point("ga_gdr", 1e-4, 5.0, 8.0, 1.2)],
              "recovery_found": [{"method": "ga_gdr", "precision": "fp32", "lr": 1e-5}]}
    text = format_map(report)
    assert "recovery (full <= 90, 4-bit >= full + 10 points) at: ga_gdr fp32 lr 1e-05" in text
    assert "25.0" in text  # the 4-bit minus full gap of the first point
    report["recovery_found"] = []
    assert "no recovery" in format_map(report) and "lr 1e-05, 0.0001" in format_map(report)
    # a barely unlearned model drifting above the target at 4-bit is not recovery
    assert not is_recovery(_point("ga_gdr", 1e-5, 94.0, 104.5, 7.0))
    assert is_recovery(report["points"][0]) and not is_recovery(report["points"][1])
    svg = plot_map(report, tmp_path / "map.svg").read_text()
    assert "recovery map, news toy" in svg


def test_summary_shows_the_deployment_formats(tmp_path):
    from harness_ext.demo.summary import format_summary, plot_retained, tensor_types

    results = tmp_path / "results"
    results.mkdir()
    report = {"type_counts": {"Q5_0": 1, "Q8_0": 2},
              "tensors": {"blk.0.attn_q": {"type": "Q5_0", "fallback_from": "Q4_K"},
                          "blk.0.attn_v": {"type": "Q8_0", "fallback_from": "Q6_K"},
                          "output": {"type": "Q8_0"}}}
    (results / "gguf_q4__k__m.json").write_text(json.dumps(
        {"results": {}, "config": {"muse_quant": {"quantization": report}}}))
    types = tensor_types(results, "gguf:q4_k_m")
    assert types == {"type_counts": {"Q5_0": 1, "Q8_0": 2}, "tensors": 3,
                     "fallbacks": {"Q4_K->Q5_0": 1, "Q6_K->Q8_0": 1}}
    assert tensor_types(results, "fp8:e4m3") is None  # no results file / no per-tensor types
    schemes = ["none", "bnb-fp4", "gguf:q4_k_m", "fp8:e4m3"]
    retained = dict(zip(schemes, [10.0, 12.0, 30.0, 11.0]))
    s = {"corpus": "news", "schemes": schemes, "references": {},
         "rows": [{"method": "ga_gdr", "baseline": True, "retained": retained,
                   "knowmem_r": {"none": 7.0}, "survival_ratio": {"bnb-fp4": 2.5}}],
         "baseline_average": retained, "paper_average": [21, 83], "recovery": False,
         "deployment": ["gguf:q4_k_m", "fp8:e4m3"],
         "deployment_labels": {"gguf:q4_k_m": "Q4_K_M", "fp8:e4m3": "FP8"},
         "tensor_types": {"gguf:q4_k_m": types}}
    text = format_summary(s)
    main_table, deployment = text.split("deployment formats (")
    assert "bnb-fp4" in main_table and "Q4_K_M" not in main_table and "fp8" not in main_table
    assert deployment.splitlines()[1].split() == ["method", "full", "Q4_K_M", "FP8"]
    assert "full -> deployment formats: 10.0% -> Q4_K_M 30.0%, FP8 11.0%" in text
    assert ("Q4_K_M here: Q5_0 x1, Q8_0 x2; rows not a multiple of 256, so llama.cpp's "
            "fallback applies: Q4_K->Q5_0 x1, Q6_K->Q8_0 x1") in text
    svg = plot_retained(s, tmp_path / "news_retained.svg").read_text()
    assert "Q4_K_M" in svg and "FP8" in svg and "4-bit (bnb-fp4)" in svg
