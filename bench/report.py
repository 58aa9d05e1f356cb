#!/usr/bin/env python3
"""Aggregates the JSON lines of bench/run.sh into tables (one per instruction-set path) and
bench/results.json.

Usage: report.py LINES.jsonl RESULTS.json [--machine TEXT] [--cpu-model TEXT] [--cpu-flags TEXT]
                 [--command TEXT] [--rounds N] [--note TEXT]
The last printed line has, per path, `simd=<path>` and the ratios of the models measured
(see SUMMARY: avmnist_ratio=… avmnist_all_ratio=… meta_ratio=… avmnist_rss_ratio=…,
unet_ratio=… unet_rss_ratio=…, real_step_ratio=… real_step_rss_ratio=…, real_predict_ratio=…
real_predict_no_t1c_ratio=… real_predict_rss_ratio=…), paths separated by ` | `.
"""

import argparse
import datetime
import json
import statistics
import sys

# Order of the paths in tables and on the last line.
PATH_ORDER = {"scalar": 0, "avx2": 1, "avx512": 2}
# Order of the models in the tables.
MODEL_ORDER = {"avmnist": 0, "unet": 1, "real-step": 2, "real-predict": 3}
# Keys of the last line: (key, model, step, "time" or "rss"); a key is printed when its
# model was measured on both sides.
SUMMARY = [
    ("avmnist_ratio", "avmnist", "inner_random", "time"),
    ("avmnist_all_ratio", "avmnist", "inner_all", "time"),
    ("meta_ratio", "avmnist", "meta", "time"),
    ("unet_ratio", "unet", "inner_random", "time"),
    ("avmnist_rss_ratio", "avmnist", "inner_random", "rss"),
    ("unet_rss_ratio", "unet", "inner_random", "rss"),
    ("real_step_ratio", "real-step", "inner_random", "time"),
    ("real_predict_ratio", "real-predict", "predict_all", "time"),
    ("real_predict_no_t1c_ratio", "real-predict", "predict_no_t1c", "time"),
    ("real_step_rss_ratio", "real-step", "inner_random", "rss"),
    ("real_predict_rss_ratio", "real-predict", "predict_all", "rss"),
]


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
        f"{'model':<12} {'step':<14} {'side':<6} {'median ms':>10} {'min–max ms':>19} "
        f"{'peak RSS MiB':>12} {'GFLOP/s':>8} {'% peak':>7} {'ratio':>6}"
    )
    print(hdr)
    print("-" * len(hdr))
    ratios = {}
    for model, step in sorted({(m, s) for m, s, _ in groups}, key=lambda k: (MODEL_ORDER.get(k[0], 9), k)):
        entry = {"model": model, "step": step, "flop": flop.get((model, step))}
        shapes = sorted({r.get("shape", "") for r in rows if (r["model"], r["step"]) == (model, step)} - {""})
        if shapes:
            entry["shapes"] = shapes
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
                f"{model:<12} {step:<14} {side:<6} {e['median_ms']:>10.1f} "
                f"{e['min_ms']:>9.1f}–{e['max_ms']:<9.1f} {e['peak_rss_mib']:>12.0f} "
                f"{(e['gflops'] or 0):>8.1f} {(e['pct_peak'] or 0):>6.1f}% {r:>6}"
            )
        out["steps"].append(entry)
    out["summary"] = {
        key: ratios[(model, step)][0 if kind == "time" else 1]
        for key, model, step, kind in SUMMARY
        if (model, step) in ratios
    }
    for e in out["steps"]:
        if "shapes" in e:
            print(f"shape {e['model']} {e['step']}: {'; '.join(e['shapes'])}")
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
        "UNet inner step on 64³ crops; real_step_ratio: the same step on the 2 mm real-data crops; "
        "real_predict_ratio / real_predict_no_t1c_ratio: sliding-window prediction of one whole 2 mm "
        "case, all four modalities / without T1c) and peak-RSS ratio of the processes (*_rss_ratio; "
        "real_predict_rss_ratio: the prediction process, both subsets)"
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
