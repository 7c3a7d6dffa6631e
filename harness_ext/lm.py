"""The lm-eval model ``muse_quant``: HFLM that applies an unlearning checkpoint and quantizes.

``--model muse_quant --model_args pretrained=DIR_OR_HUB_ID[,unlearned=CKPT][,quant=SCHEME]...``

It subclasses lm-eval's ``HFLM``, so batching, devices and ``accelerate launch`` work unchanged;
only model creation, rolling log-likelihoods (which here also return per-token log-probs, for
Min-K%) and decoding (MUSE's ``clean_up_tokenization_spaces=True``) are overridden.
"""

from __future__ import annotations

import logging
import os
import time

import torch
from lm_eval import utils as lm_utils
from lm_eval.api.registry import register_model
from lm_eval.models.huggingface import HFLM

from . import checkpoints
from .errors import MuseQuantError
from .quantizers import apply as qapply
from .quantizers import compat, parse_scheme

log = logging.getLogger(__name__)
compat.load_lm_eval_builtin_models()  # before @register_model below

#: model_args this wrapper adds to HFLM's
MUSE_MODEL_ARGS = ("unlearned", "quant", "quant_lm_head", "allow_pickle", "keep_float_weights",
                   "calib", "calib_samples", "calib_seqlen", "calib_corpus", "calib_data",
                   "quant_cache_dir", "fast_generation")


class TokenLogProbs(float):
    """A rolling log-likelihood (the float lm-eval expects) that also carries per-token values.

    ``token_logprobs[i]`` is log p(token_{i+1} | tokens_{<=i}) for the text tokenized with BOS,
    i.e. tokens 1..T-1. It pickles (lm-eval's cache and cross-rank gather), and built-in
    perplexity tasks keep working because it is a float.
    """

    def __new__(cls, token_logprobs):
        values = [float(x) for x in token_logprobs]
        obj = super().__new__(cls, sum(values))
        obj.token_logprobs = values
        return obj

    def __reduce__(self):
        return (TokenLogProbs, (self.token_logprobs,))


def _as_bool(value) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes")
    return bool(value)


