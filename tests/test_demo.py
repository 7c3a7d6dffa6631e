"""`muse-quant demo`: --fast runs every stage and writes the summary, the demo leaderboard and the
plots; a re-run reuses the cache; bad --out is refused without touching anything."""

import json

import pytest

from harness_ext.cli import main
from harness_ext.demo.config import DEFAULT, FAST, METHODS, SCHEMES
from harness_ext.demo.recovery_map import (POINT_FILE, MapAxes, build_report, cell_name,
                                           format_map, is_recovery, plot_map, run_recovery_map,
                                           target_folder, width_recipe)
from harness_ext.errors import MuseQuantError


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
        assert set(row["retained"]) == set(FAST.schemes)
        assert all(isinstance(v, float) for v in row["retained"].values()), row
        assert "bnb-fp4" in row["survival_ratio"]  # diagnose ran
        # the mechanism, per method; undefined (None) when the update left every quantized
        # weight unchanged (--fast's 2-step NPO_KLR_SURE moves only unquantized tensors)
        if row["unchanged_fraction"]["bnb-fp4"] < 1.0:
            assert isinstance(row["projection"]["bnb-fp4"], float), row
        else:
            assert row["projection"]["bnb-fp4"] is None
    assert any(isinstance(r["projection"]["bnb-fp4"], float) for r in summary["rows"])
    by_method = {r["method"]: r for r in summary["rows"]}
    # GA_GDR moves every quantized weight a little: a survival ratio exists
    assert by_method["ga_gdr"]["survival_ratio"]["bnb-fp4"] > 0
    baselines = [r for r in summary["rows"] if r["baseline"]]
    assert [r["method"] for r in baselines] == ["ga_gdr"]  # SURE is not a baseline
    assert summary["baseline_average"]["none"] == pytest.approx(baselines[0]["retained"]["none"])
    text = (out / "summary.md").read_text()
    assert "GDR/KLR baselines, retained knowledge full -> 4-bit" in text and "recovery:" in text
    assert "projection" in text.splitlines()[3]  # a column of the table
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


def _point(method, lr, full, four, survival, width=128, precision="fp32", seed=0,
           projection=0.5):
    return {"method": method, "precision": precision, "lr": lr, "width": width, "layers": 2,
            "seed": seed, "verbmem_f": {}, "target_verbmem_f": {}, "retained_full": full,
            "retained_4bit": four, "survival_ratio": survival, "projection": projection,
            "sub_half_step_share": 0.9, "unchanged_fraction": 0.0}


def test_recovery_map_reports_where_recovery_appears(tmp_path):
    report = build_report("news", [_point("ga_gdr", 1e-5, 20.0, 45.0, 0.1),
                                   _point("ga_gdr", 1e-4, 5.0, 8.0, 1.2)])
    assert report["recovery_found"] == [{"width": 128, "method": "ga_gdr", "precision": "fp32",
                                         "lr": 1e-5}]
    text = format_map(report)
    assert ("recovery (full <= 90, 4-bit >= full + 10 points) at: width 128 ga_gdr fp32 "
            "lr 1e-05") in text
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


def test_recovery_map_rows_are_means_over_seeds_per_width_and_precision(tmp_path):
    points = [_point("ga_gdr", 1e-5, 90.0, 100.0, 0.8, width=512, precision="bf16", seed=0,
                     projection=0.2),
              _point("ga_gdr", 1e-5, 80.0, 96.0, 0.8, width=512, precision="bf16", seed=1,
                     projection=0.3),
              _point("ga_gdr", 1e-5, 30.0, 31.0, 1.0, width=512, precision="fp32"),
              _point("ga_gdr", 1e-5, 99.0, 99.0, 0.9, width=128, precision="bf16")]
    report = build_report("news", points)
    assert report["widths"] == [128, 512] and report["precisions"] == ["bf16", "fp32"]
    by_cell = {(r["width"], r["precision"]): r for r in report["rows"]}
    mean = by_cell[(512, "bf16")]
    assert mean["seeds"] == [0, 1] and mean["retained_full"] == 85.0
    assert mean["retained_4bit"] == 98.0 and mean["projection"] == pytest.approx(0.25)
    assert mean["retained_full_range"] == [80.0, 90.0]
    # the mean forgot 15 points and 4-bit brought 13 back: recovery; one seed alone would not
    assert report["recovery_found"] == [{"width": 512, "method": "ga_gdr", "precision": "bf16",
                                         "lr": 1e-5}]
    from harness_ext.demo.map_report import write_tables

    table = write_tables(report, tmp_path / "map.md").read_text()
    assert "| 512 | 2 | bf16 | ga_gdr | 1e-05 | 0,1 | 85.0 | 98.0 | 13.0 | 0.25 |" in table
    assert "<svg" in plot_map(report, tmp_path / "map.svg").read_text()


