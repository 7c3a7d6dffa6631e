"""``generate_until`` for ``muse_quant``: lm-eval's requests in, the same strings out, generated
by :class:`harness_ext.generation.Engine`.

A group of requests (same task, same generation kwargs) takes the fast path only when its result
cannot differ from HFLM's: greedy decoding, no stop sequence but EOS, an EOS that the model's
generation config stops at, no logits processor in the generation config, a causal model whose
forward takes position ids and a cache. Other groups go to HFLM's own ``generate_until``.

Per group, as HFLM does: the context is tokenized (with BOS when ``add_bos_token``; without when
it already starts with the BOS text) and left-truncated to ``max_length - max_gen_toks``; the
generated tokens are decoded with the model's ``tok_decode`` and cut at the stop sequences. Token
ids of contexts are kept on the model (``_context_ids``), so a sweep tokenizes every prompt once.
"""

from __future__ import annotations

import json
import logging

import torch

from .generation import Engine, supports_fast_path

log = logging.getLogger(__name__)

#: generation-config fields that add a logits processor or change greedy decoding in HF generate
_PROCESSOR_FIELDS = ("repetition_penalty", "no_repeat_ngram_size", "encoder_no_repeat_ngram_size",
                     "bad_words_ids", "min_length", "min_new_tokens", "forced_bos_token_id",
                     "forced_eos_token_id", "exponential_decay_length_penalty", "suppress_tokens",
                     "begin_suppress_tokens", "sequence_bias", "guidance_scale",
                     "watermarking_config", "renormalize_logits", "max_new_tokens", "num_beams",
                     "diversity_penalty", "penalty_alpha", "low_memory")
_GREEDY_KEYS = {"do_sample", "temperature", "until", "max_gen_toks"}
_MAX_CACHED_CONTEXTS = 50_000


def _eos_ids(lm) -> frozenset | None:
    """Token ids HF generate stops a row at, when lm-eval's EOS stop string is one of them."""
    cfg = getattr(lm.model, "generation_config", None)
    ids = getattr(cfg, "eos_token_id", None)
    ids = frozenset([ids] if isinstance(ids, int) else (ids or []))
    return ids if lm.eot_token_id in ids else None


def model_is_eligible(lm) -> str | None:
    """None when the fast path applies to this model; otherwise why not."""
    if not getattr(lm, "fast_generation", True):
        return "fast_generation=False"
    if lm.backend != "causal" or lm.think_end_token is not None or lm.truncation:
        return "not a plain causal model (seq2seq, think_end_token or truncation)"
    if not supports_fast_path(lm.model):
        return "the model's forward does not take position_ids/past_key_values/logits_to_keep"
    tok = lm.tokenizer
    if tok.pad_token_id is None or _eos_ids(lm) is None:
        return "no pad token, or the tokenizer's EOS is not a generation-config EOS"
    special = set(tok.all_special_ids)
    if tok.pad_token_id not in special or not _eos_ids(lm) <= special:
        return "pad/EOS tokens are not special tokens (decoding would keep them)"
    cfg = lm.model.generation_config
    from transformers import GenerationConfig

    default = GenerationConfig()
    changed = [k for k in _PROCESSOR_FIELDS if getattr(cfg, k, None) != getattr(default, k, None)]
    if changed:
        return f"the generation config sets {', '.join(changed)}"
    return None


def _group_plan(lm, gen_kwargs: dict):
    """``(until, max_gen_toks)`` when this request group is greedy with only EOS as stop."""
    from lm_eval.models.utils import handle_stop_sequences, normalize_gen_kwargs

    kwargs = normalize_gen_kwargs(gen_kwargs, lm.max_gen_toks)
    eos = lm.tok_decode(lm.eot_token_id, skip_special_tokens=False)
    until = handle_stop_sequences(kwargs.get("until"), eos=eos)
    if set(kwargs) - _GREEDY_KEYS or kwargs.get("do_sample") or kwargs.get("temperature"):
        return None
    if until != [eos]:  # a text stop sequence: HFLM's criterion decides (batch-dependent)
        return None
    return until, int(kwargs["max_gen_toks"])