@register_model("muse_quant")
class MuseQuantLM(HFLM):
    """HFLM + ``unlearned=`` (full dir / delta .safetensors / PEFT dir) + ``quant=`` (scheme)."""

    def __init__(self, pretrained, unlearned: str | None = None, quant: str | None = "none",
                 quant_lm_head: bool = False, allow_pickle: bool = False,
                 keep_float_weights: bool = False, add_bos_token: bool = True,
                 calib: str = "generic", calib_samples: int = 128, calib_seqlen: int = 512,
                 calib_corpus: str = "news", calib_data: str | None = None,
                 quant_cache_dir: str | None = None, fast_generation: bool = True, **kwargs):
        # Validate cheap things before loading anything big.
        checkpoints.check_pretrained(pretrained)
        self._quantizer = parse_scheme("none" if quant is None else str(quant))
        self._unlearned = str(unlearned) if unlearned not in (None, "", "None") else None
        if self._unlearned is not None:
            checkpoints.detect_checkpoint_kind(self._unlearned)
        self._quant_lm_head = _as_bool(quant_lm_head)
        self._allow_pickle = _as_bool(allow_pickle)
        self._keep_float_weights = _as_bool(keep_float_weights)
        self._calib_args = {"calib": calib, "calib_samples": calib_samples,
                            "calib_seqlen": calib_seqlen, "calib_corpus": calib_corpus,
                            "calib_data": calib_data, "quant_cache_dir": quant_cache_dir}
        self._calibration_built = None
        if self._quantizer.info.needs_calibration:
            from .quantizers.calibration import validate_calib

            validate_calib(**self._calib_args)
        self._float_snapshot: qapply.WeightSnapshot | None = None
        # module / parameter names the last quantization changed (None: unknown, restore all)
        self._changed: set[str] | None = None
        self.muse_info: dict = {"unlearned": None, "quantization": None}
        self.fast_generation = _as_bool(fast_generation)
        compat.refuse_lm_eval_delta(kwargs)
        try:
            super().__init__(pretrained=pretrained, add_bos_token=_as_bool(add_bos_token),
                             **kwargs)
        except OSError as exc:  # transformers: not a local folder and not on the hub
            if not isinstance(pretrained, str) or os.path.isdir(pretrained):
                raise
            raise MuseQuantError(f"pretrained={pretrained} is not a local model folder and could "
                                 f"not be loaded from the hub ({str(exc).splitlines()[0][:200]})",
                                 "pass an existing folder written by save_pretrained, or a hub "
                                 "id you can reach (namespace/name)") from None
        compat.adopt_cpu_data_parallel(self)

    # ---------------------------------------------------------------- model creation
    def _create_model(self, pretrained, **kwargs):
        super()._create_model(pretrained, **kwargs)
        if self._unlearned is not None:
            self._model, report = checkpoints.apply_unlearned(self._model, self._unlearned,
                                                          allow_pickle=self._allow_pickle)
            self.muse_info["unlearned"] = report
        if self._keep_float_weights:
            names = qapply.quantizable_linear_names(self._model, include_lm_head=True)
            # other_parameters: AWQ also rescales norm weights
            self._float_snapshot = qapply.WeightSnapshot(self._model, names,
                                                          other_parameters=True)
        report = self._quantize(self._quantizer)
        self._changed = set(report["modules"]) | set(report.get("other_parameters_changed", []))

    def _calibration(self, quantizer):
        if not quantizer.info.needs_calibration:
            return None
        if self._calibration_built is None:  # built once per model (sweeps reuse it)
            from .quantizers.calibration import build_calibration

            self._calibration_built = build_calibration(tokenizer=self.tokenizer,
                                                        **self._calib_args)
        return self._calibration_built

    def _quantize(self, quantizer) -> dict:
        start = time.perf_counter()
        report = qapply.quantize_model(self._model, quantizer,
                                        include_lm_head=self._quant_lm_head,
                                        calibration=self._calibration(quantizer),
                                        progress=self.rank == 0 if hasattr(self, "_rank") else True)
        report["total_seconds"] = round(time.perf_counter() - start, 4)
        self.muse_info["quantization"] = report
        log.info("quantization %s: %d modules in %.2fs", report["scheme"], report["n_modules"],
                 report["total_seconds"])
        return report

    def requantize(self, scheme: str) -> dict:
        """Restore the float weights and quantize with another scheme (load once, quantize many).

        Needs ``keep_float_weights=True`` at construction. Modules swapped for real
        bitsandbytes layers are swapped back to float ``nn.Linear`` first.
        """
        quantizer = parse_scheme(scheme)
        if self._float_snapshot is None:
            raise MuseQuantError("requantize() needs the float weights kept",
                                 "create the model with keep_float_weights=True")
        self._float_snapshot.restore(self._model, only=self._changed)
        self._changed = None  # unknown until this quantization has succeeded
        self._quantizer = quantizer
        report = self._quantize(quantizer)
        self._changed = set(report["modules"]) | set(report.get("other_parameters_changed", []))
        return report

    # ---------------------------------------------------------------- decoding
    def tok_decode(self, tokens, skip_special_tokens: bool = True):
        # MUSE decodes with clean_up_tokenization_spaces=True (transformers 5 ignores it for BPE).
        return self.tokenizer.decode(tokens, skip_special_tokens=skip_special_tokens,
                                     clean_up_tokenization_spaces=True)

    # ---------------------------------------------------------------- generation
    def generate_until(self, requests, disable_tqdm: bool = False):
        # Overridden because HFLM's loop is most of the MUSE suite's time (see
        # harness_ext/generation.py): greedy requests whose only stop is EOS go to the batched
        # engine; anything else (sampling, text stop sequences, ...) goes to HFLM unchanged.
        from . import fast_generate

        return fast_generate.generate_until(self, requests, disable_tqdm,
                                            fallback=super().generate_until)

    def batch_size_for(self, purpose: str) -> int:
        """The batch size as an int; ``auto`` is detected once (lm-eval's detection)."""
        if isinstance(self.batch_size, int):
            return self.batch_size
        if getattr(self, "_auto_batch_size", None) is None:
            self._auto_batch_size = self._detect_batch_size()
            log.info("batch size auto: %d (for %s)", self._auto_batch_size, purpose)
        return self._auto_batch_size

    # ---------------------------------------------------------------- per-token log-probs
    def _encode_with_bos(self, text: str) -> list[int]:
        cache = self.__dict__.setdefault("_bos_ids", {})  # tokenize once (sweeps re-use it)
        if text not in cache:
            if len(cache) > 50_000:
                cache.clear()
            cache[text] = self._encode_with_bos_uncached(text)
        return list(cache[text])

    def _encode_with_bos_uncached(self, text: str) -> list[int]:
        ids = self.tokenizer(text, add_special_tokens=True).input_ids
        bos = self.tokenizer.bos_token_id
        if bos is not None and (not ids or ids[0] != bos):
            ids = [bos] + ids  # MUSE scores the text tokenized *with* BOS
        elif bos is None:
            ids = [self.prefix_token_id] + ids
        return ids

    def token_logprobs(self, texts: list[str], disable_tqdm: bool = False) -> list[list[float]]:
        """Per-token log-probs of tokens 1..T-1 of each text tokenized with BOS.

        Texts longer than ``max_length`` are scored in lm-eval's disjoint rolling windows.
        Windows of all texts are batched, longest first.
        """
        windows = []  # (text index, input ids, number of scored tokens)
        for i, text in enumerate(texts):
            ids = self._encode_with_bos(text)
            if len(ids) < 2:
                continue
            for context, cont in map(lm_utils.make_disjoint_window,
                                     lm_utils.get_rolling_token_windows(
                                         token_list=ids[1:], prefix_token=ids[0],
                                         max_seq_len=self.max_length, context_len=1)):
                windows.append((i, (context + cont)[:-1], cont))
        order = sorted(range(len(windows)), key=lambda j: -len(windows[j][1]))
        batch_size = self.batch_size_for("log-probs")
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        pieces: dict[int, list[float]] = {}
        from tqdm.auto import tqdm

        bar = tqdm(total=len(order), desc="per-token log-probs",
                   disable=disable_tqdm or self.rank != 0)
        for start, stop in self._logprob_batches([len(windows[j][1]) for j in order],
                                                 batch_size):
            chunk = [windows[j] for j in order[start:stop]]
            width = max(len(inp) for _, inp, _ in chunk)
            batch = torch.full((len(chunk), width), pad, dtype=torch.long)
            for row, (_, inp, _) in enumerate(chunk):
                batch[row, :len(inp)] = torch.tensor(inp)  # right padding: causal, no effect
            logits = self._model_call(batch.to(self.device))
            for row, (j, (_, inp, cont)) in enumerate(zip(order[start:stop], chunk)):
                scored = logits[row, len(inp) - len(cont):len(inp)].float()
                logp = torch.log_softmax(scored, dim=-1)
                target = torch.tensor(cont, device=logp.device).unsqueeze(-1)
                pieces[j] = logp.gather(-1, target).squeeze(-1).tolist()
            bar.update(len(chunk))
        bar.close()
        out: list[list[float]] = [[] for _ in texts]
        for j, (i, _, _) in enumerate(windows):  # windows of one text are in order
            out[i].extend(pieces[j])
        return out

    #: on CPU, at most this many tokens (rows x padded width) per log-prob forward
    CPU_LOGPROB_TOKENS = 8192
    #: on CPU, a text longer than this is scored alone
    CPU_LOGPROB_ALONE = 2048

    def _logprob_batches(self, lengths: list[int], batch_size: int):
        """``(start, stop)`` slices of the longest-first ``lengths``: ``batch_size`` rows, and on
        CPU no more than ``CPU_LOGPROB_TOKENS`` tokens. A batch of MUSE's ~4k-token PrivLeak texts
        (logits rows x width x vocab in float32) is slower on CPU than the texts one by one: a
        forward that long is compute-bound, so batching saves nothing, while padding to the
        longest row adds work (measured on MUSE's NEWS PrivLeak texts, 10 texts of ~3.6k tokens:
        3.3-3.5 s one by one vs 4.1-5.1 s in pairs). Those go one per forward. Short texts (the
        embedded corpus, ~100 tokens) keep whole batches."""
        cap = self.CPU_LOGPROB_TOKENS if self.device.type == "cpu" else None
        start = 0
        while start < len(lengths):
            rows = batch_size if cap is None else max(1, min(batch_size, cap // lengths[start]))
            if cap is not None and lengths[start] > self.CPU_LOGPROB_ALONE:
                rows = 1
            yield start, min(start + rows, len(lengths))
            start += rows

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        texts = [req.args[0] for req in requests]
        results = [TokenLogProbs(lp) for lp in self.token_logprobs(texts, disable_tqdm)]
        for text, value in zip(texts, results):
            self.cache_hook.add_partial("loglikelihood_rolling", (text,), value)
        return results

    # ---------------------------------------------------------------- results metadata
    def get_model_info(self) -> dict:
        info = compat.local_model_info(self)
        if info is None:
            info = super().get_model_info()
        info["muse_quant"] = {**self.muse_info, "pretrained": str(self.pretrained),
                              "add_bos_token": self.add_bos_token}
        return info
