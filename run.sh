#!/usr/bin/env bash
# The main job on the embedded default, from a fresh checkout:
#  1. sets up .venv (first run: a few minutes; nothing is downloaded but packages);
#  2. federated few-shot adaptation of the embedded codec with Flower (`flwr run .` on a local Ray
#     simulation: 4 phantom hospitals with different domain shifts, 1 shot each), printing a table per round;
#  3. encodes and decodes a fresh scan of hospital 1 with the exported adapted codec.
# Extra arguments go to the scenario runner, e.g. ./run.sh --set num-server-rounds=3
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/setup.sh
. .venv/bin/activate
OUT="${FEDCODEC_OUT:-$HOME/.fedcodec/main-job/$(date +%Y%m%d-%H%M%S)}"
python -m simulations.run --scenario default --out "$OUT" "$@"
fedcodec -q phantoms --out "$OUT/site-scan" --n 1 --hospital 1 --seed 4242
SCAN=$(ls "$OUT"/site-scan/images/*.png | head -n 1)
fedcodec encode --model "$OUT/adapted_codec.pt" --quality 3 "$SCAN" "$OUT/site-scan.fcd"
fedcodec decode --model "$OUT/adapted_codec.pt" "$OUT/site-scan.fcd" "$OUT/site-scan-decoded.png"
echo "main job done: outputs in $OUT"
