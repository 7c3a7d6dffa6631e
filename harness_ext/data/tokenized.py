"""Tokenized training text and its batches, shared by the unlearning trainer and toy training.

Deterministic on CPU for a given seed: fixed shuffling generator.
"""

from __future__ import annotations

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
