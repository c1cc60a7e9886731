#!/usr/bin/env bash
# run_fuzzer.sh BINARY FUZZ_DIR SECONDS: the ctest smoke of one libFuzzer harness. Replays the
# committed corpus FUZZ_DIR/corpus/<name>/ (seeds and regression inputs), then fuzzes SECONDS more
# with new inputs written to a temporary directory (never the repository). The limits make an
# allocation larger than any input justifies, a hang, or a blown RSS a failure.
set -euo pipefail
bin=$(realpath "$1"); dir=$(realpath "$2"); secs=$3
name=$(basename "$bin")
corpus=$dir/corpus/$name
dict=()
[ -f "$dir/$name.dict" ] && dict=(-dict="$dir/$name.dict")
work=$(mktemp -d "${TMPDIR:-/tmp}/$name.XXXXXX")
trap 'rm -rf "$work"' EXIT
limits=(-rss_limit_mb=1024 -malloc_limit_mb=512 -timeout=10)
cd "$work"
# 1. Every committed input, once.
"$bin" "${limits[@]}" "${dict[@]}" -runs=0 "$corpus"
# 2. Fresh fuzzing seeded from the corpus; new inputs go to $work/new.
mkdir -p new
"$bin" "${limits[@]}" "${dict[@]}" -max_total_time="$secs" -print_final_stats=1 new "$corpus"
