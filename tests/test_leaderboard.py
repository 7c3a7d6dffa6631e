"""The leaderboard: entry validation (accept / reject), retained-knowledge arithmetic by hand,
deterministic rebuilds, drift detection, `leaderboard add` end to end."""

import filecmp
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from leaderboard_helpers import (SHA, edited_board, entry_meta, make_entry, make_results,
                                 problems_of, small_board, three_schemes, write_results)

from harness_ext.cli import main
from harness_ext.leaderboard import builder, scores
from harness_ext.leaderboard.add import checkpoint_sha256
from harness_ext.leaderboard.check import check, compare_results, unlearn_arguments
from harness_ext.leaderboard.entry import Entry
from harness_ext.leaderboard.validator import (MAX_ENTRY_BYTES, MAX_RESULTS_BYTES, check_results,
                                              current_tasks, load_board, load_plain_yaml)

REPO = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------- accept
def test_valid_board_loads(tmp_path):
    board = load_board(small_board(tmp_path / "lb"))
    assert board.problems == []
    assert sorted(e.slug for e in board.entries) == ["npo-klr", "retrain", "target"]
    method = next(e for e in board.entries if e.slug == "npo-klr")
    assert method.value("bnb-fp4", "verbmem_f") == 36.0
    assert method.value("none", "knowmem_r") == 30.0


def test_current_tasks_read_from_the_task_yamls():
    tasks = current_tasks()
    # versions come from the templates through `include:`
    assert tasks["muse_news_verbmem_f"] == 1.0 and tasks["muse_books_privleak"] == 1.0
    assert set(tasks) >= {f"muse_{c}_{s}" for c in ("news", "books")
                          for s in ("verbmem_f", "knowmem_f", "knowmem_r", "privleak", "quant")}


def test_current_tasks_follow_a_version_bump(tmp_path):
    tasks = tmp_path / "tasks"
    shutil.copytree(REPO / "tasks", tasks)
    template = tasks / "_verbmem_template_yaml"
    template.write_text(template.read_text().replace("version: 1.0", "version: 2.0"))
    bumped = current_tasks(str(tasks))
    assert bumped["muse_news_verbmem_f"] == 2.0 and bumped["muse_news_knowmem_f"] == 1.0
    problems = check_results(make_results(), "none.json", "news", "embedded", bumped, "none.json")
    assert any("muse_news_verbmem_f was evaluated at version 1.0, the current version is 2.0" in p
               for p in problems)


# ---------------------------------------------------------------- reject
def _edit_results(scheme, edit, slug="npo-klr"):
    def apply(root):
        path = root / "submissions" / "news" / slug / "results" / f"{scheme}.json"
        data = json.loads(path.read_text())
        edit(data)
        path.write_text(json.dumps(data))
    return apply


def _edit_meta(edit, slug="npo-klr"):
    def apply(root):
        path = root / "submissions" / "news" / slug / "entry.yaml"
        meta = yaml.safe_load(path.read_text())
        edit(meta)
        path.write_text(yaml.safe_dump(meta))
    return apply


def _missing_metric(root):
    _edit_results("bnb-fp4", lambda d: d["results"]["muse_news_knowmem_r"].pop(
        "knowmem_rougeL_f1,none"))(root)


def _scheme_mismatch(root):
    folder = root / "submissions" / "news" / "npo-klr" / "results"
    write_results(folder, make_results(scheme="bnb-fp4", unlearned="/checkpoints/npo-klr"),
                  name="bnb-int8-real.json")


def _oversized_results(root):
    _edit_results("none", lambda d: d.update(padding="x" * (MAX_RESULTS_BYTES + 1)))(root)


def _oversized_entry(root):
    _edit_meta(lambda m: m.update(notes="x" * (MAX_ENTRY_BYTES + 1)))(root)


def _duplicate_slug(root):
    make_entry(root, "target", three_schemes(), "books", kind="target",
               meta=entry_meta("target", "books", "Target"))


def _extra_file(root):
    (root / "submissions" / "news" / "npo-klr" / "run.py").write_text("print('hi')\n")


def _symlink(root):
    results = root / "submissions" / "news" / "npo-klr" / "results"
    (results / "awq_4.json").symlink_to(results / "none.json")


def _missing_scheme(root):
    (root / "submissions" / "news" / "npo-klr" / "results" / "bnb-int8-real.json").unlink()


