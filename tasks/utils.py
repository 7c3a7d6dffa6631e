"""lm-eval hooks for the MUSE memorization tasks (datasets, per-document scores, aggregations).

The metric definitions live in ``harness_ext.metrics``; data loading in ``harness_ext.data``.
``custom_dataset`` functions are called by lm-eval as ``fn(**task.metadata, **dataset_kwargs)``:
the metadata holds ``--metadata`` (``muse_data``, ``hub_revision``, ``retrain_auc``) and the
``--model_args`` (``pretrained``, ``tokenizer``, ...), hence the ``**kwargs``.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import datasets

from harness_ext import metrics
from harness_ext.data import load_file, resolve_source, source_label
from harness_ext.data.memo import file_stamps, memoized, tokenizer_stamp
from harness_ext.errors import MuseQuantError

log = logging.getLogger(__name__)

VERBMEM_MAX_TOKENS = 128  # MUSE: max_new_tokens=128 and reference truncated to 128 tokens


def _tokenizer(pretrained=None, tokenizer=None, revision=None, trust_remote_code=False, **_):
    source = tokenizer or pretrained
    if not isinstance(source, str):
        if source is not None and hasattr(source, "decode"):
            return source
        raise MuseQuantError(
            "VerbMem truncates the reference to 128 tokens of the model's tokenizer, but no "
            "tokenizer is known", "pass --model_args pretrained=... (or tokenizer=...)")
    from transformers import AutoTokenizer

    kwargs = {"trust_remote_code": bool(trust_remote_code)}
    if revision and not tokenizer:
        kwargs["revision"] = str(revision)
    return AutoTokenizer.from_pretrained(source, **kwargs)


def _is_muse_data(source: str, corpus: str) -> bool:
    """The hub or a local copy of MUSE's files (the embedded corpus writes a ``spec.json``)."""
    return source == "hub" or (source != "embedded"
                               and not (Path(source).expanduser() / corpus / "spec.json").is_file())


# ------------------------------------------------------------------ VerbMem
def verbmem_dataset(corpus: str, muse_data=None, hub_revision=None, **kwargs):
    """Docs ``{prompt, gt, reference}``; ``reference`` = decode(tokenize(gt, BOS)[:128])."""
    key = ("verbmem", corpus, resolve_source(muse_data), hub_revision,
           file_stamps(corpus, ("verbmem/forget.json",), muse_data), tokenizer_stamp(**kwargs))
    return memoized(key, lambda: _verbmem_dataset(corpus, muse_data, hub_revision, **kwargs))


def _verbmem_dataset(corpus: str, muse_data=None, hub_revision=None, **kwargs):
    items = load_file(corpus, "verbmem/forget.json", muse_data, hub_revision)
    tok = _tokenizer(**kwargs)
    ids = tok([d["gt"] for d in items], add_special_tokens=True).input_ids
    refs = tok.batch_decode([x[:VERBMEM_MAX_TOKENS] for x in ids], skip_special_tokens=True,
                            clean_up_tokenization_spaces=True)
    rows = [{"prompt": d["prompt"], "gt": d["gt"], "reference": ref}
            for d, ref in zip(items, refs)]
    log.info("muse_%s_verbmem_f: %d prompts from %s", corpus, len(rows),
             source_label(resolve_source(muse_data)))
    return {"test": datasets.Dataset.from_list(rows)}


def process_verbmem(doc, results):
    f1, recall = metrics.rouge_l(doc["reference"], results[0])
    return {"verbmem_rougeL_f1": 100.0 * f1, "verbmem_rougeL_recall": 100.0 * recall}


# ------------------------------------------------------------------ KnowMem
def knowmem_dataset(corpus: str, split: str, muse_data=None, hub_revision=None, **kwargs):
    """Docs ``{prompt, question, answer}`` with MUSE's 10-shot ICL prompt."""
    rels = (f"knowmem/{split}_qa.json", f"knowmem/{split}_qa_icl.json")
    key = ("knowmem", corpus, split, resolve_source(muse_data), hub_revision,
           file_stamps(corpus, rels, muse_data))
    return memoized(key, lambda: _knowmem_dataset(corpus, split, muse_data, hub_revision))


