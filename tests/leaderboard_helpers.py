"""Hand-made leaderboard fixtures: lm-eval results files with the structure `muse-quant eval` /
`sweep` write (keys and nesting copied from a real muse_news_quant results file), with metric
values chosen by the test, and beside each the per-document scores (`.samples.jsonl`) that
`muse-quant sweep` writes, from which the validator recomputes every aggregate."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import yaml

from harness_ext.evaluation import samples
from harness_ext.hashing import content_sha256
from harness_ext.io import scheme_filename
from harness_ext.leaderboard.samples_check import recomputed_aggregates

SUFFIXES = ("verbmem_f", "knowmem_f", "knowmem_r", "privleak")
SHA = "0123456789abcdef" * 4


def make_results(corpus: str = "news", scheme: str = "none", verbmem: float = 50.0,
                 knowmem_f: float = 40.0, privleak: float = -90.0, knowmem_r: float = 30.0,
                 muse_data: str | None = "embedded", pretrained: str = "/models/target",
                 unlearned: str | None = None, limit: float | None = None,
                 version: float = 1.0, unlearned_sha256: str | None = None) -> dict:
    """One results file as lm-eval 0.4.13 writes it for the muse_<corpus>_quant group."""
    tasks = [f"muse_{corpus}_{s}" for s in SUFFIXES]
    group = f"muse_{corpus}_quant"
    values = {"verbmem_f": {"verbmem_rougeL_f1": verbmem, "verbmem_rougeL_recall": verbmem},
              "knowmem_f": {"knowmem_rougeL_f1": knowmem_f, "knowmem_rougeL_recall": knowmem_f},
              "knowmem_r": {"knowmem_rougeL_f1": knowmem_r, "knowmem_rougeL_recall": knowmem_r},
              "privleak": {"mink40_auc": 0.5 * (1 + privleak / 100), "privleak": privleak,
                           "privleak_retrain_auc": 0.5}}
    results, configs = {}, {}
    for suffix, task in zip(SUFFIXES, tasks):
        row = {"name": task, "alias": task, "sample_len": 40}
        for key, value in values[suffix].items():
            row[f"{key},none"] = value
            row[f"{key}_stderr,none"] = "N/A" if suffix == "privleak" and key != \
                "privleak_retrain_auc" else 0.0
        results[task] = row
        metadata = {"version": version, "pretrained": pretrained, "quant": scheme,
                    "config_source": f"/repo/tasks/muse_{corpus}/{task}.yaml"}
        if muse_data is not None:
            metadata["muse_data"] = muse_data
        configs[task] = {"task": task, "dataset_kwargs": {"corpus": corpus},
                         "test_split": "test", "num_fewshot": 0, "metadata": metadata}
    results[group] = {"alias": group, "name": group}
    quantization = {"scheme": scheme, "family": scheme.split(":")[0], "n_modules":
                    0 if scheme == "none" else 28, "modules": [], "quant_lm_head": False,
                    "seconds": 0.0, "total_seconds": 0.0}
    if unlearned is not None and unlearned_sha256 is None:
        unlearned_sha256 = content_sha256(unlearned)[0] if Path(unlearned).exists() else SHA
    unlearned_report = None if unlearned is None else {
        "kind": "delta", "path": unlearned, "sha256": unlearned_sha256, "tensors_changed": 28,
        "update_l2_norm": 0.5}
    model_args = {"pretrained": pretrained, "quant": scheme}
    if unlearned:
        model_args["unlearned"] = unlearned
    return {
        "results": results,
        "group_subtasks": {group: list(tasks)},
        "configs": configs,
        "versions": {**{t: version for t in tasks}, group: "1.0"},
        "n-shot": {**{t: 0 for t in tasks}, group: 0},
        "higher_is_better": {t: {k: True for k in values[s]} for s, t in zip(SUFFIXES, tasks)},
        "n-samples": {t: {"original": 40, "effective": 40} for t in tasks},
        "config": {"model": "muse_quant", "model_args": model_args,
                   "model_num_parameters": 5507328, "model_dtype": "torch.float32",
                   "muse_quant": {"unlearned": unlearned_report, "quantization": quantization,
                                  "pretrained": pretrained, "add_bos_token": True},
                   "batch_size": "8", "device": "cpu", "limit": limit, "random_seed": 0},
        "git_hash": "63bd7a9",
        "date": 1795645041.35,
        "lm_eval_version": "0.4.13",
        "transformers_version": "5.17.0",
        "model_name": pretrained,
        "total_evaluation_time_seconds": "4.5",
    }


def make_samples(data: dict) -> dict:
    """Per-document scores that aggregate to ``data``'s metrics: every document of a mean
    metric scores the metric's value; PrivLeak's Min-K% scores are ordered so that the AUC of
    forget (label 0) vs holdout (label 1) is the one ``privleak`` and ``mink40_auc`` say, to
    1/(n/2)^2. The results' aggregates are then set to what these scores give (equal to the
    chosen values for the round numbers tests use)."""
    tasks = []
    for task, row in data["results"].items():
        n = row.get("sample_len")
        if n is None:
            continue
        if task.endswith("_privleak"):
            ref = row["privleak_retrain_auc,none"]
            auc = ref * (1 + row["privleak,none"] / 100)
            half = n // 2
            pairs = round(auc * half * half)  # holdout-forget pairs with holdout score lower
            # forget scores 1..half; holdout i gets a score below `k_i` forget scores
            forget = [float(i + 1) for i in range(half)]
            holdout = []
            for _ in range(half):
                k = min(half, pairs)
                pairs -= k
                holdout.append(float(half - k) + 0.5)  # lower than k forget scores
            values = [[s, 0] for s in forget] + [[s, 1] for s in holdout]
            metrics = {"privleak": {"aggregation": "agg_privleak",
                                    "values": [v + [ref] for v in values]},
                       "mink40_auc": {"aggregation": "agg_mink40_auc", "values": values},
                       "privleak_retrain_auc": {"aggregation": "mean",
                                                "values": [ref] * len(values)}}
        else:
            metrics = {key.partition(",")[0]: {"aggregation": "mean", "values": [value] * n}
                       for key, value in row.items()
                       if key.endswith(",none") and "_stderr" not in key}
        tasks.append({"task": task, "filter": "none", "doc_id": list(range(
            len(next(iter(metrics.values()))["values"]))), "metrics": metrics})
    return {"header": {"format": samples.FORMAT, "version": samples.VERSION,
                       "bootstrap_iters": 100000, "float_sum": samples.python_float_sum()},
            "tasks": tasks}


def write_results(folder: Path, data: dict, name: str | None = None,
                  with_samples: bool = True) -> Path:
    """``<scheme>.json`` and (``with_samples``) its ``.samples.jsonl``; the aggregates of
    ``data`` are replaced by those recomputed from the samples (as a sweep writes them)."""
    folder.mkdir(parents=True, exist_ok=True)
    scheme = data["config"]["muse_quant"]["quantization"]["scheme"]
    path = folder / (name or scheme_filename(scheme))
    if with_samples:
        per_doc = make_samples(data)
        for task, values in recomputed_aggregates(samples.dumps(per_doc), per_doc).items():
            data["results"][task].update(values)
            data["n-samples"][task] = {"original": values["sample_len"],
                                       "effective": values["sample_len"]}
        samples.write(samples.samples_path(path), per_doc)
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path


def entry_meta(kind: str = "method", corpus: str = "news", name: str = "NPO_KLR",
               target: str | None = "target", **extra) -> dict:
    meta = {"schema_version": 1, "kind": kind, "corpus": corpus, "method": name,
            "description": f"{name} on the tiny model", "base_model": "tiny Llama",
            "checkpoint": {"location": f"/checkpoints/{name}", "sha256": SHA}}
    if kind != "target":
        meta["target"] = target
    if kind == "method":
        meta["hyperparameters"] = {"lr": 1e-5, "epochs": 10}
    meta.update({"muse_data": "embedded", "reproducible": "toy", "submitted_by": "tester"})
    meta.update(extra)
    return meta


def make_entry(root: Path, slug: str, metrics: dict, corpus: str = "news", kind: str = "method",
               name: str | None = None, meta: dict | None = None, **results_kwargs) -> Path:
    """``metrics``: ``{scheme: (VerbMem_f, KnowMem_f, PrivLeak, KnowMem_r)}``."""
    folder = root / "submissions" / corpus / slug
    meta = copy.deepcopy(meta) if meta is not None else \
        entry_meta(kind, corpus, name or slug.upper())
    folder.mkdir(parents=True)
    (folder / "entry.yaml").write_text(yaml.safe_dump(meta, sort_keys=False))
    if kind == "method":
        results_kwargs.setdefault("unlearned", f"/checkpoints/{slug}")
    for scheme, (verbmem, knowmem_f, privleak, knowmem_r) in metrics.items():
        write_results(folder / "results",
                      make_results(corpus, scheme, verbmem, knowmem_f, privleak, knowmem_r,
                                   **results_kwargs))
    return folder


def three_schemes(verbmem=(50.0, 48.0, 40.0), knowmem_r=(30.0, 29.0, 25.0), knowmem_f=40.0,
                  privleak=-90.0) -> dict:
    return {s: (v, knowmem_f, privleak, r)
            for s, v, r in zip(("none", "bnb-int8-real", "bnb-fp4"), verbmem, knowmem_r)}


def small_board(root: Path, corpus: str = "news", prefix: str = "") -> Path:
    """A valid board: target, retrain and one method on ``corpus``."""
    root.mkdir(parents=True, exist_ok=True)
    make_entry(root, f"{prefix}target", three_schemes(), corpus, kind="target",
               meta=entry_meta("target", corpus, "Target"))
    make_entry(root, f"{prefix}retrain", three_schemes((10.0, 10.0, 12.0)), corpus,
               kind="retrain", meta=entry_meta("retrain", corpus, "Retrain",
                                               target=f"{prefix}target"))
    make_entry(root, f"{prefix}npo-klr", three_schemes((5.0, 6.0, 36.0)), corpus,
               meta=entry_meta("method", corpus, "NPO_KLR", target=f"{prefix}target"))
    return root


def problems_of(root: Path) -> str:
    """Every problem the validator finds on the board at ``root``, one per line."""
    from harness_ext.leaderboard.validator import load_board

    return "\n".join(load_board(root).problems)


def edited_board(root: Path, edit) -> tuple[Path, str]:
    """:func:`small_board` at ``root`` changed by ``edit(root)``, and its problems."""
    small_board(root)
    edit(root)
    return root, problems_of(root)
