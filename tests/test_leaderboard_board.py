"""The leaderboard's compact main table, the utility-lost table, the deployment formats, the
<details> metrics and the plot, on a crafted board with per-document samples (hand-computed
values: every document of an unlearned model scores a fixed fraction of the target's, so each
bootstrap interval is a point, see tests/test_compare.py)."""

import json
import re

import pytest

from harness_ext.evaluation import compare
from harness_ext.evaluation.samples import samples_path
from harness_ext.leaderboard import builder, plot, scores, tables
from harness_ext.leaderboard.validator import load_board
from harness_ext.io import scheme_filename

from leaderboard_helpers import entry_meta, make_entry, make_results, write_results

# per-document VerbMem_f of the target: none (40, 60) -> mean 50; FP4 (30, 50) -> 40;
# 8-bit LLM.int8 (40, 60) -> 50
TARGET_DOCS = {"none": [40.0, 60.0], "bnb-int8": [40.0, 60.0], "bnb-int8-real": [40.0, 60.0],
               "bnb-fp4": [30.0, 50.0]}
NA = "<sub>CI n/a</sub>"


def metrics(docs: dict, knowmem_r: dict) -> dict:
    """``{scheme: (VerbMem_f, KnowMem_f, PrivLeak, KnowMem_r)}`` from per-document VerbMem_f."""
    return {s: (sum(d) / len(d), 10.0, -50.0, knowmem_r[s]) for s, d in docs.items()}


def write_samples(folder, scheme: str, corpus: str, docs: list[float]) -> None:
    """The sweep's ``<scheme file stem>.samples.jsonl``: VerbMem_f per document."""
    header = {"format": "muse-quant-samples", "version": 1, "bootstrap_iters": 0,
              "float_sum": "naive"}
    line = {"task": f"muse_{corpus}_verbmem_f", "filter": "none",
            "doc_id": list(range(len(docs))),
            "metrics": {"verbmem_rougeL_f1": {"aggregation": "mean", "values": docs}}}
    path = samples_path(folder / "results" / scheme_filename(scheme))
    path.write_text("".join(json.dumps(x) + "\n" for x in (header, line)))


UTILITY = {"none": 30.0, "bnb-int8": 30.0, "bnb-int8-real": 30.0, "bnb-fp4": 27.0}
ENTRIES = {
    # slug: (name, {scheme: per-document VerbMem_f}, KnowMem_r, samples?)
    # 20% of the target everywhere at full precision / 8-bit, 75% at FP4: recovers (+55)
    "kept": ("NPO_GDR", {"none": [8.0, 12.0], "bnb-int8": [8.0, 12.0],
                         "bnb-int8-real": [8.0, 12.0], "bnb-fp4": [22.5, 37.5]}, UTILITY, True),
    # 10% -> 15%: robust (+5 < 10)
    "steady": ("GA_KLR", {"none": [4.0, 6.0], "bnb-int8-real": [4.0, 6.0],
                          "bnb-fp4": [4.5, 7.5]}, UTILITY, True),
    # forgets everything but KnowMem_r 3 / 30 = 10% < 50%: utility lost, listed apart
    "broken": ("GA", {"none": [0.0, 0.0], "bnb-int8-real": [0.0, 0.0], "bnb-fp4": [0.0, 0.0]},
               {"none": 3.0, "bnb-int8-real": 3.0, "bnb-fp4": 3.0}, True),
    # an old entry: no samples files, so no intervals; 60% -> 50%: robust
    "old": ("NPO", {"none": [24.0, 36.0], "bnb-int8-real": [24.0, 36.0],
                    "bnb-fp4": [15.0, 25.0]},
            UTILITY, False),
}


