"""Update-survival diagnostic: how much of the unlearning update survives quantization.

Zhang et al. (ICLR 2025, Sec. 4) explain why quantization restores unlearned knowledge: with a
small learning rate the update Delta_w = theta_u - theta_o moves most weights by less than half
a quantization step Delta, so Q(theta_u) = Q(theta_o) for them and the quantized unlearned model
equals the quantized target. This module measures that from the weights alone, without any
generation. For every quantized module (the same modules ``quant=`` quantizes), with
theta_o = target weights, theta_u = unlearned weights, Q the scheme's quantize-dequantize map and
Delta_k the quantization step of element k on the **target's** grid
(:meth:`Quantizer.quantization_step`; for NF4/FP4 the width of the element's code bucket times
the block's absmax, see :func:`harness_ext.quantizers.schemes.bnb_fake.blockwise_4bit_step`):

* ``update_norm``      = ||theta_u - theta_o||_2 (Frobenius, in float64);
* ``surviving_norm``   = ||Q(theta_u) - Q(theta_o)||_2;
* ``survival_ratio``   = surviving_norm / update_norm, computed as
  sqrt(surviving_norm^2 / update_norm^2); null when the update is 0. 0 means the quantized
  models are identical; it can exceed 1 (rounding can amplify a small update);
* ``flip_rate``        = #{k : Q(theta_u)_k != Q(theta_o)_k} / n, the fraction of weights whose
  quantized (dequantized) value changed;
* ``sub_half_step_share`` = sum_{k : |Delta_w_k| < Delta_k / 2} Delta_w_k^2 / sum_k Delta_w_k^2,
  the share of the update's squared norm carried by weights that moved less than half a step
  (those can only flip by crossing a rounding boundary); null when the update is 0 or the scheme
  has no step (``Delta = 0`` for ``none``, so it is 0 there);
* ``unchanged_fraction`` = #{k : theta_u_k == theta_o_k} / n, exact equality: for bf16/fp16
  checkpoints the share of weights the update did not move at all (small updates round away in
  16-bit); reported for every dtype;
* ``n`` = number of weights.

``layers`` and ``overall`` aggregate the same sums over the modules of one transformer block
(the first ``.<index>.`` in the module name; others go to ``"other"``) or over all modules.
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

METRICS = ("n", "update_norm", "surviving_norm", "survival_ratio", "flip_rate",
           "sub_half_step_share", "unchanged_fraction")
_SUMS = ("n", "sq_update", "sq_surviving", "flips", "sq_small", "unchanged", "has_step")


def module_sums(theta_o: torch.Tensor, theta_u: torch.Tensor, q_o: torch.Tensor,
                q_u: torch.Tensor, step: torch.Tensor | None) -> dict:
    """The additive sums behind every metric for one module (see the module docstring)."""
    update = theta_u.double() - theta_o.double()
    sq = update.square()
    out = {"n": theta_o.numel(), "sq_update": float(sq.sum()),
           "sq_surviving": float((q_u.double() - q_o.double()).square().sum()),
           "flips": int((q_u != q_o).sum()), "unchanged": int((theta_u == theta_o).sum()),
           "sq_small": 0.0, "has_step": step is not None}
    if step is not None:
        small = update.abs() < step.double() / 2
        out["sq_small"] = float(sq[small].sum())
    return out


def _add(total: dict, part: dict) -> dict:
    if not total:
        return dict(part)
    out = {k: total[k] + part[k] for k in _SUMS if k != "has_step"}
    out["has_step"] = total["has_step"] and part["has_step"]
    return out


def finalize(sums: dict) -> dict:
    """Metrics from :func:`module_sums` (or sums of them)."""
    sq_u, n = sums["sq_update"], sums["n"]
    return {
        "n": n,
        "update_norm": math.sqrt(sq_u),
        "surviving_norm": math.sqrt(sums["sq_surviving"]),
        "survival_ratio": math.sqrt(sums["sq_surviving"] / sq_u) if sq_u > 0 else None,
        "flip_rate": sums["flips"] / n if n else None,
        "sub_half_step_share": (sums["sq_small"] / sq_u) if sq_u > 0 and sums["has_step"]
        else None,
        "unchanged_fraction": sums["unchanged"] / n if n else None,
    }


def layer_of(module_name: str) -> str:
    match = re.search(r"\.(\d+)\.", f".{module_name}.")
    return match.group(1) if match else "other"


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
    report = {"dtype": dtype, "metric_definitions": "see harness_ext/diagnostics.py",
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
            sums = module_sums(mods_o[name].weight.detach().cpu(),
                               mods_u[name].weight.detach().cpu(), q_o.cpu(), q_u.cpu(),
                               None if step is None else step.cpu())
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


def print_table(report: dict) -> str:
    def fmt(x):
        return "-" if x is None else f"{x:.4g}"

    head = f"{'scheme':<16}{'||update||':>12}{'||surviving||':>15}{'ratio':>9}{'flips':>9}" \
           f"{'<Δ/2 share':>12}{'unchanged':>11}"
    lines = [head]
    for scheme, data in report["schemes"].items():
        m = data["overall"]
        lines.append(f"{scheme:<16}{fmt(m['update_norm']):>12}{fmt(m['surviving_norm']):>15}"
                     f"{fmt(m['survival_ratio']):>9}{fmt(m['flip_rate']):>9}"
                     f"{fmt(m['sub_half_step_share']):>12}{fmt(m['unchanged_fraction']):>11}")
    return "\n".join(lines)


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
