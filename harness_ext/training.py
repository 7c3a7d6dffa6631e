"""Plain causal-LM training used to build toy models (pre-training, fine-tuning a target).

Also the tokenization and batching helpers the unlearning trainer shares. Deterministic on CPU
for a given seed: fixed shuffling generator, no dropout in the tiny Llama.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass
class TokenizedTexts:
    """Texts tokenized with BOS (+ EOS), truncated to ``max_len`` tokens."""

    ids: list[list[int]]
    pad_id: int

    @classmethod
    def from_texts(cls, tokenizer, texts: list[str], max_len: int, add_eos: bool = True):
        eos = [tokenizer.eos_token_id] if add_eos and tokenizer.eos_token_id is not None else []
        ids = [(tokenizer(t, add_special_tokens=True).input_ids + eos)[:max_len] for t in texts]
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        return cls([x for x in ids if len(x) > 1], pad)

    @classmethod
    def muse_chunks(cls, tokenizer, texts: list[str], max_len: int):
        """MUSE's training examples (``muse_bench`` ``DefaultDataset`` on ``raw/<split>.txt``).

        The split is joined with blank lines (``"\\n\\n".join``, as MUSE's ``load_data.py`` writes
        the ``.txt``), tokenized once without special tokens and cut into chunks of
        ``max_len - 1`` tokens, each prefixed with BOS; the last chunk is filled up to
        ``max_len`` with tokens from the start of the first chunk (MUSE's "rotation").
        """
        if max_len < 2:
            raise ValueError("max_len must be at least 2")
        tokens = tokenizer("\n\n".join(texts), add_special_tokens=False).input_ids
        bos = tokenizer.bos_token_id
        if bos is None:
            chunks = [tokens[i:i + max_len] for i in range(0, len(tokens), max_len)]
        else:
            chunks = [[bos] + tokens[i:i + max_len - 1]
                      for i in range(0, len(tokens), max_len - 1)]
        if chunks and len(chunks[-1]) < max_len:
            chunks[-1] = (chunks[-1] + chunks[0])[:max_len]
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        return cls([c for c in chunks if len(c) > 1], pad)

    def __len__(self) -> int:
        return len(self.ids)

    def batch(self, indices) -> dict[str, torch.Tensor]:
        """Right-padded ``input_ids``, ``attention_mask`` and ``labels`` (-100 on padding)."""
        rows = [self.ids[i] for i in indices]
        width = max(len(r) for r in rows)
        input_ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for k, r in enumerate(rows):
            input_ids[k, :len(r)] = torch.tensor(r)
            mask[k, :len(r)] = 1
        labels = input_ids.masked_fill(mask == 0, -100)
        return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}


def epoch_batches(n: int, batch_size: int, generator: torch.Generator,
                  lengths: list[int] | None = None) -> list[list[int]]:
    """One epoch's batches in random order. With ``lengths``, examples of similar length are
    batched together (sorted within windows of 16 batches, then the batches are shuffled), which
    cuts the padding a batch computes on."""
    order = torch.randperm(n, generator=generator).tolist()
    if lengths is None:
        return [order[i:i + batch_size] for i in range(0, n, batch_size)]
    batches = []
    window = batch_size * 16
    for start in range(0, n, window):
        part = sorted(order[start:start + window], key=lambda k: lengths[k])
        batches += [part[i:i + batch_size] for i in range(0, len(part), batch_size)]
    return [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]


def sequence_nll(model, batch: dict[str, torch.Tensor], reduction: str = "token_mean"):
    """Negative log-likelihood of each batch row's tokens 1..T-1.

    ``reduction``: ``"token_mean"`` (one scalar, mean over all real tokens: HF's loss),
    ``"sum_per_sequence"`` (a vector: the sequence NLL, -log p(y|x)).
    """
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    logits = out.logits[:, :-1].float()
    labels = batch["labels"][:, 1:]
    nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels, reduction="none",
                                            ignore_index=-100)
    mask = (labels != -100).float()
    if reduction == "sum_per_sequence":
        return (nll * mask).sum(dim=1)
    return (nll * mask).sum() / mask.sum().clamp(min=1)


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
