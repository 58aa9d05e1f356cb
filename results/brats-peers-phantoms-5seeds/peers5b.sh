#!/bin/bash
# Issue 18: seeds 3-4 of the 5-seed phantom run in a second process (the first runs seeds 0..4
# in order and will reuse these when moved into its folder). Resumable: rerun with RESUME=1.
export RAYON_NUM_THREADS=1
R=""; [ -n "$RESUME" ] && R="--resume"
/usr/bin/time -v nice -n 19 /work/bin/mckd-34fad1c brats demo --methods all --seed 3 --seeds 2 --checkpoint-every 100 --out /work/runs/peers-phantoms-5seeds-s34 $R >> /work/runs/peers-phantoms-5seeds-s34.log 2>&1
echo "exit $?" >> /work/runs/peers-phantoms-5seeds-s34.log
