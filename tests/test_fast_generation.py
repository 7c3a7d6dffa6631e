"""The fast generation path (harness_ext.generation / fast_generate) gives the same tokens, strings
and metrics as lm-eval's own ``generate_until`` (HF ``generate``), and falls back to it whenever
it could not."""

import json

import pytest
import torch

from harness_ext import metrics
from harness_ext.data import load_file
from harness_ext.generation import Engine, GrowingLayer, common_prefix_length, make_cache


@pytest.fixture(scope="module")
def small(small_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(small_model_dir).eval()
    return model, AutoTokenizer.from_pretrained(small_model_dir)


def _hf_generate(model, tok, prompts, max_new, eos):
    """What lm-eval runs: HF generate on a left-padded batch; each row cut after its EOS."""
    tok.padding_side = "left"
    enc = tok(prompts, return_tensors="pt", padding="longest")
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=max_new, do_sample=False, pad_token_id=0,
                             eos_token_id=sorted(eos))
    rows = []
    for row in out[:, enc.input_ids.shape[1]:].tolist():
        cut = next((i + 1 for i, t in enumerate(row) if t in eos), len(row))
        rows.append(row[:cut])
    return rows


def _prompts():
    qa = load_file("news", "knowmem/forget_qa.json", "embedded")[:6]
    icl = load_file("news", "knowmem/forget_qa_icl.json", "embedded")
    docs = load_file("news", "verbmem/forget.json", "embedded")[:4]
    # a shared 10-shot context (suffixes of different lengths) and unrelated prompts of mixed length
    return [metrics.knowmem_prompt(icl, d["question"]) for d in qa], \
        [d["prompt"][:80 + 60 * i] for i, d in enumerate(docs)]


@pytest.mark.parametrize("prefill_rows", [True, False])
def test_engine_tokens_equal_hf_generate(small, prefill_rows):
    model, tok = small
    shared, mixed = _prompts()
    frequent = {t for t, _ in __import__("collections").Counter(
        _hf_generate(model, tok, mixed, 12, {2})[0]).most_common(2)}
    for prompts in (shared, mixed):
        ids = [tok(p).input_ids for p in prompts]
        # EOS = a token the model emits often: rows finish at different steps and leave the batch
        for eos in ({2}, frequent | {2}):
            engine = Engine(model, torch.device("cpu"), 0, frozenset(eos), batch_size=3,
                            prefill_rows=prefill_rows, row_prefill_min=0)
            with torch.no_grad():
                got = engine.generate(ids, 12)
            assert got == _hf_generate(model, tok, prompts, 12, eos), (prompts[0][:40], eos)
    assert any(len(g) < 12 for g in got)  # the early-stop case was exercised


def test_shared_prefix_is_encoded_once(small):
    model, tok = small
    shared, _ = _prompts()
    ids = [tok(p).input_ids for p in shared]
    prefix = common_prefix_length(ids)
    assert prefix > 100 and all(i[:prefix] == ids[0][:prefix] for i in ids)
    engine = Engine(model, torch.device("cpu"), 0, frozenset({2}), batch_size=8,
                    prefill_rows=False)
    with torch.no_grad():
        engine.generate(ids, 1)
    # one forward for the prefix, one for the batch of suffixes
    assert engine.forward_calls == 2
    # CPU per-row prefill only for long suffixes: these short questions stay one batched forward
    for row_min, calls in ((256, 2), (0, 1 + len(ids))):
        engine = Engine(model, torch.device("cpu"), 0, frozenset({2}), batch_size=8,
                        prefill_rows=True, row_prefill_min=row_min)
        with torch.no_grad():
            engine.generate(ids, 1)
        assert engine.forward_calls == calls, row_min
    assert common_prefix_length([[1, 2, 3], [1, 2, 3]]) == 2  # every row keeps a token
    assert common_prefix_length([[1, 2, 3]]) == 0