def _other_corpus(root):
    folder = root / "submissions" / "news" / "npo-klr" / "results"
    write_results(folder, make_results(corpus="books", scheme="bnb-fp4",
                                       unlearned="/checkpoints/npo-klr"))


def _mixed_models(root):
    _edit_results("bnb-fp4", lambda d: d["config"]["muse_quant"].update(
        pretrained="/models/other"))(root)


REJECT = {
    "missing metric": (_missing_metric, "metric knowmem_rougeL_f1 of muse_news_knowmem_r is "
                                        "missing or not a finite number"),
    "NaN metric": (_edit_results("none", lambda d: d["results"]["muse_news_verbmem_f"].update(
        {"verbmem_rougeL_f1,none": float("nan")})), "not a finite number"),
    "scheme mismatch": (_scheme_mismatch, "records scheme 'bnb-fp4' but is named bnb-int8-real.json"),
    "wrong task version": (_edit_results("none", lambda d: d["versions"].update(
        muse_news_knowmem_f=0.9)), "muse_news_knowmem_f was evaluated at version 0.9, the "
                                   "current version is 1.0"),
    "unknown task": (_edit_results("none", lambda d: d["results"].update(mmlu={"acc,none": 0.3})),
                     "unknown task 'mmlu'"),
    "unknown key": (_edit_meta(lambda m: m.update(script="rm -rf /")),
                    "unknown key(s) 'script'"),
    "oversized results file": (_oversized_results, "byte cap"),
    "oversized entry.yaml": (_oversized_entry, "byte cap"),
    "duplicate slug": (_duplicate_slug, "duplicate slug 'target'"),
    "data source": (_edit_meta(lambda m: m.update(muse_data="hub")),
                    "computed on muse_data=embedded, but the entry says muse_data: hub"),
    "corpus": (_edit_meta(lambda m: m.update(corpus="books")),
               "corpus is 'books' but the entry is in submissions/news/"),
    "results of the other corpus": (_other_corpus, "does not belong to the news corpus"),
    "missing required scheme": (_missing_scheme, "results/bnb-int8-real.json is missing"),
    "extra file": (_extra_file, "run.py: unexpected file"),
    "symlink": (_symlink, "only regular <scheme>.json files"),
    "unknown target": (_edit_meta(lambda m: m.update(target="nobody")),
                       "target 'nobody' is not a valid target entry"),
    "target of another scale": (_edit_meta(lambda m: m.update(reproducible="full")),
                                "reproducible is 'full' but its target target has 'toy'"),
    "method without settings": (_edit_meta(lambda m: m.pop("hyperparameters")),
                                "needs 'run_card' or 'hyperparameters'"),
    "bad checkpoint hash": (_edit_meta(lambda m: m["checkpoint"].update(sha256="abc")),
                            "checkpoint.sha256: 'abc' does not match"),
    "javascript link": (_edit_meta(lambda m: m.update(links={"paper": "javascript:alert(1)"})),
                        "links.paper"),
    "results from different models": (_mixed_models, "evaluated different models"),
}


@pytest.mark.parametrize("case", sorted(REJECT))
def test_reject(tmp_path, case):
    edit, message = REJECT[case]
    root, found = edited_board(tmp_path / "lb", edit)
    assert message in found, found
    with pytest.raises(Exception, match="problem"):
        builder.build(root, tmp_path / "out")


def test_yaml_tag_constructing_objects_is_refused_without_running_it(tmp_path):
    root = small_board(tmp_path / "lb")
    marker = tmp_path / "PWNED"
    path = root / "submissions" / "news" / "npo-klr" / "entry.yaml"
    path.write_text(path.read_text() + f"notes: !!python/object/apply:os.system "
                                       f"['touch {marker}']\n")
    found = problems_of(root)
    assert "the YAML tag 'tag:yaml.org,2002:python/object/apply:os.system' is not allowed" in found
    assert not marker.exists()


@pytest.mark.parametrize("text, message", [
    ("a: &x 1\nb: *x\n", "alias *x is not allowed"),
    ("a: 1\na: 2\n", "duplicate key 'a'"),
    ("? [1]\n: 2\n", "mapping keys must be strings"),
    ("a: !function utils.x\n", "the YAML tag '!function' is not allowed"),
])
def test_plain_yaml_rejects(text, message):
    with pytest.raises(Exception, match=message.replace("*", r"\*")):
        load_plain_yaml(text, "entry.yaml")


