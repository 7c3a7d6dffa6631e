"""`muse-quant sweep`: one results JSON per scheme from one loaded model, resume after an
interruption, failing schemes reported without losing the others, argument parsing."""

import json

import pytest

from harness_ext.evaluation import samples, sweep
from harness_ext.evaluation.samples import samples_path
from harness_ext.cli import main
from harness_ext.errors import MuseQuantError
from harness_ext.io import load_results, recorded_scheme, scheme_filename

SIX = ["none", "bnb-int8", "bnb-fp4", "rtn:4:g128", "gptq:4", "awq:4"]
TASK = "muse_news_privleak"


def run_sweep_cli(model_dir, out, schemes, extra_model_args=",calib=retain,calib_samples=2,"
                  "calib_seqlen=32", limit=4):
    return main(["sweep", "--model_args", f"pretrained={model_dir}{extra_model_args}",
                 "--quant", ",".join(schemes), "--tasks", TASK, "--metadata",
                 "muse_data=embedded", "--limit", str(limit), "--device", "cpu",
                 "--batch_size", "8", "--output_path", str(out)])


@pytest.mark.slow
def test_six_schemes_resume_after_an_interruption(small_model_dir, tmp_path, monkeypatch,
                                                  capsys):
    import lm_eval

    real_evaluate = lm_eval.simple_evaluate
    evaluated = []

    def interrupt_at_the_fourth(*args, **kwargs):
        evaluated.append(kwargs["model"].muse_info["quantization"]["scheme"])
        if len(evaluated) == 4:
            raise KeyboardInterrupt
        return real_evaluate(*args, **kwargs)

    out = tmp_path / "sweep"
    monkeypatch.setattr(lm_eval, "simple_evaluate", interrupt_at_the_fourth)
    with pytest.raises(KeyboardInterrupt):
        sweep.run_sweep(f"pretrained={small_model_dir},calib=retain,calib_samples=2,"
                        "calib_seqlen=32", SIX, TASK, out,
                        metadata="muse_data=embedded", limit=4, device="cpu", batch_size=8,
                        progress=False)
    assert evaluated == SIX[:4]
    first = {s: (out / scheme_filename(s)).read_bytes() for s in SIX[:3]}
    # the three results, their per-document samples and the provenance; no lock is left behind
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [scheme_filename(s) for s in SIX[:3]] + ["provenance.json"] +
        [samples_path(out / scheme_filename(s)).name for s in SIX[:3]])

    # resume: the three finished schemes are skipped, the other three run; plus one that fails
    evaluated.clear()
    monkeypatch.setattr(lm_eval, "simple_evaluate",
                        lambda *a, **k: evaluated.append(k["model"].muse_info["quantization"][
                            "scheme"]) or real_evaluate(*a, **k))
    capsys.readouterr()
    assert run_sweep_cli(small_model_dir, out, SIX + ["rtn:4:g96"]) == 1
    printed = capsys.readouterr()
    assert evaluated == SIX[3:]
    assert "skipped (already done): none" in printed.out
    assert "FAILED: rtn:4:g96" in printed.err and "group size 96 does not divide" in printed.err
    for scheme in SIX[:3]:  # untouched
        assert (out / scheme_filename(scheme)).read_bytes() == first[scheme]
    for scheme in SIX:
        res = load_results(out / scheme_filename(scheme))
        assert recorded_scheme(res) == scheme
        assert res["config"]["model"] == "muse_quant"
        assert res["config"]["model_args"]["quant"] == scheme
        assert res["configs"][TASK]["metadata"]["muse_data"] == "embedded"
        assert isinstance(res["results"][TASK]["mink40_auc,none"], float)
        assert res["n-samples"][TASK]["effective"] == 4
        assert "total_evaluation_time_seconds" in res and res["model_source"] == "muse_quant"
        timing = res["config"]["muse_quant"]["sweep"]
        assert timing["quantize_seconds"] >= 0 and timing["evaluate_seconds"] > 0
        # every aggregate is recomputed exactly from the per-document samples
        per_doc = samples.read(samples_path(out / scheme_filename(scheme)))
        assert samples.aggregate_mismatches(res, per_doc) == []
        assert per_doc["tasks"][0]["doc_id"] == [0, 1, 2, 3]
    gptq = load_results(out / "gptq_4.json")["config"]["muse_quant"]["quantization"]
    assert gptq["calibration"]["source"] == "embedded:news/raw/retain1.json"
    rtn = load_results(out / "rtn_4_g128.json")["config"]["muse_quant"]["quantization"]
    assert rtn["n_modules"] == 14 and rtn["granularity"] == "group128"
    errors = json.loads((out / "errors.json").read_text())
    assert list(errors["failed"]) == ["rtn:4:g96"] and errors["skipped"] == SIX[:3]
    assert not (out / "rtn_4_g96.json").exists()

    # everything done: nothing is loaded, errors.json is cleared
    evaluated.clear()
    assert run_sweep_cli(small_model_dir, out, SIX) == 0
    assert evaluated == [] and not (out / "errors.json").exists()