def test_growing_layer_appends_in_place(small):
    model, _ = small
    cache = make_cache(model, capacity=8)
    assert all(isinstance(layer, GrowingLayer) for layer in cache.layers)
    layer = cache.layers[0]
    first, second = torch.randn(2, 1, 3, 4), torch.randn(2, 1, 1, 4)
    layer.update(first, first)
    buffer = layer._k
    keys, _ = layer.update(second, second)
    assert layer._k is buffer  # no new allocation, no copy of the cache
    assert torch.equal(keys, torch.cat([first, second], dim=-2))
    layer.batch_select_indices(torch.tensor([1]))
    assert torch.equal(layer.keys, torch.cat([first, second], dim=-2)[1:])
    assert layer.get_seq_length() == 4


def _requests(contexts, gen_kwargs, task="t"):
    from lm_eval.api.instance import Instance

    return [Instance("generate_until", {}, (c, dict(gen_kwargs)), 0, (task, i, 1))
            for i, c in enumerate(contexts)]


def test_generate_until_matches_hflm_and_falls_back(small_model_dir, monkeypatch):
    from lm_eval.models.huggingface import HFLM

    from harness_ext import fast_generate
    from harness_ext.lm import MuseQuantLM

    lm = MuseQuantLM(pretrained=str(small_model_dir), device="cpu", batch_size=4)
    shared, mixed = _prompts()
    eos_only = {"until": [], "max_gen_toks": 10, "do_sample": False}
    text_stop = {"until": ["e"], "max_gen_toks": 10, "do_sample": False}
    requests = _requests(shared + mixed, eos_only) + _requests(mixed, text_stop, task="u")
    fallback_calls = []
    original = HFLM.generate_until

    def spy(self, reqs, disable_tqdm=False):
        fallback_calls.append(len(reqs))
        return original(self, reqs, disable_tqdm)

    monkeypatch.setattr(HFLM, "generate_until", spy)
    fast = lm.generate_until(requests)
    assert fallback_calls == [len(mixed)]  # only the text-stop group went to lm-eval's loop
    plain = original(lm, requests)
    assert fast == plain
    assert fast_generate.model_is_eligible(lm) is None
    lm.model.generation_config.repetition_penalty = 1.3
    assert "repetition_penalty" in fast_generate.model_is_eligible(lm)
    lm.model.generation_config.repetition_penalty = 1.0
    lm.fast_generation = False
    assert fast_generate.model_is_eligible(lm) == "fast_generation=False"


