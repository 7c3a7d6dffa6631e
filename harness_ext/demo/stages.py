"""What the demo's steps share: the cache folder (its marker, :class:`Stage`), running a
``muse-quant`` command in this process, and the list of models a demo evaluates.

:mod:`.pipeline` (the steps) and :mod:`.summary` (the outputs) both use these; neither imports
the other's internals.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

from ..errors import MuseQuantError
from .config import DemoConfig

MARKER = ".muse-quant-demo.json"
DONE = ".done.json"
FORMAT_VERSION = 1


def prepare_out(out: Path, config: DemoConfig, fresh: bool,
                fields: tuple[str, ...] | None = None) -> None:
    """Create ``out`` (or check it is this configuration's cache); ``fresh`` empties it first.

    ``fields``: compare only these config fields with the recorded ones (the recovery map
    depends on :data:`.config.MAP_FIELDS` only, so a folder whose demo had another scheme list
    keeps its map cells); None compares the whole configuration."""
    marker = out / MARKER
    if out.exists() and not out.is_dir():
        raise MuseQuantError(f"--out {out} is a file", "pass a folder, e.g. --out demo_out")
    nonempty = out.exists() and any(out.iterdir())
    if nonempty and not marker.exists():
        raise MuseQuantError(
            f"{out} exists, is not empty and was not made by `muse-quant demo`",
            "choose another --out (the demo never deletes folders it did not make)")
    if fresh and marker.exists():
        shutil.rmtree(out)
    elif marker.exists():
        recorded = json.loads(marker.read_text()).get("config", {})
        now = config.to_json()
        differ = [k for k in (fields or now) if recorded.get(k) != now[k]]
        if differ:
            raise MuseQuantError(
                f"{out} holds a demo made with another configuration "
                f"({recorded.get('name')!r}, now {config.name!r}; differs in "
                f"{', '.join(differ)})",
                "pass --fresh to start over there, or choose another --out")
        return
    out.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps({"format": FORMAT_VERSION, "config": config.to_json()},
                                 indent=2) + "\n")


class Stage:
    """A cached unit of work: ``with Stage(dir) as stage: if not stage.done: ...``."""

    def __init__(self, path: Path, what: str):
        self.path, self.what = Path(path), what
        self.done = (self.path / DONE).exists()

    def __enter__(self):
        if not self.done:
            if self.path.exists():  # left over from an interrupted run
                shutil.rmtree(self.path)
            self.path.mkdir(parents=True)
        self.start = time.perf_counter()
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None and not self.done:
            seconds = round(time.perf_counter() - self.start, 2)
            record = {"what": self.what, "seconds": seconds}
            (self.path / DONE).write_text(json.dumps(record) + "\n")
        return False


def stage_seconds(path: Path) -> float | None:
    done = Path(path) / DONE
    return json.loads(done.read_text())["seconds"] if done.exists() else None


def run_command(argv: list[str], what: str) -> None:
    """Run a ``muse-quant`` command in this process; a failure stops the demo with its message."""
    from ..cli import main

    code = main(argv)
    if code:
        raise MuseQuantError(f"{what} failed (muse-quant {argv[0]} exited with {code})",
                             "see the error printed above; fix it and run the demo again "
                             "(finished stages are kept)")


def offline() -> None:
    """The demo never uses the hub (GPTQ/AWQ calibrate on the embedded generic split)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def model_names(config: DemoConfig) -> list[str]:
    """Every model a demo evaluates: the two references, then the unlearned methods."""
    return ["target", "retrain", *config.methods]
