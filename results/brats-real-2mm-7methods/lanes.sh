#!/bin/bash
# The seven-method real-data grid of issue 18, trained run by run in two lanes of one thread
# each (a 2-core machine). Usage, from the repository root:
#   results/brats-real-2mm-7methods/lanes.sh MCKD_BINARY
# MCKD_BINARY: a release build of the commit in the runs' status.json (ffff34c), so that every
# run of the grid is trained by one build. `mckd run-one` skips finished runs and resumes
# unfinished ones from their checkpoints, so the script can be started again at any time.
# Merge when every run has finished: MCKD_BINARY brats merge --grid results/brats-real-2mm-7methods
set -u
bin=$(realpath "$1")
grid=$(realpath "$(dirname "$0")")
export MCKD_DATA_DIR=${MCKD_DATA_DIR:-$(realpath "$grid/../../../shared/data")}
export RAYON_NUM_THREADS=1
lane() {
  local name=$1; shift
  for run in "$@"; do
    echo "== $(date -u +%FT%TZ) start $run" >> "$grid/lane-$name.log"
    /usr/bin/time -v "$bin" run-one "$grid/$run" >> "$grid/lane-$name.log" 2>&1
    echo "== $(date -u +%FT%TZ) end $run exit $?" >> "$grid/lane-$name.log"
  done
}
# About 5 h of one thread per lane and seed (the README's s / step × 2,400).
a=() b=()
for s in 0 1 2; do
  a+=(seed-$s/mckd seed-$s/baseline seed-$s/hved)
  b+=(seed-$s/hemis seed-$s/shaspec seed-$s/mmformer seed-$s/robustseg)
done
lane A "${a[@]}" &
lane B "${b[@]}" &
wait
