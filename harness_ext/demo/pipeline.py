"""The demo's stages, each cached under ``--out`` (a re-run skips what is done).

Layout of ``OUT`` (default ``demo_out/``)::

    .muse-quant-demo.json          marker: the configuration this folder was made with
    data/<corpus>/...              the embedded corpus in MUSE's layout (for reading)
    <corpus>/models/{base,target,retrain}/
    <corpus>/unlearn/<method>/     delta.safetensors, run_card.json, losses.json
    <corpus>/sweep/<model>/        <scheme>.json per quantization scheme (``muse-quant sweep``)
    <corpus>/diagnose/<method>/    diagnose.json, survival.svg (``muse-quant diagnose``)
    leaderboard/                   submissions/ + README.md + <corpus>_forget_vs_utility.svg
    summary.md, <corpus>_retained.svg

A stage is done when its folder holds ``.done.json``; a folder without it (an interrupted run)
is removed and redone (:class:`.stages.Stage`). ``--fresh`` removes ``OUT`` first, but only a
folder this command made.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from ..errors import MuseQuantError
from ..recipes import DEMO_DIAGNOSE_SCHEMES
from .config import DemoConfig
from .stages import DONE, Stage, model_names, offline, run_command
from .summary import add_entries, write_summary

TASKS = "muse_{corpus}_quant"


class DemoRun:
    """One demo: ``DemoRun(config, out, corpora).run()``."""

    def __init__(self, config: DemoConfig, out: str | Path, corpora: tuple[str, ...],
                 progress: bool = True, log=print, jobs: int = 1):
        self.config, self.out, self.corpora = config, Path(out), corpora
        self.progress, self.log, self.jobs = progress, log, max(1, int(jobs))

    # ---------------------------------------------------------------- stages
    def data(self) -> None:
        from ..data import embedded

        for corpus in self.corpora:
            with Stage(self.out / "data" / corpus, f"embedded {corpus} corpus") as stage:
                if not stage.done:
                    embedded.write(self.out / "data", (corpus,))

    def models(self, corpus: str) -> Path:
        from .models import build_models

        folder = self.out / corpus / "models"
        with Stage(folder, "base, target and retrain models") as stage:
            if not stage.done:
                self.log(f"[{corpus}] training base, target and retrain models")
                build_models(corpus, self.config.model, folder, progress=self.progress,
                             jobs=self.jobs)
                if self.config.unlearn.precision == "bf16":  # MUSE's models are 16-bit
                    store_in_bf16(folder / "target", folder / "retrain")
        return folder

    def unlearn(self, corpus: str, method: str, target: Path, folder: Path | None = None,
                lr: float | None = None, precision: str | None = None,
                save: str = "delta", seed: int | None = None) -> Path:
        folder = folder or self.out / corpus / "unlearn" / method
        with Stage(folder, f"unlearning {method}") as stage:
            if not stage.done:
                self.log(f"[{corpus}] unlearning: {method}"
                         + (f" lr {lr:g}" if lr else "") + (f" {precision}" if precision else "")
                         + (f" seed {seed}" if seed is not None else ""))
                argv = ["unlearn", "--pretrained", str(target), "--corpus", corpus,
                        "--muse_data", "embedded", "--out", str(folder / "run"), "--save", save,
                        *self.config.unlearn.arguments(method, lr, precision, seed)]
                if not self.progress:
                    argv.append("--no_progress")
                run_command(argv, f"unlearning {method}")
        return folder / "run"

    def sweep(self, corpus: str, name: str, target: Path, unlearned: Path | None,
              schemes=None, tasks: str | None = None, folder: Path | None = None) -> Path:
        from ..evaluation.sweep import run_sweep

        folder = folder or self.out / corpus / "sweep" / name
        schemes = list(schemes or self.config.schemes)
        with Stage(folder, f"sweep {name}") as stage:
            if not stage.done:
                self.log(f"[{corpus}] evaluating {name}: {', '.join(schemes)}")
                model_args = {"pretrained": str(target), "dtype": "float32", "calib": "generic",
                              "calib_corpus": corpus, "calib_samples": self.config.calib_samples,
                              "calib_seqlen": self.config.calib_seqlen}
                if unlearned is not None:
                    model_args["unlearned"] = str(unlearned)
                result = run_sweep(model_args, schemes, tasks or TASKS.format(corpus=corpus),
                                   folder / "results", metadata={"muse_data": "embedded"},
                                   limit=self.config.eval_limit, device="cpu",
                                   batch_size=self.config.eval_batch_size,
                                   progress=self.progress)
                if not result.ok:
                    raise MuseQuantError(
                        f"the sweep of {name} failed for {', '.join(result.failed)}",
                        f"see {folder / 'results' / 'errors.json'}")
        return folder / "results"

    def diagnose(self, corpus: str, method: str, target: Path, unlearned: Path,
                 schemes=DEMO_DIAGNOSE_SCHEMES, folder: Path | None = None,
                 dtype: str = "auto") -> dict:
        from ..evaluation.diagnostics import run_diagnose

        folder = folder or self.out / corpus / "diagnose" / method
        with Stage(folder, f"diagnose {method}") as stage:
            if not stage.done:
                run_diagnose(str(target), str(unlearned), list(schemes), folder / "report",
                             dtype=dtype, plot_format="svg")
        return json.loads((folder / "report" / "diagnose.json").read_text())

    def leaderboard(self) -> Path:
        root = self.out / "leaderboard"
        (root / "submissions").mkdir(parents=True, exist_ok=True)
        for corpus in self.corpora:
            add_entries(self, corpus, root)
        run_command(["leaderboard", "build", "--root", str(root)], "building the leaderboard")
        return root

    # ---------------------------------------------------------------- all of it
    def cell(self, kind: str, corpus: str, name: str) -> None:
        """One unit of the parallel stages: ``kind`` is ``unlearn``, ``sweep`` or ``diagnose``."""
        models = self.out / corpus / "models"
        if kind == "unlearn":
            self.unlearn(corpus, name, models / "target")
        elif kind == "sweep":
            unlearned = None if name in ("target", "retrain") else self.checkpoint(corpus, name)
            base = models / ("retrain" if name == "retrain" else "target")
            self.sweep(corpus, name, base, unlearned)
        else:
            self.diagnose(corpus, name, models / "target", self.checkpoint(corpus, name))

    def run_cells(self, kind: str, cells: list[tuple[str, str]]) -> None:
        """Run the cells not done yet, ``self.jobs`` at a time (one torch thread each)."""
        from tqdm.auto import tqdm

        todo = [(c, n) for c, n in cells
                if not (self.out / c / kind / n / DONE).exists()]
        bar = tqdm(total=len(cells), initial=len(cells) - len(todo), desc=kind, unit="model",
                   disable=not self.progress)
        if self.jobs <= 1 or len(todo) <= 1:
            for corpus, name in todo:
                bar.set_postfix_str(f"{corpus} {name}")
                self.cell(kind, corpus, name)
                bar.update()
        else:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor, as_completed

            context = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(self.jobs, mp_context=context, initializer=_worker_init,
                                     initargs=(self.config, str(self.out), self.corpora)) as pool:
                futures = {pool.submit(_worker_cell, kind, c, n): (c, n) for c, n in todo}
                for future in as_completed(futures):
                    corpus, name = futures[future]
                    future.result()  # re-raises a worker's error
                    bar.set_postfix_str(f"{corpus} {name}")
                    bar.update()
        bar.close()

    def run(self) -> dict:
        offline()
        start = time.perf_counter()
        self.data()
        for corpus in self.corpora:
            self.models(corpus)
        methods = [(c, m) for c in self.corpora for m in self.config.methods]
        self.run_cells("unlearn", methods)
        self.run_cells("sweep", [(c, n) for c in self.corpora for n in model_names(self.config)])
        self.run_cells("diagnose", methods)
        root = self.leaderboard()
        return write_summary(self, root, time.perf_counter() - start)

    def checkpoint(self, corpus: str, method: str) -> Path:
        return self.out / corpus / "unlearn" / method / "run" / "delta.safetensors"


def store_in_bf16(*folders: Path) -> None:
    """Re-save models in bf16 (a demo that unlearns in pure bf16 starts from a bf16 target, as
    MUSE did; evaluated with fp32 arithmetic, the bf16 weights are exact)."""
    import torch
    from transformers import AutoModelForCausalLM

    for folder in folders:
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16)
        model.save_pretrained(folder)


# ------------------------------------------------------------------ worker processes
_WORKER: DemoRun | None = None


def _worker_init(config: DemoConfig, out: str, corpora: tuple[str, ...]) -> None:
    """A ``--jobs`` worker: one torch thread (the workers share the cores), no progress bars."""
    import torch

    global _WORKER
    import logging

    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)
    offline()
    _WORKER = DemoRun(config, out, corpora, progress=False, log=lambda *a: None)


def _worker_cell(kind: str, corpus: str, name: str) -> None:
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):
        _WORKER.cell(kind, corpus, name)
