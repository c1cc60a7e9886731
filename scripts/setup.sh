#!/usr/bin/env bash
# setup.sh: install the Debian packages frugal builds with (idempotent), then configure and build.
# Usage: scripts/setup.sh [build-dir]   (default: build). Set FRUGAL_SKIP_APT=1 to skip apt.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${1:-build}

PKGS=(build-essential cmake ninja-build ccache pkg-config
      libdnnl-dev libopenmpi-dev openmpi-bin libhdf5-openmpi-dev
      libcli11-dev nlohmann-json3-dev libtomlplusplus-dev libgtest-dev
      liblapacke-dev libopenblas-dev libpcre2-dev)

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

GEN=()
command -v ninja >/dev/null && GEN=(-G Ninja)
cmake -S . -B "$BUILD_DIR" "${GEN[@]}" -DCMAKE_BUILD_TYPE=Release
cmake --build "$BUILD_DIR" -j "$(nproc)"
echo "setup: built $BUILD_DIR/frugal"
