#!/usr/bin/env bash
# make_venv.sh: the Python environment for fixture generators and interoperability checks.
# Lives outside the repo; frugal itself and CI never need it.
set -euo pipefail
VENV=${FRUGAL_VENV:-/opt/frugal-venv}
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/pip" install -q --upgrade pip
"$VENV/bin/pip" install -q torch transformers peft bitsandbytes tokenizers safetensors numpy gguf h5py galore-torch
echo "venv ready: $VENV"