def crafted_board(root, corpus="news"):
    make_entry(root, "target", metrics(TARGET_DOCS, UTILITY), corpus, kind="target",
               meta=entry_meta("target", corpus, "Target"))
    # the target and "kept" also have FP8 results (a deployment format): 45 / 50 = 90% of it
    write_results(root / "submissions" / corpus / "target" / "results",
                  make_results(corpus, "fp8:e4m3", verbmem=50.0, knowmem_r=30.0))
    for slug, (name, docs, knowmem_r, _) in ENTRIES.items():
        make_entry(root, slug, metrics(docs, knowmem_r), corpus,
                   meta=entry_meta("method", corpus, name))
    write_results(root / "submissions" / corpus / "kept" / "results",
                  make_results(corpus, "fp8:e4m3", verbmem=45.0, knowmem_r=30.0,
                               unlearned="/checkpoints/kept"))
    board = load_board(root)
    assert board.problems == []
    # exactly these per-document samples beside the results (replaced after validation: the
    # builder reads them from the entry's folder; "old" and the FP8 results have none)
    for path in root.glob("submissions/*/*/results/*.samples.jsonl"):
        path.unlink()
    for scheme, docs in TARGET_DOCS.items():
        write_samples(root / "submissions" / corpus / "target", scheme, corpus, docs)
    for slug, (_, docs, _, with_samples) in ENTRIES.items():
        for scheme, values in docs.items():
            if with_samples:
                write_samples(root / "submissions" / corpus / slug, scheme, corpus, values)
    return board


def _tables(readme: str) -> list[list[str]]:
    """Every Markdown table of ``readme`` as its lines."""
    out, current = [], []
    for line in readme.splitlines() + [""]:
        if line.startswith("|"):
            current.append(line)
        elif current:
            out.append(current)
            current = []
    return out


def _cells(line: str) -> list[str]:
    return [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]


@pytest.fixture
def board(tmp_path):
    return crafted_board(tmp_path / "lb")


def test_main_table_columns_values_and_intervals(board):
    readme = builder.render_readme(board)
    main_tables = [t for t in _tables(readme) if t[0].startswith("| # |")]
    assert len(main_tables) == 2  # the ranked one and the utility-lost one
    for table in main_tables:
        head = _cells(table[0])
        assert len(head) <= 12
        assert head == ["#", "Entry", "Retained<br>full", "Retained<br>8-bit",
                        "Retained<br>4-bit FP4", "Retained<br>GPTQ-4", "Retained<br>AWQ-4",
                        "Utility kept", "Verdict"]
        assert all(len(_cells(line)) == len(head) for line in table)
    rows = {re.search(r"\[`([a-z-]+)`\]", line).group(1): _cells(line)
            for line in main_tables[0][2:]}
    # 8 / 40 = 12 / 60 = 20%; 22.5 / 30 = 37.5 / 50 = 75%: every resample gives the same ratio
    assert rows["kept"][2:] == [
        "20.0% <sub>[20.0, 20.0]</sub>",
        "20.0% <sub>[20.0, 20.0]</sub><br>Δ ±0.0 <sub>[±0.0, ±0.0]</sub>",  # LLM.int8
        "75.0% <sub>[75.0, 75.0]</sub><br>Δ +55.0 <sub>[+55.0, +55.0]</sub>",
        "—", "—",  # no GPTQ / AWQ results
        "100.0%<br><sub>4-bit FP4: 100.0%</sub>", "**recovers**"]
    # 4.5 / 30 = 15%: +5 points, robust; LLM.int8 10%, no GPTQ result: "—"
    assert rows["steady"][2:6] == ["10.0% <sub>[10.0, 10.0]</sub>",
                                   "10.0% <sub>[10.0, 10.0]</sub><br>Δ ±0.0 <sub>[±0.0, ±0.0]</sub>",
                                   "15.0% <sub>[15.0, 15.0]</sub><br>Δ +5.0 <sub>[+5.0, +5.0]</sub>",
                                   "—"]
    assert rows["steady"][-1] == "**robust**"
    # no samples: the value without an interval, and no crash
    assert rows["old"][2] == f"60.0% {NA}" and rows["old"][4] == f"50.0% {NA}<br>Δ -10.0 {NA}"
    assert rows["target"][2:4] == ["100.0%", "100.0%"] and rows["target"][-1] == "reference"


