"""K=1 adaptation variants on the held-out sets, one shot at a time (issue 9: adaptation that never hurts).

How the safeguards of ``fedcodec adapt`` were chosen (results: benchmarks/results/heldout/experiment_adapt_safeguards.json,
written from this script's output). For each set and shot it prints the pretrained codec's (bpp, Dice) curve
and, per variant, the adapted curve, its BD-rate (Dice) against the pretrained codec and against the x265
points stored in benchmarks/results/heldout/results.json, and what the selection chose.

    python benchmarks/experiments/adapt_variants.py --sets mr,unseen,h1 --shot 1 --variants old,new,recipe,recipe_p30
    python benchmarks/experiments/adapt_variants.py --sets h555,h31 --variants old,recipe_p30   # fresh hospitals

Sets: heldout.py's (h0, h1, unseen, ct, mr) or ``h<id>`` for any phantom hospital id (its segmenter is trained
and cached like heldout.py's). Uses the segmenter cache of benchmarks/results/heldout/segmenters.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))

import heldout as H  # noqa: E402

from fedcodec.adapt import AdaptConfig, adapt  # noqa: E402
from fedcodec.evaluate import evaluate_codec  # noqa: E402
from fedcodec.losses import LossWeights, default_quality_weights  # noqa: E402
from fedcodec.model_io import load_codec  # noqa: E402

OLD_WEIGHTS = {"lambda_d": LossWeights.lambda_d, "lambda_t": 1.0, "quality_weights": default_quality_weights(8)}
#: The variants compared (AdaptConfig overrides; the loss weights of "recipe*" are the codec's own, the default).
VARIANTS = {
    "old": {**OLD_WEIGHTS, "prox_mu": 0.0, "task_tolerance": 0.02},           # adapt before this experiment
    "new": {**OLD_WEIGHTS, "prox_mu": 30.0, "task_tolerance": 0.0},
    "recipe": {"prox_mu": 0.0, "task_tolerance": 0.0},
    "recipe_p30": {"prox_mu": 30.0, "task_tolerance": 0.0},                    # = AdaptConfig() now
    # 2026-11-28, the real CT read by a working site segmenter: K=1 shots 0 and 2 passed every check and hurt
    "default": {},
    "policy_only": {"groups": ("policy",)},        # the bit-allocation head alone (9,001 parameters)
    "adapters_only": {"groups": ("adapters",)},    # the synthesis adapters and feature head alone
    "prox100": {"prox_mu": 100.0},                 # a three times stronger pull towards the start
}


def _data(name: str, args):
    if name in ("ct", "mr", "h0", "h1", "unseen"):
        return H.site_data(name, args.n, args.train_images)
    from fedcodec.data import make_phantoms

    hospital = int(name[1:])
    return (make_phantoms(args.train_images, seed=3000, hospital=hospital),
            make_phantoms(8, seed=2000, hospital=hospital), make_phantoms(args.n, seed=1000, hospital=hospital))


def _bd(ref, pts):
    bd = H.bd_dice(ref, pts)
    return None if bd is None else round(bd, 1)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sets", default="mr")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--shot", type=int, default=0, help="which of the 8 shots (K=1)")
    p.add_argument("--n", type=int, default=16)
    a = p.parse_args()
    args = H.parse_args(["--n", str(a.n)])
    codec = load_codec(None)
    for name in a.sets.split(","):
        train, shots, heldout = _data(name, args)
        seg = H.site_segmenter(name, train, args)[0]
        hevc = H.stored_points(args.out, name)
        ref = evaluate_codec(codec, seg, heldout)
        print(name, "pretrained", [(round(r["bpp"], 4), round(r["dice"], 3)) for r in ref], "BDx265", _bd(hevc, ref),
              flush=True)
        for v in a.variants.split(","):
            adapted, t = copy.deepcopy(codec), time.time()
            r = adapt(adapted, seg, shots[a.shot:a.shot + 1], AdaptConfig(device="cpu", **VARIANTS[v]))
            pts = evaluate_codec(adapted, seg, heldout)
            print(name, v, "top", round(pts[-1]["dice"], 3), "vs", round(ref[-1]["dice"], 3), "BDvsPre", _bd(ref, pts),
                  "BDx265", _bd(hevc, pts), "curve", [(round(x["bpp"], 3), round(x["dice"], 3)) for x in pts], "|",
                  r.reason, f"{time.time() - t:.0f}s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
