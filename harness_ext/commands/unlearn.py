"""Unlearn a corpus's forget set from a target model with a registered method.

  muse-quant unlearn --method npo_klr --pretrained TARGET --corpus news --muse_data hub --out OUT
  muse-quant unlearn --method ga_gdr_sure --sure_threshold 99 --alpha 400 ...
  muse-quant unlearn --method npo_gdr --lora r=8,alpha=16 ...
  muse-quant unlearn --list

Methods (one file each in harness_ext/unlearning/, or --plugin FILE): ga, ga_gdr, ga_klr, npo,
npo_gdr, npo_klr, and a SURE variant <method>_sure of every one. Hyperparameter defaults are
MUSE's: AdamW, constant lr 1e-5 (1e-4 for *_sure and --lora), 10 epochs (news) / 5 (books),
max_len 2048, batch 4 x grad_accum 8, alpha 1, beta 0.1, weight decay 0, grad clipping 1.

Precision (recorded in the run card; it changes what survives quantization):
  fp32        fp32 weights and math (default on CPU)
  bf16        weights loaded AND updated in bf16, as MUSE trains (default on GPU): an update
              smaller than half a bf16 ulp of a weight is lost
  bf16-mixed  fp32 master weights, bf16 autocast for the forward/backward

Outputs in OUT: model/ (--save full, an HF model dir) or delta.safetensors (--save delta,
theta_u - theta_o by parameter name), run_card.json, losses.json; both formats load with
  muse-quant eval --model muse_quant --model_args pretrained=TARGET,unlearned=OUT/model ...
A checkpoint is written to OUT/resume/ after every epoch; --resume continues bit for bit.
"""

from __future__ import annotations

NAME = "unlearn"
HELP = "unlearn the forget set with GA / NPO / _GDR / _KLR / _SURE / LoRA (or your method)"


def _int_or_none(text):
    return None if text in (None, "", "none", "None") else int(text)


def add_arguments(parser) -> None:
    g = parser.add_argument_group("what to unlearn")
    g.add_argument("--method", help="registered method name (see --list)")
    g.add_argument("--list", action="store_true", help="list the methods and exit")
    g.add_argument("--plugin", help="a .py file that registers your own method(s)")
    g.add_argument("--pretrained", help="the target model: HF directory or hub id")
    g.add_argument("--corpus", default="news", choices=["news", "books"])
    g.add_argument("--muse_data", default=None,
                   help="hub | embedded | DIR in MUSE's layout (default: $MUSE_DATA, else hub); "
                        "forget = <corpus>/raw/forget.json, retain = raw/retain1.json")
    g.add_argument("--forget", help="forget texts instead (.json list, .jsonl, .txt)")
    g.add_argument("--retain", help="retain texts instead (.json list, .jsonl, .txt)")
    g.add_argument("--out", help="output directory")

    h = parser.add_argument_group("hyperparameters (MUSE defaults)")
    h.add_argument("--lr", type=float, default=None,
                   help="learning rate (default 1e-5; 1e-4 for *_sure and --lora)")
    h.add_argument("--epochs", type=int, default=None, help="default 10 (news) / 5 (books)")
    h.add_argument("--max_steps", type=_int_or_none, default=None,
                   help="stop after this many optimizer steps (overrides --epochs)")
    h.add_argument("--batch_size", type=int, default=4, help="examples per micro-batch")
    h.add_argument("--grad_accum", type=int, default=8, help="micro-batches per optimizer step")
    h.add_argument("--max_len", type=int, default=2048, help="tokens per training example")
    h.add_argument("--alpha", type=float, default=1.0, help="weight of the _GDR/_KLR retain term")
    h.add_argument("--beta", type=float, default=0.1, help="NPO inverse temperature")
    h.add_argument("--seed", type=int, default=0)
    h.add_argument("--weight_decay", type=float, default=0.0, help="AdamW decoupled decay")
    h.add_argument("--max_grad_norm", type=float, default=1.0, help="clip norm; 0 = off")
    h.add_argument("--packing", default="muse", choices=["muse", "documents"],
                   help="muse: the split joined and cut into max_len chunks (MUSE); "
                        "documents: one example per text, truncated to max_len")

    s = parser.add_argument_group("SURE (methods named *_sure) and LoRA")
    s.add_argument("--sure_threshold", default="90",
                   help="P (0..100): train modules whose saliency is >= the P-th percentile; "
                        "abs:G: saliency >= G")
    s.add_argument("--sure_granularity", default="module", choices=["module", "neuron"],
                   help="module: one unit per parameter tensor; neuron: one per output row")
    s.add_argument("--lora", default=None,
                   help="train LoRA adapters, then merge: r=8[,alpha=16][,dropout=0]"
                        "[,targets=all-linear|q_proj+v_proj]")

    r = parser.add_argument_group("numerics, outputs, resuming")
    r.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "bf16-mixed"],
                   help="auto = fp32 on CPU, bf16 on GPU")
    r.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    r.add_argument("--save", default="full", choices=["full", "delta"],
                   help="full: OUT/model (HF dir); delta: OUT/delta.safetensors")
    r.add_argument("--resume", action="store_true", help="continue the run in --out")
    r.add_argument("--overwrite", action="store_true",
                   help="replace the outputs of an earlier run in --out")
    r.add_argument("--stop_after_epochs", type=int, default=None,
                   help="stop after N epochs with a resumable checkpoint (time-limited jobs)")
    r.add_argument("--no_progress", action="store_true", help="no progress bars")


def run(args) -> int:
    from ..errors import MuseQuantError

    if args.list:
        from ..unlearning import available_methods, load_plugin

        if args.plugin:
            load_plugin(args.plugin)
        rows = available_methods()
        width = max(len(n) for n, _ in rows)
        for name, summary in rows:
            print(f"{name:<{width}}  {summary}")
        return 0
    missing = [f"--{k}" for k in ("method", "pretrained", "out") if not getattr(args, k)]
    if missing:
        raise MuseQuantError(f"missing {', '.join(missing)}",
                             "e.g. muse-quant unlearn --method npo --pretrained TARGET "
                             "--corpus news --muse_data embedded --out OUT")
    from ..unlearning.trainer import UnlearnConfig, UnlearningRun

    cfg = UnlearnConfig(
        method=args.method, pretrained=args.pretrained, out=args.out, corpus=args.corpus,
        muse_data=args.muse_data, forget=args.forget, retain=args.retain, lr=args.lr,
        epochs=args.epochs, max_steps=args.max_steps, batch_size=args.batch_size,
        grad_accum=args.grad_accum, max_len=args.max_len, alpha=args.alpha, beta=args.beta,
        seed=args.seed, weight_decay=args.weight_decay, max_grad_norm=args.max_grad_norm,
        packing=args.packing, precision=args.precision, device=args.device, save=args.save,
        sure_threshold=args.sure_threshold, sure_granularity=args.sure_granularity,
        lora=args.lora, plugin=args.plugin, resume=args.resume, overwrite=args.overwrite,
        stop_after_epochs=args.stop_after_epochs, progress=not args.no_progress)
    card = UnlearningRun(cfg).run()
    if card:
        from pathlib import Path

        out = Path(args.out)
        print(f"checkpoint: {out / card['checkpoint']}")
        print(f"run card:   {out / 'run_card.json'}")
        print(f"final forget NLL {card['final_losses']['forget_nll']:.4f}, retain NLL "
              f"{card['final_losses']['retain_nll']}")
    return 0
