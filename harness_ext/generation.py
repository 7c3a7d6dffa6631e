"""Greedy batched generation without the overheads of lm-eval's ``generate_until`` on MUSE tasks.

lm-eval 0.4.13 runs ``model.generate`` per batch with a text stopping criterion. On MUSE-shaped
work (VerbMem: ~2k-token prompts, 128 tokens; KnowMem: a 10-shot context shared by every
question, 32 tokens) the time went to:

* the KV cache: transformers' ``DynamicLayer`` appends with ``torch.cat``, copying the whole cache
  of the batch at every decoded token (at batch 32 x 2k tokens, more than the step's compute);
  :class:`GrowingLayer` writes into a buffer allocated once per batch;
* rows that already produced EOS are decoded until the whole batch is done; here they leave the
  batch (their cache rows are dropped), so every step computes only running sequences;
* the 10-shot KnowMem context is encoded once per batch row; here the token prefix common to every
  prompt of a task is encoded once and its keys/values are copied into each batch;
* the stopping criterion decodes every sequence to text at every step (``MultiTokenEOSCriteria``)
  even when the only stop sequence is EOS; here EOS is a token-id comparison.

The arithmetic of each step is the one ``model.generate`` does (same inputs, attention mask and
position ids as HF builds them from a left-padded batch, ``logits_to_keep=1``, float32 argmax), so
greedy outputs are the same tokens; the tests compare them with lm-eval's path token by token.
Rows are still left-padded within a length-sorted batch; the shared prefix sits before the
padding (``[prefix | pad | rest]``), which the attention mask and explicit position ids make
equivalent.
"""

from __future__ import annotations

import inspect
import time
from dataclasses import dataclass, field

import torch
from transformers.cache_utils import DynamicCache, DynamicLayer

#: a prefix shorter than this is not worth a separate forward pass
MIN_SHARED_PREFIX = 32


class GrowingLayer(DynamicLayer):
    """A ``DynamicLayer`` whose keys/values live in a buffer of ``capacity`` positions allocated
    at the first update; appending writes in place and ``keys``/``values`` are views of the filled
    part (no per-token copy of the cache)."""

    def __init__(self, capacity: int):
        super().__init__()
        self.capacity = capacity
        self._k = self._v = None
        self._n = 0

    def _allocate(self, like: torch.Tensor, batch: int) -> None:
        b, h, _, d = like.shape
        self._k = like.new_empty((batch, h, self.capacity, d))
        self._v = like.new_empty((batch, h, self.capacity, d))
        self.dtype, self.device = like.dtype, like.device
        self.is_initialized = True

    def _views(self):
        self.keys = self._k[:, :, :self._n]
        self.values = self._v[:, :, :self._n]
        return self.keys, self.values

    def update(self, key_states, value_states, *args, **kwargs):
        if self._k is None:
            self._allocate(key_states, key_states.shape[0])
        n, t = self._n, key_states.shape[-2]
        if n + t > self.capacity:  # never with the capacity the engine passes; stay correct
            grow = max(n + t, 2 * self.capacity) - self.capacity
            pad = (0, 0, 0, grow)
            self._k = torch.nn.functional.pad(self._k, pad)
            self._v = torch.nn.functional.pad(self._v, pad)
            self.capacity += grow
        self._k[:, :, n:n + t] = key_states
        self._v[:, :, n:n + t] = value_states
        self._n = n + t
        return self._views()

    def seed(self, keys: torch.Tensor, values: torch.Tensor, batch: int) -> None:
        """Start with ``keys``/``values`` of one sequence (a shared prefix) in every row."""
        self._allocate(keys, batch)
        self._n = keys.shape[-2]
        self._k[:, :, :self._n] = keys
        self._v[:, :, :self._n] = values
        self._views()

    def place(self, row: int, batch: int, start: int, keys, values) -> None:
        """Copy one sequence's keys/values (batch 1) into ``row`` at positions from ``start``;
        the buffer is zero-filled so that masked padding never holds NaN/inf."""
        if self._k is None:
            b, h, _, d = keys.shape
            self._k = keys.new_zeros((batch, h, self.capacity, d))
            self._v = keys.new_zeros((batch, h, self.capacity, d))
            self.dtype, self.device = keys.dtype, keys.device
            self.is_initialized = True
        end = start + keys.shape[-2]
        self._k[row, :, start:end] = keys[0]
        self._v[row, :, start:end] = values[0]

    def set_length(self, n: int) -> None:
        self._n = n
        self._views()

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self._k is not None:
            self._k = self._k.index_select(0, indices)
            self._v = self._v.index_select(0, indices)
            self._views()


