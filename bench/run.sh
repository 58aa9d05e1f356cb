#!/usr/bin/env bash
# Side-by-side benchmark of mckd (burn flex) against PyTorch on the same two MCKD training
# steps (issue 5). Usage:
#   bench/run.sh [--threads N] [--rounds R] [--avmnist-steps N] [--unet-steps N] [--quick]
#
# * Creates the Python environment on first use, outside the repo:
#   ${MCKD_BENCH_VENV:-$HOME/.cache/mckd-bench/venv} with torch==2.15.0 and numpy.
# * Builds the release binary `mckd-bench`.
# * Times both sides interleaved (mckd, torch, mckd, torch, …; R rounds, each a fresh process
#   per side and model so the peak RSS is per model; warm-up steps excluded inside each).
# * Prints medians, min–max, peak RSS, mckd/PyTorch ratios and GFLOP/s against the machine's
#   peak, writes bench/results.json; the last line is
#   `avmnist_ratio=… unet_ratio=… avmnist_rss_ratio=… unet_rss_ratio=…`.
set -euo pipefail

THREADS=2
ROUNDS=3
AV_STEPS=20
UNET_STEPS=3
while [[ $# -gt 0 ]]; do
  case "$1" in
    --threads) THREADS="$2"; shift 2 ;;
    --rounds) ROUNDS="$2"; shift 2 ;;
    --avmnist-steps) AV_STEPS="$2"; shift 2 ;;
    --unet-steps) UNET_STEPS="$2"; shift 2 ;;
    --quick) ROUNDS=1; AV_STEPS=5; UNET_STEPS=1; shift ;;
    -h|--help) sed -n 2,14p "$0"; exit 0 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
VENV="${MCKD_BENCH_VENV:-$HOME/.cache/mckd-bench/venv}"
PY="$VENV/bin/python"

# 1. Python environment (torch from the package index is a CUDA build; it runs on the CPU).
if ! "$PY" -c 'import torch, numpy; assert torch.__version__.startswith("2.15.0")' 2>/dev/null; then
  echo "creating $VENV (torch==2.15.0, numpy; several GB, once)" >&2
  mkdir -p "$(dirname "$VENV")"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q torch==2.15.0 numpy
fi

# 2. Our binary.
(cd "$ROOT" && cargo build --release -q -p mckd-bench)
BIN="$ROOT/target/release/mckd-bench"

# Same thread count everywhere; no oversubscription from OpenMP/MKL defaults.
export RAYON_NUM_THREADS="$THREADS" OMP_NUM_THREADS="$THREADS" MKL_NUM_THREADS="$THREADS"

LINES="$(mktemp "${TMPDIR:-/tmp}/mckd-bench.XXXXXX.jsonl")"
trap 'rm -f "$LINES"' EXIT
MCKD=("$BIN" --threads "$THREADS")
TORCH=("$PY" "$HERE/torch_mckd.py" --threads "$THREADS")

# 3. Interleaved rounds: A B A B …
for r in $(seq 1 "$ROUNDS"); do
  echo "round $r/$ROUNDS" >&2
  "${MCKD[@]}" --model avmnist --steps "$AV_STEPS" >>"$LINES"
  "${TORCH[@]}" --model avmnist --steps "$AV_STEPS" >>"$LINES"
  "${MCKD[@]}" --model unet --steps "$UNET_STEPS" >>"$LINES"
  "${TORCH[@]}" --model unet --steps "$UNET_STEPS" >>"$LINES"
done
"${TORCH[@]}" --model sgemm >>"$LINES"

# 4. Machine peak: cores × clock × fp32 FLOP/cycle/core. One 512-bit FMA = 16 lanes × 2 FLOP =
#    32; Zen 4 issues AVX-512 on two 256-bit FMA pipes (32 FLOP/cycle); Intel Xeon cores with
#    AVX-512 have two 512-bit FMA ports (64 FLOP/cycle). Default: 64 on GenuineIntel with
#    AVX-512, 32 otherwise; override with MCKD_BENCH_FLOP_PER_CYCLE. The PyTorch/MKL sgemm line
#    below is a measured sanity check of the assumption.
if grep -q GenuineIntel /proc/cpuinfo && grep -q avx512f /proc/cpuinfo; then DEFAULT_FPC=64; else DEFAULT_FPC=32; fi
FPC="${MCKD_BENCH_FLOP_PER_CYCLE:-$DEFAULT_FPC}"
MHZ="$(awk -F: '/^cpu MHz/ {print $2; exit}' /proc/cpuinfo | tr -d ' ')"
MODEL_NAME="$(awk -F: '/^model name/ {print $2; exit}' /proc/cpuinfo | sed 's/^ //')"
AVX512="$(grep -q avx512f /proc/cpuinfo && echo AVX-512 || echo no AVX-512)"
PEAK="$(awk -v t="$THREADS" -v m="$MHZ" -v f="$FPC" 'BEGIN {printf "%.1f", t * m / 1000 * f}')"
BUSY=""
if pgrep -f "reproduce --seeds" >/dev/null 2>&1; then
  BUSY="WARNING: another CPU-bound job (reproduce) was running during the measurement"
  echo "$BUSY" >&2
fi

"$PY" "$HERE/report.py" "$LINES" "$HERE/results.json" \
  --peak-gflops "$PEAK" \
  --peak-note "$THREADS cores × ${MHZ} MHz × $FPC FLOP/cycle fp32" \
  --machine "$MODEL_NAME, $(getconf _NPROCESSORS_ONLN) CPUs, $AVX512, $(awk '/MemTotal/ {printf "%.0f GB", $2/1048576}' /proc/meminfo)" \
  --command "bench/run.sh --threads $THREADS --rounds $ROUNDS --avmnist-steps $AV_STEPS --unet-steps $UNET_STEPS" \
  --rounds "$ROUNDS" --note "$BUSY"
