#!/usr/bin/env bash
# Issue 9's GPU round on the lent GPU machine: training/train_gpu.py, every arm side by side on the one GPU,
# within BUDGET_MIN minutes (train_gpu.py's default, 7: the device tool allows 10 a command and 15 a session,
# machine start included). Writes at most 8 files under OUT (what the tool brings back): <arm>/codec.pt, <arm>/run.json,
# summary.json, train_gpu.log. ARMS=long,fidelity picks arms; DEVICE=cpu TINY=1 is a seconds-long dry run.
# Here first:               bash scripts/device_wheels.sh
# Through the device tool:  run(command="bash training/train_gpu.sh", carry=[".whl"], timeout_s=560)
set -uo pipefail
cd "$(dirname "$0")/.."
. scripts/device_env.sh
OUT=${OUT:-runs/gpu_round}
mkdir -p "$OUT"
LOG="$OUT/train_gpu.log"
export PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 || true
  "$PY" -c "import torch, numpy; print('torch', torch.__version__, 'numpy', numpy.__version__, 'cuda', torch.cuda.is_available())"
} | tee "$LOG"
"$PY" training/train_gpu.py --out "$OUT" ${BUDGET_MIN:+--budget-min "$BUDGET_MIN"} --device "${DEVICE:-cuda}" \
  ${ARMS:+--arms "$ARMS"} ${TINY:+--tiny} 2>&1 | grep -v -E "FutureWarning|warnings.warn|traced_func" | tee -a "$LOG"