def make_cache(model, capacity: int) -> DynamicCache:
    """transformers' ``DynamicCache`` for ``model``, with :class:`GrowingLayer` layers where the
    model uses plain full-attention layers (others, e.g. sliding windows, are kept as they are)."""
    cache = DynamicCache(config=model.config)
    if cache.layers and all(type(layer) is DynamicLayer for layer in cache.layers):
        cache.layers = [GrowingLayer(capacity) for _ in cache.layers]
    return cache


def supports_fast_path(model) -> bool:
    """The model's forward takes what the engine passes (HF decoder-only LMs do)."""
    params = inspect.signature(model.forward).parameters
    return all(k in params for k in ("position_ids", "past_key_values", "logits_to_keep")) and \
        not getattr(model.config, "is_encoder_decoder", False)


def common_prefix_length(rows: list[list[int]]) -> int:
    """Length of the token prefix shared by every row, leaving every row at least one token."""
    if len(rows) < 2:
        return 0
    first, n = rows[0], min(len(r) for r in rows) - 1
    for row in rows[1:]:
        k = 0
        while k < n and row[k] == first[k]:
            k += 1
        n = k
    return max(n, 0)


def left_padded(rows, max_new: int, prefix_len: int, pad_id: int, device):
    """A batch as HF generate sees it: ``(input ids, attention mask, position ids, filled)``.

    Rows after the shared prefix are left-padded (``[prefix | pad | rest]``); the mask has room
    for ``max_new`` more columns (filled one per decoded token); position ids are HF generate's
    ``cumsum(mask) - 1``, 0 on padding; ``filled`` is the number of columns in use.
    """
    n = len(rows)
    rest = [r[prefix_len:] for r in rows]
    width = max(len(r) for r in rest)
    ids = torch.full((n, width), pad_id, dtype=torch.long)
    mask = torch.zeros((n, prefix_len + width + max_new), dtype=torch.long)
    mask[:, :prefix_len] = 1
    for k, r in enumerate(rest):
        ids[k, width - len(r):] = torch.tensor(r, dtype=torch.long)
        mask[k, prefix_len + width - len(r):prefix_len + width] = 1
    filled = prefix_len + width
    pos = (mask[:, :filled].cumsum(-1) - 1).masked_fill(mask[:, :filled] == 0, 0)
    return ids.to(device), mask.to(device), pos.to(device), filled


@dataclass
class BatchTrace:
    """What one batch needed: its prompts and each row's generated tokens (for the profile)."""

    prompts: list[list[int]]
    generated: list[list[int]]
    shared_prefix: int = 0


