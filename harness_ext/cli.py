"""The ``muse-quant`` command.

Each subcommand is one module in ``harness_ext/commands/`` defining ``NAME``, ``HELP``,
``add_arguments(parser)`` and ``run(args)``; it is found automatically, so adding a subcommand is
one new file. Heavy imports (torch, transformers, lm-eval) happen inside ``run``, so
``muse-quant tasks-dir`` stays instant. Bad input raises :class:`MuseQuantError`, printed here as
``error: ...`` plus the fix, exit status 2.

Flags are spelled in snake_case, as lm-eval's (``--output_path``, ``--dry_run``); the older
kebab-case spellings (``--dry-run``, ``--emit-slurm``, ``--recovery-map``, ``--tie-embeddings``)
are still accepted, without being listed in ``--help`` (:func:`snake_case_options`).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import pkgutil
import sys

from .errors import MuseQuantError

def commands() -> dict:
    """``{NAME: module}`` for every module in ``harness_ext/commands/``."""
    from . import commands as package

    found = {}
    for info in pkgutil.iter_modules(package.__path__):
        mod = importlib.import_module(f"{package.__name__}.{info.name}")
        if hasattr(mod, "NAME"):
            found[mod.NAME] = mod
    return dict(sorted(found.items()))


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("muse-quant")
    except PackageNotFoundError:
        from . import __version__

        return __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="muse-quant",
        description="Does LLM unlearning survive quantization? MUSE metrics for lm-eval.",
    )
    parser.add_argument("--version", action="version", version=f"muse-quant {version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, mod in commands().items():
        p = sub.add_parser(name, help=mod.HELP, description=mod.__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter,
                           add_help=getattr(mod, "ADD_HELP", True))
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def _option_strings(parser: argparse.ArgumentParser) -> set[str]:
    """Every option string of ``parser`` and of its nested subcommands."""
    found = set(parser._option_string_actions)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found |= _option_strings(sub)
    return found


def snake_case_options(parser: argparse.ArgumentParser, argv: list[str]) -> list[str]:
    """``--dry-run`` -> ``--dry_run`` (also ``--opt-name=value``) when the subcommand in ``argv``
    knows the snake_case spelling; values and unknown options are left alone."""
    sub = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
    command = sub.choices.get(argv[0]) if sub and argv else None
    if command is None:
        return argv
    known = _option_strings(command)
    out = []
    for arg in argv:
        name, eq, value = arg.partition("=")
        if name.startswith("--") and "-" in name[2:] and name not in known:
            snake = "--" + name[2:].replace("-", "_")
            if snake in known:
                arg = snake + eq + value
        out.append(arg)
    return out


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = build_parser()
    if argv and argv[0] == "eval":  # everything after `eval` belongs to lm_eval
        args = argparse.Namespace(command="eval", lm_eval_args=argv[1:],
                                  _run=importlib.import_module("harness_ext.commands.eval").run)
    else:
        args = parser.parse_args(snake_case_options(parser, argv))
    if not getattr(args, "_run", None):
        parser.print_help()
        return 0
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args._run(args) or 0)
    except MuseQuantError as err:
        print(f"error: {err.problem}", file=sys.stderr)
        if err.fix:
            print(f"  fix: {err.fix}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
