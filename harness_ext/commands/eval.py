"""lm_eval with the MUSE tasks and the ``muse_quant`` model registered.

Every argument is passed to ``lm_eval run``, e.g.

  muse-quant eval --model muse_quant --model_args pretrained=DIR,quant=bnb-fp4 \\
      --tasks muse_news_quant --metadata muse_data=embedded --device cpu --output_path OUT

Added on top of lm_eval: ``--include_path`` for the MUSE tasks (also when you pass your own);
lm-eval's ~14k built-in tasks are not scanned when every requested task is a ``muse_`` task
(set MUSE_QUANT_SCAN_BUILTINS=1 to scan them anyway); ``$MUSE_DATA`` is copied into
``--metadata muse_data=...`` so the results record the data source.
"""

from __future__ import annotations

import os

NAME = "eval"
HELP = "lm_eval with the MUSE tasks and the muse_quant model registered"
ADD_HELP = False  # --help goes to lm_eval


def add_arguments(parser) -> None:
    parser.add_argument("lm_eval_args", nargs="*", help="arguments for `lm_eval run`")


def _task_names(argv: list[str]) -> list[str]:
    for i, arg in enumerate(argv):
        if arg == "--tasks" and i + 1 < len(argv):
            return [t for t in argv[i + 1].split(",") if t]
        if arg.startswith("--tasks="):
            return [t for t in arg.split("=", 1)[1].split(",") if t]
    return []


def _has_metadata_key(argv: list[str], key: str) -> bool:
    if "--metadata" not in argv:
        return False
    start = argv.index("--metadata") + 1
    for arg in argv[start:]:
        if arg.startswith("--"):
            break
        if arg.startswith(f"{key}=") or f'"{key}"' in arg:
            return True
    return False


def run(args) -> int:
    argv = list(args.lm_eval_args)
    if argv and argv[0] == "run":
        argv = argv[1:]
    from ..plugin import register
    from ..quantizers.compat import install_task_manager, run_lm_eval_cli

    register()
    tasks = _task_names(argv)
    scan = os.environ.get("MUSE_QUANT_SCAN_BUILTINS") == "1" or not tasks or \
        not all(t.startswith("muse_") for t in tasks)
    install_task_manager(scan_builtins=scan)
    if os.environ.get("MUSE_DATA") and not _has_metadata_key(argv, "muse_data"):
        argv += ["--metadata", f"muse_data={os.environ['MUSE_DATA']}"]
    run_lm_eval_cli(argv)
    return 0
