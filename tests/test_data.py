"""Data sources: the embedded corpus, local MUSE-layout directories, schema errors, the hub."""

import json

import pytest

from harness_ext.data import embedded, load_file, load_texts, resolve_source, sources
from harness_ext.errors import MuseQuantError

MUSE_FILES = ["verbmem/forget.json", "knowmem/forget_qa.json", "knowmem/forget_qa_icl.json",
              "knowmem/retain_qa.json", "knowmem/retain_qa_icl.json", "privleak/forget.json",
              "privleak/retain.json", "privleak/holdout.json"]


@pytest.mark.parametrize("flavour", embedded.FLAVOURS)
def test_embedded_has_muse_layout_and_valid_schemas(flavour):
    files = embedded.generate(flavour=flavour)
    for rel in MUSE_FILES + ["raw/forget.json", "raw/retain1.json", "raw/holdout.json",
                             "raw/generic.json", "knowmem/generic_qa.json"]:
        sources.validate(rel, files[rel], rel)
    assert len(files["knowmem/forget_qa_icl.json"]) == 10


@pytest.mark.parametrize("flavour", embedded.FLAVOURS)
def test_embedded_answers_are_stated_in_the_documents(flavour):
    files = embedded.generate(flavour=flavour)
    for split, key in (("forget", "forget"), ("retain1", "retain")):
        docs = files[f"raw/{split}.json"]
        for qa, doc in zip(files[f"knowmem/{key}_qa.json"], docs):
            assert qa["answer"] in doc
        for qa, doc in zip(files[f"knowmem/{key}_qa_icl.json"], docs):
            assert qa["answer"] in doc
    for item, doc in zip(files["verbmem/forget.json"], files["raw/forget.json"]):
        assert doc == item["prompt"] + " " + item["gt"]


def test_embedded_is_deterministic_and_splits_are_disjoint():
    a, b = embedded.generate(flavour="news"), embedded.generate(flavour="news")
    assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)
    assert embedded.generate(flavour="news", seed=1) != a
    splits = [set(a[f"raw/{s}.json"]) for s in ("forget", "retain1", "holdout", "generic")]
    assert sum(len(s) for s in splits) == len(set().union(*splits))


def test_write_and_read_back_as_local_directory(tmp_path):
    embedded.write(tmp_path, ["books"])
    assert load_file("books", "verbmem/forget.json", str(tmp_path)) == \
        embedded.generate(flavour="books")["verbmem/forget.json"]


def test_source_resolution(monkeypatch):
    monkeypatch.delenv("MUSE_DATA", raising=False)
    assert resolve_source(None) == "hub"
    monkeypatch.setenv("MUSE_DATA", "embedded")
    assert resolve_source(None) == "embedded"
    assert resolve_source("/data") == "/data"


def test_local_errors_name_path_and_schema(tmp_path):
    with pytest.raises(MuseQuantError, match="no such directory"):
        load_file("news", "verbmem/forget.json", str(tmp_path / "absent"))
    with pytest.raises(MuseQuantError, match=r"missing MUSE data file .*news/verbmem/forget.json.*"
                                             r"\"prompt\": str, \"gt\": str"):
        load_file("news", "verbmem/forget.json", str(tmp_path))
    d = tmp_path / "news" / "knowmem"
    d.mkdir(parents=True)
    (d / "forget_qa.json").write_text("[]")
    with pytest.raises(MuseQuantError, match="forget_qa.json: the split is empty"):
        load_file("news", "knowmem/forget_qa.json", str(tmp_path))
    (d / "forget_qa.json").write_text(json.dumps([{"question": "q", "answr": "a"}]))
    with pytest.raises(MuseQuantError, match=r"item 0 does not match the schema.*\"answer\": str"):
        load_file("news", "knowmem/forget_qa.json", str(tmp_path))
    (d / "forget_qa.json").write_text("{not json")
    with pytest.raises(MuseQuantError, match="not valid JSON"):
        load_file("news", "knowmem/forget_qa.json", str(tmp_path))


def test_corpus_folder_passed_instead_of_parent(tmp_path):
    embedded.write(tmp_path, ["news"])
    with pytest.raises(MuseQuantError, match="is itself a corpus folder; pass its parent"):
        load_file("news", "verbmem/forget.json", str(tmp_path / "news"))


def test_unknown_corpus():
    with pytest.raises(MuseQuantError, match="unknown corpus 'poems'"):
        load_file("poems", "verbmem/forget.json", "embedded")


def test_hub_failure_is_one_clear_error(monkeypatch):
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(MuseQuantError, match="could not load muse-bench/MUSE-News") as err:
        load_file("news", "verbmem/forget.json", "hub")
    assert "muse_data=embedded" in err.value.fix


def test_hub_rows_are_mapped_to_muse_files(monkeypatch):
    import datasets

    calls = []

    def fake(path, config, split, revision):
        calls.append((path, config, split, revision))
        return datasets.Dataset.from_list([{"question": "q?", "answer": "a", "extra": 1}])

    monkeypatch.setattr(datasets, "load_dataset", fake)
    assert load_file("books", "knowmem/retain_qa.json", "hub") == [{"question": "q?", "answer": "a"}]
    assert calls == [("muse-bench/MUSE-Books", "knowmem", "retain_qa", sources.HUB_REVISION)]


def test_real_muse_files_load_and_validate(shared_muse):
    for corpus in ("news", "books"):
        for rel in MUSE_FILES:
            data = load_file(corpus, rel, str(shared_muse))
            assert len(data) in (10, 100), (corpus, rel)
    assert len(load_file("news", "raw/forget.json", str(shared_muse))) > 100


def test_load_texts_formats(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps(["one", {"text": "two"}]))
    (tmp_path / "b.jsonl").write_text('{"text": "x"}\n{"text": "y"}\n')
    (tmp_path / "c.txt").write_text("first doc\n\nsecond doc\n")
    assert load_texts(tmp_path / "a.json") == ["one", "two"]
    assert load_texts(tmp_path / "b.jsonl") == ["x", "y"]
    assert load_texts(tmp_path / "c.txt") == ["first doc", "second doc"]
    (tmp_path / "d.json").write_text(json.dumps([1, 2]))
    with pytest.raises(MuseQuantError, match="must be a string"):
        load_texts(tmp_path / "d.json")
    with pytest.raises(MuseQuantError, match="no such file"):
        load_texts(tmp_path / "nope.txt")