def test_plain_yaml_keeps_dates_as_strings():
    assert load_plain_yaml("when: 2024-05-01\nlr: 1.0e-05\n", "e") == {"when": "2024-05-01",
                                                                       "lr": 1e-5}


# ---------------------------------------------------------------- arithmetic and order
def hand_board(root):
    """Numbers chosen so every retained % is exact (target VerbMem 50 full, 40 at FP4)."""
    make_entry(root, "target", three_schemes((50.0, 48.0, 40.0)), kind="target",
               meta=entry_meta("target", "news", "Target"))
    make_entry(root, "retrain", three_schemes((10.0, 10.0, 12.0)), kind="retrain",
               meta=entry_meta("retrain", "news", "Retrain"))
    # (VerbMem_f full, 8-bit, FP4), (KnowMem_r full, 8-bit, FP4)
    rows = {
        "npo-gdr": ("NPO_GDR", None, (10.0, 10.0, 30.0), (30.0, 30.0, 25.0)),  # 20% -> 75%
        "ga-klr": ("GA_KLR", None, (5.0, 5.0, 36.0), (30.0, 30.0, 20.0)),  # 10% -> 90%
        "sure": ("NPO_KLR + SURE", {"method": "npo_klr_sure", "base_method": "npo_klr",
                                    "sure": {"threshold": 90}},
                 (2.5, 2.5, 4.0), (30.0, 30.0, 29.0)),  # 5% -> 10%
        "ga": ("GA", None, (0.0, 0.0, 20.0), (0.0, 0.0, 0.0)),  # 0% -> 50%
        "npo-klr": ("NPO_KLR", {"method": "npo_klr", "base_method": "npo_klr", "sure": None},
                    (15.0, 15.0, 30.0), (30.0, 30.0, 28.0)),  # 30% -> 75%, tie with npo-gdr
    }
    for slug, (name, card, verbmem, knowmem_r) in rows.items():
        meta = entry_meta("method", "news", name)
        if card:
            meta.pop("hyperparameters")
            meta["run_card"] = {**card, "hyperparameters": {"lr": 1e-5}, "command": [
                "muse-quant", "unlearn", "--method", card["method"]]}
        make_entry(root, slug, three_schemes(verbmem, knowmem_r), meta=meta)
    return root


def test_retained_knowledge_by_hand(tmp_path):
    board = load_board(hand_board(tmp_path / "lb"))
    assert board.problems == []
    (group,) = scores.groups(board, "news")
    by_slug = {e.slug: e for e in [*group.references, *group.methods]}
    # VerbMem(entry) / VerbMem(target) x 100 at the same precision
    assert group.retained(by_slug["npo-gdr"], "none") == 20.0  # 10 / 50
    assert group.retained(by_slug["npo-gdr"], "bnb-fp4") == 75.0  # 30 / 40
    assert group.retained(by_slug["ga-klr"], "none") == 10.0  # 5 / 50
    assert group.retained(by_slug["ga-klr"], "bnb-fp4") == pytest.approx(90.0)  # 36 / 40
    assert group.retained(by_slug["retrain"], "bnb-fp4") == 30.0  # 12 / 40
    assert group.retained(by_slug["target"], "bnb-int8-real") == 100.0
    # baselines = GDR/KLR without SURE: npo-gdr, ga-klr, npo-klr (not GA, not the SURE run)
    assert sorted(e.slug for e in group.baselines()) == ["ga-klr", "npo-gdr", "npo-klr"]
    assert group.average_retained("none") == pytest.approx(20.0)  # (20 + 10 + 30) / 3
    assert group.average_retained("bnb-fp4") == pytest.approx(80.0)  # (75 + 90 + 75) / 3
    # lowest 4-bit retained first; npo-klr ties npo-gdr at 75% and wins on KnowMem_r 28 > 25;
    # ga (KnowMem_r 0: utility kept 0% < the verdict's gate) is listed apart, after them all
    assert [e.slug for e in group.methods] == ["sure", "npo-klr", "npo-gdr", "ga-klr", "ga"]
    assert [e.slug for e in group.ranked] == ["sure", "npo-klr", "npo-gdr", "ga-klr"]
    assert [e.slug for e in group.utility_lost] == ["ga"]
    assert group.utility(by_slug["npo-gdr"], "bnb-fp4") == pytest.approx(100 * 25 / 25)
    assert scores.retained(3.0, 0.0) is None and scores.retained(None, 40.0) is None


