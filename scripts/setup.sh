#!/usr/bin/env bash
# setup.sh: install the Debian packages frugal builds with (idempotent), then configure and build.
# Usage: scripts/setup.sh [build-dir]   (default: build). Set FRUGAL_SKIP_APT=1 to skip apt;
#        scripts/setup.sh --deps-only      install the packages, build nothing.
# The list must hold everything a fresh Debian 12 (bookworm) needs: scripts/check_fresh_machine.sh
# proves it in a debootstrap root. ocl-icd-opencl-dev: Debian's oneDNN CMake config
# (dnnl-config.cmake) calls find_package(OpenCL), and --no-install-recommends does not pull it.
set -euo pipefail
cd "$(dirname "$0")/.."
DEPS_ONLY=0
if [ "${1:-}" = --deps-only ]; then DEPS_ONLY=1; shift; fi
BUILD_DIR=${1:-build}

PKGS=(build-essential cmake ninja-build ccache pkg-config
      libdnnl-dev libopenmpi-dev openmpi-bin libhdf5-openmpi-dev
      libcli11-dev nlohmann-json3-dev libtomlplusplus-dev libgtest-dev
      liblapacke-dev libopenblas-dev libpcre2-dev ocl-icd-opencl-dev)

if [ "${FRUGAL_SKIP_APT:-0}" != 1 ]; then
  missing=()
  for p in "${PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "setup: installing ${missing[*]}"
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
    $SUDO apt-get update -q
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
  fi
fi

[ "$DEPS_ONLY" = 1 ] && { echo "setup: packages present"; exit 0; }

GEN=()
command -v ninja >/dev/null && GEN=(-G Ninja)
cmake -S . -B "$BUILD_DIR" "${GEN[@]}" -DCMAKE_BUILD_TYPE=Release
cmake --build "$BUILD_DIR" -j "$(nproc)"
echo "setup: built $BUILD_DIR/frugal"
