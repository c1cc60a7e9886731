#!/usr/bin/env bash
# test.sh: set up (packages + build), then run every test with ctest. GPU tests (label `gpu`)
# skip themselves where no device exists.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${BUILD_DIR:-build}
scripts/setup.sh "$BUILD_DIR"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(nproc)}
# ctest runs two test binaries at once on 2 cores: spinning OpenMP workers would steal each
# other's cores (measured 10-100x slowdowns), so idle workers sleep.
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}
ctest --test-dir "$BUILD_DIR" --output-on-failure -j "$(nproc)" --timeout 900
