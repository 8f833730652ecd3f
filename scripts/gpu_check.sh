#!/usr/bin/env bash
# On a machine with a CUDA GPU (at most about 5 minutes): a short pretrain (stopped and resumed) and a K=1
# adaptation on the GPU, then bitstreams encoded on the GPU and decoded on the CPU and the reverse (identical
# symbols, pixels within one grey level). Prints each check; writes OUT/gpu_check.json.
# Usage: scripts/gpu_check.sh [OUT]   (DEVICE=cpu runs the same script CPU-against-CPU as a dry run)
# On the lent GPU machine: scripts/device_wheels.sh here first, then carry .whl.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/device_env.sh      # the .venv here; python3 and the carried .whl on the bare GPU machine
timeout 300 "$PY" scripts/gpu_check.py --out "${1:-gpu_check_out}" --device "${DEVICE:-cuda}" "${@:2}"
