"""lm_eval with the MUSE tasks and the muse_quant model registered.

Every argument is passed to `lm_eval run`; on top of lm_eval: --model defaults to muse_quant; the
MUSE tasks are always found (--include_path added); lm-eval's ~14k built-in tasks are not scanned
when every requested task is a muse_ task (MUSE_QUANT_SCAN_BUILTINS=1 scans them anyway);
$MUSE_DATA becomes --metadata muse_data=... so the results record the data source (--muse_data
and --pretrained are accepted as in the other subcommands); a privleak
task under a model without per-token log-probs is refused before anything is loaded; lm-eval's
known-harmless warnings are hidden (-v / --verbose shows them).
"""

from __future__ import annotations

import os

NAME = "eval"
HELP = "lm_eval with the MUSE tasks and the muse_quant model registered"
ADD_HELP = False  # parsed here, not by argparse: everything goes to lm_eval run
DEFAULT_MODEL = "muse_quant"

#: muse_quant's model_args on top of lm-eval's hf ones (tests check these are
#: harness_ext.lm.MUSE_MODEL_ARGS)
MODEL_ARGS_HELP = (
    ("pretrained=DIR|HUB_ID", "the model (the target, before unlearning), as for --model hf"),
    ("unlearned=PATH", "an unlearning checkpoint applied on top: a full model folder, a "
                       "delta .safetensors (theta_u - theta_o) or a PEFT adapter folder"),
    ("quant=SCHEME", "quantize the weights after loading (default none; schemes below)"),
    ("quant_lm_head=BOOL", "also quantize the LM head (default false, as the paper)"),
    ("allow_pickle=BOOL", "allow a pickled (.bin/.pt) unlearned checkpoint (default false)"),
    ("calib=generic|forget|retain|FILE", "GPTQ/AWQ calibration text (default generic)"),
    ("calib_samples=N", "calibration windows (default 128)"),
    ("calib_seqlen=N", "tokens per calibration window (default 512)"),
    ("calib_corpus=news|books", "corpus of calib=forget|retain (default news)"),
    ("calib_data=SOURCE", "data of calib=forget|retain: embedded, hub or a MUSE-layout folder "
                          "(default $MUSE_DATA, else embedded)"),
    ("quant_cache_dir=DIR", "cache of calibrated quantized weights (GPTQ/AWQ)"),
    ("keep_float_weights=BOOL", "keep a copy of the float weights (muse-quant sweep sets it)"),
    ("fast_generation=BOOL", "greedy EOS-only generation by muse_quant's batched engine, token-"
                             "identical to lm-eval's loop (default true; false: lm-eval's loop)"),
)

METADATA_HELP = (
    ("muse_data=embedded|hub|DIR", "where the MUSE data comes from: the generated toy corpus, "
                                   "the hub (muse-bench/MUSE-*), or a folder in MUSE's layout "
                                   "(default $MUSE_DATA, else hub)"),
    ("retrain_auc=X", "the retrain model's Min-40% AUC that PrivLeak is relative to (default "
                      "MUSE's for MUSE data, else 0.5 with a warning)"),
    ("hub_revision=REV", "revision of the MUSE data on the hub"),
)

EXAMPLES = """\
  # the toy corpus on a local model, FP4, 4 documents per task (a minute on a CPU)
  muse-quant eval --model_args pretrained=DIR,quant=bnb-fp4 --tasks muse_news_quant \\
      --metadata muse_data=embedded --limit 4 --device cpu

  # an unlearned checkpoint at 4-bit GPTQ on MUSE's data, results written to OUT/
  muse-quant eval --model_args pretrained=muse-bench/MUSE-News_target,\\
unlearned=UNLEARN_OUT/delta.safetensors,quant=gptq:4,calib=retain \\
      --tasks muse_news_quant --batch_size 8 --output_path OUT

  # lm-eval's own hf model: every task but privleak (it needs per-token log-probs)
  muse-quant eval --model hf --model_args pretrained=DIR \\
      --tasks muse_news_verbmem_f,muse_news_knowmem_f,muse_news_knowmem_r \\
      --metadata muse_data=embedded --limit 4"""


def add_arguments(parser) -> None:
    parser.add_argument("lm_eval_args", nargs="*", help="arguments for `lm_eval run`")


def _rows(rows, width: int) -> str:
    import textwrap

    out = []
    for name, text in rows:
        lines = textwrap.wrap(text, 96 - width - 4)
        first = f"  {name:<{width}}  {lines[0]}" if len(name) <= width else \
            f"  {name}\n  {'':<{width}}  {lines[0]}"
        out += [first] + [f"  {'':<{width}}  {line}" for line in lines[1:]]
    return "\n".join(out)