@pytest.mark.parametrize("flags, message", [
    (dict(widths="100"), "not a positive multiple of 128"),
    (dict(widths="0,128"), "not a positive multiple of 128"),
    (dict(widths="wide"), "is not a list of integers"),
    (dict(precisions="fp16"), "unknown --precisions"),
    (dict(precisions=","), "unknown --precisions"),
    (dict(lrs="1e-5,-1"), "must be positive"),
    (dict(lrs="fast"), "is not a list of numbers"),
    (dict(seeds="0.5"), "is not a list of numbers"),
    (dict(methods="ga_gdr,forget_all"), "unknown --map_methods"),
])
def test_recovery_map_axes_are_validated(flags, message):
    with pytest.raises(MuseQuantError, match=message) as err:
        MapAxes.parse(DEFAULT, **flags)
    assert err.value.fix  # every error says how to fix it


def test_recovery_map_axes_parse_and_default_to_the_recipes():
    from harness_ext import recipes

    axes = MapAxes.parse(DEFAULT)
    assert axes.widths == recipes.RECOVERY_MAP_WIDTHS == (128, 512)
    assert axes.precisions == ("bf16", "fp32") and axes.lrs == (1e-5, 3e-5)
    assert axes.methods == DEFAULT.map_methods and axes.seeds == (0,)
    axes = MapAxes.parse(DEFAULT, widths="1024, 256", precisions="bf16", lrs="1e-5",
                         methods="npo_gdr", seeds="0,2")
    assert axes.widths == (1024, 256) and axes.seeds == (0, 2)
    assert axes.cells() == [(1024, "bf16", "npo_gdr", 1e-5, 0), (1024, "bf16", "npo_gdr", 1e-5, 2),
                            (256, "bf16", "npo_gdr", 1e-5, 0), (256, "bf16", "npo_gdr", 1e-5, 2)]
    fast = MapAxes.parse(FAST)  # --fast: its own width, fp32, its two lrs
    assert fast.widths == (FAST.model.hidden_size,) and fast.precisions == ("fp32",)
    assert fast.lrs == FAST.map_lrs


def test_recovery_map_targets_are_cached_per_width_and_recipe(tmp_path):
    assert width_recipe(DEFAULT.model, 128) is DEFAULT.model  # the demo's own target
    wide = width_recipe(DEFAULT.model, 512)
    assert (wide.hidden_size, wide.intermediate_size, wide.num_hidden_layers,
            wide.num_attention_heads) == (512, 1536, 2, 8)
    assert wide.finetune_epochs == DEFAULT.model.finetune_epochs  # the demo's training recipe
    folder = target_folder(tmp_path, wide)
    assert folder.name.startswith("w512-") and folder == target_folder(tmp_path, wide)
    from dataclasses import replace

    assert target_folder(tmp_path, replace(wide, finetune_epochs=3)) != folder  # never stale


class _DoneDemo:
    """A demo whose every stage fails: a map over finished cells must not call any."""

    def __init__(self, out, config=DEFAULT):
        self.out, self.config, self.progress, self.logged = out, config, False, []

    def log(self, text):
        self.logged.append(text)

    def data(self):
        pass

    def __getattr__(self, name):
        raise AssertionError(f"a finished cell ran {name}")


def test_recovery_map_resumes_from_finished_cells_and_shows_every_point(tmp_path):
    root = tmp_path / "news" / "recovery_map"
    for point in (_point("ga_gdr", 1e-5, 99.0, 100.0, 0.9, width=512, precision="bf16"),
                  _point("ga_gdr", 3e-5, 60.0, 61.0, 1.0, width=128, precision="fp32")):
        cell = root / f"w{point['width']}" / cell_name("ga_gdr", point["precision"],
                                                        point["lr"], 0)
        cell.mkdir(parents=True)
        (cell / POINT_FILE).write_text(json.dumps(point))
    demo = _DoneDemo(tmp_path)
    # run in parts: this part asks for one finished cell; the map shows both runs' points
    axes = MapAxes.parse(DEFAULT, widths="512", precisions="bf16", lrs="1e-5",
                         methods="ga_gdr")
    report = run_recovery_map(demo, "news", axes)
    assert [(p["width"], p["lr"]) for p in report["points"]] == [(128, 3e-5), (512, 1e-5)]
    assert (root / "recovery_map.md").exists() and (root / "recovery_map.svg").exists()
    assert json.loads((root / "points.json").read_text())["widths"] == [128, 512]
    assert "no recovery" in demo.logged[-1]
    # an unfinished cell is run: the stub refuses its first stage (the demo's own target)
    with pytest.raises(AssertionError, match="ran models"):
        run_recovery_map(demo, "news", MapAxes.parse(DEFAULT, widths="128", precisions="bf16",
                                                     lrs="1e-5", methods="ga_gdr"))


