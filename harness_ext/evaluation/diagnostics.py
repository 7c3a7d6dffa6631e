"""Update-survival diagnostic: how much of the unlearning update survives quantization, and how.

Zhang et al. (ICLR 2025, Sec. 4) explain why quantization restores unlearned knowledge: with a
small learning rate the update Delta_w = theta_u - theta_o moves most weights by less than half
a quantization step, so Q(theta_u) = Q(theta_o) for them and the quantized unlearned model
equals the quantized target. This module measures that from the weights alone, without any
generation, for every quantized module (the same modules ``quant=`` quantizes), summed per
transformer block (``layers``: the first ``.<index>.`` in the module name, others ``"other"``)
and ``overall``. Every metric is defined in ``docs/diagnostics.md``; in short, with
dQ = Q(theta_u) - Q(theta_o):

* size: ``update_norm``, ``surviving_norm``, ``survival_ratio`` = ||dQ|| / ||Delta_w||;
* direction: ``projection`` = <dQ, Delta_w> / ||Delta_w||^2, the share of the update kept in its
  own direction (1: all of it; 0: none);
* ``value_change_rate``: the share of weights whose dequantized value changed (``flip_rate`` is
  the same number under its old, misleading name, kept for one version);
* codes (schemes with :meth:`Quantizer.codes`, else null): ``code_flip_rate`` (the share of
  weights whose code changed), ``scale_change_rate`` (the share of quantization blocks / rows /
  groups whose scale changed), ``flipped_block_rate`` (the share of blocks with a code flip),
  ``code_share_of_dq`` / ``scale_share_of_dq`` (the shares of ||dQ||^2 from code crossings and
  from scale moves alone; they add up to 1), ``near_zero_update_share`` (the share of
  ||Delta_w||^2 in weights whose target code is a zero / near-zero code) and
  ``near_zero_edge_min/mean/max`` (near_zero_edge * the target's scale, over blocks);
* ``movable_cap``: the largest |theta_o| among the weights the update moved at all;
* ``sub_half_step_share``, ``unchanged_fraction``, ``n``.

For GPTQ and AWQ, Q is the calibrated quantizer applied to each model on its own (own Hessian /
own activation scales); for AWQ the smoothing scales are folded back so that Q(theta) acts on the
original inputs (:mod:`harness_ext.quantizers.schemes.awq`). ``*-real`` bitsandbytes schemes use
the weights their kernels compute with.
"""

from __future__ import annotations

import json
import logging
import math
import re
from pathlib import Path

import torch

from ..errors import MuseQuantError

log = logging.getLogger(__name__)

METRICS = ("n", "update_norm", "surviving_norm", "survival_ratio", "projection",
           "value_change_rate", "flip_rate", "sub_half_step_share", "unchanged_fraction",
           "code_flip_rate", "scale_change_rate", "flipped_block_rate", "code_share_of_dq",
           "scale_share_of_dq", "near_zero_update_share", "movable_cap", "near_zero_edge_min",
           "near_zero_edge_mean", "near_zero_edge_max")
#: how each sum combines over modules (default: +)
_ALL = ("has_step", "has_codes")
_MAX = ("cap", "edge_max")
_MIN = ("edge_min",)


def _code_sums(sq, dq, codes_o, codes_u) -> dict:
    """The code / scale sums of one module (see :func:`module_sums`)."""
    flipped = codes_u.codes != codes_o.codes
    group_moved = codes_o.group_moved(codes_u)  # scale (or affine offset) changed
    scale_moved = group_moved[codes_o.groups]
    edges = codes_o.edges()
    n_groups = codes_o.scales.numel()
    flipped_groups = torch.zeros(n_groups, dtype=torch.bool)
    flipped_groups[codes_o.groups[flipped]] = True
    return {"code_flips": int(flipped.sum()), "groups": n_groups,
            "scale_changes": int(group_moved.sum()),
            "flipped_groups": int(flipped_groups.sum()),
            "sq_dq_code": float(dq.square()[flipped].sum()),
            "sq_dq_scale": float(dq.square()[~flipped & scale_moved].sum()),
            "sq_near_zero": float(sq[codes_o.near_zero()].sum()),
            "edge_sum": float(edges.sum()), "edge_min": float(edges.min()),
            "edge_max": float(edges.max())}