def test_utility_losing_entry_is_listed_apart_never_ranked(board):
    """"broken" forgets the most (0% retained everywhere) but keeps 10% of the utility: it is
    ranked below nobody, it is not ranked at all."""
    (group,) = scores.groups(board, "news")
    assert [e.slug for e in group.ranked] == ["steady", "old", "kept"]  # FP4: 15%, 50%, 75%
    assert [e.slug for e in group.utility_lost] == ["broken"]
    assert [e.slug for e in group.methods] == ["steady", "old", "kept", "broken"]
    readme = builder.render_readme(board)
    ranked, lost = [t for t in _tables(readme) if t[0].startswith("| # |")]
    assert [_cells(line)[0] for line in ranked[2:]] == ["", "1", "2", "3"]
    assert len(lost) == 3 and "[`broken`]" in lost[2] and _cells(lost[2])[0] == "—"
    assert _cells(lost[2])[-1] == "**utility lost**"
    assert readme.index("#### Utility lost") > readme.index("[`kept`](#news-kept) |")
    # the ranking rule is documented
    assert "is never ranked" in readme and "lowest\nfirst" in readme


def test_ranking_never_puts_lost_utility_first():
    """Whatever the retained values, every entry below the gate comes after every entry above
    it (the rule of scores.sort_key on hand-made entries)."""
    from harness_ext.leaderboard.entry import Entry

    def entry(slug, verbmem_fp4, knowmem_r):
        results = {s: {"results": {
            "muse_news_verbmem_f": {"verbmem_rougeL_f1,none": v},
            "muse_news_knowmem_r": {"knowmem_rougeL_f1,none": knowmem_r}}}
            for s, v in (("none", 10.0), ("bnb-fp4", verbmem_fp4))}
        return Entry("news", slug, None, {"kind": "method", "method": slug}, results)

    target = entry("t", 50.0, 40.0)
    group = scores.Group("news", target, [target], [], ["none", "bnb-fp4"])
    methods = [entry("a", 0.0, 0.0), entry("b", 45.0, 40.0), entry("c", 1.0, 19.9),
               entry("d", 30.0, 20.0), entry("e", 50.0, 39.0)]
    ordered = sorted(methods, key=lambda e: scores.sort_key(group, e))
    # utility kept 0, 49.75 (< 50: lost) and 100, 50, 97.5 (kept)
    assert [e.slug for e in ordered] == ["d", "b", "e", "a", "c"]


def test_verdict_is_what_compare_says(board, tmp_path):
    (group,) = scores.groups(board, "news")
    found = tables.answers(group)
    root = tmp_path / "lb" / "submissions" / "news"
    report = compare.compare(root / "target" / "results",
                             [root / slug / "results" for slug in ENTRIES])
    for model, slug in zip(report["corpora"][0]["models"], ENTRIES):
        assert found[slug].verdict == model["verdict"], slug
        assert found[slug].reason == model["reason"], slug
    assert {s: found[s].verdict for s in ENTRIES} == {
        "kept": "recovers", "steady": "robust", "broken": "utility lost", "old": "robust"}


def test_deployment_formats_and_details(board):
    readme = builder.render_readme(board)
    section = readme.split("#### Deployment formats")[1].split("####")[0]
    (table,) = _tables(section)
    assert _cells(table[0]) == ["Entry", "Retained<br>GGUF Q4_K_M", "Retained<br>GGUF Q8_0",
                                "Retained<br>FP8 E4M3"]
    rows = {re.search(r"\[`([a-z-]+)`\]", line).group(1): _cells(line)[1:] for line in table[2:]}
    assert rows["kept"] == ["—", "—", f"90.0% {NA}<br>Δ +70.0 {NA}"]  # 45 / 50; no samples
    assert rows["old"] == ["—", "—", "—"] and rows["target"] == ["—", "—", "100.0%"]
    # each scheme's metrics in a collapsed block, LLM.int8 and the fake int8 apart
    blocks = re.findall(r"<details>\n<summary>Metrics at (.*?)</summary>", readme)
    assert blocks == ["full (<code>none</code>)", "8-bit (<code>bnb-int8-real</code>)",
                      "4-bit FP4 (<code>bnb-fp4</code>)", "FP8 E4M3 (<code>fp8:e4m3</code>)",
                      "<code>bnb-int8</code>"]
    assert "| [`kept`](#news-kept) | 10.0 | 10.0 | -50.0 | 30.0 | 20.0% " \
           "<sub>[20.0, 20.0]</sub> | 100.0% |" in readme