@dataclass
class Engine:
    """Greedy generation of ``max_new_tokens`` tokens per prompt, stopping a row at any of
    ``eos_ids``. ``seconds`` accumulates the time spent inside model forward calls."""

    model: torch.nn.Module
    device: torch.device
    pad_id: int
    eos_ids: frozenset
    batch_size: int
    share_prefix: bool = True
    #: encode each prompt alone, then decode the batch (CPU: see _prefill_rows) ...
    prefill_rows: bool = False
    #: ... when a row has at least this many tokens after the shared prefix: short suffixes (the
    #: KnowMem questions after the shared 10-shot context) pad little, and one batched forward
    #: costs less than one forward per row (measured on real MUSE KnowMem retain: 1.8x the
    #: forward-pass bound with per-row prefill, where answers end after a few tokens)
    row_prefill_min: int = 256
    trace: list[BatchTrace] | None = None
    forward_calls: int = 0
    #: seconds inside model forward calls, by kind ("prefill", "decode")
    seconds: dict = field(default_factory=lambda: {"prefill": 0.0, "decode": 0.0})

    @property
    def forward_seconds(self) -> float:
        return sum(self.seconds.values())

    def _forward(self, kind: str = "prefill", **kwargs):
        start = time.perf_counter()
        out = self.model(use_cache=True, logits_to_keep=1, return_dict=True, **kwargs)
        self.seconds[kind] += time.perf_counter() - start
        self.forward_calls += 1
        return out

    def generate(self, prompts: list[list[int]], max_new_tokens: int,
                 progress=None) -> list[list[int]]:
        """Generated token ids per prompt (up to and including the first EOS), in input order.

        Prompts are sorted longest first (as lm-eval does) and cut into batches of
        ``batch_size``: contiguous slices of the sorted list pad the least.
        """
        order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
        if not all(isinstance(x, GrowingLayer) for x in make_cache(self.model, 1).layers):
            # e.g. sliding-window layers: no seeding or placing of keys/values, HF's cache only
            self.share_prefix = self.prefill_rows = False
        prefix_len = common_prefix_length(prompts) if self.share_prefix else 0
        prefix_cache = None
        if prefix_len >= MIN_SHARED_PREFIX:
            prefix_cache = self._prefill_prefix(prompts[order[0]][:prefix_len])
        else:
            prefix_len = 0
        out: list[list[int] | None] = [None] * len(prompts)
        for start in range(0, len(order), self.batch_size):
            idx = order[start:start + self.batch_size]
            rows = [prompts[i] for i in idx]
            generated = self._batch(rows, max_new_tokens, prefix_len, prefix_cache)
            for i, g in zip(idx, generated):
                out[i] = g
            if self.trace is not None:
                self.trace.append(BatchTrace(rows, generated, prefix_len))
            if progress is not None:
                progress(len(idx))
        return out  # type: ignore[return-value]

    def _prefill_prefix(self, prefix: list[int]):
        ids = torch.tensor([prefix], device=self.device)
        cache = make_cache(self.model, len(prefix))
        mask = torch.ones_like(ids)
        pos = torch.arange(len(prefix), device=self.device).unsqueeze(0)
        self._forward(input_ids=ids, attention_mask=mask, position_ids=pos,
                      past_key_values=cache)
        return cache

    def _prefill_batched(self, rows, ids, mask, pos, filled, total, prefix_len, prefix_cache):
        cache = make_cache(self.model, total)
        if prefix_cache is not None:
            for layer, src in zip(cache.layers, prefix_cache.layers):
                layer.seed(src.keys, src.values, len(rows))
        out = self._forward(input_ids=ids, attention_mask=mask[:, :filled],
                            position_ids=pos[:, prefix_len:], past_key_values=cache)
        return cache, out.logits[:, -1]

    def _prefill_rows(self, rows, filled, total, prefix_len, prefix_cache):
        """Each prompt alone (no padding, so attention can skip the masked half of the square),
        its keys/values then copied into the batch cache at its left-padded place."""
        cache = make_cache(self.model, total)
        last = []
        for k, row in enumerate(rows):
            own = make_cache(self.model, len(row))
            if prefix_cache is not None:
                for layer, src in zip(own.layers, prefix_cache.layers):
                    layer.seed(src.keys, src.values, 1)
            ids = torch.tensor([row[prefix_len:]], device=self.device)
            out = self._forward(input_ids=ids, attention_mask=torch.ones(
                (1, len(row)), dtype=torch.long, device=self.device),
                position_ids=torch.arange(prefix_len, len(row), device=self.device).unsqueeze(0),
                past_key_values=own)
            last.append(out.logits[:, -1])
            rest = len(row) - prefix_len  # layout of _layout: [prefix | pad | rest]
            for layer, src in zip(cache.layers, own.layers):
                layer.place(k, len(rows), 0, src.keys[:, :, :prefix_len],
                            src.values[:, :, :prefix_len])
                layer.place(k, len(rows), filled - rest, src.keys[:, :, prefix_len:],
                            src.values[:, :, prefix_len:])
        for layer in cache.layers:
            layer.set_length(filled)
        return cache, torch.cat(last)

    def _batch(self, rows, max_new, prefix_len, prefix_cache) -> list[list[int]]:
        dev, n = self.device, len(rows)
        ids, mask, pos, filled = left_padded(rows, max_new, prefix_len, self.pad_id, dev)
        total = filled + max_new
        if self.prefill_rows and max(len(r) for r in rows) - prefix_len >= self.row_prefill_min:
            cache, logits = self._prefill_rows(rows, filled, total, prefix_len, prefix_cache)
        else:
            cache, logits = self._prefill_batched(rows, ids, mask, pos, filled, total,
                                                  prefix_len, prefix_cache)
        last_pos = pos[:, -1]
        active = torch.arange(n, device=dev)
        generated: list[list[int]] = [[] for _ in rows]
        eos = torch.tensor(sorted(self.eos_ids), device=dev)
        for step in range(max_new):
            # HF generate: float32 copy of the last logits, argmax
            token = logits.to(dtype=torch.float32).argmax(dim=-1)
            for row, t in zip(active.tolist(), token.tolist()):
                generated[row].append(t)
            if step == max_new - 1:
                break
            running = ~torch.isin(token, eos)
            if not bool(running.all()):
                if not bool(running.any()):
                    break
                keep = running.nonzero().squeeze(-1)  # drop finished rows from the batch
                cache.batch_select_indices(keep)
                mask, last_pos, active, token = mask[keep], last_pos[keep], active[keep], \
                    token[keep]
            filled += 1
            mask[:, filled - 1] = 1
            last_pos = last_pos + 1
            logits = self._forward("decode", input_ids=token.unsqueeze(-1),
                                   attention_mask=mask[:, :filled],
                                   position_ids=last_pos.unsqueeze(-1),
                                   past_key_values=cache).logits[:, -1]
        return generated