def module_sums(theta_o: torch.Tensor, theta_u: torch.Tensor, q_o: torch.Tensor,
                q_u: torch.Tensor, step: torch.Tensor | None, codes_o=None, codes_u=None) -> dict:
    """The additive sums behind every metric for one module (see the module docstring).

    ``codes_o`` / ``codes_u``: the :class:`~harness_ext.quantizers.codes.QuantCodes` of both
    weights, or None when the scheme has none.
    """
    update = theta_u.double() - theta_o.double()
    sq = update.square()
    dq = q_u.double() - q_o.double()
    moved = theta_u != theta_o
    out = {"n": theta_o.numel(), "sq_update": float(sq.sum()),
           "sq_surviving": float(dq.square().sum()), "dot": float((dq * update).sum()),
           "value_changes": int((q_u != q_o).sum()), "unchanged": int((~moved).sum()),
           "cap": float(theta_o[moved].abs().max()) if moved.any() else 0.0,
           "sq_small": 0.0, "has_step": step is not None, "has_codes": codes_o is not None}
    if step is not None:
        small = update.abs() < step.double() / 2
        out["sq_small"] = float(sq[small].sum())
    if codes_o is not None:
        out.update(_code_sums(sq, dq, codes_o, codes_u))
    return out


def _add(total: dict, part: dict) -> dict:
    if not total:
        return dict(part)
    out = {}
    for key in total.keys() & part.keys():
        a, b = total[key], part[key]
        out[key] = (a and b if key in _ALL else max(a, b) if key in _MAX
                    else min(a, b) if key in _MIN else a + b)
    return out


def _ratio(num, den):
    return num / den if den else None


def finalize(sums: dict) -> dict:
    """Metrics from :func:`module_sums` (or sums of them)."""
    sq_u, sq_q, n = sums["sq_update"], sums["sq_surviving"], sums["n"]
    codes = sums["has_codes"]
    value_changes = _ratio(sums["value_changes"], n)
    return {
        "n": n,
        "update_norm": math.sqrt(sq_u),
        "surviving_norm": math.sqrt(sq_q),
        "survival_ratio": math.sqrt(sq_q / sq_u) if sq_u > 0 else None,
        "projection": _ratio(sums["dot"], sq_u),
        "value_change_rate": value_changes,
        "flip_rate": value_changes,  # deprecated name of value_change_rate
        "sub_half_step_share": _ratio(sums["sq_small"], sq_u) if sums["has_step"] else None,
        "unchanged_fraction": _ratio(sums["unchanged"], n),
        "code_flip_rate": _ratio(sums["code_flips"], n) if codes else None,
        "scale_change_rate": _ratio(sums["scale_changes"], sums["groups"]) if codes else None,
        "flipped_block_rate": _ratio(sums["flipped_groups"], sums["groups"]) if codes else None,
        "code_share_of_dq": _ratio(sums["sq_dq_code"], sq_q) if codes else None,
        "scale_share_of_dq": _ratio(sums["sq_dq_scale"], sq_q) if codes else None,
        "near_zero_update_share": _ratio(sums["sq_near_zero"], sq_u) if codes else None,
        "movable_cap": sums["cap"] if sums["unchanged"] < n else None,
        "near_zero_edge_min": sums["edge_min"] if codes else None,
        "near_zero_edge_mean": _ratio(sums["edge_sum"], sums["groups"]) if codes else None,
        "near_zero_edge_max": sums["edge_max"] if codes else None,
    }


def layer_of(module_name: str) -> str:
    match = re.search(r"\.(\d+)\.", f".{module_name}.")
    return match.group(1) if match else "other"


