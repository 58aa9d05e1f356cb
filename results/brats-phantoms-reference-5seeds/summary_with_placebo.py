#!/usr/bin/env python3
"""Mean Dice (%) over the 7 subsets without t1c (ET, TC, WT averaged) per seed and method,
from seed-*/results.json; seeds_summary.md (written by `mckd brats demo --seeds`) has MCKD and
the Baseline only. Output: summary_with_placebo.md."""
import json, os, statistics as st

here = os.path.dirname(os.path.abspath(__file__))
methods = ["mckd", "baseline", "placebo"]
vals = {m: [] for m in methods}
for s in range(5):
    rows = json.load(open(os.path.join(here, f"seed-{s}", "results.json")))["rows"]
    for m in methods:
        xs = [(r["metrics"]["dice_et"] + r["metrics"]["dice_tc"] + r["metrics"]["dice_wt"]) / 3
              for r in rows if r["method"] == m and "t1c" not in r["subset"]]
        vals[m].append(100 * sum(xs) / len(xs))
lines = ["| seed | " + " | ".join(methods) + " |", "|---|---|---|---|"]
for s in range(5):
    lines.append(f"| {s} | " + " | ".join(f"{vals[m][s]:.2f}" for m in methods) + " |")
lines.append("| mean ± std | " + " | ".join(
    f"{st.mean(vals[m]):.2f} ± {st.stdev(vals[m]):.2f}" for m in methods) + " |")
open(os.path.join(here, "summary_with_placebo.md"), "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