def replay_forwards(model, device, pad_id: int, trace: list[BatchTrace],
                    cpu: dict | None = None) -> float:
    """Seconds of just the forward passes the traced work needs: per batch, the prefill of the
    left-padded prompts (same batch, same cache class), then one decode step per generated token
    for only the rows still running. Bookkeeping (inputs, dropping rows) is outside the clock.
    With ``cpu``, ``cpu["seconds"]`` gets the process CPU seconds of the same forwards."""
    seconds, cpu_start = 0.0, 0.0
    with torch.no_grad():
        for batch in trace:
            n = len(batch.prompts)
            steps = max(len(g) for g in batch.generated)
            ids, mask, pos, width = left_padded(batch.prompts, steps, 0, pad_id, device)
            cache = make_cache(model, width + steps)
            start, cpu_start = time.perf_counter(), time.process_time()
            model(input_ids=ids, attention_mask=mask[:, :width], position_ids=pos,
                  past_key_values=cache, use_cache=True, logits_to_keep=1)
            seconds += time.perf_counter() - start
            if cpu is not None:
                cpu["seconds"] = cpu.get("seconds", 0.0) + time.process_time() - cpu_start
            lengths = torch.tensor([len(g) for g in batch.generated])
            active = torch.arange(n)
            last_pos = pos[:, -1]
            for step in range(1, steps):
                keep = (lengths[active] > step).nonzero().squeeze(-1)
                if len(keep) < len(active):
                    cache.batch_select_indices(keep.to(device))
                    active, mask, last_pos = active[keep], mask[keep.to(device)], \
                        last_pos[keep.to(device)]
                mask[:, width + step - 1] = 1
                last_pos = last_pos + 1
                token = torch.tensor([batch.generated[r][step - 1] for r in active.tolist()],
                                     device=device).unsqueeze(-1)
                start, cpu_start = time.perf_counter(), time.process_time()
                model(input_ids=token, attention_mask=mask[:, :width + step],
                      position_ids=last_pos.unsqueeze(-1), past_key_values=cache,
                      use_cache=True, logits_to_keep=1)
                seconds += time.perf_counter() - start
                if cpu is not None:
                    cpu["seconds"] = cpu.get("seconds", 0.0) + time.process_time() - cpu_start
    return seconds
