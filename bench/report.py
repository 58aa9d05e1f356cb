#!/usr/bin/env python3
"""Aggregates the JSON lines of bench/run.sh into a table and bench/results.json.

Usage: report.py LINES.jsonl RESULTS.json [--peak-gflops X] [--machine TEXT] [--command TEXT]
The last printed line is `avmnist_ratio=… unet_ratio=… avmnist_rss_ratio=… unet_rss_ratio=…`.
"""

import argparse
import datetime
import json
import statistics
import sys


def main():
    p = argparse.ArgumentParser()
    p.add_argument("lines")
    p.add_argument("out")
    p.add_argument("--peak-gflops", type=float, required=True)
    p.add_argument("--peak-note", default="")
    p.add_argument("--machine", default="")
    p.add_argument("--command", default="")
    p.add_argument("--rounds", type=int, default=0)
    p.add_argument("--note", default="")
    a = p.parse_args()

    rows = [json.loads(l) for l in open(a.lines) if l.strip().startswith("{")]
    sgemm = [r["gflops"] for r in rows if r.get("model") == "sgemm"]
    rows = [r for r in rows if r.get("model") != "sgemm"]

    # Parameter counts must agree between the two sides, model by model.
    for model in sorted({r["model"] for r in rows}):
        counts = {(r["side"], r["params"]) for r in rows if r["model"] == model}
        sides = {s for s, _ in counts}
        if len({c for _, c in counts}) != 1 or sides != {"mckd", "torch"}:
            sys.exit(f"parameter counts differ or a side is missing for {model}: {sorted(counts)}")
        print(f"parameters {model}: mckd = torch = {counts.pop()[1]:,}  (checked equal)")

    groups = {}
    for r in rows:
        groups.setdefault((r["model"], r["step"], r["side"]), []).append(r)
    flop = {(r["model"], r["step"]): r["flop"] for r in rows if r["side"] == "mckd"}

    results = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": a.machine,
        "command": a.command,
        "rounds": a.rounds,
        "note": a.note,
        "threads": rows[0]["threads"] if rows else None,
        "peak_gflops_assumed": a.peak_gflops,
        "peak_note": a.peak_note,
        "torch_sgemm_gflops": statistics.median(sgemm) if sgemm else None,
        "torch_version": next((r.get("torch") for r in rows if r["side"] == "torch"), None),
        "steps": [],
    }
    hdr = (
        f"{'model':<8} {'step':<13} {'side':<6} {'median ms':>10} {'min–max ms':>19} "
        f"{'peak RSS MiB':>12} {'GFLOP/s':>8} {'% peak':>7} {'ratio':>6}"
    )
    print(hdr)
    print("-" * len(hdr))
    ratios = {}
    for model, step in sorted({(m, s) for m, s, _ in groups}, key=lambda k: (k[0] != "avmnist", k[1])):
        entry = {"model": model, "step": step, "flop": flop.get((model, step))}
        med = {}
        for side in ("mckd", "torch"):
            g = groups.get((model, step, side), [])
            if not g:
                continue
            times = [t for r in g for t in r["times_ms"]]
            m = statistics.median(times)
            rss = statistics.median(r["peak_rss_mib"] for r in g)
            gf = entry["flop"] / m / 1e6 if entry["flop"] else None
            med[side] = (m, rss)
            entry[side] = {
                "median_ms": round(m, 3),
                "min_ms": round(min(times), 3),
                "max_ms": round(max(times), 3),
                "n": len(times),
                "peak_rss_mib": round(rss, 1),
                "peak_rss_mib_max": round(max(r["peak_rss_mib"] for r in g), 1),
                "gflops": round(gf, 2) if gf else None,
                "pct_peak": round(100 * gf / a.peak_gflops, 1) if gf else None,
            }
        if len(med) == 2:
            entry["time_ratio"] = round(med["mckd"][0] / med["torch"][0], 3)
            entry["rss_ratio"] = round(med["mckd"][1] / med["torch"][1], 3)
            # Ratio of the fastest steps: less sensitive to other load on the machine.
            entry["time_ratio_min"] = round(entry["mckd"]["min_ms"] / entry["torch"]["min_ms"], 3)
            ratios[(model, step)] = (entry["time_ratio"], entry["rss_ratio"])
        for side in ("mckd", "torch"):
            e = entry.get(side)
            if not e:
                continue
            r = f"{entry.get('time_ratio', float('nan')):.2f}" if side == "mckd" else ""
            print(
                f"{model:<8} {step:<13} {side:<6} {e['median_ms']:>10.1f} "
                f"{e['min_ms']:>9.1f}–{e['max_ms']:<9.1f} {e['peak_rss_mib']:>12.0f} "
                f"{(e['gflops'] or 0):>8.1f} {(e['pct_peak'] or 0):>6.1f}% {r:>6}"
            )
        results["steps"].append(entry)

    print(
        f"peak assumed: {a.peak_gflops:.1f} GFLOP/s ({a.peak_note}); "
        f"PyTorch/MKL sgemm 2048² at these threads: {results['torch_sgemm_gflops'] or float('nan'):.1f} GFLOP/s"
    )
    av = ratios.get(("avmnist", "inner_random"), (float("nan"),) * 2)
    un = ratios.get(("unet", "inner_random"), (float("nan"),) * 2)
    results["summary"] = {
        "avmnist_ratio": av[0],
        "unet_ratio": un[0],
        "avmnist_rss_ratio": av[1],
        "unet_rss_ratio": un[1],
        "definition": "mckd/PyTorch per-step median (AV-MNIST: inner step with random masks; "
        "UNet: inner step) and peak-RSS ratio of the processes",
    }
    with open(a.out, "w") as fh:
        json.dump(results, fh, indent=2)
        fh.write("\n")
    print(f"wrote {a.out}")
    print(
        f"avmnist_ratio={av[0]:.3f} unet_ratio={un[0]:.3f} "
        f"avmnist_rss_ratio={av[1]:.3f} unet_rss_ratio={un[1]:.3f}"
    )


if __name__ == "__main__":
    main()
