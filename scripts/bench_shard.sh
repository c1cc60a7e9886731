#!/usr/bin/env bash
# bench_shard.sh: `frugal bench shard` at W = 2 and W = 4 ranks (CPU backend, one host) for the
# presets where FSDP communication is worth measuring: `small` (30 small blocks, 135M params) and
# `llama3-8b-2layers` (Llama-3.1-8B widths: 115 MB NF4 blocks and a 1 GB bf16 embedding / lm_head).
# Each run reports bytes all-gathered / reduce-scattered per rank, exposed communication and step
# time with prefetch 0 and prefetch K (issue 5 target: exposed <= 10% of the step with prefetch on).
#
# usage: scripts/bench_shard.sh [--build DIR] [--presets "small llama3-8b-2layers"] [--worlds "2 4"]
#                               [--seq-len T] [--steps S] [--prefetch K] [--dir D] [--json]
#   --build    build dir holding the frugal binary (default: build)
#   --seq-len  tokens per rank (the global batch is W rows of T tokens; default 256)
#   --dir      where the models are initialized once and reused (default /tmp/frugal-bench-shard)
# Ranks run with OMP_NUM_THREADS = max(1, cores / W), unbound (--bind-to none), oversubscribed
# when W exceeds the cores: on a 2-core machine W = 4 time-slices 4 compute threads and 4 MPI
# progress threads on 2 cores, so its figures include scheduling waits between ranks.
set -euo pipefail

here="$(cd "$(dirname "$0")/.." && pwd)"
build="$here/build"
presets="small llama3-8b-2layers"
worlds="2 4"
seq_len=256
steps=3
prefetch=1
dir="/tmp/frugal-bench-shard"
json=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --build) build="$2"; shift 2 ;;
    --presets) presets="$2"; shift 2 ;;
    --worlds) worlds="$2"; shift 2 ;;
    --seq-len) seq_len="$2"; shift 2 ;;
    --steps) steps="$2"; shift 2 ;;
    --prefetch) prefetch="$2"; shift 2 ;;
    --dir) dir="$2"; shift 2 ;;
    --json) json="--json"; shift ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "bench_shard.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done

frugal="$build/frugal"
[[ -x "$frugal" ]] || { echo "bench_shard.sh: no frugal binary at $frugal (build it, or pass --build DIR)" >&2; exit 1; }
command -v mpirun >/dev/null || { echo "bench_shard.sh: mpirun not found (install OpenMPI)" >&2; exit 1; }
cores="$(nproc)"
mkdir -p "$dir"

for preset in $presets; do
  for W in $worlds; do
    threads=$(( cores / W )); (( threads >= 1 )) || threads=1
    echo "== $preset, W=$W, OMP_NUM_THREADS=$threads ($cores cores) =="
    # OpenMPI runs as root only with --allow-run-as-root (containers); -x passes the thread count.
    OMP_NUM_THREADS=$threads mpirun --oversubscribe --allow-run-as-root --bind-to none -x OMP_NUM_THREADS \
      -np "$W" "$frugal" bench shard --preset "$preset" --seq-len "$seq_len" --micro-batch "$W" \
      --steps "$steps" --prefetch "$prefetch" --dir "$dir" $json
    echo
  done
done
