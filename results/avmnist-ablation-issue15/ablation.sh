#!/bin/bash
# Issue 15 ablation: each fix alone on the legacy preset (MCKD and Baseline, rows audio_10 and
# visual_10, 5 seeds), one thread, sequential. Binary of the t2-paper run.
set -x
export MCKD_DATA_DIR=/work/shared/data RAYON_NUM_THREADS=1
B=/work/mckd-bin-15
cd /work/runs
for v in legacy fix1-predropout fix2-batchmean fix3-split-meta fix4-bn-present fix6-stages; do
  case $v in
    legacy) extra="--preset legacy";;
    fix1-predropout) extra="--preset legacy --distilled pre-dropout";;
    fix2-batchmean) extra="--preset legacy --reduction batch-mean";;
    fix3-split-meta) extra="--preset legacy --data-split paper --meta-interval 100 --meta-steps 20";;
    fix4-bn-present) extra="--preset legacy --bn-rows present";;
    fix6-stages) extra="--preset legacy --full-fraction 0.6956521739130435";;
  esac
  r=""; [ -d ablation-$v ] && r="--resume"
  /usr/bin/time -v $B avmnist reproduce --seeds 5 --rows audio_10,visual_10 --methods baseline,mckd $extra --quiet $r --out /work/runs/ablation-$v >> ablation-$v.log 2>&1
done
