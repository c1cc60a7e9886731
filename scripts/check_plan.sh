#!/usr/bin/env bash
# check_plan.sh: the memory planner against measured peak RSS (issue 5, item 7).
# For each model (tiny preset, llama3-70b-2layers) and world size W (1, 2, 4): `frugal train` for a
# few steps (W > 1 under mpirun), peak RSS per rank = max over steps and ranks of metrics.jsonl
# peak_rss_bytes (getrusage ru_maxrss), against `frugal plan --world W --json` total.host with the
# same recipe overrides and the same OMP_NUM_THREADS. Fails when any case is off by more than 10%.
#
#   scripts/check_plan.sh [BUILD_DIR] [WORK_DIR]        (defaults: build, /tmp/frugal_check_plan)
#   MODELS="tiny" WORLDS="1 2" scripts/check_plan.sh    (a subset)
# The 70b-2layers model is written once to WORK_DIR (7.6 GB bf16); W = 1 needs ~6 GB of RAM, W = 4
# ~4 x 3.8 GB. Plan and train must run on the same machine (the runtime share is measured there).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-$here/build}
work=${2:-/tmp/frugal_check_plan}
frugal=${FRUGAL_BIN:-$build/frugal}
models=${MODELS:-"tiny llama3-70b-2layers"}
worlds=${WORLDS:-"1 2 4"}
steps=${STEPS:-2}
[[ -x $frugal ]] || { echo "check_plan: $frugal is not an executable (build the frugal target or set FRUGAL_BIN)" >&2; exit 2; }
mkdir -p "$work"

# OpenMPI as root in a container (as the ctest MPI tests run it)
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
export OMPI_MCA_btl_vader_single_copy_mechanism=none OMPI_MCA_btl=self,vader OMPI_MCA_hwloc_base_binding_policy=none
export OMP_WAIT_POLICY=passive
cores=$(nproc)

fail=0
printf "%-20s %3s %8s %14s %14s %8s\n" model W threads predicted measured error
for m in $models; do
  mdir=$work/model-$m
  if [[ ! -f $mdir/config.json ]]; then
    "$frugal" init --preset "$m" --out "$mdir" > /dev/null
  fi
  rank=8
  [[ $m == tiny ]] || rank=16
  for w in $worlds; do
    threads=$(( cores / w )); (( threads >= 1 )) || threads=1
    out=$work/run-$m-w$w
    rm -rf "$out"
    sets=(--set "model.path=$mdir" --set "model.preset=$m" --set "lora.rank=$rank" --set "data.seq_len=64"
          --set "train.micro_batch=4" --set "train.steps=$steps" --set "checkpoint.every=0" --set "train.output_dir=$out")
    if (( w == 1 )); then
      OMP_NUM_THREADS=$threads "$frugal" train "$here/recipes/tiny_qlora.toml" "${sets[@]}" -q
    else
      OMP_NUM_THREADS=$threads mpirun -np "$w" --oversubscribe --bind-to none \
        "$frugal" train "$here/recipes/tiny_qlora.toml" "${sets[@]}" -q
    fi
    predicted=$(OMP_NUM_THREADS=$threads "$frugal" plan "$here/recipes/tiny_qlora.toml" --world "$w" "${sets[@]}" --json |
                python3 -c 'import json,sys; print(json.load(sys.stdin)["total"]["host"])')
    measured=$(python3 -c 'import json,sys; print(max(json.loads(l)["peak_rss_bytes"] for l in open(sys.argv[1])))' "$out/metrics.jsonl")
    err=$(python3 -c 'import sys; p,m=float(sys.argv[1]),float(sys.argv[2]); print("%+.1f%%" % (100*(p-m)/m))' "$predicted" "$measured")
    ok=$(python3 -c 'import sys; p,m=float(sys.argv[1]),float(sys.argv[2]); print(int(abs(p-m)<=0.10*m))' "$predicted" "$measured")
    printf "%-20s %3s %8s %14s %14s %8s%s\n" "$m" "$w" "$threads" "$predicted" "$measured" "$err" "$([[ $ok == 1 ]] || echo '  > 10%')"
    [[ $ok == 1 ]] || fail=1
  done
done
exit $fail
