#!/usr/bin/env bash
# demo.sh: the README's main command. Sets up (packages + build), creates a small random Llama
# model with `frugal init`, evaluates it on a token stream, and prints op benchmarks.
# (The fine-tuning demo on a real pretrained model arrives with the training and text issues.)
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${BUILD_DIR:-build}
scripts/setup.sh "$BUILD_DIR"
FRUGAL="$BUILD_DIR/frugal"
OUT=${OUT:-out/demo}
mkdir -p "$OUT"

echo "== frugal init --preset tiny"
rm -rf "$OUT/tiny"
"$FRUGAL" init --preset tiny --out "$OUT/tiny" --seed 1
"$FRUGAL" inspect "$OUT/tiny/model.safetensors" | tail -n 3

echo "== frugal eval (NF4 base vs bf16 base, random token stream)"
python3 -c "import random; random.seed(0); print(' '.join(str(random.randrange(512)) for _ in range(4096)))" > "$OUT/tokens.ids" 2>/dev/null \
  || awk 'BEGIN{srand(0); for(i=0;i<4096;i++) printf "%d ", int(rand()*512); print ""}' > "$OUT/tokens.ids"
"$FRUGAL" eval --model "$OUT/tiny" --data "$OUT/tokens.ids" --seq-len 256 --quant nf4
"$FRUGAL" eval --model "$OUT/tiny" --data "$OUT/tokens.ids" --seq-len 256 --quant none

echo "== frugal bench ops (Llama-3-8B widths, 512 tokens)"
"$FRUGAL" bench ops --repeat 3
