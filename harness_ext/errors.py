"""User-facing errors: each names the problem and the fix, and the CLI prints it without a traceback."""

from __future__ import annotations


class MuseQuantError(ValueError):
    """Bad input or configuration. ``str(err)`` is the problem; ``err.fix`` how to fix it."""

    def __init__(self, problem: str, fix: str | None = None):
        self.problem = problem
        self.fix = fix
        super().__init__(problem if fix is None else f"{problem}\n  fix: {fix}")
