"""Print the directory of the MUSE task YAMLs, for lm_eval --include_path."""

from __future__ import annotations

NAME = "tasks-dir"
HELP = "print the directory of the MUSE task YAMLs (for --include_path)"


def add_arguments(parser) -> None:
    pass


def run(args) -> int:
    from ..plugin import tasks_dir

    print(tasks_dir())
    return 0
