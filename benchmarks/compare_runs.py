"""Compare two `muse-quant demo` output folders: every metric of every results JSON, every
model / delta tensor (torch.equal) and the loss logs. Prints the differences, grouped by scheme.

Used to show that a refactoring changes no output:

    muse-quant demo --fast --out /tmp/before   # on the old commit
    muse-quant demo --fast --out /tmp/after    # on the new commit
    python benchmarks/compare_runs.py /tmp/before /tmp/after
"""
import json, sys
from collections import Counter
from pathlib import Path
from safetensors.torch import load_file
import torch

a, b = Path(sys.argv[1]), Path(sys.argv[2])
diffs, per_scheme, n_metrics, n_tensors = [], Counter(), 0, 0
for pa in sorted(a.rglob("*")):
    if not pa.is_file(): continue
    rel = pa.relative_to(a); pb = b / rel
    if pa.suffix == ".safetensors":
        if not pb.is_file(): diffs.append(f"missing in B: {rel}"); continue
        ta, tb = load_file(pa), load_file(pb)
        if set(ta) != set(tb): diffs.append(f"tensor names differ: {rel}"); continue
        for k in ta:
            n_tensors += 1
            if not torch.equal(ta[k], tb[k]): diffs.append(f"tensor differs: {rel} {k}")
    elif rel.name == "losses.json":
        if pa.read_bytes() != pb.read_bytes(): diffs.append(f"losses differ: {rel}")
    elif rel.parent.name == "results" and pa.suffix == ".json":
        ra, rb = json.loads(pa.read_text())["results"], json.loads(pb.read_text())["results"]
        for task in ra:
            for k, v in ra[task].items():
                if isinstance(v, (int, float)):
                    n_metrics += 1
                    if rb.get(task, {}).get(k) != v:
                        per_scheme[pa.stem] += 1
print(f"compared {n_metrics} metric values and {n_tensors} tensors")
print("differing metric values per scheme file:", dict(per_scheme) or "none")
print("\n".join(diffs[:30]) or "all tensors and loss logs identical")