@pytest.mark.slow
def test_recovery_map_runs_a_tiny_cell(fast_demo, capsys):
    """One fp32 and one bf16 cell on the --fast toy (its models are reused from the demo)."""
    assert main(["demo", "--fast", "--recovery_map", "--out", str(fast_demo), "--lrs", "1e-3",
                 "--precisions", "fp32,bf16", "--no_progress"]) == 0
    root = fast_demo / "news" / "recovery_map"
    report = json.loads((root / "points.json").read_text())
    assert {(p["precision"], p["lr"]) for p in report["points"]} == {("fp32", 1e-3),
                                                                      ("bf16", 1e-3)}
    for p in report["points"]:
        assert p["width"] == FAST.model.hidden_size and p["steps"] == 2
        assert isinstance(p["retained_full"], float) and isinstance(p["retained_4bit"], float)
        assert 0 < p["projection"] <= 1.5
    bf16 = next(p for p in report["points"] if p["precision"] == "bf16")
    fp32 = next(p for p in report["points"] if p["precision"] == "fp32")
    assert bf16["unchanged_fraction"] > fp32["unchanged_fraction"]  # bf16 leaves weights as is
    assert "| width |" in (root / "recovery_map.md").read_text()
    assert "recovery map, news" in capsys.readouterr().out
    # a re-run reuses every cell
    done = {p: p.stat().st_mtime_ns for p in root.rglob(".done.json")}
    assert main(["demo", "--fast", "--recovery_map", "--out", str(fast_demo), "--lrs", "1e-3",
                 "--precisions", "fp32,bf16", "--no_progress"]) == 0
    assert {p: p.stat().st_mtime_ns for p in root.rglob(".done.json")} == done


def test_medium_scale_is_the_papers_regime(tmp_path, capsys):
    from harness_ext.demo.config import MEDIUM, SCALES
    from harness_ext.recipes import MUSE_LR

    assert SCALES == {"small": DEFAULT, "medium": MEDIUM}
    assert MEDIUM.unlearn.precision == "bf16" and MEDIUM.unlearn.lr == MUSE_LR == 1e-5
    assert (MEDIUM.model.hidden_size, MEDIUM.model.num_hidden_layers) == (1024, 2)
    assert MEDIUM.schemes == DEFAULT.schemes and MEDIUM.methods == DEFAULT.methods
    args = MEDIUM.unlearn.arguments("ga_gdr")
    assert args[args.index("--precision") + 1] == "bf16" and args[args.index("--lr") + 1] == "1e-05"
    # 240 steps on the 16 forget documents (80, the default's, did not forget at width 1024)
    assert args[args.index("--epochs") + 1] == "15" and DEFAULT.unlearn.epochs == 5
    assert main(["demo", "--fast", "--scale", "medium", "--out", str(tmp_path / "x")]) == 2
    assert "--fast and --scale medium" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_recovery_map_accepts_a_folder_whose_demo_had_other_schemes(tmp_path):
    from dataclasses import replace

    from harness_ext.demo import prepare_out
    from harness_ext.demo.config import MAP_FIELDS
    from harness_ext.errors import MuseQuantError

    out = tmp_path / "demo"
    prepare_out(out, DEFAULT, fresh=False)
    other_schemes = replace(DEFAULT, schemes=("none", "bnb-fp4"))
    # the map's cells depend on the model, the unlearning recipe and the evaluation only
    prepare_out(out, other_schemes, fresh=False, fields=MAP_FIELDS)
    with pytest.raises(MuseQuantError, match="differs in schemes"):
        prepare_out(out, other_schemes, fresh=False)
    other_model = replace(DEFAULT, model=replace(DEFAULT.model, hidden_size=256))
    with pytest.raises(MuseQuantError, match="differs in model"):
        prepare_out(out, other_model, fresh=False, fields=MAP_FIELDS)


@pytest.mark.slow
def test_demo_in_pure_bf16_runs_every_stage(tmp_path):
    """``--scale medium``'s precision path at --fast's sizes: bf16-stored models, pure-bf16
    unlearning, an fp32-arithmetic sweep of the bf16 deltas, diagnose and the leaderboard."""
    from dataclasses import replace

    import torch
    from safetensors.torch import load_file

    from harness_ext.demo import MEDIUM, DemoRun, prepare_out
    from harness_ext.recipes import REQUIRED_SCHEMES

    # the schemes a leaderboard entry needs (the demo adds its models to its leaderboard)
    config = replace(FAST, name="fast-bf16", methods=("ga_gdr",), schemes=REQUIRED_SCHEMES,
                     unlearn=replace(FAST.unlearn, precision=MEDIUM.unlearn.precision))
    out = tmp_path / "demo"
    prepare_out(out, config, fresh=False)
    summary = DemoRun(config, out, ("news",), progress=False, jobs=1).run()
    target = load_file(out / "news" / "models" / "target" / "model.safetensors")
    assert {t.dtype for t in target.values()} == {torch.bfloat16}
    delta = load_file(out / "news" / "unlearn" / "ga_gdr" / "run" / "delta.safetensors")
    assert delta and {t.dtype for t in delta.values()} <= {torch.bfloat16, torch.int64}
    for scheme in ("none", "bnb-int8-real", "bnb-fp4"):
        assert (out / "news" / "sweep" / "ga_gdr" / "results" / f"{scheme}.json").exists()
    rows = json.loads((out / "summary.json").read_text())["news"]["rows"]
    assert [r["method"] for r in rows] == ["ga_gdr"]
    assert all(isinstance(v, float) for v in rows[0]["retained"].values())
    assert summary is not None