def help_text() -> str:
    """``muse-quant eval --help`` (builds without torch)."""
    from ..quantizers import available_schemes

    schemes = [(usage, summary) for _, usage, summary in available_schemes()]
    return "\n".join([
        "usage: muse-quant eval [--model muse_quant] --model_args pretrained=DIR[,unlearned=CKPT]"
        "[,quant=SCHEME][,...]",
        "                       --tasks TASKS [--metadata muse_data=SOURCE] [-v] "
        "[lm_eval run options]",
        "",
        __doc__.strip().splitlines()[0],
        "",
        "\n".join(__doc__.strip().splitlines()[2:]),
        "",
        "tasks: muse_news_quant, muse_books_quant (groups of four) or single tasks "
        "muse_<corpus>_verbmem_f, _knowmem_f, _knowmem_r, _privleak (muse-quant tasks-dir shows "
        "the YAMLs)",
        "",
        "--model_args of --model muse_quant (plus every hf model arg: dtype=, revision=, ...):",
        _rows(MODEL_ARGS_HELP, 24),
        "",
        "quantization schemes (quant=SCHEME; muse-quant schemes groups them by family):",
        _rows(schemes, max(len(u) for u, _ in schemes)),
        "",
        "--metadata of the MUSE tasks (k=v,k=v or JSON):",
        _rows(METADATA_HELP, 24),
        "",
        "options of muse-quant eval itself:",
        _rows((("-h, --help", "this help"),
               ("--pretrained DIR", "the same as --model_args pretrained=DIR"),
               ("--muse_data SOURCE", "the same as --metadata muse_data=SOURCE"),
               ("-v, --verbose", "also show lm-eval's known-harmless warnings"),
               ("--verbosity LEVEL", "lm-eval's log level (also shows them)")), 24),
        "",
        "examples:",
        EXAMPLES,
        "",
        "Every other option is lm_eval run's (--limit, --device, --batch_size, --output_path, "
        "--log_samples, ...): see `lm_eval run --help`.",
    ])


def _values(argv: list[str], names: tuple[str, ...]) -> list[str] | None:
    """The values given to option ``names`` (space- or comma-separated, ``--opt=v`` too)."""
    found = None
    i = 0
    while i < len(argv):
        arg = argv[i]
        key, eq, value = arg.partition("=")
        if key in names:
            found = []
            if eq:
                found.append(value)
            else:
                while i + 1 < len(argv) and not argv[i + 1].startswith("-"):
                    i += 1
                    found.append(argv[i])
        i += 1
    if found is None:
        return None
    return [v for item in found for v in item.split(",") if v]


def _task_names(argv: list[str]) -> list[str]:
    return _values(argv, ("--tasks", "-t")) or []


def _has_metadata_key(argv: list[str], key: str) -> bool:
    values = _values(argv, ("--metadata",)) or []
    return any(v.startswith(f"{key}=") or f'"{key}"' in v for v in values)


def _take(argv: list[str], name: str) -> tuple[list[str], str | None]:
    """Remove ``name VALUE`` / ``name=VALUE`` from ``argv``; the last value given, or None."""
    out, value, i = [], None, 0
    while i < len(argv):
        key, eq, rest = argv[i].partition("=")
        if key == name and (eq or i + 1 < len(argv)):
            value = rest if eq else argv[i + 1]
            i += 1 if eq else 2
            continue
        out.append(argv[i])
        i += 1
    return out, value


def _take_verbose(argv: list[str]) -> tuple[list[str], bool]:
    """Remove ``-v`` / ``--verbose`` (ours); ``-v LEVEL`` / ``--verbosity`` stay lm-eval's."""
    levels = {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}
    out, verbose, i = [], False, 0
    while i < len(argv):
        arg = argv[i]
        if arg in ("-v", "--verbose") and not (i + 1 < len(argv)
                                               and argv[i + 1].upper() in levels):
            verbose = True
        else:
            if arg.split("=")[0] in ("-v", "--verbosity"):
                verbose = True
            out.append(arg)
        i += 1
    return out, verbose


def run(args) -> int:
    argv = list(args.lm_eval_args)
    if argv and argv[0] == "run":
        argv = argv[1:]
    if any(a in ("-h", "--help") for a in argv):
        print(help_text())
        return 0
    argv, verbose = _take_verbose(argv)
    argv, pretrained = _take(argv, "--pretrained")
    argv, muse_data = _take(argv, "--muse_data")
    if pretrained is not None:  # the model as the other subcommands name it
        argv += ["--model_args", f"pretrained={pretrained}"]
    if muse_data is not None:  # the data source as the other subcommands name it
        argv += ["--metadata", f"muse_data={muse_data}"]
    model = (_values(argv, ("--model", "-M")) or [None])[0]
    if model is None and _values(argv, ("--config", "-C")) is None:
        model = DEFAULT_MODEL
        argv = ["--model", model, *argv]
    tasks = _task_names(argv)
    if model is not None and tasks:  # before anything heavy is imported
        from ..evaluation.task_check import check_command_line

        check_command_line(model, tasks)
    from ..plugin import register
    from ..quantizers import compat

    register()
    scan = os.environ.get("MUSE_QUANT_SCAN_BUILTINS") == "1" or not tasks or \
        not all(t.startswith("muse_") for t in tasks)
    compat.install_task_manager(scan_builtins=scan)
    compat.quiet_lm_eval(verbose)
    from ..metrics import CONSTANT_RESULTS

    compat.hide_constants_in_table(CONSTANT_RESULTS)
    from ..evaluation.defaults import with_default_batch_size

    argv = with_default_batch_size(argv)  # `auto` on a GPU when no batch size is given
    if os.environ.get("MUSE_DATA") and not _has_metadata_key(argv, "muse_data"):
        argv += ["--metadata", f"muse_data={os.environ['MUSE_DATA']}"]
    compat.run_lm_eval_cli(argv)
    return 0