def context_ids(lm, contexts: list[str], max_ctx_len: int) -> list[list[int]]:
    """Token ids as HFLM's ``tok_batch_encode`` gives them (per context), cached on ``lm``."""
    from lm_eval.models.utils import has_bos_prefix

    cache = lm.__dict__.setdefault("_context_ids", {})
    bos = getattr(lm.tokenizer, "bos_token", None)
    missing = {}
    for text in contexts:
        flag = False if has_bos_prefix(text, bos) else lm.add_bos_token
        if (text, flag) not in cache:
            missing.setdefault(flag, []).append(text)
    for flag, texts in missing.items():
        kwargs = {} if flag is None else {"add_special_tokens": flag}
        if len(cache) + len(texts) > _MAX_CACHED_CONTEXTS:
            cache.clear()
        for text, ids in zip(texts, lm.tokenizer(texts, **kwargs).input_ids):
            cache[(text, flag)] = ids
    out = []
    for text in contexts:
        ids = cache[(text, False if has_bos_prefix(text, bos) else lm.add_bos_token)]
        out.append(ids[-max_ctx_len:] if max_ctx_len and len(ids) > max_ctx_len else ids)
    return out


def make_engine(lm, trace=None) -> Engine:
    return Engine(lm.model, lm.device, lm.tokenizer.pad_token_id, _eos_ids(lm),
                  lm.batch_size_for("generation"), trace=trace,
                  prefill_rows=torch.device(lm.device).type == "cpu")


def generate_until(lm, requests, disable_tqdm: bool = False, fallback=None) -> list[str]:
    """Results in request order; groups that cannot take the fast path go to ``fallback``."""
    from lm_eval.models.utils import postprocess_generated_text
    from tqdm.auto import tqdm

    why = model_is_eligible(lm)
    if why is not None:
        log.info("generation: lm-eval's path (%s)", why)
        return fallback(requests, disable_tqdm)
    groups: dict[tuple, list[int]] = {}
    for i, req in enumerate(requests):
        key = (getattr(req, "task_name", None), json.dumps(req.args[1], sort_keys=True,
                                                           default=str))
        groups.setdefault(key, []).append(i)
    results: list[str | None] = [None] * len(requests)
    slow: list[int] = []
    bar = tqdm(total=len(requests), disable=disable_tqdm or lm.rank != 0,
               desc="Running generate_until requests")
    engine = make_engine(lm, trace=getattr(lm, "generation_trace", None))
    for members in groups.values():
        plan = _group_plan(lm, requests[members[0]].args[1])
        if plan is None:
            slow += members
            continue
        until, max_gen_toks = plan
        if lm.max_length - max_gen_toks <= 0:  # HFLM refuses this; let it say so
            slow += members
            continue
        contexts = [requests[i].args[0] for i in members]
        prompts = context_ids(lm, contexts, lm.max_length - max_gen_toks)
        with torch.no_grad(), torch.autocast(device_type=torch.device(lm.device).type,
                                             dtype=lm.mixed_precision_dtype,
                                             enabled=lm.mixed_precision_dtype is not None):
            generated = engine.generate(prompts, max_gen_toks, progress=bar.update)
        for i, context, tokens in zip(members, contexts, generated):
            text = postprocess_generated_text(lm.tok_decode(tokens), until, None)
            results[i] = text
            lm.cache_hook.add_partial("generate_until", (context, requests[i].args[1]), text)
    bar.close()
    totals = lm.__dict__.setdefault("generation_seconds", {"prefill": 0.0, "decode": 0.0})
    for kind, seconds in engine.seconds.items():  # read by benchmarks/eval_profile.py
        totals[kind] += seconds
    if slow:
        log.info("generation: %d request(s) with sampling or text stop sequences use lm-eval's "
                 "path", len(slow))
        for i, text in zip(slow, fallback([requests[i] for i in slow], disable_tqdm)):
            results[i] = text
    return results  # type: ignore[return-value]
