"""Every setting of ``muse-quant unlearn``, declared once: :class:`UnlearnConfig`.

Each field carries its command-line option in its metadata (group, help, type, choices). From it
come the ``muse-quant unlearn`` parser (:func:`add_arguments`), the config of parsed arguments
(:meth:`UnlearnConfig.from_args`), the checks that need no model (:meth:`UnlearnConfig.validate`)
and command lines back (:meth:`UnlearnConfig.to_argv`, :meth:`UnlearnConfig.set_in_argv`), used
by the run card, ``muse-quant reproduce``, the demo and ``leaderboard check --reproduce``.
No torch here: the CLI parser is built from this module.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields

from ..errors import MuseQuantError
from ..recipes import CORPORA, NPO_BETA, SURE_DEFAULT_THRESHOLD

PRECISIONS = ("auto", "fp32", "bf16", "bf16-mixed")
SAVE_FORMATS = ("full", "delta")
PACKINGS = ("muse", "documents")
GRANULARITIES = ("module", "neuron")
KLR_REDUCTIONS = ("mean", "sum")
CHECKPOINTING = ("auto", "on", "off")

WHAT = "what to unlearn"
HYPER = "hyperparameters (MUSE defaults)"
SURE_LORA = "SURE (methods named *_sure) and LoRA"
RUNTIME = "numerics, outputs, resuming"


def _int_or_none(text):
    return None if text in (None, "", "none", "None") else int(text)


def _option(default, group: str, help: str | None = None, **cli):
    """A config field with its command-line option: ``cli`` holds ``type``, ``choices`` or
    ``flag`` (the option of a bool whose default is True, e.g. ``--no_progress``)."""
    return field(default=default, metadata={"group": group, "help": help, **cli})


@dataclass
class UnlearnConfig:
    """Everything that defines an unlearning run (``muse-quant unlearn --help`` documents it)."""

    method: str | None = _option(None, WHAT, "registered method name (see --list)")
    plugin: str | None = _option(None, WHAT, "a .py file that registers your own method(s)")
    pretrained: str | None = _option(None, WHAT, "the target model: HF directory or hub id")
    corpus: str = _option("news", WHAT, choices=CORPORA)
    muse_data: str | None = _option(
        None, WHAT, "hub | embedded | DIR in MUSE's layout (default: $MUSE_DATA, else hub); "
                    "forget = <corpus>/raw/forget.json, retain = raw/retain1.json")
    forget: str | None = _option(None, WHAT, "forget texts instead (.json list, .jsonl, .txt)")
    retain: str | None = _option(None, WHAT, "retain texts instead (.json list, .jsonl, .txt)")
    out: str | None = _option(None, WHAT, "output directory")

    # None: the method's default (1e-5; 1e-4 for SURE and LoRA)
    lr: float | None = _option(None, HYPER,
                               "learning rate (default 1e-5; 1e-4 for *_sure and --lora)",
                               type=float)
    # None: 10 (news) / 5 (books)
    epochs: int | None = _option(None, HYPER, "default 10 (news) / 5 (books)", type=int)
    max_steps: int | None = _option(None, HYPER, "stop after this many optimizer steps "
                                    "(overrides --epochs)", type=_int_or_none)
    batch_size: int = _option(4, HYPER, "examples per micro-batch")
    grad_accum: int = _option(8, HYPER, "micro-batches per optimizer step")
    max_len: int = _option(2048, HYPER, "tokens per training example")
    alpha: float = _option(1.0, HYPER, "weight of the _GDR/_KLR retain term")
    beta: float = _option(NPO_BETA, HYPER, "NPO inverse temperature")
    klr_reduction: str = _option(
        "mean", HYPER, "the _KLR term: mean = KL per real retain token (averaged over tokens); "
        "sum = KL summed over tokens, divided by the batch rows (the paper's kl_div "
        "batchmean, ~T times larger)", choices=KLR_REDUCTIONS)
    seed: int = _option(0, HYPER)
    weight_decay: float = _option(0.0, HYPER, "AdamW decoupled decay")
    max_grad_norm: float = _option(1.0, HYPER, "clip norm; 0 = off")
    packing: str = _option("muse", HYPER, "muse: the split joined and cut into max_len chunks "
                           "(MUSE); documents: one example per text, truncated to max_len",
                           choices=PACKINGS)

    sure_threshold: str = _option(SURE_DEFAULT_THRESHOLD, SURE_LORA,
                                  "P (0..100): train modules whose saliency is >= the P-th "
                                  "percentile; abs:G: saliency >= G")
    sure_granularity: str = _option("module", SURE_LORA, "module: one unit per parameter "
                                    "tensor; neuron: one per output row", choices=GRANULARITIES)
    lora: str | None = _option(None, SURE_LORA, "train LoRA adapters, then merge: "
                               "r=8[,alpha=16][,dropout=0][,targets=all-linear|q_proj+v_proj]")

    precision: str = _option("auto", RUNTIME, "auto = fp32 on CPU, bf16 on GPU",
                             choices=PRECISIONS)
    device: str = _option("auto", RUNTIME, "auto | cpu | cuda | cuda:N")
    gradient_checkpointing: str = _option(
        "auto", RUNTIME, "recompute each layer's activations in the backward pass (less memory, "
        "~1/3 more compute, the same numbers): on | off | auto (on when the memory estimate of "
        "the run exceeds the GPU's memory; off on CPU)", choices=CHECKPOINTING)
    save: str = _option("full", RUNTIME, "full: OUT/model (HF dir); delta: "
                        "OUT/delta.safetensors", choices=SAVE_FORMATS)
    # how to run, not what to compute:
    resume: bool = _option(False, RUNTIME, "continue the run in --out")
    overwrite: bool = _option(False, RUNTIME, "replace the outputs of an earlier run in --out")
    stop_after_epochs: int | None = _option(None, RUNTIME, "stop after N epochs with a "
                                            "resumable checkpoint (time-limited jobs)", type=int)
    progress: bool = _option(True, RUNTIME, "no progress bars", flag="--no_progress")

    #: fields that do not change the result (a resumed run may differ in these)
    RUNTIME_FIELDS = ("resume", "overwrite", "stop_after_epochs", "progress", "device",
                      "gradient_checkpointing")

    # ---------------------------------------------------------------- construction
    @classmethod
    def from_args(cls, args) -> "UnlearnConfig":
        """The config of ``muse-quant unlearn``'s parsed arguments (see :func:`add_arguments`)."""
        return cls(**{f.name: getattr(args, f.name) for f in fields(cls)})

    @classmethod
    def from_hyperparameters(cls, hyperparameters: dict, **settings) -> "UnlearnConfig":
        """A recipe's hyperparameters (:func:`harness_ext.recipes.paper_hyperparameters`: epochs,
        lr, alpha, sure_threshold) plus the other settings."""
        return cls(**{**hyperparameters, **settings})

    def training_fields(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k not in self.RUNTIME_FIELDS}

    # ---------------------------------------------------------------- checks
    def validate(self) -> None:
        """The checks that need no model and no method (the method's own are the trainer's)."""
        missing = [f"--{k}" for k in ("method", "pretrained", "out") if not getattr(self, k)]
        if missing:
            raise MuseQuantError(f"missing {', '.join(missing)}",
                                 "e.g. muse-quant unlearn --method npo --pretrained TARGET "
                                 "--corpus news --muse_data embedded --out OUT")
        if self.corpus not in CORPORA:
            raise MuseQuantError(f"unknown --corpus {self.corpus!r}", "use news or books")
        if self.save not in SAVE_FORMATS:
            raise MuseQuantError(f"unknown --save {self.save!r}", f"use one of {SAVE_FORMATS}")
        if self.packing not in PACKINGS:
            raise MuseQuantError(f"unknown --packing {self.packing!r}",
                                 f"use one of {PACKINGS}")
        for key in ("batch_size", "grad_accum", "max_len"):
            if getattr(self, key) < (2 if key == "max_len" else 1):
                raise MuseQuantError(f"--{key} must be positive", f"pass a larger --{key}")
        if self.max_steps is not None and self.max_steps < 1:
            raise MuseQuantError("--max_steps must be at least 1",
                                 "omit it to train for --epochs")
        if self.resume and self.overwrite:
            raise MuseQuantError("--resume and --overwrite contradict each other",
                                 "pass --resume to continue the run, --overwrite to start over")
        if self.stop_after_epochs is not None and self.stop_after_epochs < 1:
            raise MuseQuantError("--stop_after_epochs must be at least 1",
                                 "omit it to train to the end")
        if self.epochs is not None and self.epochs < 1:
            raise MuseQuantError("--epochs must be at least 1", "pass --epochs 1 or more")
        if not self.beta > 0 or not self.alpha >= 0:
            raise MuseQuantError(f"--beta {self.beta} / --alpha {self.alpha}: beta must be "
                                 "positive and alpha non-negative",
                                 "MUSE uses --beta 0.1 --alpha 1")
        # finite and in range (nan fails every comparison, so `not x > 0` catches it)
        for key, low, fix in (("lr", "positive", "MUSE uses --lr 1e-5 (SURE 1e-4)"),
                              ("alpha", "non-negative", "MUSE uses --alpha 1"),
                              ("beta", "positive", "MUSE uses --beta 0.1"),
                              ("weight_decay", "non-negative", "MUSE uses --weight_decay 0"),
                              ("max_grad_norm", "non-negative", "MUSE uses --max_grad_norm 1 "
                                                                "(0 turns clipping off)")):
            value = getattr(self, key)
            if value is None:
                continue
            ok = value > 0 if low == "positive" else value >= 0
            if not (ok and math.isfinite(value)):
                raise MuseQuantError(f"--{key} {value}: must be a finite {low} number", fix)
        if self.gradient_checkpointing not in CHECKPOINTING:
            raise MuseQuantError(f"unknown --gradient_checkpointing "
                                 f"{self.gradient_checkpointing!r}",
                                 f"use one of {', '.join(CHECKPOINTING)}")
        if self.klr_reduction not in KLR_REDUCTIONS:
            raise MuseQuantError(f"unknown --klr_reduction {self.klr_reduction!r}",
                                 f"use one of {KLR_REDUCTIONS}")

    # ---------------------------------------------------------------- command lines
    @classmethod
    def option(cls, name: str) -> str:
        """The command-line option of the field ``name`` (``out`` -> ``--out``)."""
        meta = _fields()[name].metadata
        return meta.get("flag") or f"--{name}"

    def to_argv(self, keys, *, compact: bool = False) -> list[str]:
        """``--key value`` for each field in ``keys``, in that order; unset values (None, "")
        are left out, and a flag appears when its value differs from the default.
        ``compact``: floats as ``%g`` (1e-05, 400), else exactly (``str``: 1e-05, 400.0)."""
        argv = []
        for key in keys:
            f, value = _fields()[key], getattr(self, key)
            if isinstance(f.default, bool):
                argv += [self.option(key)] if value != f.default else []
            elif value is not None and value != "":
                text = f"{value:g}" if compact and isinstance(value, float) else str(value)
                argv += [self.option(key), text]
        return argv

    @classmethod
    def set_in_argv(cls, argv: list[str], **values) -> list[str]:
        """``argv`` with the option of each ``values`` key set to its value where it stands
        (``--out X`` or ``--out=X``), else appended; every other argument is kept as it is."""
        for key, value in values.items():
            option, value = cls.option(key), str(value)
            out, i, found = [], 0, False
            while i < len(argv):
                arg = argv[i]
                if arg == option:
                    out += [option, value]
                    i += 2
                    found = True
                    continue
                if arg.startswith(option + "="):
                    out.append(f"{option}={value}")
                    found = True
                else:
                    out.append(arg)
                i += 1
            argv = out if found else out + [option, value]
        return argv


def _fields() -> dict:
    return {f.name: f for f in fields(UnlearnConfig)}


def add_arguments(parser) -> dict:
    """Add every :class:`UnlearnConfig` field to ``parser`` as an option, in argument groups;
    returns the groups by title (a command adds its own options, e.g. ``--list``, to them)."""
    groups = {}
    for f in fields(UnlearnConfig):
        meta = f.metadata
        if meta["group"] not in groups:
            groups[meta["group"]] = parser.add_argument_group(meta["group"])
        kwargs = {"dest": f.name, "help": meta["help"]}
        if isinstance(f.default, bool):
            kwargs["action"] = "store_false" if f.default else "store_true"
        else:
            kwargs["default"] = f.default
            kwargs["type"] = meta.get("type") or (type(f.default) if f.default is not None
                                                  else None)
            if "choices" in meta:
                kwargs["choices"] = list(meta["choices"])
        groups[meta["group"]].add_argument(UnlearnConfig.option(f.name), **kwargs)
    return groups
