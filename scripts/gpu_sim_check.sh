#!/usr/bin/env bash
# GPU check of the Ray simulation, for machines with a CUDA GPU (at most 5 minutes; no GPU -> exit 2).
#
# Runs the built-in scenario `gpu-smoke` (simulations/scenarios/gpu-smoke.toml): 8 virtual hospitals with
# client-resources-num-gpus=0.25 (so Ray runs 4 of them at a time on the one GPU) and device = "cuda" (a
# hospital that cannot use the GPU fails instead of falling back to the CPU). While it runs, nvidia-smi is
# sampled every 0.5 s; the check passes when the run completes and at least 4 processes held the GPU at once.
#
#   bash scripts/gpu_sim_check.sh [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
[ -f .venv/bin/activate ] && . .venv/bin/activate
if ! python -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_sim_check: no CUDA GPU visible to torch; nothing to check" >&2
    exit 2
fi
OUT="${1:-/tmp/fedcodec-gpu-sim-$(date +%Y%m%d-%H%M%S)}"
mkdir -p "$(dirname "$OUT")"
SAMPLES="$OUT.gpu-processes.txt"
: > "$SAMPLES"
( while true; do
      nvidia-smi --query-compute-apps=pid,used_memory --format=csv,noheader,nounits 2>/dev/null \
          | awk -v t="$(date +%s.%N)" '{n++; m+=$2} END {print t, n+0, m+0}' >> "$SAMPLES"
      sleep 0.5
  done ) &
SAMPLER=$!
trap 'kill "$SAMPLER" 2>/dev/null || true' EXIT
START=$(date +%s)
set +e
timeout 290 python -W ignore -m simulations.run --scenario gpu-smoke --out "$OUT" \
    --flwr-home "$OUT.flwr-home" --port 39791 --timeout 270
RC=$?
set -e
kill "$SAMPLER" 2>/dev/null || true
python - "$OUT" "$SAMPLES" "$RC" "$START" <<'PY'
import json, sys, time
out, samples, rc, start = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
rows = [line.split() for line in open(samples) if line.strip()]
max_procs = max((int(r[1]) for r in rows), default=0)
max_mem = max((float(r[2]) for r in rows), default=0.0)
try:
    report = json.load(open(f"{out}/report.json"))
except OSError:
    report = {"status": "no report"}
result = {"runner_exit": rc, "status": report.get("status"), "wall_s": report.get("wall_s"),
          "peak_rss_mb": report.get("peak_rss_mb"), "max_gpu_processes_at_once": max_procs,
          "max_gpu_memory_mib": max_mem, "federation": report.get("scenario", {}).get("federation_config"),
          "median_round_s": (report.get("summary") or {}).get("median_round_seconds"),
          "seconds": round(time.time() - start, 1)}
json.dump(result, open(f"{out}/gpu_check.json", "w"), indent=2)
print(json.dumps(result, indent=2))
ok = rc == 0 and result["status"] == "finished:completed" and max_procs >= 4
print("gpu_sim_check:", "PASS" if ok else "FAIL (need a completed run and >= 4 hospitals on the GPU at once)")
sys.exit(0 if ok else 1)
PY