def test_gguf_results_fill_the_deployment_section(board):
    """A result at gguf:q4_k_m (added to the loaded entries: the results file name of a scheme
    with '_' is not settled here) shows in its column; the others stay "—"."""
    (group,) = scores.groups(board, "news")
    for entry, verbmem in ((group.target, 40.0), (next(e for e in group.methods
                                                       if e.slug == "kept"), 36.0)):
        entry.results["gguf:q4_k_m"] = make_results("news", "gguf:q4_k_m", verbmem=verbmem)
    readme = builder.render_readme(board)
    section = readme.split("#### Deployment formats")[1].split("####")[0]
    row = next(line for line in section.splitlines() if "[`kept`]" in line)
    assert _cells(row)[1:3] == [f"90.0% {NA}<br>Δ +70.0 {NA}", "—"]  # 36 / 40


def test_plot_is_written_and_deterministic(board, tmp_path):
    root = tmp_path / "lb"
    first = builder.build(root, tmp_path / "a", board=board)
    assert sorted(p.name for p in first) == sorted(builder.output_names())
    # drawn again: the same bytes
    assert (tmp_path / "a" / "news_forget_vs_utility.svg").read_bytes() == \
        builder.render_svg(board, "news")
    svg = (tmp_path / "a" / "news_forget_vs_utility.svg").read_text()
    for label in ("NPO_GDR", "GA_KLR", "GA", "NPO", "Target (target)", "utility kept %",
                  "retained knowledge %", "plotted data sha256"):
        assert f">{label}<" in svg or label in svg, label
    (panel,) = plot.plot_data(scores.groups(board, "news"))
    kept = next(e for e in panel["entries"] if e["slug"] == "kept")
    # (utility kept, retained) at full precision and at FP4: 30 / 30, 20%; 27 / 27, 75%
    assert kept["points"] == {"none": [100.0, 20.0], "bnb-fp4": [100.0, 75.0]}
    broken = next(e for e in panel["entries"] if e["slug"] == "broken")
    assert broken["utility_lost"] and broken["points"]["none"] == [10.0, 0.0]


def test_labels_of_stacked_entries_do_not_overlap():
    """Ten entries at the same point (the old plot's problem): ten labels, none overlapping."""
    entries = [{"slug": f"m{i}", "label": f"method number {i}",
                "points": {"none": [100.0, 7.8], "bnb-fp4": [100.0, 7.8]}} for i in range(10)]
    xlim, ylim = plot.limits(entries)
    spots = plot.place_labels(entries, xlim, ylim)
    assert len(spots) == 10
    sx = (xlim[1] - xlim[0]) / (plot.AX_W * 72)
    sy = (ylim[1] - ylim[0]) / (plot.AX_H * 72)
    height = plot.LABEL_PT * plot.LINE_H * sy
    width = len("method number 0") * plot.LABEL_PT * plot.CHAR_W * sx
    boxes = []
    for spot in spots.values():
        (x, y), left = spot["text"], spot["ha"] == "left"
        boxes.append((x if left else x - width, x + width if left else x, y - height / 2,
                      y + height / 2))
    for i, a in enumerate(boxes):
        assert ylim[0] <= a[2] and a[3] <= ylim[1] and xlim[0] <= a[0] and a[1] <= xlim[1]
        for b in boxes[i + 1:]:
            assert not (a[0] < b[1] - 1e-9 and b[0] < a[1] - 1e-9 and a[2] < b[3] - 1e-9
                        and b[2] < a[3] - 1e-9), (a, b)
    assert sum(s["moved"] for s in spots.values()) >= 8  # with leader lines to the point
    assert spots == plot.place_labels(entries, xlim, ylim)  # no randomness


def test_submitted_names_are_plain_plot_labels():
    """A name with mathtext dollars or newlines is drawn as text, cut to MAX_LABEL characters."""
    import io

    import matplotlib

    label = plot.short_label("a $x^$ name\nwith a line break and more words than fit")
    assert label == "a \\$x^\\$ name with a line bre…" and len(label) - 2 == plot.MAX_LABEL
    panel = {"title": "t", "gate": 50.0, "entries": [
        {"slug": "a", "label": label, "colour": "#000000", "utility_lost": False,
         "points": {"none": [90.0, 10.0], "bnb-fp4": [80.0, 60.0]}}]}
    with matplotlib.rc_context():
        matplotlib.rcParams.update(plot.RC)
        buffer = io.BytesIO()
        plot._figure([panel], "x").savefig(buffer, format="svg")
    assert "a $x^$ name with a line bre…".encode() in buffer.getvalue()
