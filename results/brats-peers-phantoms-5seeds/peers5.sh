#!/bin/bash
# Issue 18: every method on the phantom demo, 5 seeds. Resumable: rerun with RESUME=1.
export RAYON_NUM_THREADS=1
R=""; [ -n "$RESUME" ] && R="--resume"
/usr/bin/time -v nice -n 19 /work/bin/mckd-34fad1c brats demo --methods all --seeds 5 --checkpoint-every 100 --out /work/runs/peers-phantoms-5seeds $R >> /work/runs/peers-phantoms-5seeds.log 2>&1
echo "exit $?" >> /work/runs/peers-phantoms-5seeds.log