def _codes_or_none(quantizer, name, theta_o, theta_u) -> tuple:
    try:
        return quantizer.module_codes(name, theta_o), quantizer.module_codes(name, theta_u)
    except NotImplementedError:
        return None, None


def diagnose_models(model_o: torch.nn.Module, model_u: torch.nn.Module, schemes: list[str],
                    calibration=None, include_lm_head: bool = False,
                    progress: bool = True) -> dict:
    """Compare the target ``model_o`` and unlearned ``model_u`` under each scheme."""
    from tqdm.auto import tqdm

    from ..quantizers import parse_scheme
    from ..quantizers.apply import quantizable_linear_names

    quantizers = [parse_scheme(s) for s in schemes]  # validate all before any work
    names = quantizable_linear_names(model_o, include_lm_head)
    if names != quantizable_linear_names(model_u, include_lm_head):
        raise MuseQuantError("the target and unlearned models have different Linear modules",
                             "use an unlearned checkpoint of the same architecture")
    mods_o, mods_u = dict(model_o.named_modules()), dict(model_u.named_modules())
    dtype = str(next(iter(model_o.parameters())).dtype).replace("torch.", "")
    report = {"dtype": dtype, "metric_definitions": "see docs/diagnostics.md",
              "schemes": {}}
    for quantizer in tqdm(quantizers, desc="diagnose", unit="scheme", disable=not progress):
        for name in names:
            quantizer.check_weight(name, mods_o[name].weight)
        needs = quantizer.info.needs_calibration
        if needs and calibration is None:
            raise MuseQuantError(f"{quantizer.scheme} needs calibration data",
                                 "pass --calib (generic, forget, retain or a file)")
        cal = calibration if needs else None
        q_target = {n: (q, step) for n, q, step in
                    quantizer.diagnostic_weights(model_o, names, cal)}
        modules, layers, overall = {}, {}, {}
        for name, q_u, _ in quantizer.diagnostic_weights(model_u, names, cal):
            q_o, step = q_target[name]
            theta_o = mods_o[name].weight.detach().cpu()
            theta_u = mods_u[name].weight.detach().cpu()
            sums = module_sums(theta_o, theta_u, q_o.cpu(), q_u.cpu(),
                               None if step is None else step.cpu(),
                               *_codes_or_none(quantizer, name, theta_o, theta_u))
            modules[name] = finalize(sums)
            layers[layer_of(name)] = _add(layers.get(layer_of(name), {}), sums)
            overall = _add(overall, sums)
        report["schemes"][quantizer.scheme] = {
            "quantizer": quantizer.describe(),
            "overall": finalize(overall),
            "layers": {k: finalize(v) for k, v in layers.items()},
            "modules": modules,
        }
    return report


def plot_survival(report: dict, path: str | Path) -> Path:
    """Survival ratio per transformer block, one line per scheme (PNG or SVG by suffix)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for scheme, data in report["schemes"].items():
        keys = sorted((k for k in data["layers"] if k != "other"), key=int)
        xs = [int(k) for k in keys if data["layers"][k]["survival_ratio"] is not None]
        ys = [data["layers"][str(x)]["survival_ratio"] for x in xs]
        if xs:
            ax.plot(xs, ys, marker="o", label=scheme)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.axhline(1.0, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("transformer block")
    ax.set_ylabel("survival ratio ||Q(θu) − Q(θo)|| / ||θu − θo||")
    ax.set_title("How much of the unlearning update survives quantization")
    if report["schemes"]:
        ax.legend(fontsize=8)
    fig.tight_layout()
    from ..io import atomic_path

    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp)
    plt.close(fig)
    return path


def load_pair(pretrained: str, unlearned: str, dtype: str = "auto", device: str = "cpu",
              allow_pickle: bool = False):
    """``(target model, unlearned model, tokenizer, unlearned report)``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ..checkpoints import apply_unlearned, detect_checkpoint_kind

    detect_checkpoint_kind(unlearned)
    torch_dtype = dtype if dtype == "auto" else getattr(torch, dtype)
    try:
        target = AutoModelForCausalLM.from_pretrained(pretrained, dtype=torch_dtype)
    except OSError as exc:
        raise MuseQuantError(f"cannot load pretrained={pretrained}: {str(exc)[:300]}",
                             "pass a model directory or a hub id") from None
    target.to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(pretrained)
    import copy

    unlearned_model, report = apply_unlearned(copy.deepcopy(target), unlearned,
                                              allow_pickle=allow_pickle)
    if report.get("base_rounded_to"):  # a delta against the bf16-rounded target: compare to it
        from ..checkpoints import round_parameters

        round_parameters(target, getattr(torch, report["base_rounded_to"]))
    return target, unlearned_model.eval(), tokenizer, report


