#!/usr/bin/env bash
# Creates .venv (if missing) and installs fedcodec with every dependency from pyproject.toml.
# Idempotent: a second run only re-checks the installed packages.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
python -m pip install --quiet --upgrade pip
# torch and torchvision first, pinned as a pair (compressai imports torchvision).
python -m pip install --quiet "torch==2.14.1" "torchvision==0.29.1"
python -m pip install --quiet -e ".[dev]"
python -c "import fedcodec, compressai, flwr, opacus, monai; print('fedcodec environment ready:', flwr.__version__)"
