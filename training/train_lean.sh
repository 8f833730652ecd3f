#!/usr/bin/env bash
# Trains the lean embedded default in resumable chunks (issue 9). Each call runs one chunk of at most
# MINUTES minutes (default 120) and leaves $LEAN_DIR/checkpoint.pt; the next call resumes exactly. LEAN_DIR
# defaults to training/lean, whose run is finished (its checkpoint is not committed): train again elsewhere.
# Seeds: the recipe's own (pretraining seed 0, task-network seeds 11/13/12, validation phantoms seed 5000).
set -euo pipefail
cd "$(dirname "$0")/.."
. .venv/bin/activate
MINUTES=${1:-120}
DIR=${LEAN_DIR:-training/lean}
if [ -f "$DIR/checkpoint.pt" ]; then
  exec nice -n 10 fedcodec pretrain --resume "$DIR" --max-minutes "$MINUTES" --device "${DEVICE:-auto}"
else
  exec nice -n 10 fedcodec pretrain --recipe lean --out "$DIR" --max-minutes "$MINUTES" --device "${DEVICE:-auto}"
fi
