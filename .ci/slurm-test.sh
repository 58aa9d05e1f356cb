#!/usr/bin/env bash
# Slurm end to end (issue 21): a one-node cluster on this machine (.ci/slurm-cluster.sh), a
# small AV-MNIST grid planned as a job array, submitted, waited for (bounded), merged, and its
# numbers compared with the same grid run on one machine. Skipped with a message, exit 0, only
# where this machine cannot start a cluster (no root, no package mirror); fails otherwise.
# Needs the release binary (`cargo test --release --workspace` builds it) and the data kit.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="$PWD/target/release/mckd"
[[ -x "$BIN" ]] || { echo "slurm-test: $BIN not built" >&2; exit 1; }
export MCKD_DATA_DIR="${MCKD_DATA_DIR:-$(cd .. && pwd)/shared/data}"
W="$(mktemp -d /tmp/mckd-slurm-XXXXXX)"
t0=$(date +%s)

set +e
.ci/slurm-cluster.sh start "$W/cluster" >"$W/env"
rc=$?
set -e
if [[ $rc == 3 ]]; then
  echo "slurm-test: SKIPPED: this machine cannot start a one-node Slurm cluster (reason above)"
  exit 0
elif [[ $rc != 0 ]]; then
  echo "slurm-test: FAILED: the cluster script exited with $rc" >&2
  exit 1
fi
# shellcheck disable=SC1091
source "$W/env"
# On every exit: stop the daemons (they need the folder's slurm.conf and pids), then clean up.
trap '.ci/slurm-cluster.sh stop "$W/cluster"; rm -rf "$W"' EXIT
echo "slurm-test: cluster up in $(($(date +%s) - t0)) s (SLURM_CONF=$SLURM_CONF)"

grid=(avmnist reproduce --quiet --rows audio_10 --methods baseline,mckd --seeds 2 --epochs 1
  --data-dir "$MCKD_DATA_DIR")
"$BIN" "${grid[@]}" --plan --slurm --slurm-cpus 1 --slurm-mem 2G --slurm-time 00:15:00 \
  --out "$W/grid"
"$BIN" "${grid[@]}" --out "$W/whole" >/dev/null
t1=$(date +%s)
# --wait: sbatch returns when every array task has ended, non-zero if one failed.
timeout 900 sbatch --wait "$W/grid/submit.sbatch" || {
  echo "slurm-test: FAILED: the job array failed or timed out; task logs:" >&2
  tail -n 20 "$W"/grid/slurm/*.out >&2 || true
  exit 1
}
echo "slurm-test: job array of 4 runs finished in $(($(date +%s) - t1)) s"
"$BIN" avmnist merge --grid "$W/grid" >/dev/null
python3 - "$W/grid/results.json" "$W/whole/results.json" <<'PY'
import json, sys
keys = ["rows", "iwv", "iwv_final", "t_tests"]
a, b = (json.load(open(p)) for p in sys.argv[1:3])
diff = [k for k in keys if a.get(k) != b.get(k)]
if diff:
    sys.exit(f"slurm-test: FAILED: the merged Slurm grid differs from the one-machine run in {diff}")
print("slurm-test: merged results equal the one-machine run's (" + ", ".join(keys) + ")")
PY
echo "slurm-test: passed in $(($(date +%s) - t0)) s"