def _method_entry(name, card=None, kind="method"):
    meta = {"kind": kind, "method": name}
    if card is not None:
        meta["run_card"] = card
    return Entry(corpus="news", slug=name.lower(), path=Path("."), meta=meta, results={})


@pytest.mark.parametrize("name, card, baseline", [
    # run card: the method the registry declares (needs_retain, not a SURE variant)
    ("anything", {"method": "ga_gdr", "sure": None}, True),
    ("anything", {"method": "npo_klr", "sure": None}, True),
    ("anything", {"method": "npo", "sure": None}, False),  # no retain term
    ("anything", {"method": "ga_klr_sure", "sure": None}, False),  # a SURE variant
    ("anything", {"method": "npo_gdr", "sure": {"gamma": 0.1}}, False),  # the card says SURE
    ("anything", {"method": "my_external_gdr", "sure": None}, False),  # not registered here
    # no run card: the display name read as a registered name
    ("NPO-GDR", None, True),
    ("GA_KLR", None, True),
    ("Ga Gdr", None, True),
    ("GA", None, False),
    ("NPO_KLR + SURE", None, False),
    ("MY_GDR", None, False),  # an external method: not registered, so not a baseline
])
def test_baselines_are_what_the_registered_method_declares(name, card, baseline):
    assert scores.is_utility_constrained_baseline(_method_entry(name, card)) is baseline


def test_references_are_never_baselines():
    assert not scores.is_utility_constrained_baseline(_method_entry("GA_GDR", kind="target"))
    assert not scores.is_utility_constrained_baseline(_method_entry("GA_GDR", kind="retrain"))


def test_unregistered_method_is_left_out_of_the_average(tmp_path):
    root = hand_board(tmp_path / "lb")
    # VerbMem 25 / 50 = 50% full, 40 / 40 = 100% at FP4; a GDR-like name, but not registered
    make_entry(root, "external", three_schemes((25.0, 25.0, 40.0), (30.0, 30.0, 30.0)),
               meta=entry_meta("method", "news", "MY_GDR"))
    (group,) = scores.groups(load_board(root), "news")
    assert sorted(e.slug for e in group.baselines()) == ["ga-klr", "npo-gdr", "npo-klr"]
    assert group.average_retained("none") == pytest.approx(20.0)  # (20 + 10 + 30) / 3
    assert group.average_retained("bnb-fp4") == pytest.approx(80.0)  # (75 + 90 + 75) / 3
    external = next(e for e in group.methods if e.slug == "external")
    assert group.average_retained("none", [external]) == 50.0


@pytest.mark.parametrize("full, four, expected", [
    (20.0, 45.0, True),  # forgot 80 points, 4-bit brings 25 back
    (90.0, 100.0, True),  # both bounds reached exactly: full = 100 - 10, gap = 10
    (90.0, 99.5, False),  # gap 9.5 < 10
    (90.5, 104.5, False),  # forgot only 9.5 points: drift, not recovery
    (94.0, 104.5, False),
    (5.0, 8.0, False),
    (50.0, 40.0, False),  # 4-bit forgets more
    (None, 45.0, None),
    (20.0, None, None),
])
def test_recovery_rule_by_hand(full, four, expected):
    assert scores.RECOVERY_POINTS == 10.0
    assert scores.recovered(full, four) is expected


def _values(text: str) -> str:
    """A README line without its <sub> notes (intervals, "CI n/a"): the values alone."""
    import re

    return re.sub(r" ?<sub>.*?</sub>", "", text)


