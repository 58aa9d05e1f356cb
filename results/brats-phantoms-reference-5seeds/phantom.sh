#!/bin/bash
# Issue 15 phantom study: the demo's reference preset, 5 seeds, MCKD vs Baseline vs placebo.
# Starts when the Table 2 run (t2-paper) has finished.
set -x
while pgrep -f "reproduce --seeds 5 --quiet --resume --out /work/runs/t2-paper" >/dev/null; do sleep 30; done
export RAYON_NUM_THREADS=1
r=""; [ -d /work/runs/phantom-ref ] && r="--resume"
/usr/bin/time -v /work/mckd-bin-main brats demo --preset reference --seeds 5 --methods mckd,baseline,placebo --checkpoint-every 200 --quiet $r --out /work/runs/phantom-ref >> /work/runs/phantom-ref.log 2>&1
