#!/usr/bin/env python3
"""Aggregates the JSON lines of bench/run.sh into tables (one per instruction-set path) and
bench/results.json.

Usage: report.py LINES.jsonl RESULTS.json [--machine TEXT] [--cpu-model TEXT] [--cpu-flags TEXT]
                 [--command TEXT] [--rounds N] [--note TEXT]
The last printed line has, per path, `simd=<path> avmnist_ratio=… avmnist_all_ratio=…
meta_ratio=… unet_ratio=… avmnist_rss_ratio=… unet_rss_ratio=…`, paths separated by ` | `.
"""

import argparse
import datetime
import json
import statistics
import sys

# Order of the paths in tables and on the last line.
PATH_ORDER = {"scalar": 0, "avx2": 1, "avx512": 2}


def path_report(rows, simd, peak, sgemm):
    """Table and results of one path. `peak`: the FMA-loop GFLOP/s of this path (or None)."""
    # Parameter counts must agree between the two sides, model by model.
    for model in sorted({r["model"] for r in rows}):
        counts = {(r["side"], r["params"]) for r in rows if r["model"] == model}
        sides = {s for s, _ in counts}
        if len({c for _, c in counts}) != 1 or sides != {"mckd", "torch"}:
            sys.exit(f"[{simd}] parameter counts differ or a side is missing for {model}: {sorted(counts)}")
        print(f"parameters {model}: mckd = torch = {counts.pop()[1]:,}  (checked equal)")

    groups = {}
    for r in rows:
        groups.setdefault((r["model"], r["step"], r["side"]), []).append(r)
    flop = {(r["model"], r["step"]): r["flop"] for r in rows if r["side"] == "mckd"}
    torch_isa = sorted({r.get("torch_isa") for r in rows if r["side"] == "torch"} - {None})
    out = {
        "simd": simd,
        "peak_gflops_measured": peak,
        "torch_isa": torch_isa,
        "torch_sgemm_gflops": statistics.median(sgemm) if sgemm else None,
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
                "pct_peak": round(100 * gf / peak, 1) if gf and peak else None,
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
        out["steps"].append(entry)
    nan = (float("nan"),) * 2
    av = ratios.get(("avmnist", "inner_random"), nan)
    out["summary"] = {
        "avmnist_ratio": av[0],
        "avmnist_all_ratio": ratios.get(("avmnist", "inner_all"), nan)[0],
        "meta_ratio": ratios.get(("avmnist", "meta"), nan)[0],
        "unet_ratio": ratios.get(("unet", "inner_random"), nan)[0],
        "avmnist_rss_ratio": av[1],
        "unet_rss_ratio": ratios.get(("unet", "inner_random"), nan)[1],
    }
    return out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("lines")
    p.add_argument("out")
    p.add_argument("--machine", default="")
    p.add_argument("--cpu-model", default="")
    p.add_argument("--cpu-flags", default="")
    p.add_argument("--command", default="")
    p.add_argument("--rounds", type=int, default=0)
    p.add_argument("--note", default="")
    a = p.parse_args()

    rows = [json.loads(l) for l in open(a.lines) if l.strip().startswith("{")]
    paths = sorted({r.get("simd", "") for r in rows}, key=lambda s: PATH_ORDER.get(s, -1))
    # The best of a path's peak measurements (other load on the machine lowers them).
    peaks = {}
    for r in rows:
        if r.get("model") == "peak":
            peaks[r["simd"]] = max(peaks.get(r["simd"], 0.0), r["gflops"])
    machine_peak = max(peaks.values()) if peaks else None
    results = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": a.machine,
        "cpu_model": a.cpu_model,
        "cpu_flags": a.cpu_flags,
        "command": a.command,
        "rounds": a.rounds,
        "note": a.note,
        "threads": rows[0].get("threads") if rows else None,
        "torch_version": next((r.get("torch") for r in rows if r.get("side") == "torch" and r.get("torch")), None),
        "peak_gflops_measured": peaks,
        "peak_note": "fp32 FMA loop on all threads at each path's vector width (mckd-bench --model peak), "
        "best of the runs before and after the rounds; % peak is against the path's own peak",
        "paths": {},
    }
    for simd in paths:
        print(f"\n=== path {simd or '(unlabelled)'}: our kernels at MCKD_SIMD={simd} ===")
        sub = [r for r in rows if r.get("simd", "") == simd and r.get("model") not in ("peak", "sgemm")]
        sgemm = [r["gflops"] for r in rows if r.get("model") == "sgemm" and r.get("simd", "") == simd]
        rep = path_report(sub, simd, peaks.get(simd), sgemm)
        if rep["peak_gflops_measured"] and machine_peak:
            rep["peak_fraction_of_machine"] = round(rep["peak_gflops_measured"] / machine_peak, 3)
        results["paths"][simd] = rep
        print(
            f"peak measured ({simd} FMA loop, {results['threads']} threads): "
            f"{peaks.get(simd, float('nan')):.1f} GFLOP/s; PyTorch ISA {','.join(rep['torch_isa'])}, "
            f"its sgemm 2048²: {rep['torch_sgemm_gflops'] or float('nan'):.1f} GFLOP/s"
        )
    results["definition"] = (
        "per path: mckd/PyTorch per-step median (avmnist_ratio: AV-MNIST inner step with random "
        "masks; avmnist_all_ratio: every modality present; meta_ratio: meta step; unet_ratio: "
        "UNet inner step) and peak-RSS ratio of the processes"
    )
    with open(a.out, "w") as fh:
        json.dump(results, fh, indent=2)
        fh.write("\n")
    print(f"wrote {a.out}")
    print(
        " | ".join(
            f"simd={simd} "
            + " ".join(f"{k}={v:.3f}" for k, v in results["paths"][simd]["summary"].items())
            for simd in paths
        )
    )


if __name__ == "__main__":
    main()