def test_readme_table_by_hand(tmp_path):
    board = load_board(hand_board(tmp_path / "lb"))
    readme = builder.render_readme(board)
    assert readme.startswith(builder.GENERATED_MARK)
    main_table, rest = readme.split("#### Utility lost", 1)
    rows = [_values(line) for line in main_table.splitlines() if line.startswith("| ")]
    order = [next(s for s in ("target", "retrain", "sure", "ga-klr", "ga", "npo-klr", "npo-gdr")
                  if f"[`{s}`]" in row) for row in rows[1:]]
    # ga (utility kept 0%) is not in the ranked table but apart, below it
    assert order == ["target", "retrain", "sure", "npo-klr", "npo-gdr", "ga-klr"]
    lost = [line for line in rest.split("**Retained knowledge")[0].splitlines()
            if line.startswith("| ") and "[`" in line]
    assert len(lost) == 1 and "[`ga`]" in lost[0] and lost[0].startswith("| — |")
    row = {s: r for s, r in zip(order, rows[1:])}
    # rank | entry | retained full, 8-bit, FP4 (Δ), GPTQ-4, AWQ-4 | utility kept | verdict
    assert "| 3 | **NPO\\_GDR**" in row["npo-gdr"]
    # 8-bit: 10 / 48 = 20.8% (Δ +0.8), 5 / 48 = 10.4%; no GPTQ/AWQ results: "—"
    assert "| 20.0% | 20.8%<br>Δ +0.8 | 75.0%<br>Δ +55.0 | — | — | 100.0%<br> | **recovers** |" \
        in row["npo-gdr"]
    assert "| 10.0% | 10.4%<br>Δ +0.4 | 90.0%<br>Δ +80.0 |" in row["ga-klr"]
    assert "| 100.0% | 100.0% | 100.0% | — | — | 100.0%<br> | reference |" in row["target"]
    assert "| 20.0% | 20.8%<br>Δ +0.8 | 30.0%<br>Δ +10.0 |" in row["retrain"]
    # the four metrics, per precision, in <details> (none, bnb-int8-real, bnb-fp4; no gptq:4)
    assert "| [`npo-gdr`](#news-npo-gdr) | 10.0 | 40.0 | -90.0 | 30.0 | 20.0% | 100.0% |" \
        in _values(readme)
    assert readme.count("| Entry | VerbMem_f ↓") == 3 and "<code>gptq:4</code>" not in readme
    assert ("(GA\\_KLR, NPO\\_GDR, NPO\\_KLR; n = 3): 20.0% → 80.0% at 4-bit FP4" in readme or
            "(NPO\\_KLR, NPO\\_GDR, GA\\_KLR; n = 3): 20.0% → 80.0% at 4-bit FP4" in readme)


def test_gptq_columns_appear_when_present(tmp_path):
    root = hand_board(tmp_path / "lb")
    for slug, verbmem in (("target", 20.0), ("npo-gdr", 17.0)):
        kwargs = {} if slug == "target" else {"unlearned": f"/checkpoints/{slug}"}
        write_results(root / "submissions" / "news" / slug / "results",
                      make_results(scheme="gptq:4", verbmem=verbmem, **kwargs))
    board = load_board(root)
    assert board.problems == []
    readme = builder.render_readme(board)
    header = next(line for line in readme.splitlines() if line.startswith("| #"))
    assert "Retained<br>GPTQ-4" in header and "Retained<br>AWQ-4" in header
    row = _values(next(line for line in readme.splitlines() if "[`npo-gdr`]" in line))
    assert "| 20.0% | 20.8%<br>Δ +0.8 | 75.0%<br>Δ +55.0 | 85.0%<br>Δ +65.0 | — |" in row  # 17 / 20
    assert "GPTQ-4 (<code>gptq:4</code>)" in readme  # its metrics block
    assert "% at GPTQ-4" not in readme  # not every baseline has gptq:4: no average


def test_submitted_text_cannot_break_the_table(tmp_path):
    root = small_board(tmp_path / "lb")
    _edit_meta(lambda m: m.update(method="A | B <script>x</script>"))(root)
    readme = builder.render_readme(load_board(root))
    row = next(line for line in readme.splitlines() if "[`npo-klr`]" in line)
    assert "A \\| B \\<script\\>x\\</script\\>" in row and "<script>" not in readme


# ---------------------------------------------------------------- build and check
def test_empty_board_builds(tmp_path):
    root = tmp_path / "lb"
    root.mkdir()
    paths = builder.build(root)
    assert sorted(p.name for p in paths) == sorted(builder.output_names())
    assert "No entries yet" in (root / "README.md").read_text()
    assert check(root).ok


def test_rebuild_is_byte_identical(tmp_path):
    root = hand_board(tmp_path / "lb")
    builder.build(root, tmp_path / "a")
    builder.build(root, tmp_path / "a2")
    subprocess.run([sys.executable, "-m", "harness_ext.cli", "leaderboard", "build", "--root",
                    str(root), "--out", str(tmp_path / "b")], check=True, cwd=REPO)
    for name in builder.output_names():
        first = (tmp_path / "a" / name).read_bytes()
        assert first == (tmp_path / "a2" / name).read_bytes(), name
        assert first == (tmp_path / "b" / name).read_bytes(), name  # another process
    svg = (tmp_path / "a" / "news_forget_vs_utility.svg").read_text()
    assert "NPO_GDR" in svg and "full → 4-bit" in svg and "plotted data sha256" in svg


