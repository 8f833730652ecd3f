#!/usr/bin/env bash
# Creates .venv (if missing) and installs fedcodec with every dependency from pyproject.toml.
# Idempotent: a second run only re-checks the installed packages.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  # pyproject.toml: requires-python = ">=3.11,<3.13" (torch 2.14.1, flwr 1.41/1.42)
  if ! "$PY" -c 'import sys; sys.exit(not (3, 11) <= sys.version_info[:2] < (3, 13))' 2>/dev/null; then
    found=$( (command -v "$PY" >/dev/null && "$PY" --version 2>&1) || echo "not found")
    echo "fedcodec needs Python 3.11 or 3.12, but '$PY' is $found;" \
         "point set-up at another interpreter: PYTHON=/path/to/python3.11 $0" >&2
    exit 2
  fi
  "$PY" -m venv .venv
fi
. .venv/bin/activate
python -m pip install --quiet --upgrade pip
# torch and torchvision first, pinned as a pair (compressai imports torchvision).
python -m pip install --quiet "torch==2.14.1" "torchvision==0.29.1"
python -m pip install --quiet -e ".[dev]"
python -c "import fedcodec, compressai, flwr, opacus, monai; print('fedcodec environment ready:', flwr.__version__)"
