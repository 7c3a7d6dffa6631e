"""The leaderboard: submissions in leaderboard/submissions/, validated and rendered.

  muse-quant leaderboard add --corpus news --slug my-method --results OUT/ --checkpoint PATH
  muse-quant leaderboard check                 validate, rebuild, fail on drift (CI runs this)
  muse-quant leaderboard check --reproduce SLUG --pretrained DIR
                                               re-run one toy entry on CPU, compare exactly
  muse-quant leaderboard build                 write leaderboard/README.md and the plots

Run from the repository root (or pass --root). See CONTRIBUTING.md, "Submitting to the
leaderboard", and the code in harness_ext/leaderboard/.
"""

from __future__ import annotations

import sys

NAME = "leaderboard"
HELP = "add, check (CI) and build the leaderboard"


def add_arguments(parser) -> None:
    sub = parser.add_subparsers(dest="leaderboard_action", metavar="ACTION", required=True)

    def action(name, help_text, func):
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--root", default="leaderboard",
                       help="the leaderboard folder (default: ./leaderboard)")
        p.set_defaults(_action=func)
        return p

    p = action("build", "write README.md and <corpus>_forget_vs_utility.svg from the submissions",
               _build)
    p.add_argument("--out", help="write here instead of --root")

    p = action("check", "validate every entry and fail when the generated files are out of date",
               _check)
    p.add_argument("--reproduce", metavar="SLUG",
                   help="instead: re-run this toy entry (unlearning from its run card, then the "
                        "sweep) and compare every committed value exactly")
    p.add_argument("--pretrained", help="with --reproduce: the base model folder (the target "
                                        "model; for a target / retrain entry, that model). "
                                        "Required: no path named by a submission is loaded")
    p.add_argument("--workdir", help="with --reproduce: an existing folder for the temporary "
                                     "outputs")

    p = action("add", "copy a sweep's results into a new entry and write its entry.yaml", _add)
    p.add_argument("--corpus", required=True, choices=["news", "books"])
    p.add_argument("--slug", required=True,
                   help="entry name: lowercase letters, digits, '-'; unique on the board")
    p.add_argument("--results", required=True, help="the --output_path of `muse-quant sweep`")
    p.add_argument("--checkpoint", required=True,
                   help="the evaluated checkpoint (file or folder; it is hashed). For --kind "
                        "target / retrain: the model folder")
    p.add_argument("--checkpoint_location",
                   help="where others can get it (URL, hub id); default: the --checkpoint path")
    p.add_argument("--kind", default="method", choices=["method", "target", "retrain"])
    p.add_argument("--target", help="slug of the target entry (default: the only one that fits)")
    p.add_argument("--run_card", help="run_card.json of `muse-quant unlearn` (default: found "
                                      "next to the checkpoint)")
    p.add_argument("--hyperparameter", action="append", metavar="KEY=VALUE",
                   help="an unlearning setting, when there is no run card (repeat)")
    p.add_argument("--method", help="display name (default: the run card's method)")
    p.add_argument("--description")
    p.add_argument("--base_model", help="e.g. 'Llama-2-7B MUSE-News target'")
    p.add_argument("--paper", help="paper URL")
    p.add_argument("--code", help="code URL")
    p.add_argument("--submitted_by", help="who ran it (default: git user.name)")
    p.add_argument("--reproducible", choices=["toy", "full"],
                   help="default: toy on the embedded corpus, else full")
    p.add_argument("--notes")


def _build(args) -> int:
    from ..leaderboard.builder import build

    for path in build(args.root, args.out):
        print(path)
    return 0


def _check(args) -> int:
    if args.reproduce:
        from ..leaderboard.check import reproduce

        ok, lines = reproduce(args.root, args.reproduce, pretrained=args.pretrained,
                              workdir=args.workdir)
        print("\n".join(lines))
        return 0 if ok else 1
    from ..leaderboard.check import check

    report = check(args.root)
    for note in report.notes:
        print(f"note: {note}")
    for problem in report.problems:
        print(f"invalid: {problem}", file=sys.stderr)
    for stale in report.stale:
        print(stale, file=sys.stderr)
    if report.ok:
        print(f"leaderboard OK: {report.entries} valid entries, generated files up to date")
        return 0
    if report.problems:  # every problem of every entry was printed above
        from ..errors import MuseQuantError

        raise MuseQuantError(f"leaderboard check FAILED: {len(report.problems)} problem(s) in "
                             f"the submissions (listed above as 'invalid:')",
                             "fix each listed file; see CONTRIBUTING.md, \"Submitting to the "
                             "leaderboard\", for the rules")
    print(f"leaderboard check FAILED: {len(report.problems)} problem(s), {len(report.stale)} "
          f"missing or out-of-date generated file(s)", file=sys.stderr)
    return 1


def _add(args) -> int:
    from ..leaderboard.add import add_entry, parse_hyperparameters

    path = add_entry(args.root, args.corpus, args.slug, args.results, args.checkpoint,
                     kind=args.kind, run_card=args.run_card, method=args.method,
                     description=args.description, submitted_by=args.submitted_by,
                     reproducible=args.reproducible, target=args.target,
                     base_model=args.base_model, checkpoint_location=args.checkpoint_location,
                     paper=args.paper, code=args.code,
                     hyperparameters=parse_hyperparameters(args.hyperparameter), notes=args.notes)
    print(f"added {path}")
    print("next: review entry.yaml, then `muse-quant leaderboard build` and "
          "`muse-quant leaderboard check`, and open a pull request")
    return 0


def run(args) -> int:
    return args._action(args)