def test_check_fails_on_hand_edited_readme(tmp_path):
    root = small_board(tmp_path / "lb")
    assert main(["leaderboard", "build", "--root", str(root)]) == 0
    report = check(root)
    assert report.ok, report.stale
    readme = root / "README.md"
    edited = readme.read_text().replace("| 10.0% <sub>", "| 1.0% <sub>")  # npo-klr: 5 / 50
    assert edited != readme.read_text()
    readme.write_text(edited)
    report = check(root)
    assert not report.ok and len(report.stale) == 1
    assert any(line.startswith("-") and "| 1.0% <sub>" in line
               for line in report.stale[0].splitlines())
    assert main(["leaderboard", "check", "--root", str(root)]) == 1


def test_check_fails_when_a_plot_is_stale_or_missing(tmp_path):
    root = small_board(tmp_path / "lb")
    builder.build(root)
    # same data drawn by another matplotlib version: accepted, with a note
    svg = root / "news_forget_vs_utility.svg"
    text = svg.read_text()
    svg.write_text(text.replace("(matplotlib v", "(matplotlib v0.0-other ").replace(
        'x="', 'x=" ', 1))
    report = check(root)
    assert report.ok and "the plotted data is the same" in report.notes[0]
    # different numbers (a new sweep, with its per-document scores): stale
    write_results(root / "submissions" / "news" / "npo-klr" / "results",
                  make_results("news", "bnb-fp4", 35.0, 40.0, -90.0, 25.0,
                               unlearned="/checkpoints/npo-klr"))
    (root / "README.md").write_bytes(builder.render_readme(load_board(root)).encode())
    svg.write_text(text)
    report = check(root)
    assert [s.split(" is ")[0] for s in report.stale] == [str(svg)]
    (root / "books_forget_vs_utility.svg").unlink()
    assert any("books_forget_vs_utility.svg is missing" in s for s in check(root).stale)


def test_check_lists_invalid_entries(tmp_path, capsys):
    root = small_board(tmp_path / "lb")
    builder.build(root)
    _missing_scheme(root)
    _edit_meta(lambda m: m.update(corpus="books"), slug="retrain")(root)
    assert main(["leaderboard", "check", "--root", str(root)]) == 2
    err = capsys.readouterr().err
    # every entry's problems, then one error
    assert "invalid: news/npo-klr: results/bnb-int8-real.json is missing" in err
    assert "invalid: news/retrain/entry.yaml: corpus is 'books'" in err
    assert "error: leaderboard check FAILED" in err and "fix:" in err and "Traceback" not in err


def test_committed_board_is_up_to_date():
    report = check(REPO / "leaderboard")
    assert report.ok, "\n".join(report.problems + report.stale)


# ---------------------------------------------------------------- add
def sweep_output(folder, unlearned=None, corpus="news", verbmem=(6.0, 6.0, 30.0),
                 pretrained="/models/target"):
    for scheme, v in zip(("none", "bnb-int8-real", "bnb-fp4"), verbmem):
        write_results(folder, make_results(corpus, scheme, verbmem=v, unlearned=unlearned,
                                           pretrained=pretrained))
    (folder / "notes.json").write_text('{"not": "results"}')
    return folder