#: the printed tables: (column title, metric)
TABLES = (
    (("||update||", "update_norm"), ("||surviving||", "surviving_norm"),
     ("ratio", "survival_ratio"), ("projection", "projection"),
     ("value chg", "value_change_rate"), ("<Δ/2 share", "sub_half_step_share"),
     ("unchanged", "unchanged_fraction")),
    (("code flips", "code_flip_rate"), ("scale chg", "scale_change_rate"),
     ("ΔQ² codes", "code_share_of_dq"), ("ΔQ² scales", "scale_share_of_dq"),
     ("Δ² near 0", "near_zero_update_share"), ("moved cap", "movable_cap"),
     ("0-edge min", "near_zero_edge_min"), ("0-edge mean", "near_zero_edge_mean")),
)


def print_table(report: dict) -> str:
    """The overall metrics of every scheme: size and direction, then the code mechanism."""
    def fmt(x):
        return "-" if x is None else f"{x:.4g}"

    lines = []
    for columns in TABLES:
        width = [max(10, len(title) + 2) for title, _ in columns]
        lines.append(f"{'scheme':<16}" + "".join(f"{t:>{w}}" for (t, _), w in zip(columns, width)))
        for scheme, data in report["schemes"].items():
            m = data["overall"]
            lines.append(f"{scheme:<16}" + "".join(f"{fmt(m[k]):>{w}}"
                                                   for (_, k), w in zip(columns, width)))
        lines.append("")
    return "\n".join(lines[:-1])


def run_diagnose(pretrained: str, unlearned: str, schemes: list[str], out: str | Path | None,
                 dtype: str = "auto", device: str = "cpu", include_lm_head: bool = False,
                 allow_pickle: bool = False, plot_format: str = "png", **calib_args) -> dict:
    """Load both models, diagnose every scheme, write ``diagnose.json`` and the plot."""
    from ..quantizers import describe_scheme

    infos = [describe_scheme(s) for s in schemes]  # validate all before loading anything
    out_dir = Path(out).expanduser() if out else None
    if out_dir is not None and (out_dir / "diagnose.json").exists():
        raise MuseQuantError(f"{out_dir / 'diagnose.json'} already exists",
                             "choose another --out (results are never overwritten)")
    needs_calibration = any(info.needs_calibration for info in infos)
    if needs_calibration:
        from ..quantizers.calibration import validate_calib

        validate_calib(**calib_args)
    target, unlearned_model, tokenizer, unlearned_report = load_pair(
        pretrained, unlearned, dtype=dtype, device=device, allow_pickle=allow_pickle)
    calibration = None
    if needs_calibration:
        from ..quantizers.calibration import build_calibration

        calibration = build_calibration(tokenizer, **calib_args)
    report = diagnose_models(target, unlearned_model, schemes, calibration, include_lm_head)
    report = {"pretrained": str(pretrained), "unlearned": unlearned_report, **report}
    if out_dir is not None:
        from ..io import write_json

        write_json(out_dir / "diagnose.json", report)
        plot_survival(report, out_dir / f"survival.{plot_format}")
    return report


def dumps(report: dict) -> str:
    return json.dumps(report, indent=2, default=str)
