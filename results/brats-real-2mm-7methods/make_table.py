#!/usr/bin/env python3
"""The README's Table 1 rows from a merged grid: `seeds_summary.json` (Dice pooled over every
(seed, test case) pair, written by `mckd brats merge` of 68f0207 or later, with the Average
rows unrounded) and each seed's `timing.csv`. Usage, from the repository root:
    python3 results/brats-real-2mm-7methods/make_table.py results/brats-real-2mm-7methods
Prints one Markdown row per method: parameters, s / step (mean over the seeds), all four
modalities, the 15-subset average, the 7-subset average without t1c (ET / TC / WT, mean Dice %)
and the one-tailed paired t-test p-values of MCKD > the method across the 15 subsets."""
import csv
import glob
import json
import os
import sys

grid = sys.argv[1]
pooled = json.load(open(os.path.join(grid, "seeds_summary.json")))["pooled"]
timing = {}
for path in sorted(glob.glob(os.path.join(grid, "seed-*", "timing.csv"))):
    for r in csv.DictReader(open(path)):
        timing.setdefault(r["method"], []).append(r)
TITLES = {"mckd": "MCKD", "baseline": "Baseline", "hemis": "U-HeMIS", "hved": "U-HVED",
          "shaspec": "ShaSpec", "mmformer": "mmFormer", "robustseg": "Robust-MSeg"}
REGIONS = ("et", "tc", "wt")


def dice(cells):
    return " / ".join(f"{100 * cells[r]['dice_mean']:.1f}" for r in REGIONS)


print(f"Pooled over seeds {pooled['seeds']}.\n")
print("| | parameters | s / step | all four modalities | average, 15 subsets "
      "| average, 7 without t1c | p (MCKD > it) |")
print("|---|---|---|---|---|---|---|")
for m, cells in pooled["methods"].items():
    t = timing[m]
    sps = sum(float(r["seconds_per_inner_step"]) for r in t) / len(t)
    avg = pooled["averages"][m]
    p = pooled["t_test_mckd_gt"].get(m)
    pv = " / ".join(f"{p[f'dice_{r}']['p']:.3f}" for r in REGIONS) if p else ""
    print(f"| {TITLES.get(m, m)} | {int(float(t[0]['parameters'])):,} | {sps:.2f} "
          f"| {dice(cells['flair+t1+t1c+t2'])} | {dice(avg['all'])} "
          f"| {dice(avg['no_t1c'])} | {pv} |")
