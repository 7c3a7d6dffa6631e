"""Unlearn a corpus's forget set from a target model with a registered method.

  muse-quant unlearn --method npo_klr --pretrained TARGET --corpus news --muse_data hub --out OUT
  muse-quant unlearn --method ga_gdr_sure --sure_threshold 99 --alpha 400 ...
  muse-quant unlearn --method npo_gdr --lora r=8,alpha=16 ...
  muse-quant unlearn --list

Methods (--list): the forget losses of harness_ext/unlearning/methods/ (or --plugin FILE), the
retain-regularized variants <method>_gdr / <method>_klr generated from them, and a SURE variant
<method>_sure of every one. Hyperparameter defaults are MUSE's: AdamW, constant lr 1e-5 (1e-4
for *_sure and --lora), 10 epochs (news) / 5 (books), max_len 2048, batch 4 x grad_accum 8,
alpha 1, beta 0.1, weight decay 0, grad clipping 1. The options are the fields of
harness_ext.unlearning.config.UnlearnConfig.

Precision (recorded in the run card; it changes what survives quantization):
  fp32        fp32 weights and math (default on CPU)
  bf16        weights loaded AND updated in bf16, as MUSE trains (default on GPU): an update
              smaller than half a bf16 ulp of a weight is lost
  bf16-mixed  fp32 master weights, bf16 autocast for the forward/backward

Outputs in OUT: model/ (--save full, an HF model dir) or delta.safetensors (--save delta,
theta_u - theta_o by parameter name), run_card.json, losses.json; both formats load with
  muse-quant eval --model muse_quant --model_args pretrained=TARGET,unlearned=OUT/model ...
A checkpoint is written to OUT/resume/ after every epoch; --resume continues bit for bit.

At scale (docs/scale.md): --gradient_checkpointing on|off|auto (the same numbers, less memory);
several processes through accelerate (DDP or FSDP; effective batch = batch_size x grad_accum x
processes):  accelerate launch --multi_gpu --num_processes 8 -m harness_ext.cli unlearn ...
"""

from __future__ import annotations

NAME = "unlearn"
HELP = "unlearn the forget set with GA / NPO / _GDR / _KLR / _SURE / LoRA (or your method)"


def add_arguments(parser) -> None:
    from ..unlearning.config import WHAT, add_arguments as add_config_arguments

    groups = add_config_arguments(parser)  # every UnlearnConfig field, with its help
    groups[WHAT].add_argument("--list", action="store_true", help="list the methods and exit")


def run(args) -> int:
    if args.list:
        from ..unlearning import available_methods, load_plugin

        if args.plugin:
            load_plugin(args.plugin)
        rows = available_methods()
        width = max(len(n) for n, _ in rows)
        for name, summary in rows:
            print(f"{name:<{width}}  {summary}")
        return 0
    from ..unlearning.config import UnlearnConfig
    from ..unlearning.loop import UnlearningRun

    cfg = UnlearnConfig.from_args(args)
    card = UnlearningRun(cfg).run()
    if card:
        from pathlib import Path

        out = Path(args.out)
        print(f"checkpoint: {out / card['checkpoint']}")
        print(f"run card:   {out / 'run_card.json'}")
        print(f"final forget NLL {card['final_losses']['forget_nll']:.4f}, retain NLL "
              f"{card['final_losses']['retain_nll']}")
    return 0