def test_sweep_results_match_a_single_eval(small_model_dir, tmp_path):
    """The sweep's JSON for a scheme has the metrics `muse-quant eval` gives for that scheme."""
    assert run_sweep_cli(small_model_dir, tmp_path / "s", ["rtn:3", "bnb-nf4"],
                         extra_model_args="") == 0
    assert main(["eval", "--model", "muse_quant", "--model_args",
                 f"pretrained={small_model_dir},quant=bnb-nf4", "--tasks", TASK, "--metadata",
                 "muse_data=embedded", "--limit", "4", "--device", "cpu", "--batch_size", "8",
                 "--output_path", str(tmp_path / "e")]) == 0
    single = json.loads(next((tmp_path / "e").rglob("results_*.json")).read_text())
    swept = load_results(tmp_path / "s" / "bnb-nf4.json")
    assert swept["results"] == single["results"]
    assert set(single) - set(swept) == set()  # every key lm-eval writes is there


def test_existing_file_for_another_scheme_is_not_overwritten(small_model_dir, tmp_path, capsys):
    out = tmp_path / "o"
    assert run_sweep_cli(small_model_dir, out, ["none"], extra_model_args="", limit=2) == 0
    foreign = {"results": {}, "config": {"muse_quant": {"quantization": {"scheme": "rtn:8"}}}}
    (out / "bnb-fp4.json").write_text(json.dumps(foreign))
    assert run_sweep_cli(small_model_dir, out, ["bnb-fp4"], extra_model_args="", limit=2) == 1
    assert json.loads((out / "bnb-fp4.json").read_text()) == foreign
    assert "records scheme 'rtn:8'" in capsys.readouterr().err
    # results without a provenance record are refused before loading anything
    (out / "provenance.json").unlink()
    assert run_sweep_cli(small_model_dir, out, ["bnb-fp4"], extra_model_args="", limit=2) == 2
    assert "but no provenance.json" in capsys.readouterr().err


@pytest.mark.parametrize("model_args, quant, message", [
    ("pretrained=M,quant=bnb-fp4", "none", "sets quant, which the sweep sets itself"),
    ("pretrained=M,bnb-fp4", "none", "fragment 'bnb-fp4' is not key=value"),
    ("unlearned=X", "none", "has no pretrained="),
    ("pretrained=M", "none,rtn:99", "bit width 99 is not supported"),
    ("pretrained=M", "none,none", "lists none more than once"),
    ("pretrained=M", " , ", "no quantization schemes given"),
    ("pretrained=M,calib=wikipedia", "gptq:4", "unknown calib 'wikipedia'"),
    ("pretrained=M,device=cpu --device cpu", "none", "device is given both"),
])
def test_bad_arguments_fail_before_loading(tmp_path, model_args, quant, message, capsys):
    model_args, *flags = model_args.split(" ")
    code = main(["sweep", "--model_args", model_args, "--quant", quant, "--tasks", TASK,
                 "--output_path", str(tmp_path / "out"), *flags])
    assert code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_unknown_task_fails_before_loading(tmp_path, capsys):
    code = main(["sweep", "--model_args", "pretrained=M", "--quant", "none", "--tasks",
                 "muse_news_quantt", "--output_path", str(tmp_path / "out")])
    assert code == 2 and "unknown task(s): muse_news_quantt" in capsys.readouterr().err


def test_parse_kv_types_values_as_lm_eval_does():
    from harness_ext.io import parse_kv

    assert parse_kv("a=1, b=true,c=x=y,d=0.5,e=False,f=float32,") == \
        {"a": 1, "b": True, "c": "x=y", "d": 0.5, "e": False, "f": "float32"}
    assert parse_kv("") == {} and parse_kv(None) == {}
    given = {"pretrained": "/m"}
    assert parse_kv(given) == given and parse_kv(given) is not given
    with pytest.raises(MuseQuantError, match="--metadata fragment 'r' is not key=value") as err:
        parse_kv("r,alpha=2", "--metadata")
    assert "comma-separated list of key=value" in err.value.fix


def test_parsers():
    assert sweep.parse_scheme_list("none, bnb-fp4 ,rtn:4:g128") == ["none", "bnb-fp4",
                                                                     "rtn:4:g128"]
    assert sweep.parse_model_args("pretrained=/m,calib_samples=16,quant_lm_head=true") == \
        {"pretrained": "/m", "calib_samples": 16, "quant_lm_head": True}
    assert sweep.parse_metadata('{"muse_data": "embedded"}') == {"muse_data": "embedded"}
    assert sweep.parse_metadata("muse_data=embedded,retrain_auc=0.5") == \
        {"muse_data": "embedded", "retrain_auc": 0.5}
    with pytest.raises(MuseQuantError, match="not valid JSON"):
        sweep.parse_metadata("{oops")
