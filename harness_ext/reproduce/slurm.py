"""The plan as SLURM job arrays (``muse-quant reproduce --emit_slurm DIR``): one array per stage
kind, one task per line of its cells file, chained by ``afterok`` dependencies in ``submit.sh``."""

from __future__ import annotations

import shlex
from pathlib import Path

from ..errors import MuseQuantError
from .plan import Plan

# ------------------------------------------------------------------------------ SLURM
SBATCH = """#!/bin/bash
#SBATCH --job-name=muse-{corpus}-{kind}
#SBATCH --array=0-{last}
#SBATCH --gpus={gpus}
#SBATCH --time={time}
#SBATCH --output={logs}/{kind}_%A_%a.log
# One array task per line of {cells} ("DONE_FILE<TAB>COMMAND"); a task whose DONE_FILE exists exits.
# A multi-GPU task is `accelerate launch ... -m harness_ext.cli ...` over the job's {gpus} GPUs.
set -euo pipefail
cd {cwd}
LINE=$(sed -n "$((SLURM_ARRAY_TASK_ID + 1))p" {cells})
DONE=${{LINE%%$'\\t'*}}
CMD=${{LINE#*$'\\t'}}
if [ -e "$DONE" ]; then echo "already done: $DONE"; exit 0; fi
echo "$CMD"
eval "$CMD"
"""

SUBMIT = """#!/bin/bash
# Submit the reproduction as dependent SLURM jobs (written by muse-quant reproduce --emit_slurm).
# fetch -> unlearn array (one method per task) -> sweep array (one model x scheme per task)
# -> leaderboard entries. afterok: a later array starts when every task of the earlier one
# succeeded. Re-running this script resubmits; finished cells exit at once.
set -euo pipefail
cd "$(dirname "$0")"
DEP=""
{body}
"""


def emit_slurm(plan: Plan, directory: str | Path) -> dict:
    """Write the SLURM scripts into an empty/new ``directory``; returns ``{name: path}``."""
    d = Path(directory)
    if d.exists() and (not d.is_dir() or any(d.iterdir())):
        raise MuseQuantError(f"--emit_slurm {d} exists and is not an empty folder",
                             "pass a new folder (nothing is overwritten)")
    d.mkdir(parents=True, exist_ok=True)
    cwd = shlex.quote(str(Path.cwd()))
    logs = d.resolve() / "logs"
    logs.mkdir()
    written, body = {}, []
    groups = {"fetch": plan.by_kind("fetch"), "unlearn": plan.by_kind("unlearn"),
              "sweep": [c for s in plan.by_kind("sweep") for c in s.cells],
              "leaderboard": plan.by_kind("leaderboard")}
    for kind, cells in groups.items():
        if not cells:
            continue
        cell_file = d / f"{kind}_cells.tsv"
        cell_file.write_text("".join(f"{c.done}\t{c.command}\n" for c in cells),
                             encoding="utf-8")
        hours = max(c.est.hours for c in cells) * 2 + 0.5  # 2x the estimate + 30 min margin
        script = SBATCH.format(corpus=plan.corpus, kind=kind, last=len(cells) - 1,
                               time=f"{int(hours)}:{int(hours % 1 * 60):02d}:00", logs=logs,
                               cells=shlex.quote(str(cell_file.resolve())), cwd=cwd,
                               gpus=0 if kind in ("fetch", "leaderboard") else
                               max(c.gpus for c in cells))
        if kind == "leaderboard":  # entries are added one after the other (target first)
            script = script.replace(f"--array=0-{len(cells) - 1}",
                                    f"--array=0-{len(cells) - 1}%1")
        path = d / f"{kind}.sbatch"
        path.write_text(script, encoding="utf-8")
        written[kind] = path
        written[f"{kind}_cells"] = cell_file
        body.append(f"JOB=$(sbatch --parsable $DEP {kind}.sbatch)\n"
                    f"echo \"{kind}: job $JOB ({len(cells)} tasks)\"\n"
                    f"DEP=\"--dependency=afterok:$JOB\"")
    submit = d / "submit.sh"
    submit.write_text(SUBMIT.format(body="\n".join(body)), encoding="utf-8")
    submit.chmod(0o755)
    written["submit"] = submit
    return written


def cell_argv(command: str) -> list[str]:
    """A plan command as ``muse-quant`` CLI arguments (without the program name)."""
    argv = shlex.split(command)
    return argv[1:] if argv and argv[0] == "muse-quant" else argv
