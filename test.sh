#!/usr/bin/env bash
# Sets up the environment (first run: a few minutes) and runs the whole test suite.
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/setup.sh
. .venv/bin/activate
python -m pytest -q "$@"
