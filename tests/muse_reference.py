"""A straightforward batch-1 implementation of MUSE's metric definitions, for parity tests and
the speed benchmark. Written from the definitions (muse_bench ``metrics/``), one text at a time,
with no lm-eval involved."""

from __future__ import annotations

import numpy as np
import torch
from rouge_score import rouge_scorer
from sklearn.metrics import auc as sk_auc, roc_curve

_SCORER = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)


def _greedy(model, tok, prompt: str, max_new_tokens: int) -> str:
    input_ids = tok(prompt, return_tensors="pt", add_special_tokens=True).input_ids
    with torch.no_grad():
        out = model.generate(input_ids, attention_mask=torch.ones_like(input_ids),
                             max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=tok.pad_token_id)
    return tok.batch_decode(out[:, input_ids.shape[1]:], skip_special_tokens=True,
                            clean_up_tokenization_spaces=True)[0]


def verbmem(model, tok, items, max_new_tokens=128) -> dict:
    f1s, recalls = [], []
    for d in items:
        output = _greedy(model, tok, d["prompt"], max_new_tokens)
        gt_ids = tok(d["gt"], return_tensors="pt", add_special_tokens=True).input_ids
        gt = tok.batch_decode(gt_ids[:, :max_new_tokens], skip_special_tokens=True,
                              clean_up_tokenization_spaces=True)[0]
        s = _SCORER.score(gt, output)["rougeL"]
        f1s.append(s.fmeasure)
        recalls.append(s.recall)
    return {"verbmem_rougeL_f1": 100 * np.mean(f1s), "verbmem_rougeL_recall": 100 * np.mean(recalls)}


def knowmem(model, tok, qa, icl, max_new_tokens=32) -> dict:
    prefix = "".join(f"Question: {d['question']}\nAnswer: {d['answer']}\n\n" for d in icl)
    f1s, recalls = [], []
    for d in qa:
        output = _greedy(model, tok, prefix + f"Question: {d['question']}\nAnswer: ", max_new_tokens)
        for stop in ["\n\n", "\nQuestion", "Question:"]:
            output = output.split(stop)[0]
        s = _SCORER.score(d["answer"], output)["rougeL"]
        f1s.append(s.fmeasure)
        recalls.append(s.recall)
    return {"knowmem_rougeL_f1": 100 * np.mean(f1s), "knowmem_rougeL_recall": 100 * np.mean(recalls)}


def min_k(model, tok, text: str, k: float = 0.4) -> float:
    input_ids = torch.tensor(tok.encode(text)).unsqueeze(0)  # with BOS
    with torch.no_grad():
        logits = model(input_ids).logits
    logp = torch.log_softmax(logits.float(), dim=-1)
    token_logp = [logp[0, i, t].item() for i, t in enumerate(input_ids[0][1:])]
    k_len = int(len(token_logp) * k)
    return float(-np.mean(np.sort(token_logp)[:k_len]))


def privleak(model, tok, forget, holdout, auc_retrain) -> dict:
    scores = np.array([min_k(model, tok, t) for t in forget] + [min_k(model, tok, t) for t in holdout])
    labels = np.array([0] * len(forget) + [1] * len(holdout))
    fpr, tpr, _ = roc_curve(labels, -scores)
    auc = sk_auc(fpr, tpr)
    return {"mink40_auc": auc, "privleak": (auc - auc_retrain) / auc_retrain * 100}
