#!/usr/bin/env bash
# A one-node Slurm cluster on this machine, for the Slurm end-to-end test (issue 21).
#
#   .ci/slurm-cluster.sh start DIR   installs Debian's slurmctld, slurmd, slurm-client and munge
#                                    if they are missing (root and apt-get needed), writes
#                                    DIR/slurm.conf, starts munged, slurmctld and slurmd, and
#                                    waits until the node is idle; prints `export SLURM_CONF=…`
#   .ci/slurm-cluster.sh stop DIR    stops the daemons started by `start`
#
# Exit status of `start`: 0 when the cluster is up, 3 when this machine cannot start one (no
# root, no apt-get, no package mirror, or a daemon that does not come up); the reason is on
# stderr. The test that calls it skips on 3 and fails on anything else.
set -uo pipefail

cmd="${1:-}"
dir="${2:-}"
if [[ -z "$cmd" || -z "$dir" ]]; then
  echo "usage: $0 start|stop DIR" >&2
  exit 2
fi
mkdir -p "$dir"
dir="$(cd "$dir" && pwd)"

cannot() {
  echo "slurm-cluster: cannot start a one-node Slurm cluster here: $*" >&2
  exit 3
}

stop() {
  # scontrol shutdown stops slurmctld (and its slurmscriptd) and slurmd cleanly; the pids are
  # the fallback, munged only if we started it.
  local p pids=()
  for p in slurmd slurmctld munged; do
    [[ -f "$dir/$p.pid" ]] && pids+=("$(cat "$dir/$p.pid")")
  done
  if [[ -f "$dir/slurm.conf" ]]; then
    SLURM_CONF="$dir/slurm.conf" timeout 20 scontrol shutdown >/dev/null 2>&1 || true
  fi
  for p in slurmd slurmctld munged; do
    if [[ -f "$dir/$p.pid" ]]; then
      kill "$(cat "$dir/$p.pid")" 2>/dev/null || true
      rm -f "$dir/$p.pid"
    fi
  done
  # Return only when the daemons have exited (at most 20 s): slurmctld still writes its state
  # files while it shuts down, and the caller removes the folder next.
  local _ alive
  for _ in $(seq 200); do
    alive=0
    for p in "${pids[@]}"; do
      kill -0 "$p" 2>/dev/null && alive=1
    done
    ((alive)) || break
    sleep 0.1
  done
}

if [[ "$cmd" == stop ]]; then
  stop
  exit 0
fi
[[ "$cmd" == start ]] || { echo "unknown command $cmd" >&2; exit 2; }

# 1. The packages.
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null ||
  ! command -v sbatch >/dev/null || ! command -v munged >/dev/null; then
  [[ "$(id -u)" == 0 ]] || cannot "Slurm is not installed and we are not root"
  command -v apt-get >/dev/null || cannot "Slurm is not installed and there is no apt-get"
  echo "slurm-cluster: installing slurmctld slurmd slurm-client munge (apt-get)" >&2
  if ! timeout 600 apt-get install -y --no-install-recommends slurmctld slurmd slurm-client munge \
    >"$dir/apt.log" 2>&1; then
    timeout 300 apt-get update >>"$dir/apt.log" 2>&1 || true
    timeout 600 apt-get install -y --no-install-recommends slurmctld slurmd slurm-client munge \
      >>"$dir/apt.log" 2>&1 || cannot "apt-get install failed (see $dir/apt.log)"
  fi
fi

# 2. munge: one key for this node, the daemon as the munge user (it refuses to run as root).
[[ "$(id -u)" == 0 ]] || cannot "the daemons need root (SlurmUser=root)"
mkdir -p "$dir/munge" /run/munge
chown munge:munge "$dir/munge" /run/munge 2>/dev/null || true
if [[ ! -s /etc/munge/munge.key ]]; then
  mkdir -p /etc/munge
  dd if=/dev/urandom of=/etc/munge/munge.key bs=128 count=1 status=none
  chown munge:munge /etc/munge/munge.key
  chmod 400 /etc/munge/munge.key
fi
if ! pgrep -x munged >/dev/null; then
  runuser -u munge -- munged || cannot "munged did not start"
  pgrep -n -x munged >"$dir/munged.pid"
fi

# 3. slurm.conf: this host as controller and the only node, every core and most of the memory.
host="$(hostname -s)"
cpus="$(nproc)"
mem_mb="$(awk '/MemTotal/ {print int($2 / 1024 * 0.8)}' /proc/meminfo)"
mkdir -p "$dir/state" "$dir/spool"
cat >"$dir/slurm.conf" <<EOF
ClusterName=mckd-ci
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
MpiDefault=none
ReturnToService=2
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.daemon.pid
SlurmdPidFile=$dir/slurmd.daemon.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
NodeName=$host CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=ci Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
export SLURM_CONF="$dir/slurm.conf"

# 4. The daemons, then wait (bounded) for the node to be idle.
# A controller of another cluster on this machine would take the port: refuse, do not touch it.
if pgrep -x slurmctld >/dev/null || pgrep -x slurmd >/dev/null; then
  cannot "a slurmctld or slurmd is already running on this machine"
fi
# (The daemons' own pid files are not written in every setup: record the pids ourselves; the
# oldest slurmctld is the controller, slurmscriptd is its younger child.)
slurmctld -i || cannot "slurmctld did not start (see $dir/slurmctld.log)"
pgrep -o -x slurmctld >"$dir/slurmctld.pid"
slurmd || cannot "slurmd did not start (see $dir/slurmd.log)"
pgrep -o -x slurmd >"$dir/slurmd.pid"
for _ in $(seq 1 60); do
  state="$(sinfo -h -N -o '%t' 2>/dev/null | head -1)"
  if [[ "$state" == idle* ]]; then
    echo "export SLURM_CONF=$dir/slurm.conf"
    exit 0
  fi
  sleep 1
done
stop
cannot "the node did not become idle within 60 s (state: ${state:-none}; see $dir/*.log)"
