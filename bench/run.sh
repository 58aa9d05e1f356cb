#!/usr/bin/env bash
# Side-by-side benchmark of mckd (burn flex) against PyTorch on the same two MCKD training
# steps (issue 5), per instruction-set path (issue 20). Usage:
#   bench/run.sh [--threads N] [--rounds R] [--avmnist-steps N] [--unet-steps N]
#                [--simd LIST] [--torch-isa match|native] [--models LIST] [--quick]
#
# * --simd LIST: comma-separated paths of our kernels, each of scalar, avx2, avx512 (default:
#   the CPU's best). Each path runs with MCKD_SIMD=<path>; a path the CPU lacks is refused
#   (mckd-bench exits with an error naming the missing features).
# * --torch-isa match (default): PyTorch is limited to the same instruction set for the avx2
#   and scalar paths (ATEN_CPU_CAPABILITY, ONEDNN_MAX_CPU_ISA, MKL_ENABLE_INSTRUCTIONS), so
#   `--simd avx2,avx512` on an AVX-512 machine compares both sides as on an AVX2 machine and
#   as on this one; `native` leaves PyTorch on the CPU's best.
# * --models LIST: avmnist, unet or both (default avmnist,unet).
# * Creates the Python environment on first use, outside the repo:
#   ${MCKD_BENCH_VENV:-$HOME/.cache/mckd-bench/venv} with torch==2.15.0 and numpy.
# * Builds the release binary `mckd-bench`.
# * Times both sides interleaved (per round and path: mckd, torch, mckd, torch; each a fresh
#   process per side and model so the peak RSS is per model; warm-up steps excluded inside
#   each); measures each path's fp32 peak with an FMA loop on all threads before and after
#   the rounds (`mckd-bench --model peak`; the higher is kept) and PyTorch's sgemm.
# * Prints per path: medians, min–max, peak RSS, mckd/PyTorch ratios and GFLOP/s against the
#   measured peak; writes bench/results.json (with the CPU's model and flags); the last line
#   has, per path, `simd=<path> avmnist_ratio=… avmnist_all_ratio=… meta_ratio=… unet_ratio=…
#   avmnist_rss_ratio=… unet_rss_ratio=…`, paths separated by ` | `.
set -euo pipefail

THREADS=2
ROUNDS=3
AV_STEPS=20
UNET_STEPS=3
SIMD=""
TORCH_ISA=match
MODELS=avmnist,unet
while [[ $# -gt 0 ]]; do
  case "$1" in
    --threads) THREADS="$2"; shift 2 ;;
    --rounds) ROUNDS="$2"; shift 2 ;;
    --avmnist-steps) AV_STEPS="$2"; shift 2 ;;
    --unet-steps) UNET_STEPS="$2"; shift 2 ;;
    --simd) SIMD="$2"; shift 2 ;;
    --torch-isa) TORCH_ISA="$2"; shift 2 ;;
    --models) MODELS="$2"; shift 2 ;;
    --quick) ROUNDS=1; AV_STEPS=5; UNET_STEPS=1; shift ;;
    -h|--help) sed -n 2,28p "$0"; exit 0 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
case "$TORCH_ISA" in
  match|native) ;;
  *) echo "--torch-isa must be match or native, not $TORCH_ISA" >&2; exit 2 ;;
esac
IFS=',' read -r -a MODEL_LIST <<<"$MODELS"
for m in "${MODEL_LIST[@]}"; do
  case "$m" in
    avmnist|unet) ;;
    *) echo "--models: unknown model $m (expected avmnist, unet)" >&2; exit 2 ;;
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

# 3. The paths: the CPU's best by default; each one checked before any timing.
if [[ -z "$SIMD" ]]; then
  SIMD="$(env -u MCKD_SIMD "$BIN" --print-simd)"
fi
IFS=',' read -r -a PATHS <<<"$SIMD"
for p in "${PATHS[@]}"; do
  case "$p" in
    scalar|avx2|avx512) ;;
    *) echo "--simd: unknown path $p (expected scalar, avx2 or avx512)" >&2; exit 2 ;;
  esac
  if ! err="$(MCKD_SIMD="$p" "$BIN" --print-simd 2>&1 >/dev/null)"; then
    echo "--simd $p: ${err%%$'\n'*}" >&2
    exit 2
  fi
