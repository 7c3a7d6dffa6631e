"""Plain causal-LM training used to build toy models (pre-training, fine-tuning a target).

Deterministic on CPU for a given seed: fixed shuffling generator, no dropout in the tiny Llama.
"""

from __future__ import annotations

import math

import torch

from ..data.tokenized import TokenizedTexts, epoch_batches
from ..unlearning.losses import sequence_nll


def qa_chains(tokenizer, qa: list[dict], per_chain: int, seed: int,
              prefix: str = "") -> list[list[int]]:
    """Training sequences that teach a toy model MUSE's KnowMem format.

    ``qa`` is shuffled with ``seed`` and cut into chains of ``per_chain`` pairs, each written as
    ``"Question: {q}\nAnswer: {a}\n\n"`` (MUSE's KnowMem prompt, :func:`metrics.knowmem_prompt`)
    after BOS and ``prefix`` (e.g. the file's in-context examples). The prompt and the answer are
    tokenized separately, so the answer follows the lone-space token that ends ``"Answer: "``
    exactly as it does in MUSE's evaluation prompt.
    """
    import random

    pairs = list(qa)
    random.Random(seed).shuffle(pairs)
    head = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    head += tokenizer(prefix, add_special_tokens=False).input_ids if prefix else []
    chains = []
    for start in range(0, len(pairs), per_chain):
        ids = list(head)
        for pair in pairs[start:start + per_chain]:
            ids += tokenizer(f"Question: {pair['question']}\nAnswer: ",
                             add_special_tokens=False).input_ids
            ids += tokenizer(pair["answer"] + "\n\n", add_special_tokens=False).input_ids
        chains.append(ids)
    return chains


def train_causal_lm(model, tokenizer, texts: list[str], *, max_len: int = 256, **kwargs) -> list[float]:
    """Tokenize ``texts`` (BOS + EOS, truncated to ``max_len``) and :func:`train_tokenized`."""
    data = TokenizedTexts.from_texts(tokenizer, texts, max_len)
    return train_tokenized(model, data, **kwargs)


def train_tokenized(model, data: TokenizedTexts, *, epochs: float = 1.0, lr: float = 1e-3,
                    batch_size: int = 8, seed: int = 0, weight_decay: float = 0.0,
                    warmup_steps: int = 0, desc: str = "training", progress: bool = True,
                    bucket_by_length: bool = False) -> list[float]:
    """AdamW on the token-mean NLL, cosine decay after ``warmup_steps``. Returns the step losses.

    ``bucket_by_length`` batches examples of similar length together (see :func:`epoch_batches`).
    """
    from tqdm.auto import tqdm

    if not len(data):
        raise ValueError("no training text left after tokenization")
    gen = torch.Generator().manual_seed(seed)
    steps_per_epoch = math.ceil(len(data) / batch_size)
    total = max(1, round(epochs * steps_per_epoch))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / max(1, warmup_steps)) *
        0.5 * (1 + math.cos(math.pi * min(1.0, s / total))))
    model.train()
    losses: list[float] = []
    batches: list[list[int]] = []
    bar = tqdm(range(total), desc=desc, disable=not progress, leave=False)
    for _ in bar:
        if not batches:
            batches = epoch_batches(len(data), batch_size, gen,
                                    [len(x) for x in data.ids] if bucket_by_length else None)
        loss = sequence_nll(model, data.batch(batches.pop(0)))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
    model.eval()
    return losses
