"""What ``leaderboard check --reproduce`` takes from a submission: an allow-list of unlearning
hyperparameters and of ``model_args`` keys, each value checked for type and range.

The run card's command line is never passed on: :func:`unlearn_settings` reads ``--option value``
pairs from it, keeps only the options in :data:`UNLEARN_ALLOWED` (hyperparameters, from
:class:`~harness_ext.unlearning.config.UnlearnConfig`), validates each value, and refuses
everything else by name: ``--plugin`` (code), data and model paths, runtime flags, positional or
unknown arguments. The checker itself supplies ``--pretrained``, ``--corpus``, ``--muse_data
embedded`` and ``--out``. Likewise :func:`model_args_settings` keeps only the keys of
:data:`MODEL_ARGS_ALLOWED` from the results' ``config.model_args`` (no paths, no
``trust_remote_code``, no pickle); ``pretrained`` and ``unlearned`` come from the checker and the
quantization scheme from the results file names, validated against the scheme registry.
"""

from __future__ import annotations

import math
import re
from dataclasses import fields

from ..errors import MuseQuantError
from ..recipes import CORPORA
from ..unlearning.config import UnlearnConfig

from .bounds import HYPERPARAMETERS, hyperparameter_problem

#: UnlearnConfig fields the checker supplies itself (the card's values are never used)
UNLEARN_SUPPLIED = ("pretrained", "out", "corpus", "muse_data")
#: refused by name: code, data paths (and every runtime field, UnlearnConfig.RUNTIME_FIELDS)
UNLEARN_REFUSED = ("plugin", "forget", "retain")
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_TARGETS = re.compile(r"^(all-linear|[A-Za-z0-9_.]{1,64}(\+[A-Za-z0-9_.]{1,64}){0,31})$")


def _float_text(text: str, low: float, high: float) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) and low <= value <= high else None


def _sure_threshold(text: str) -> str | None:
    """``P`` (0..100) or ``abs:G`` (G >= 0)."""
    if text.startswith("abs:"):
        return text if _float_text(text[4:], 0.0, 1e30) is not None else None
    return text if _float_text(text, 0.0, 100.0) is not None else None


def _lora(text: str) -> str | None:
    """``r=8[,alpha=16][,dropout=0][,targets=all-linear|q_proj+v_proj]``."""
    seen = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        if not sep or key in seen or key not in ("r", "alpha", "dropout", "targets"):
            return None
        seen[key] = value
    if "r" in seen and not (seen["r"].isdigit() and 1 <= int(seen["r"]) <= 4096):
        return None
    if "alpha" in seen and _float_text(seen["alpha"], 1e-12, 1e6) is None:
        return None
    if "dropout" in seen and (_float_text(seen["dropout"], 0.0, 1.0) is None
                              or float(seen["dropout"]) >= 1):
        return None
    if "targets" in seen and not _TARGETS.match(seen["targets"]):
        return None
    return text


def _choice(name):
    choices = next(f for f in fields(UnlearnConfig) if f.name == name).metadata["choices"]
    return lambda text: text if text in choices else None


def _number(name):
    kind = HYPERPARAMETERS[name][0]

    def check(text):
        if name in ("max_steps", "epochs") and text in ("none", "None"):
            return None
        return (kind(text) if kind is int else float(text)) \
            if hyperparameter_problem(name, text, "") is None else None
    return check


#: option -> value check (the value as the config holds it, or None when it is not valid)
UNLEARN_ALLOWED = {
    "method": lambda text: text if _NAME.match(text) else None,
    **{name: _number(name) for name in ("lr", "epochs", "max_steps", "batch_size", "grad_accum",
                                        "max_len", "alpha", "beta", "seed", "weight_decay",
                                        "max_grad_norm")},
    **{name: _choice(name) for name in ("klr_reduction", "packing", "sure_granularity",
                                        "precision", "save")},
    "sure_threshold": _sure_threshold,
    "lora": _lora,
}


def _refuse(problem: str) -> MuseQuantError:
    return MuseQuantError(f"the run card's command {problem}",
                          "check --reproduce rebuilds `muse-quant unlearn` from the "
                          f"hyperparameters {', '.join(UNLEARN_ALLOWED)} only; a submission "
                          "cannot pass code (--plugin), paths or other arguments")