def _knowmem_dataset(corpus: str, split: str, muse_data=None, hub_revision=None):
    qa = load_file(corpus, f"knowmem/{split}_qa.json", muse_data, hub_revision)
    icl = load_file(corpus, f"knowmem/{split}_qa_icl.json", muse_data, hub_revision)
    rows = [{"prompt": metrics.knowmem_prompt(icl, d["question"]), "question": d["question"],
             "answer": d["answer"]} for d in qa]
    return {"test": datasets.Dataset.from_list(rows)}


def process_knowmem(doc, results):
    f1, recall = metrics.rouge_l(doc["answer"], metrics.knowmem_cut(results[0]))
    return {"knowmem_rougeL_f1": 100.0 * f1, "knowmem_rougeL_recall": 100.0 * recall}


# ------------------------------------------------------------------ PrivLeak
def retrain_auc_reference(corpus: str, source: str, retrain_auc=None) -> tuple[float, str]:
    """The AUC of the retrained model PrivLeak is relative to, and where it comes from."""
    if retrain_auc is not None:
        return float(retrain_auc), "metadata retrain_auc"
    if _is_muse_data(source, corpus):
        return metrics.AUC_RETRAIN[corpus], f"MUSE AUC_RETRAIN[{corpus}] forget_holdout_Min-40%"
    log.warning("muse_%s_privleak: no known retrain AUC for the %s data; PrivLeak is computed "
                "against %.1f. Pass --metadata retrain_auc=<AUC of your retrained model>.",
                corpus, source, metrics.AUC_RETRAIN_UNKNOWN)
    return metrics.AUC_RETRAIN_UNKNOWN, "default 0.5 (no retrain AUC known for this data)"


def privleak_dataset(corpus: str, muse_data=None, hub_revision=None, retrain_auc=None, **kwargs):
    """Docs ``{text, label, ...}`` alternating forget (label 0) and holdout (label 1).

    Refuses first, before any request is run, a model without per-token log-probs."""
    from harness_ext.evaluation.task_check import check_running_model

    check_running_model(f"muse_{corpus}_privleak")
    rels = ("privleak/forget.json", "privleak/holdout.json")
    key = ("privleak", corpus, resolve_source(muse_data), hub_revision, retrain_auc,
           file_stamps(corpus, rels, muse_data))
    return memoized(key, lambda: _privleak_dataset(corpus, muse_data, hub_revision, retrain_auc))


def _privleak_dataset(corpus: str, muse_data=None, hub_revision=None, retrain_auc=None):
    forget = load_file(corpus, "privleak/forget.json", muse_data, hub_revision)
    holdout = load_file(corpus, "privleak/holdout.json", muse_data, hub_revision)
    source = resolve_source(muse_data)
    auc_ref, auc_source = retrain_auc_reference(corpus, source, retrain_auc)
    rows = []
    for i in range(max(len(forget), len(holdout))):
        for label, texts in ((0, forget), (1, holdout)):
            if i < len(texts):
                rows.append({"text": texts[i], "label": label, "index": i,
                             "retrain_auc": auc_ref, "retrain_auc_source": auc_source})
    return {"test": datasets.Dataset.from_list(rows)}


def process_privleak(doc, results):
    token_logprobs = getattr(results[0], "token_logprobs", None)
    if token_logprobs is None:
        raise MuseQuantError(
            "the muse_*_privleak tasks need per-token log-probs, which lm-eval's built-in models "
            "do not return (only sums)",
            "run them with `muse-quant eval --model muse_quant ...` (the other MUSE tasks also "
            "work with --model hf)")
    score = metrics.mink_score(token_logprobs)
    return {"mink40_auc": (score, doc["label"]),
            "privleak": (score, doc["label"], doc["retrain_auc"]),
            "privleak_retrain_auc": doc["retrain_auc"]}


def agg_mink40_auc(items) -> float:
    scores, labels = zip(*items)
    return metrics.mink_auc(scores, labels)


def agg_privleak(items) -> float:
    scores, labels, refs = zip(*items)
    auc = metrics.mink_auc(scores, labels)
    return math.nan if math.isnan(auc) else metrics.privleak(auc, refs[0])
