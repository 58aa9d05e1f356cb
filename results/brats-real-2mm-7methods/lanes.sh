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
# Both lanes walk one list; a lock per run (flock, released when its holder dies) gives each run
# to the first free lane, so the lanes stay busy until the list is done whatever is left over.
# Longest first within a seed (seed 0's training minutes), so that the lanes end close together.
runs=()
for s in 0 1 2; do
  runs+=(seed-$s/hved seed-$s/shaspec seed-$s/robustseg seed-$s/mmformer seed-$s/baseline
    seed-$s/hemis seed-$s/mckd)
done
lane() {
  local name=$1
  for run in "${runs[@]}"; do
    grep -qs '"state": "finished"' "$grid/$run/status.json" && continue
    (
      flock -n 9 || exit 0
      echo "== $(date -u +%FT%TZ) start $run" >> "$grid/lane-$name.log"
      /usr/bin/time -v "$bin" run-one "$grid/$run" >> "$grid/lane-$name.log" 2>&1
      echo "== $(date -u +%FT%TZ) end $run exit $?" >> "$grid/lane-$name.log"
    ) 9> "/tmp/mckd-grid-lock-${run//\//-}"
  done
}
lane A &
lane B &
wait
