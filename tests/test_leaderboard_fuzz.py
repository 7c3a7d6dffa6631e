"""Property-based fuzzing of the leaderboard validator (hypothesis): random YAML / JSON structures,
random mutations of valid files and hostile raw text, written as an entry's ``entry.yaml``,
``results/none.json`` or ``results/none.samples.jsonl``. The validator may only report problems
(or raise the project's :class:`MuseQuantError`), never anything else.

Default tier: a few seconds (:data:`FAST` examples). ``-m slow``: :data:`DEEP` examples.
"""

import json
import math

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from leaderboard_helpers import entry_meta, make_entry, three_schemes

from harness_ext.errors import MuseQuantError
from harness_ext.leaderboard import builder
from harness_ext.leaderboard.validator import load_board

FAST, DEEP = 30, 500
FILES = ("entry.yaml", "results/none.json", "results/none.samples.jsonl")

scalars = (st.none() | st.booleans() | st.integers(min_value=-2 ** 70, max_value=2 ** 70)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12)
           | st.sampled_from(["none", "mean", "agg_privleak", "N/A", "muse_news_privleak",
                              "verbmem_rougeL_f1,none", "bnb-fp4", "--plugin", "../x"]))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(st.text(max_size=10) | st.sampled_from(
                          ["results", "config", "configs", "versions", "n-samples", "limit",
                           "muse_quant", "task", "metrics", "values", "doc_id", "kind"]),
                          inner, max_size=4), max_leaves=16)
HOSTILE = ["9" * 5000, "[" * 5000 + "]" * 5000, "{" * 3000, "a: " + "[" * 3000,
           "!!python/object/apply:os.system ['true']", "&a [*a]", "\x00\xff", "NaN", "-Infinity",
           "1e999", "a: .inf", "a: 0x" + "f" * 5000, "{\"results\": [1]}", ""]


@pytest.fixture(scope="module")
def board(tmp_path_factory):
    """A one-entry board (a target entry) whose files the examples overwrite and restore."""
    root = tmp_path_factory.mktemp("fuzz") / "lb"
    root.mkdir()
    folder = make_entry(root, "target", three_schemes(), kind="target",
                        meta=entry_meta("target", "news", "Target"))
    assert load_board(root).problems == []
    return root, folder


def _mutate(data, draw_path, new_value):
    """``data`` with the value at a drawn path replaced (``draw_path(options) -> index``)."""
    if not isinstance(data, (dict, list)) or not data or draw_path(None) == 0:
        return new_value
    keys = list(data) if isinstance(data, dict) else list(range(len(data)))
    key = keys[draw_path(len(keys))]
    data[key] = _mutate(data[key], draw_path, new_value)
    return data


def _serialize(data, name):
    if name.endswith(".yaml"):
        return yaml.safe_dump(data, allow_unicode=True)
    if name.endswith(".jsonl"):
        rows = data if isinstance(data, list) and data else [data]
        return "".join(json.dumps(row) + "\n" for row in rows)
    return json.dumps(data)


def _original(folder, name):
    text = (folder / name).read_text()
    if name.endswith(".yaml"):
        return yaml.safe_load(text)
    if name.endswith(".jsonl"):
        return [json.loads(line) for line in text.splitlines()]
    return json.loads(text)


@st.composite
def contents(draw):
    """``(file name, text)``: a random structure, a mutation of the valid file, or hostile
    raw text (alone or spliced into the valid file's text)."""
    name = draw(st.sampled_from(FILES))
    how = draw(st.sampled_from(["random", "mutate", "mutate", "raw", "splice"]))
    return name, how, draw(values), draw(st.sampled_from(HOSTILE) | st.text(max_size=40)), \
        draw(st.lists(st.integers(min_value=0, max_value=10 ** 6), min_size=8, max_size=8))


def _text(folder, name, how, value, raw, path):
    if how == "random":
        return _serialize(value, name)
    if how == "raw":
        return raw
    original = (folder / name).read_text()
    if how == "splice":
        at = path[0] % (len(original) + 1)
        return original[:at] + raw + original[at:]
    steps = iter(path)

    def draw_path(n):
        step = next(steps, 0)
        return (step % 3 == 0) if n is None else step % n
    return _serialize(_mutate(_original(folder, name), draw_path, value), name)


def _check(board, example):
    root, folder = board
    name, how, value, raw, path = example
    target = folder / name
    saved = target.read_bytes()
    try:
        target.write_text(_text(folder, name, how, value, raw, path), encoding="utf-8",
                          errors="surrogatepass")
        try:
            result = load_board(root)
        except MuseQuantError:
            return
        assert all(isinstance(p, str) and p for p in result.problems)
        if not result.problems:  # still valid: it renders
            assert isinstance(builder.render_readme(result), str)
            for entry in result.entries:
                for scheme in entry.results:
                    value = entry.value(scheme, "verbmem_f")
                    assert math.isfinite(value) and 0 <= value <= 100
    finally:
        target.write_bytes(saved)


@settings(max_examples=FAST, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(example=contents())
def test_validator_only_reports_problems(board, example):
    _check(board, example)


@pytest.mark.slow
@settings(max_examples=DEEP, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(example=contents())
def test_validator_only_reports_problems_deep(board, example):
    _check(board, example)


@pytest.mark.parametrize("name", FILES)
def test_hostile_raw_text(board, name):
    """Every hostile snippet, as the whole file (found by the deep run: a NUL byte in
    entry.yaml made PyYAML's reader raise before parsing)."""
    for raw in HOSTILE:
        _check(board, (name, "raw", None, raw, [0] * 8))


def test_the_fuzzed_board_is_restored(board):
    root, folder = board
    assert load_board(root).problems == []  # shared by the examples; _check restores each file
