#!/usr/bin/env bash
# check_layers.sh: the layering rule of DEVELOPERS.md, checked on every #include "..." of the tree.
# A folder may include only its own layer and the layers below it:
#   0 src/ (core: common.h) and kernels/shared_math.h (host/device math, no includes)
#   1 src/io  2 quant  3 kernels  4 src/model  5 sharding  6 src/train  7 src/text  8 src/cli
# tests/ and scripts/ may include anything. Also checks that no source file exceeds 1,000 lines
# and that nothing in src/model or src/train calls into kernels/cpu directly (only the backend
# seam, src/model/cpu_backend.cpp, may). Exit 1 and one line per violation.
set -uo pipefail
cd "${1:-$(dirname "$0")/..}"
layer() {
  case "$1" in
    kernels/shared_math.h) echo 0 ;;
    src/io/*) echo 1 ;; quant/*) echo 2 ;; kernels/*) echo 3 ;; src/model/*) echo 4 ;;
    sharding/*) echo 5 ;; src/train/*) echo 6 ;; src/text/*) echo 7 ;; src/cli/*) echo 8 ;;
    src/*) echo 0 ;; *) echo 99 ;;
  esac
}
bad=0
# Files still to be moved onto the backend seam (issue: one model on any backend). Empty when done.
PENDING=""
files=$(git ls-files 'src/*' 'kernels/*' 'quant/*' 'sharding/*' 2>/dev/null || find src kernels quant sharding -type f)
for f in $files; do
  case "$f" in *.h|*.cpp|*.cu|*.cuh) ;; *) continue ;; esac
  lf=$(layer "$f")
  while IFS= read -r inc; do
    li=$(layer "$inc")
    if [ "$li" -gt "$lf" ]; then echo "layer violation: $f (layer $lf) includes $inc (layer $li)"; bad=1; fi
    case "$f:$inc" in
      src/model/cpu_backend.cpp:*) ;;
      *) if [[ " $PENDING " == *" $f "* ]]; then continue; fi ;;&
      src/model/*:kernels/cpu/*|src/train/*:kernels/cpu/*)
        echo "backend bypass: $f includes $inc (model/ and train/ reach kernels only through the backend)"; bad=1 ;;
    esac
  done < <(sed -n 's/^[[:space:]]*#[[:space:]]*include[[:space:]]*"\([^"]*\)".*/\1/p' "$f")
done
for f in $(git ls-files '*.h' '*.cpp' '*.cu' '*.cuh' 2>/dev/null); do
  n=$(wc -l < "$f")
  if [ "$n" -gt 1000 ]; then echo "too long: $f has $n lines (at most 1000)"; bad=1; fi
done
[ $bad = 0 ] && echo "check_layers: ok"
exit $bad
