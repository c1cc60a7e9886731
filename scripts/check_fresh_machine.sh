#!/usr/bin/env bash
# check_fresh_machine.sh: prove that the README's two commands work on a fresh Debian 12 machine.
#
# Builds a bare bookworm root with debootstrap (variant minbase: no compiler, no python, no
# recommends), copies this checkout in (the committed tree: `git archive HEAD`, or the working
# tree with --worktree) and ../shared beside it, then inside a chroot runs, timing each phase:
#   deps   scripts/setup.sh --deps-only    (apt: what a new user's first command installs)
#   build  scripts/setup.sh                (configure + build; no CUDA inside: no nvcc there)
#   tests  scripts/test.sh                 (the test command, = .ci/run)
#   demo   scripts/demo.sh                 (the demo command; needs PyPI for the model)
# and prints a table of the timings last. Exit status: non-zero if any phase failed.
#
# Usage: sudo scripts/check_fresh_machine.sh [--worktree] [--keep] [--no-demo]
# Env:   FRESH_ROOT (default /tmp/frugal-fresh-root), FRESH_MIRROR (default deb.debian.org),
#        FRESH_BASE_TAR: a tarball of a pristine debootstrap root to reuse (written on first run
#        when set and missing; it holds only what debootstrap made, never this project's packages).
set -euo pipefail
cd "$(dirname "$0")/.."
SRC=$PWD
ROOT=${FRESH_ROOT:-/tmp/frugal-fresh-root}
MIRROR=${FRESH_MIRROR:-http://deb.debian.org/debian}
WORKTREE=0; KEEP=0; DEMO=1
for a in "$@"; do
  case "$a" in
    --worktree) WORKTREE=1 ;;
    --keep) KEEP=1 ;;
    --no-demo) DEMO=0 ;;
    *) echo "usage: $0 [--worktree] [--keep] [--no-demo]" >&2; exit 2 ;;
  esac
done
[ "$(id -u)" = 0 ] || { echo "check_fresh_machine: needs root (debootstrap, chroot, mount)" >&2; exit 2; }
command -v debootstrap >/dev/null || { apt-get update -q && apt-get install -y -q --no-install-recommends debootstrap; }

