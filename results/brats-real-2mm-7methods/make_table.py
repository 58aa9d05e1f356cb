#!/usr/bin/env python3
"""The README's Table 1 rows from a merged grid: `seeds_summary.json` (Dice pooled over every
(seed, test case) pair, written by `mckd brats merge` of 68f0207 or later, with the Average
rows unrounded) and each seed's `timing.csv`. Usage, from the repository root:
    python3 results/brats-real-2mm-7methods/make_table.py results/brats-real-2mm-7methods
Prints one Markdown row per method: parameters, s / step (mean over the seeds), all four
modalities, the 15-subset average, the 7-subset average without t1c (ET / TC / WT, mean Dice %)
and the one-tailed paired t-test p-values of MCKD > the method across the 15 subsets. Then every
seed's 15-subset averages (from its `results.json`), the averages over the subsets with and
without flair, each method's training minutes per seed (`timing.csv`), the paper's Table 1
averages beside ours, and whether MCKD's average is at least every peer's in each region."""
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


def pct(cells):
    return [100 * cells[r]["dice_mean"] for r in REGIONS]


def fmt(xs, sign=""):
    return " / ".join(f"{x:{sign}.1f}" for x in xs) if xs else ""


def dice(cells):
    return fmt(pct(cells))


def mean_dice(rows, count):
    """Mean Dice (%) per region over `results.json` rows, which must number `count`."""
    assert len(rows) == count, (len(rows), count)
    return [100 * sum(r["metrics"][f"dice_{g}"] for r in rows) / count for g in REGIONS]


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


# Every seed on its own: its evaluation's mean over the test cases of each subset
# (`results.json` rows), then the mean over the 15 subsets.
print("\nAverage over the 15 subsets per seed, ET / TC / WT (Dice %):\n")
seeds = pooled["seeds"]
print("| | " + " | ".join(f"seed {s}" for s in seeds) + " |")
print("|---|" + "---|" * len(seeds))
seed_rows = {s: json.load(open(os.path.join(grid, f"seed-{s}", "results.json")))["rows"]
             for s in seeds}


for m in pooled["methods"]:
    print(f"| {TITLES.get(m, m)} | " + " | ".join(
        fmt(mean_dice([r for r in seed_rows[s] if r["method"] == m], 15)) for s in seeds) + " |")

# Where the methods differ most: the subsets with flair against those without. Every seed has
# the same number of test cases, so the mean over the seeds equals the pooled mean.
print("\nAverage over the subsets with and without flair, all seeds, ET / TC / WT (Dice %):\n")
print("| | 8 subsets with flair | 7 subsets without flair |")
print("|---|---|---|")
for m in pooled["methods"]:
    mine = [r for s in seeds for r in seed_rows[s] if r["method"] == m]
    cols = [fmt(mean_dice([r for r in mine if ("flair" in r["subset"]) == has], n * len(seeds)))
            for has, n in ((True, 8), (False, 7))]
    print(f"| {TITLES.get(m, m)} | {cols[0]} | {cols[1]} |")

print("\nTraining minutes per seed († the inner and meta steps' time of a resumed run):\n")
print("| | " + " | ".join(f"seed {s}" for s in seeds) + " | mean |")
print("|---|" + "---|" * (len(seeds) + 1))
for m in pooled["methods"]:
    mins = [float(r["train_seconds"]) / 60 for r in timing[m]]
    marks = ["†" if r["train_seconds_of"] == "steps" else "" for r in timing[m]]
    print(f"| {TITLES.get(m, m)} | "
          + " | ".join(f"{x:.1f}{k}" for x, k in zip(mins, marks))
          + f" | {sum(mins) / len(mins):.1f} |")

# The paper's Table 1 (BraTS 2018, its own test set and full-size networks), Average row.
PAPER = {"mckd": (63.74, 79.15, 86.90), "hemis": (46.10, 62.57, 74.05),
         "hved": (46.76, 64.84, 79.16), "shaspec": (61.58, 77.45, 85.92),
         "mmformer": (59.85, 72.97, 82.94), "robustseg": (51.02, 69.78, 84.39)}
print("\nAverage over the 15 subsets, ET / TC / WT (Dice %), here and in the paper's Table 1:\n")
print("| | here | paper | here − paper | MCKD − it, here | MCKD − it, paper |")
print("|---|---|---|---|---|---|")


def here(m):
    return pct(pooled["averages"][m]["all"])


def minus(a, b):
    return [x - y for x, y in zip(a, b)] if a and b else None


for m in pooled["methods"]:
    paper = PAPER.get(m)
    print(f"| {TITLES.get(m, m)} | {fmt(here(m))} | {fmt(paper)} "
          f"| {fmt(minus(here(m), paper), '+')} "
          f"| {fmt(minus(here('mckd'), here(m)), '+') if m != 'mckd' else ''} "
          f"| {fmt(minus(PAPER['mckd'], paper), '+') if m != 'mckd' else ''} |")

print("\nGoal, MCKD's average at least every peer's in each region:")
mckd = pooled["averages"]["mckd"]["all"]
for r in REGIONS:
    ahead = [TITLES.get(m, m) for m in pooled["methods"] if m not in ("mckd", "baseline")
             and pooled["averages"][m]["all"][r]["dice_mean"] > mckd[r]["dice_mean"]]
    print(f"- {r.upper()}: " + ("holds" if not ahead else "fails, ahead of MCKD: "
                                + ", ".join(ahead)))
