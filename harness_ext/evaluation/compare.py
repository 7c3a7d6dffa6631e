"""``muse-quant compare``: does an unlearned model's forgetting survive quantization?

Inputs are results of the target (the model before unlearning) and of one or more unlearned
models, each a ``muse-quant sweep`` output folder (one ``<scheme>.json`` per scheme, also found
under ``<folder>/results/``), an ``lm_eval --output_path`` folder, or one results JSON. The
scheme of a results file is the one ``muse_quant`` recorded (``config.muse_quant.quantization``),
else ``quant=`` in its model_args, else ``none`` (full precision).

For every scheme that both the target and an unlearned model have: VerbMem_f, KnowMem_f,
KnowMem_r and PrivLeak of the unlearned model, retained knowledge %, the change from full
precision, utility kept % and, per model, a verdict (definitions and rule:
:mod:`harness_ext.evaluation.verdict`). Bootstrap confidence intervals
(:mod:`harness_ext.evaluation.bootstrap`) need per-document VerbMem_f values, read by
:func:`doc_scores`; without them the intervals are "n/a".
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import MuseQuantError
from ..io import load_results, metric, recorded_scheme
from . import bootstrap, verdict

#: column -> (task suffix, metric key) in muse_<corpus>_<suffix>
METRICS = {"VerbMem_f": ("verbmem_f", "verbmem_rougeL_f1"),
           "KnowMem_f": ("knowmem_f", "knowmem_rougeL_f1"),
           "KnowMem_r": ("knowmem_r", "knowmem_rougeL_f1"),
           "PrivLeak": ("privleak", "privleak")}
CORPORA = ("news", "books")


# ------------------------------------------------------------------ per-document values
def doc_scores(results_path) -> dict | None:
    """Per-document values beside a results file: ``{task: {metric: {doc_id: value}}}``, or
    None when there are none.

    Reads the ``<scheme>.samples.jsonl`` a sweep writes beside ``<scheme>.json``
    (:mod:`harness_ext.evaluation.samples`), or else what ``lm_eval --log_samples`` writes next
    to ``results_<date>.json``: one ``samples_<task>_<date>.jsonl`` per task (numeric
    per-document metrics, filter ``none``).
    """
    from . import samples

    path = Path(results_path)
    sweep_samples = samples.samples_path(path)
    if sweep_samples.is_file():
        found: dict = {}
        for line in samples.read(sweep_samples)["tasks"]:
            if line["filter"] != "none":
                continue
            for name, entry in line["metrics"].items():
                if all(samples.is_number(v) for v in entry["values"]):
                    found.setdefault(line["task"], {})[name] = {
                        doc: float(v) for doc, v in zip(line["doc_id"], entry["values"])}
        return found or None
    if not path.name.startswith("results_"):
        return None
    stamp = path.stem[len("results_"):]
    found: dict = {}
    for sample_file in sorted(path.parent.glob(f"samples_*_{stamp}.jsonl")):
        task = sample_file.stem[len("samples_"):-len(stamp) - 1]
        per_metric: dict = {}
        for line in sample_file.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            sample = json.loads(line)
            if sample.get("filter", "none") != "none":
                continue
            for key in sample.get("metrics") or []:
                value = sample.get(key)
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    per_metric.setdefault(key, {})[sample["doc_id"]] = float(value)
        if per_metric:
            found[task] = per_metric
    return found or None


# ------------------------------------------------------------------ inputs
@dataclass
class Run:
    """The results of one model: ``{scheme: results dict}`` and where they came from."""

    name: str
    path: Path
    files: dict[str, Path] = field(default_factory=dict)
    results: dict[str, dict] = field(default_factory=dict)
    _docs: dict = field(default_factory=dict, repr=False)

    def value(self, scheme: str, corpus: str, column: str) -> float | None:
        suffix, key = METRICS[column]
        data = self.results.get(scheme)
        return None if data is None else metric(data, f"muse_{corpus}_{suffix}", key)

    def docs(self, scheme: str, corpus: str, column: str) -> dict | None:
        """``{doc_id: value}`` of one metric, or None without per-document values."""
        if scheme not in self._docs:
            self._docs[scheme] = doc_scores(self.files[scheme]) if scheme in self.files else None
        suffix, key = METRICS[column]
        found = ((self._docs[scheme] or {}).get(f"muse_{corpus}_{suffix}") or {}).get(key)
        return found or None


def scheme_of(data: dict) -> str:
    """The quantization scheme a results file was evaluated at (module docstring)."""
    scheme = recorded_scheme(data)
    if scheme:
        return scheme
    args = (data.get("config") or {}).get("model_args") or {}
    if isinstance(args, str):
        args = dict(kv.split("=", 1) for kv in args.split(",") if "=" in kv)
    return str(args.get("quant") or "none")


def _name(path: Path) -> str:
    folder = path if path.is_dir() else path.parent
    if folder.name == "results" and folder.parent.name:
        folder = folder.parent
    return folder.name or str(path)


def load_run(path, name: str | None = None) -> Run:
    """Every results file of a sweep folder / lm-eval output folder / a results JSON."""
    path = Path(path).expanduser()
    if not path.exists():
        raise MuseQuantError(f"{path} does not exist",
                             "pass a muse-quant sweep --output_path folder or a results JSON")
    if path.is_dir():
        candidates = sorted({*path.glob("*.json"), *path.glob("results/*.json"),
                             *path.rglob("results_*.json")})
    else:
        candidates = [path]
    run = Run(name=name or _name(path), path=path)
    for file in candidates:
        try:
            data = load_results(file)
        except MuseQuantError:
            if file == path:
                raise
            continue  # errors.json and other files that are not results
        scheme = scheme_of(data)
        if scheme in run.files:
            raise MuseQuantError(f"both {run.files[scheme]} and {file} hold results at scheme "
                                 f"{scheme}", "pass one results file, or move the other away")
        run.files[scheme], run.results[scheme] = file, data
    if not run.results:
        raise MuseQuantError(f"{path}: no lm-eval results files in it",
                             "pass a muse-quant sweep --output_path folder, an lm_eval "
                             "--output_path folder or a results JSON")
    return run


def _bits(scheme: str) -> int | None:
    from ..quantizers import describe_scheme

    try:
        return describe_scheme(scheme).bits
    except MuseQuantError:
        return -1  # unknown here: neither full precision nor 4-bit


def _order(schemes) -> list[str]:
    """Full precision first, then more bits before fewer, then by name."""
    return sorted(schemes, key=lambda s: (_bits(s) is not None, -(_bits(s) or 0), s))


# ------------------------------------------------------------------ the comparison
def _row(target: Run, run: Run, corpus: str, scheme: str, full: str | None) -> dict:
    from ..leaderboard.scores import retained

    bits = _bits(scheme)
    values = {c: run.value(scheme, corpus, c) for c in METRICS}
    kept = retained(values["VerbMem_f"], target.value(scheme, corpus, "VerbMem_f"))
    row = {"scheme": scheme, "bits": bits, "metrics": values, "retained": kept,
           "retained_ci": None, "change": None, "change_ci": None,
           "utility": retained(values["KnowMem_r"], target.value(scheme, corpus, "KnowMem_r"))}
    u, t = run.docs(scheme, corpus, "VerbMem_f"), target.docs(scheme, corpus, "VerbMem_f")
    if u and t:
        row["retained_ci"] = bootstrap.retained_ci(u, t)
    if full is not None and scheme != full and bits is not None:
        base = retained(run.value(full, corpus, "VerbMem_f"),
                        target.value(full, corpus, "VerbMem_f"))
        row["change"] = None if kept is None or base is None else kept - base
        uf, tf = run.docs(full, corpus, "VerbMem_f"), target.docs(full, corpus, "VerbMem_f")
        if u and t and uf and tf:
            row["change_ci"] = bootstrap.change_ci(uf, tf, u, t)
    return row


def _model(target: Run, run: Run, corpus: str) -> dict:
    schemes = _order(set(target.results) & set(run.results))
    full = next((s for s in schemes if _bits(s) is None), None)
    rows = [_row(target, run, corpus, s, full) for s in schemes]
    by_scheme = {r["scheme"]: r for r in rows}
    name, reason = verdict.verdict(
        by_scheme[full]["retained"] if full else None,
        {r["scheme"]: r["retained"] for r in rows if r["bits"] == 4},
        by_scheme[full]["utility"] if full else None)
    return {"name": run.name, "path": str(run.path), "rows": rows, "verdict": name,
            "reason": reason}


def compare(target, unlearned) -> dict:
    """The comparison as a JSON-able dict (see :func:`format_table` for what it shows)."""
    target_run = target if isinstance(target, Run) else load_run(target)
    runs = [u if isinstance(u, Run) else load_run(u) for u in unlearned]
    names = [target_run.name]
    for run in runs:  # unique display names
        base, i = run.name, 2
        while run.name in names:
            run.name, i = f"{base}#{i}", i + 1
        names.append(run.name)
    corpora = [c for c in CORPORA if any(target_run.value(s, c, "VerbMem_f") is not None
                                         for s in target_run.results)]
    if not corpora:
        raise MuseQuantError(f"{target_run.path}: no muse_<corpus>_verbmem_f results for the "
                             "target", "evaluate the target with --tasks muse_news_quant (or "
                             "muse_books_quant)")
    report = {"rule": {"utility_gate": verdict.UTILITY_GATE,
                       "recovery_points": verdict.RECOVERY_POINTS,
                       "bootstrap": {"resamples": verdict.BOOTSTRAP_RESAMPLES,
                                     "confidence": verdict.BOOTSTRAP_CONFIDENCE,
                                     "seed": verdict.BOOTSTRAP_SEED},
                       "text": verdict.rule_text()},
              "target": {"name": target_run.name, "path": str(target_run.path)},
              "corpora": []}
    for corpus in corpora:
        report["corpora"].append({
            "corpus": corpus,
            "target": {s: {c: target_run.value(s, corpus, c) for c in METRICS}
                       for s in _order(target_run.results)},
            "models": [_model(target_run, run, corpus) for run in runs]})
    return report


# ------------------------------------------------------------------ output
def _num(x, digits=1, sign=False) -> str:
    if x is None:
        return "-"
    return f"{x:+.{digits}f}" if sign else f"{x:.{digits}f}"


def _ci(ci, digits=1, sign=False) -> str:
    return "n/a" if ci is None else f"[{_num(ci[0], digits, sign)}, {_num(ci[1], digits, sign)}]"


HEADER = ("model", "scheme", *METRICS, "retained %", "CI", "Δ vs full", "CI", "utility kept %")


def _cells(report: dict, corpus: dict) -> list[list[str]]:
    rows = []
    for scheme, values in corpus["target"].items():
        rows.append([report["target"]["name"] + " (target)", scheme,
                     *(_num(values[c]) for c in METRICS), "", "", "", "", ""])
    for model in corpus["models"]:
        for r in model["rows"]:
            rows.append([model["name"], r["scheme"], *(_num(r["metrics"][c]) for c in METRICS),
                         _num(r["retained"]), _ci(r["retained_ci"]),
                         _num(r["change"], sign=True) if r["change"] is not None else "",
                         _ci(r["change_ci"], sign=True) if r["change"] is not None else "",
                         _num(r["utility"])])
    return rows


def _title(report: dict, corpus: dict) -> str:
    level = int(round(100 * report["rule"]["bootstrap"]["confidence"]))
    return (f"MUSE-{corpus['corpus']}: retained % = 100 * VerbMem_f(unlearned) / "
            f"VerbMem_f(target), utility kept % = 100 * KnowMem_r(unlearned) / "
            f"KnowMem_r(target), at the same precision; CI = {level}% bootstrap interval over "
            "documents")


def format_table(report: dict) -> str:
    """The printed table, one block per corpus, then the verdicts and the rule."""
    out = []
    for corpus in report["corpora"]:
        rows = [list(HEADER)] + _cells(report, corpus)
        widths = [max(len(r[i]) for r in rows) for i in range(len(HEADER))]
        lines = ["  ".join(c.ljust(w) if i < 2 else c.rjust(w)
                           for i, (c, w) in enumerate(zip(r, widths))).rstrip() for r in rows]
        lines.insert(1, "-" * len(lines[0]))
        out += [_title(report, corpus), *lines, ""]
        out += [f"{m['name']}: {m['verdict'].upper()} ({m['reason']})" for m in corpus["models"]]
        out.append("")
    out.append(report["rule"]["text"])
    return "\n".join(out)


def format_markdown(report: dict) -> str:
    out = ["# Does the unlearning survive quantization?", ""]
    for corpus in report["corpora"]:
        out += [f"## MUSE-{corpus['corpus']}", "", _title(report, corpus) + ".", "",
                "| " + " | ".join(HEADER) + " |",
                "|" + "|".join("---" if i < 2 else "---:" for i in range(len(HEADER))) + "|"]
        out += ["| " + " | ".join(c or " " for c in row) + " |"
                for row in _cells(report, corpus)]
        out += ["", "| model | verdict | why |", "|---|---|---|"]
        out += [f"| {m['name']} | **{m['verdict']}** | {m['reason']} |"
                for m in corpus["models"]]
        out.append("")
    out += [report["rule"]["text"] + ".", ""]
    return "\n".join(out)