@pytest.mark.slow
def test_suite_fast_path_equals_lm_eval_path(tiny_model_dir):
    """Every generated string and every metric of the MUSE generation tasks is identical."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    from harness_ext.lm import MuseQuantLM
    from harness_ext.plugin import tasks_dir

    lm = MuseQuantLM(pretrained=str(tiny_model_dir), device="cpu", batch_size=4)
    tm = TaskManager(include_path=tasks_dir(), include_defaults=False,
                     metadata={"muse_data": "embedded", "pretrained": str(tiny_model_dir)})
    tasks = ["muse_news_verbmem_f", "muse_news_knowmem_f", "muse_news_knowmem_r"]
    runs = {}
    for fast in (True, False):
        lm.fast_generation = fast
        lm.generation_seconds = {"prefill": 0.0, "decode": 0.0}
        runs[fast] = lm_eval.simple_evaluate(model=lm, tasks=tasks, task_manager=tm, limit=6,
                                             log_samples=True)
        assert (lm.generation_seconds["decode"] > 0) == fast  # which path ran
    for task in tasks:
        fast_out = [s["filtered_resps"] for s in runs[True]["samples"][task]]
        plain_out = [s["filtered_resps"] for s in runs[False]["samples"][task]]
        assert fast_out == plain_out and len(fast_out) == 6
        assert runs[True]["results"][task] == runs[False]["results"][task]
    assert any(o[0].strip() for o in fast_out)  # the model does generate text
    assert runs[True]["results"]["muse_news_verbmem_f"]["verbmem_rougeL_f1,none"] > 5


def test_datasets_are_built_once_per_content(tmp_path, monkeypatch):
    import importlib.util

    from harness_ext.data import memo
    from harness_ext.plugin import tasks_dir

    # loaded as lm-eval loads it (a fresh module per task config)
    spec = importlib.util.spec_from_file_location("muse_task_utils", f"{tasks_dir()}/utils.py")
    utils = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(utils)
    memo.clear()
    calls = []
    original = utils.load_file

    def counting(*args, **kwargs):
        calls.append(args[1])
        return original(*args, **kwargs)

    monkeypatch.setattr(utils, "load_file", counting)
    first = utils.knowmem_dataset("news", "forget", muse_data="embedded", quant="rtn:4")
    second = utils.knowmem_dataset("news", "forget", muse_data="embedded", quant="bnb-fp4")
    assert len(calls) == 2 and first["test"] is second["test"] and first is not second
    # a local copy: an edited file is read again
    for rel in ("knowmem/forget_qa.json", "knowmem/forget_qa_icl.json"):
        path = tmp_path / "news" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(load_file("news", rel, "embedded")[:3]))
    assert len(utils.knowmem_dataset("news", "forget", muse_data=str(tmp_path))["test"]) == 3
    path.write_text(json.dumps(load_file("news", "knowmem/forget_qa_icl.json", "embedded")[:2]
                               + [{"question": "q?", "answer": "a"}]))
    rebuilt = utils.knowmem_dataset("news", "forget", muse_data=str(tmp_path))["test"]
    assert "Question: q?\nAnswer: a" in rebuilt[0]["prompt"]
    memo.clear()


def test_environment_described_once(monkeypatch):
    import torch.utils.collect_env as collect_env

    from harness_ext.evaluation import reuse

    calls = []
    monkeypatch.setattr(reuse, "_ENV_INFO", [])
    monkeypatch.setattr(collect_env, "get_pretty_env_info",
                        lambda: calls.append(1) or f"env {len(calls)}")
    for _ in range(3):
        with reuse.environment_described_once():
            from torch.utils.collect_env import get_pretty_env_info

            assert get_pretty_env_info() == "env 1"
    assert calls == [1]
    assert collect_env.get_pretty_env_info() == "env 2"  # restored outside the block


def test_gpu_default_batch_size(monkeypatch):
    from harness_ext.evaluation import defaults

    argv = ["--model", "muse_quant", "--model_args", "pretrained=x", "--tasks", "t"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert defaults.with_default_batch_size(argv) == argv
    assert defaults.default_batch_size(None) == 1
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert defaults.with_default_batch_size(argv) == argv + ["--batch_size", "auto"]
    assert defaults.default_batch_size(None) == "auto"
    assert defaults.default_batch_size("cpu") == 1
    for given in (["--batch_size", "4"], ["--batch_size=4"], ["--device", "cpu"]):
        assert defaults.with_default_batch_size(argv + given) == argv + given
    with_args = ["--model_args", "pretrained=x,batch_size=2"]
    assert defaults.with_default_batch_size(with_args) == with_args


def test_logprob_batches_on_cpu_score_long_texts_alone():
    from types import SimpleNamespace

    from harness_ext.lm import MuseQuantLM

    def slices(lengths, device="cpu", batch_size=32):
        lm = SimpleNamespace(device=torch.device(device), CPU_LOGPROB_TOKENS=8192,
                             CPU_LOGPROB_ALONE=2048)
        return list(MuseQuantLM._logprob_batches(lm, lengths, batch_size))

    # MUSE-long texts (> 2048 tokens): one per forward, though two would fit in 8192 tokens
    assert slices([3906, 3800, 3425]) == [(0, 1), (1, 2), (2, 3)]
    # 2048 tokens: 8192 // 2048 = 4 rows; 1000 tokens: 8 rows; short texts: whole batches
    assert slices([2048] * 5) == [(0, 4), (4, 5)]
    assert slices([1000] * 9) == [(0, 8), (8, 9)]
    assert slices([100] * 40) == [(0, 32), (32, 40)]
    # no token cap off the CPU
    assert slices([3906] * 3, device="meta", batch_size=2) == [(0, 2), (2, 3)]