def unlearn_settings(command, corpus: str | None = None) -> dict:
    """``{field: value}`` of the allowed options in a run card's ``command`` (a list of strings
    ``[..., "unlearn", "--option", "value", ...]``), each value validated."""
    if not isinstance(command, list) or not all(isinstance(a, str) for a in command) or \
            "unlearn" not in command:
        raise MuseQuantError("the run card's command is not a `muse-quant unlearn` command line",
                             "reproduce needs the run_card.json that `muse-quant unlearn` wrote")
    options = {UnlearnConfig.option(f.name): f.name for f in fields(UnlearnConfig)}
    argv = command[command.index("unlearn") + 1:]
    settings, i = {}, 0
    while i < len(argv):
        arg = argv[i]
        option, eq, value = arg.partition("=")
        name = options.get(option)
        if name is None:
            raise _refuse(f"has the argument {arg[:80]!r}, which is not an option of "
                          f"`muse-quant unlearn`")
        if name not in UNLEARN_ALLOWED and name not in UNLEARN_SUPPLIED:
            raise _refuse(f"passes {option}, which check --reproduce never passes")
        if not eq:
            if i + 1 >= len(argv):
                raise _refuse(f"ends after {option} without its value")
            value, i = argv[i + 1], i + 1
        i += 1
        if name in settings:
            raise _refuse(f"passes {option} twice")
        if name in UNLEARN_SUPPLIED:
            settings[name] = value  # checked below; pretrained / out are never used
            continue
        checked = UNLEARN_ALLOWED[name](value) if len(value) <= 200 else None
        if checked is None:
            raise _refuse(f"has {option} {value[:80]!r}, which is not a valid value")
        settings[name] = checked
    if settings.get("corpus", corpus) != corpus or settings.get("corpus", corpus) not in CORPORA:
        raise _refuse(f"unlearns corpus {settings.get('corpus')!r:.40}, the entry is for "
                      f"{corpus!r}")
    if settings.get("muse_data", "embedded") != "embedded":
        raise _refuse("used data other than the embedded corpus (--muse_data "
                      f"{settings['muse_data'][:80]!r}); --reproduce re-runs toy entries")
    if "method" not in settings:
        raise _refuse("names no --method")
    for name in UNLEARN_SUPPLIED:
        settings.pop(name, None)
    try:  # the checks `muse-quant unlearn` makes before loading anything
        UnlearnConfig(**settings, pretrained="-", out="-", corpus=corpus).validate()
    except MuseQuantError as exc:
        raise _refuse(f"is not valid: {exc.problem}") from None
    return settings


#: model_args key -> value check; pretrained / unlearned / quant / keep_float_weights are the
#: checker's; anything else (paths such as calib_data or quant_cache_dir, allow_pickle,
#: trust_remote_code, ...) is refused
MODEL_ARGS_DROPPED = ("pretrained", "unlearned", "quant", "keep_float_weights")
_BOOL = ("true", "false", "True", "False", "1", "0")
MODEL_ARGS_ALLOWED = {
    "dtype": lambda v: v in ("auto", "float32", "float16", "bfloat16"),
    "calib": lambda v: v in ("generic", "forget", "retain"),
    "calib_corpus": lambda v: v in CORPORA,
    "calib_samples": lambda v: str(v).isdigit() and 1 <= int(v) <= 100_000,
    "calib_seqlen": lambda v: str(v).isdigit() and 2 <= int(v) <= 1_048_576,
    "max_length": lambda v: str(v).isdigit() and 2 <= int(v) <= 1_048_576,
    "quant_lm_head": lambda v: str(v) in _BOOL,
    "add_bos_token": lambda v: str(v) in _BOOL,
}


def model_args_settings(recorded) -> dict:
    """The allowed keys of a results file's ``config.model_args`` (a mapping, or lm-eval's
    ``k=v,...`` string), each value validated, in their recorded order."""
    from ..io import parse_kv

    if isinstance(recorded, str):
        recorded = parse_kv(recorded, "the recorded model_args")
    if not isinstance(recorded, dict):
        raise MuseQuantError("the results' config.model_args is not a mapping",
                             "submit the results files `muse-quant sweep` wrote")
    fix = (f"check --reproduce takes only {', '.join(MODEL_ARGS_ALLOWED)} from the recorded "
           f"model_args (pretrained and unlearned are the checker's); re-run the sweep without "
           f"the others")
    out = {}
    for key, value in recorded.items():
        if key in MODEL_ARGS_DROPPED:
            continue
        if key not in MODEL_ARGS_ALLOWED:
            raise MuseQuantError(f"the results' model_args has {str(key)[:60]!r}, which check "
                                 f"--reproduce never passes (paths, code and free-form "
                                 f"arguments are not taken from a submission)", fix)
        if isinstance(value, (dict, list)) or isinstance(value, float) or \
                not MODEL_ARGS_ALLOWED[key](value if isinstance(value, str) else str(value)):
            raise MuseQuantError(f"the results' model_args {key}={str(value)[:60]!r} is not a "
                                 f"valid value", fix)
        out[key] = value
    return out