MOUNTS=()
cleanup() {
  for ((i=${#MOUNTS[@]}-1; i>=0; i--)); do umount -l "${MOUNTS[i]}" 2>/dev/null || true; done
  if [ "$KEEP" = 0 ]; then rm -rf "$ROOT"; fi
}
trap cleanup EXIT

T_ALL=$EPOCHREALTIME
ROWS=()
elapsed() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN{printf "%.0f", b-a}'; }

# ---- 1. a fresh bookworm root ----------------------------------------------------------------
rm -rf "$ROOT"; mkdir -p "$ROOT"
t=$EPOCHREALTIME
if [ -n "${FRESH_BASE_TAR:-}" ] && [ -f "$FRESH_BASE_TAR" ]; then
  echo "=== [root] unpacking pristine debootstrap root $FRESH_BASE_TAR"
  tar -C "$ROOT" -xf "$FRESH_BASE_TAR"
else
  echo "=== [root] debootstrap --variant=minbase bookworm $ROOT $MIRROR"
  debootstrap --variant=minbase bookworm "$ROOT" "$MIRROR" >/tmp/frugal-fresh-debootstrap.log 2>&1 \
    || { tail -30 /tmp/frugal-fresh-debootstrap.log; exit 1; }
  if [ -n "${FRESH_BASE_TAR:-}" ]; then tar -C "$ROOT" -cf "$FRESH_BASE_TAR" .; fi
fi
ROWS+=("$(printf '%-7s %6s s  %s' root "$(elapsed "$t")" "debootstrap minbase bookworm")")
# The chroot needs this machine's network as it is (name resolution; the certificate authorities
# this machine trusts, e.g. a site's TLS-inspecting proxy, and pip's settings), and the kernel file
# systems for MPI and OpenMP. Nothing of this project is copied in.
cp /etc/resolv.conf "$ROOT/etc/resolv.conf"
if [ -d /usr/local/share/ca-certificates ]; then
  mkdir -p "$ROOT/usr/local/share/ca-certificates"; cp -r /usr/local/share/ca-certificates/. "$ROOT/usr/local/share/ca-certificates/"
fi
if [ -f /etc/ssl/certs/ca-certificates.crt ]; then
  mkdir -p "$ROOT/etc/ssl/certs"; cp /etc/ssl/certs/ca-certificates.crt "$ROOT/etc/ssl/certs/"
fi
[ -f /etc/pip.conf ] && cp /etc/pip.conf "$ROOT/etc/pip.conf"
NETENV=()
for v in SSL_CERT_FILE PIP_CERT REQUESTS_CA_BUNDLE CURL_CA_BUNDLE http_proxy https_proxy HTTP_PROXY HTTPS_PROXY no_proxy; do
  [ -n "${!v:-}" ] && NETENV+=("$v=${!v}")
done
for m in proc sys dev dev/pts; do
  mkdir -p "$ROOT/$m"; mount --bind "/$m" "$ROOT/$m"; MOUNTS+=("$ROOT/$m")
done
mkdir -p "$ROOT/dev/shm"; mount -t tmpfs -o size=4g tmpfs "$ROOT/dev/shm"; MOUNTS+=("$ROOT/dev/shm")

# ---- 2. the checkout, and shared/ beside it (as CI lays it) -----------------------------------
mkdir -p "$ROOT/work/main"
if [ "$WORKTREE" = 1 ]; then
  git ls-files -z --cached --others --exclude-standard | tar -cf - --null -T - | tar -C "$ROOT/work/main" -xf -
  SRC_DESC="working tree of $SRC"
else
  git archive HEAD | tar -C "$ROOT/work/main" -xf -
  SRC_DESC="HEAD $(git rev-parse --short HEAD) of $SRC"
fi
[ -d ../shared ] && cp -r ../shared "$ROOT/work/shared"
echo "=== copied $SRC_DESC into $ROOT/work/main"

# ---- 3. the README's commands, inside -------------------------------------------------------
in_root() {  # in_root NAME COMMAND: run COMMAND in the chroot as a login root shell, timed
  local name=$1 cmd=$2 t=$EPOCHREALTIME rc=0
  echo; echo "=== [$name] $cmd"
  chroot "$ROOT" /usr/bin/env -i HOME=/root PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    LANG=C.UTF-8 TERM=dumb "${NETENV[@]}" bash -c "cd /work/main && $cmd" 2>&1 | tee "/tmp/frugal-fresh-$name.log" || rc=$?
  local st=ok; [ $rc = 0 ] || st="FAILED (rc $rc, log /tmp/frugal-fresh-$name.log)"
  ROWS+=("$(printf '%-7s %6s s  %s: %s' "$name" "$(elapsed "$t")" "$cmd" "$st")")
  return $rc
}
FAILED=0
in_root deps  "scripts/setup.sh --deps-only" || FAILED=1
[ $FAILED = 0 ] && { in_root build "scripts/setup.sh" || FAILED=1; }
[ $FAILED = 0 ] && { in_root tests "scripts/test.sh" || FAILED=1; }
if [ $FAILED = 0 ] && [ $DEMO = 1 ]; then in_root demo "scripts/demo.sh" || FAILED=1; fi

echo
echo "check_fresh_machine: $SRC_DESC on a fresh Debian 12 root ($(nproc) cores)"
printf '%s\n' "${ROWS[@]}"
printf '%-7s %6s s\n' total "$(elapsed "$T_ALL")"
if [ $FAILED = 0 ]; then echo "check_fresh_machine: PASSED"; else echo "check_fresh_machine: FAILED"; fi
exit $FAILED
