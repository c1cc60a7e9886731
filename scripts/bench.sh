#!/usr/bin/env bash
# bench.sh: the performance figures of issue 3 in one run (build first: scripts/setup.sh).
#   1. frugal bench ops: GEMM peak, NF4 linear, lm_head+CE, attention, and one Llama-3-8B decoder
#      block forward+backward (NF4 and bf16 base) with its op breakdown;
#   2. scripts/bench_vs_pytorch.py for the `small` preset (and llama3-8b-2layers with FULL=1):
#      tokens/s and peak RSS of a QLoRA training step, frugal vs PyTorch + PEFT + bitsandbytes.
# Usage: [BUILD_DIR=build] [THREADS=N] [FULL=1] [VENV=/opt/frugal-venv] scripts/bench.sh
# Figures go to stdout; run it on an otherwise idle machine (the timings are wall clock).
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${BUILD_DIR:-build}
THREADS=${THREADS:-$(nproc)}
VENV=${VENV:-/opt/frugal-venv}
FRUGAL="$BUILD_DIR/frugal"
[ -x "$FRUGAL" ] || { echo "bench.sh: $FRUGAL not found (build first: scripts/setup.sh $BUILD_DIR)" >&2; exit 1; }
export OMP_NUM_THREADS=$THREADS
# passive: spinning OpenMP threads are 10x slower on a machine shared with other jobs
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}

echo "== frugal bench ops (Llama-3-8B widths, T=512)"
"$FRUGAL" bench ops --repeat 3
echo
echo "== frugal vs PyTorch: small preset"
"$VENV/bin/python" scripts/bench_vs_pytorch.py "$FRUGAL" --preset small --seq-len 256 --steps 5 --threads "$THREADS" \
  --also-bf16 --omp-wait-policy "$OMP_WAIT_POLICY"
if [ "${FULL:-0}" = 1 ]; then
  echo
  echo "== frugal vs PyTorch: llama3-8b-2layers"
  "$VENV/bin/python" scripts/bench_vs_pytorch.py "$FRUGAL" --preset llama3-8b-2layers --seq-len 256 --steps 3 \
    --threads "$THREADS" --also-bf16 --omp-wait-policy "$OMP_WAIT_POLICY"
fi