done

# PyTorch's instruction-set limits for a path (with --torch-isa match).
torch_env() {
  if [[ "$TORCH_ISA" == native ]]; then
    echo "MCKD_BENCH_TORCH_ISA=native"
    return
  fi
  case "$1" in
    avx512) echo "MCKD_BENCH_TORCH_ISA=native" ;;
    avx2) echo "MCKD_BENCH_TORCH_ISA=avx2 ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2" ;;
    scalar) echo "MCKD_BENCH_TORCH_ISA=default ATEN_CPU_CAPABILITY=default ONEDNN_MAX_CPU_ISA=SSE41 MKL_ENABLE_INSTRUCTIONS=SSE4_2" ;;
  esac
}

# Same thread count everywhere; no oversubscription from OpenMP/MKL defaults.
export RAYON_NUM_THREADS="$THREADS" OMP_NUM_THREADS="$THREADS" MKL_NUM_THREADS="$THREADS"

LINES="$(mktemp "${TMPDIR:-/tmp}/mckd-bench.XXXXXX.jsonl")"
trap 'rm -f "$LINES"' EXIT
MCKD=("$BIN" --threads "$THREADS")
TORCH=("$PY" "$HERE/torch_mckd.py" --threads "$THREADS")

# 4. Each path's fp32 peak (again after the rounds: the best of the two is kept, as other load
#    on the machine lowers it), then interleaved rounds: per round and path A B A B …
for p in "${PATHS[@]}"; do
  MCKD_SIMD="$p" "${MCKD[@]}" --model peak >>"$LINES"
done
for r in $(seq 1 "$ROUNDS"); do
  for p in "${PATHS[@]}"; do
    echo "round $r/$ROUNDS, path $p" >&2
    for m in "${MODEL_LIST[@]}"; do
      steps="$AV_STEPS"
      [[ "$m" == unet ]] && steps="$UNET_STEPS"
      MCKD_SIMD="$p" "${MCKD[@]}" --model "$m" --steps "$steps" >>"$LINES"
      # shellcheck disable=SC2046  # torch_env prints VAR=value words for env
      env $(torch_env "$p") "${TORCH[@]}" --simd "$p" --model "$m" --steps "$steps" >>"$LINES"
    done
  done
done
for p in "${PATHS[@]}"; do
  MCKD_SIMD="$p" "${MCKD[@]}" --model peak >>"$LINES"
  env $(torch_env "$p") "${TORCH[@]}" --simd "$p" --model sgemm >>"$LINES"
done

# 5. The machine.
MODEL_NAME="$(awk -F: '/^model name/ {print $2; exit}' /proc/cpuinfo | sed 's/^ //')"
FLAGS="$(awk -F: '/^flags/ {print $2; exit}' /proc/cpuinfo | sed 's/^ //')"
MHZ="$(awk -F: '/^cpu MHz/ {print $2; exit}' /proc/cpuinfo | tr -d ' ')"
BUSY=""
if pgrep -f "reproduce --seeds" >/dev/null 2>&1; then
  BUSY="WARNING: another CPU-bound job (reproduce) was running during the measurement"
  echo "$BUSY" >&2
fi

"$PY" "$HERE/report.py" "$LINES" "$HERE/results.json" \
  --machine "$MODEL_NAME, $(getconf _NPROCESSORS_ONLN) CPUs, $(awk '/MemTotal/ {printf "%.0f GB", $2/1048576}' /proc/meminfo), ${MHZ} MHz" \
  --cpu-model "$MODEL_NAME" --cpu-flags "$FLAGS" \
  --command "bench/run.sh --threads $THREADS --rounds $ROUNDS --avmnist-steps $AV_STEPS --unet-steps $UNET_STEPS --simd $SIMD --torch-isa $TORCH_ISA --models $MODELS" \
  --rounds "$ROUNDS" --note "$BUSY"