def test_add_end_to_end(tmp_path, capsys):
    root = tmp_path / "lb"
    root.mkdir()
    target_model = tmp_path / "target_model"
    target_model.mkdir()
    (target_model / "config.json").write_text("{}")
    (target_model / "model.safetensors").write_bytes(b"\x00" * 1000)
    target_out = sweep_output(tmp_path / "target_out", verbmem=(50.0, 48.0, 40.0))
    assert main(["leaderboard", "add", "--root", str(root), "--corpus", "news", "--slug",
                 "toy-target", "--kind", "target", "--results", str(target_out),
                 "--checkpoint", str(target_model), "--submitted_by", "Ada"]) == 0

    ckpt_dir = tmp_path / "unlearned"
    ckpt_dir.mkdir()
    ckpt = ckpt_dir / "delta.safetensors"
    ckpt.write_bytes(b"weights" * 100)
    card = {"method": "npo_klr", "base_method": "npo_klr", "sure": None, "lora": None,
            "hyperparameters": {"lr": 1e-5, "epochs": 10, "alpha": 1.0, "beta": 0.1},
            "precision": "fp32", "seed": 0, "pretrained": str(target_model), "corpus": "news",
            "muse_data": "embedded", "checkpoint": str(ckpt),
            "command": ["muse-quant", "unlearn", "--method", "npo_klr", "--out", str(ckpt_dir)]}
    (ckpt_dir / "run_card.json").write_text(json.dumps(card))
    out = sweep_output(tmp_path / "sweep_out", unlearned=str(ckpt), pretrained=str(target_model))
    args = ["leaderboard", "add", "--root", str(root), "--corpus", "news", "--slug", "npo-klr",
            "--results", str(out), "--checkpoint", str(ckpt), "--submitted_by", "Ada",
            "--paper", "https://arxiv.org/abs/2410.16454"]
    capsys.readouterr()
    assert main(args) == 0
    assert "warning" not in capsys.readouterr().out  # unlearned from the target's model
    entry = root / "submissions" / "news" / "npo-klr"
    # results copied unedited, only the <scheme>.json results files and their samples
    assert sorted(p.name for p in (entry / "results").iterdir()) == \
        ["bnb-fp4.json", "bnb-fp4.samples.jsonl", "bnb-int8-real.json", "bnb-int8-real.samples.jsonl",
         "none.json", "none.samples.jsonl"]
    for name in ("none.json", "bnb-int8-real.json", "bnb-fp4.json", "none.samples.jsonl",
                 "bnb-int8-real.samples.jsonl", "bnb-fp4.samples.jsonl"):
        assert filecmp.cmp(out / name, entry / "results" / name, shallow=False)
    meta = load_plain_yaml((entry / "entry.yaml").read_text(), "entry.yaml")
    assert meta["checkpoint"]["sha256"] == hashlib.sha256(b"weights" * 100).hexdigest()
    assert meta["checkpoint"]["kind"] == "file"
    assert meta["run_card"] == card  # found next to the checkpoint
    assert meta["target"] == "toy-target" and meta["reproducible"] == "toy"
    assert meta["method"] == "npo_klr" and meta["muse_data"] == "embedded"
    target_meta = yaml.safe_load((root / "submissions/news/toy-target/entry.yaml").read_text())
    assert target_meta["checkpoint"]["sha256"] == checkpoint_sha256(target_model)[0]

    # an existing slug is never overwritten
    before = (entry / "entry.yaml").read_bytes()
    assert main(args[:-2] + ["--method", "Other"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert (entry / "entry.yaml").read_bytes() == before

    # results computed from another base model than the target's: a warning
    other_model = tmp_path / "other_model"
    shutil.copytree(target_model, other_model)
    (other_model / "model.safetensors").write_bytes(b"\x01" * 1000)
    other = sweep_output(tmp_path / "other_out", unlearned=str(ckpt), pretrained=str(other_model))
    assert main(["leaderboard", "add", "--root", str(root), "--corpus", "news", "--slug",
                 "from-other", "--results", str(other), "--checkpoint", str(ckpt),
                 "--submitted_by", "Ada"]) == 0
    assert "differs from the checkpoint of the target entry toy-target" in \
        capsys.readouterr().out

    # then the user builds and checks
    assert main(["leaderboard", "build", "--root", str(root)]) == 0
    assert main(["leaderboard", "check", "--root", str(root)]) == 0
    readme = (root / "README.md").read_text()
    assert "| 12.0% | 12.5%<br>Δ +0.5 | 75.0%<br>Δ +63.0 |" in _values(readme)  # 6/50, 6/48, 30/40


def test_add_refuses_invalid_results_and_leaves_nothing(tmp_path, capsys):
    root = small_board(tmp_path / "lb")
    out = sweep_output(tmp_path / "out", unlearned="/ckpt")
    write_results(out, make_results(scheme="bnb-fp4", unlearned="/ckpt", version=0.5))
    ckpt = tmp_path / "ckpt.safetensors"
    ckpt.write_bytes(b"x")
    assert main(["leaderboard", "add", "--root", str(root), "--corpus", "news", "--slug", "bad",
                 "--results", str(out), "--checkpoint", str(ckpt), "--submitted_by", "Ada",
                 "--hyperparameter", "lr=1e-5"]) == 2
    err = capsys.readouterr().err
    assert "evaluated at version 0.5" in err
    assert sorted(p.name for p in (root / "submissions" / "news").iterdir()) == \
        ["npo-klr", "retrain", "target"]


def test_add_needs_a_target_and_settings(tmp_path, capsys):
    root = tmp_path / "lb"
    root.mkdir()
    out = sweep_output(tmp_path / "out", unlearned="/ckpt")
    ckpt = tmp_path / "ckpt.safetensors"
    ckpt.write_bytes(b"x")
    base = ["leaderboard", "add", "--root", str(root), "--corpus", "news", "--slug", "m",
            "--results", str(out), "--checkpoint", str(ckpt), "--submitted_by", "Ada"]
    assert main(base) == 2
    assert "--hyperparameter" in capsys.readouterr().err
    assert main(base + ["--hyperparameter", "lr=1e-5"]) == 2
    assert "pass --target SLUG" in capsys.readouterr().err


def test_directory_hash_is_sha256sum_of_the_listing(tmp_path):
    folder = tmp_path / "model"
    (folder / "sub").mkdir(parents=True)
    files = {"config.json": b"{}", "b.safetensors": b"\x01" * 10, "sub/a.txt": b"hi"}
    for name, content in files.items():
        (folder / name).write_bytes(content)
    listing = "".join(f"{hashlib.sha256(files[n]).hexdigest()}  {n}\n" for n in sorted(files))
    assert checkpoint_sha256(folder) == (hashlib.sha256(listing.encode()).hexdigest(), "directory")
    if shutil.which("sha256sum") and shutil.which("find"):
        shell = subprocess.run(
            "find -L . -type f | sed 's|^\\./||' | LC_ALL=C sort | xargs sha256sum | sha256sum",
            shell=True, cwd=folder, capture_output=True, text=True, check=True).stdout.split()[0]
        assert shell == checkpoint_sha256(folder)[0]


# ---------------------------------------------------------------- reproduce helpers
def test_unlearn_arguments_redirect_the_output():
    command = ["/usr/bin/muse-quant", "unlearn", "--method", "ga", "--out", "/old",
               "--pretrained=/p", "--lr", "1e-5"]
    # rebuilt from the allowed hyperparameters; pretrained, corpus, data and out are the checker's
    assert unlearn_arguments(command, "/new") == ["--method", "ga", "--lr", "1e-05", "--corpus",
                                                  "news", "--muse_data", "embedded", "--out",
                                                  "/new"]
    assert unlearn_arguments(command, "/new", "/q")[4:6] == ["--pretrained", "/q"]
    assert "/p" not in unlearn_arguments(command, "/new", "/q")
    assert unlearn_arguments(["muse-quant", "unlearn", "--method", "ga"], "/o")[-2:] == \
        ["--out", "/o"]
    with pytest.raises(Exception, match="not a `muse-quant unlearn` command"):
        unlearn_arguments(["bash", "-c", "rm -rf /"], "/o")


@pytest.mark.parametrize("recorded", [
    {"pretrained": "/old", "dtype": "float32", "calib_samples": 4, "unlearned": "/u",
     "quant": "none"},
    "pretrained=/old,dtype=float32,calib_samples=4,unlearned=/u,quant=none",  # lm-eval's string
])
def test_reproduce_model_args_keep_the_recorded_settings(recorded):
    from harness_ext.leaderboard.reproduce import _model_args

    data = make_results(unlearned="/u")
    data["config"]["model_args"] = recorded
    entry = Entry(corpus="news", slug="m", path=Path("."), meta={}, results={"none": data})
    # pretrained / unlearned replaced, quant left to --quant, the rest kept in order
    assert _model_args(entry, "/new", "/ckpt") == \
        "pretrained=/new,unlearned=/ckpt,dtype=float32,calib_samples=4"
    assert _model_args(entry, "/new", None) == "pretrained=/new,dtype=float32,calib_samples=4"


def test_compare_results_is_exact():
    a = make_results(verbmem=12.5)
    assert compare_results(a, json.loads(json.dumps(a)), "none.json") == []
    b = make_results(verbmem=12.5 + 1e-12)
    diffs = compare_results(a, b, "none.json")
    assert len(diffs) == 2 and "muse_news_verbmem_f verbmem_rougeL_f1,none: committed 12.5" in \
        diffs[0]


def test_schema_file_is_valid_json_schema():
    import jsonschema

    from harness_ext.leaderboard import SCHEMA_PATH

    schema = json.loads(SCHEMA_PATH.read_text())
    jsonschema.validators.validator_for(schema).check_schema(schema)
    assert schema["additionalProperties"] is False
    meta = entry_meta()
    assert list(jsonschema.Draft202012Validator(schema).iter_errors(meta)) == []
    assert SHA == meta["checkpoint"]["sha256"]
