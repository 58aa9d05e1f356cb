#!/usr/bin/env python3
"""The issue-15 ablation table from the grids' results.json (this folder's <variant>/ copies).

Each variant is the legacy preset with one fix switched on; `paper` is every fix (the rows of
../avmnist-table2-paper-5seeds). Per row: the headline subset (image for audio_10, audio for
visual_10) for Baseline and MCKD with the paired one-tailed p, and the weak modality alone.
"""
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
VARIANTS = [
    ("legacy", "legacy (no fix)"),
    ("fix1-predropout", "1: CKD before dropout"),
    ("fix2-batchmean", "2: CKD batch mean"),
    ("fix3-split-meta", "3: 900/150/450 split + meta phases 100 × 20"),
    ("fix4-bn-present", "4: BN over present samples"),
    ("fix6-stages", "6: two stages (69.6 % all present)"),
    ("paper", "all fixes (paper preset)"),
]
ROWS = [("audio_10", "image", "audio"), ("visual_10", "audio", "image")]


def load(variant):
    if variant == "paper":
        path = os.path.join(HERE, "..", "avmnist-table2-paper-5seeds", "results.json")
    else:
        path = os.path.join(HERE, variant, "results.json")
    if not os.path.exists(path):
        return None
    return json.load(open(path))


def cell(res, method, setting, subset):
    for r in res["rows"]:
        if r["method"] == method and r.get("setting") == setting and r["subset"] == [subset]:
            m = r["metrics"]
            return 100 * m["accuracy"], 100 * m.get("accuracy_std", float("nan"))
    return None


def main():
    head = ["variant"]
    for setting, strong, weak in ROWS:
        head += [f"{setting} Baseline ({strong})", f"{setting} MCKD ({strong})", "p",
                 f"{setting} {weak} only: Baseline / MCKD"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key, name in VARIANTS:
        res = load(key)
        if res is None:
            lines.append(f"| {name} | " + " | ".join(["not run"] * (len(head) - 1)) + " |")
            continue
        out = [name]
        for setting, strong, weak in ROWS:
            b, m = cell(res, "baseline", setting, strong), cell(res, "mckd", setting, strong)
            p = res.get("t_tests", {}).get(setting, {}).get("p")
            bw, mw = cell(res, "baseline", setting, weak), cell(res, "mckd", setting, weak)
            out += [f"{b[0]:.2f} ± {b[1]:.2f}", f"{m[0]:.2f} ± {m[1]:.2f}",
                    f"{p:.3f}" if p is not None else "—", f"{bw[0]:.1f} / {mw[0]:.1f}"]
        lines.append("| " + " | ".join(out) + " |")
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
