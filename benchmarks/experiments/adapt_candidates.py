"""Which parameter group should K=1 adaptation train, and when should it trust the choice? (issue 9)

The scoreboard of 2026-11-28 found that neither fixed choice keeps every site from harm: adapting the policy
head and the adapters (the default) made 2 of 4 real-CT draws worse; the policy head alone made an unseen-
hospital draw and a brain-MR draw worse. This script measures, for every set and each of the 8 shots in turn
(K=1) and for K=8 on hospital 1, what each candidate group set does: adapt's own two-fold selection (its reason,
the per-fold held-out checks), and, when it keeps an adaptation, the adapted codec's BD-rate (Dice) against the
pretrained codec on the held-out images, read by the site's own segmenter (``heldout.draw_summary``).

The rules below were written down BEFORE draws 4-7 were run; draws 0-3 were what the earlier experiments had
seen (benchmarks/results/heldout/experiment_adapt_policy_only.json and results.json). Draws 4-7 are the test.

- ``both``:    the default: the policy head and the adapters, two-fold selection.
- ``policy``:  the policy head alone.
- ``ratio``:   each candidate's two-fold selection; among those that keep an adaptation, the one whose held-out
               task loss at equal rate (``equal_rate_task_ratio``, the held-out analogue of the BD-rate the site
               is judged by) is lowest.
- ``agree``:   ``ratio``, but a candidate counts only when each fold on its own passes at the chosen step count
               (objective down by ``min_gain``, no guard up): the two halves of the shot must agree.

    python benchmarks/experiments/adapt_candidates.py --sets ct,unseen,mr,h1 --draws 8 \
        --out benchmarks/results/heldout/experiment_adapt_candidates.json     # 2026-11-28, 25 min
    python benchmarks/experiments/adapt_candidates.py --summarize benchmarks/results/heldout/experiment_adapt_candidates.json

Result (2026-11-28, embedded default e5666ca6bda2): K=1 draws left worse than the pretrained codec, design draws
0-3 / test draws 4-7: ``both`` 2 of 16 (CT +95 %, +44 %) / 0 of 16; ``policy`` 2 (unseen +17.6 %, MR +4.4 %) /
1 (MR +3.5 %); ``ratio`` 1 (MR +4.4 %) / 0; ``agree`` 2 (CT +44 %, MR +4.4 %) / 0 and it refuses most gains.
``ratio`` became adapt's default (``AdaptConfig.candidates``); shot 0 vs x265 with it: CT -16.2 %, unseen -24.5 %,
MR +134.6 %, hospital 1 -35.9 % (K=1, pretrained kept) and -48.3 % (K=8). The test draws did not separate the
rules much (every rule but ``policy`` left 0 of 16 worse): the case for ``ratio`` rests on the CT draws 0 and 2.

Uses heldout.py's data, segmenter cache and stored x265 points (benchmarks/results/heldout/results.json).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))

import heldout as H  # noqa: E402

import fedcodec.adapt as A  # noqa: E402
from fedcodec.evaluate import evaluate_codec  # noqa: E402
from fedcodec.model_io import load_codec  # noqa: E402

CANDIDATES = {"both": ("policy", "adapters"), "policy": ("policy",)}


def _capture_folds():
    """Record the per-fold ``(base, checks)`` that adapt's selection averages (adapt calls combine_folds once)."""
    seen: list = []
    original = A.combine_folds

    def recording(folds):
        seen.append([(list(b), [list(c) for c in checks]) for b, checks in folds])
        return original(folds)

    return seen, recording, original


def fold_agreement(folds: list, step: int, min_gain: float) -> bool:
    """Whether every fold on its own passes at ``step``: objective below its start by ``min_gain``, every guard
    (top-quality task loss, equal-rate ratio) at or below its start."""
    for base, checks in folds:
        row = next((c for c in checks if int(c[0]) == step), None)
        if row is None or not row[1] < base[0] * (1 - min_gain):
            return False
        if any(g > b for g, b in zip(row[2:], base[1:])):
            return False
    return True


def apply_rule(row: dict, rule: str) -> dict | None:
    """The candidate ``rule`` keeps for one draw (None = neither: the pretrained codec)."""
    if rule in CANDIDATES:
        return row[rule] if row[rule]["kept"] else None
    kept = [row[c] for c in CANDIDATES if row[c]["kept"] and (rule == "ratio" or row[c]["folds_agree"])]
    return min(kept, key=lambda c: c["ratio"]) if kept else None


def summarize(path: str) -> None:
    """Per rule: K=1 draws left worse than the pretrained codec, design draws (0-3) and test draws (4-7) apart,
    and the BD-rate (Dice) vs x265 of the first shot (the scoreboard's headline)."""
    data = json.loads(Path(path).read_text())
    for rule in ("both", "policy", "ratio", "agree"):
        print(f"== {rule}")
        for label, shots in (("draws 0-3 (design)", range(4)), ("draws 4-7 (test)", range(4, 8))):
            rows = [(name, row) for name, s in data["sets"].items() for row in s["draws"]
                    if row["k"] == 1 and row["shot"] in shots]
            chosen = [(name, row["shot"], apply_rule(row, rule)) for name, row in rows]
            worse = [(n, sh, round(c["bd_vs_pretrained"], 1)) for n, sh, c in chosen if c and c["worse"]]
            print(f"  {label}: worse in {len(worse)} of {len(rows)} {worse}; BD-rate vs the pretrained codec "
                  + " ".join(f"{n}{sh}:{0.0 if c is None else round(c['bd_vs_pretrained'], 1)}" for n, sh, c in chosen))
        for name, s in data["sets"].items():
            for row in s["draws"]:
                if row["shot"] == 0:
                    c = apply_rule(row, rule)
                    print(f"  {name} K={row['k']} shot 0 vs x265: "
                          f"{round(c['bd_vs_hevc'], 1) if c else round(s['pretrained_bd_vs_hevc'], 1)} %")


def main() -> int:
    if sys.argv[1:2] == ["--summarize"]:
        summarize(sys.argv[2])
        return 0
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sets", default="h1,unseen,ct,mr")
    p.add_argument("--draws", type=int, default=8)
    p.add_argument("--first", type=int, default=0, help="first shot index")
    p.add_argument("--n", type=int, default=16)
    p.add_argument("--out", default="/tmp/adapt_candidates.json")
    a = p.parse_args()
    args = H.parse_args(["--n", str(a.n)])
    codec = load_codec(None)
    out = {"command": " ".join(sys.argv), "model_id": codec.identity_hash()[:12], "sets": {}}
    for name in a.sets.split(","):
        shots, heldout, seg, hevc, ref = H.experiment_site(name, codec, args)
        rows = []
        groups = [(1, d) for d in range(a.first, a.first + a.draws)] + ([(8, 0)] if name == "h1" else [])
        for k, first in groups:
            row = {"k": k, "shot": first}
            for cname, cgroups in CANDIDATES.items():
                adapted, t = copy.deepcopy(codec), time.time()
                seen, recording, original = _capture_folds()
                A.combine_folds = recording
                try:
                    r = A.adapt(adapted, seg, shots[first:first + k], A.AdaptConfig(device="cpu", groups=cgroups, candidates=()))
                finally:
                    A.combine_folds = original
                entry = {"kept": r.metrics["kept"], "selection": r.reason}
                summary = H.draw_summary(first, {**entry, "points": evaluate_codec(adapted, seg, heldout)
                                                 if r.metrics["kept"] else ref}, ref, hevc)
                step = int(r.metrics["selected_steps"])
                row[cname] = {**summary, "selected_steps": step,
                              "ratio": r.metrics.get("equal_rate_task_ratio"), "heldout_best": r.metrics["heldout_best"],
                              "folds_agree": bool(step and fold_agreement(seen[0], step, A.AdaptConfig.min_gain)),
                              "folds": seen[0], "seconds": round(time.time() - t, 1)}
                print(name, f"K{k}", "shot", first, cname, "kept", r.metrics["kept"], "ratio", row[cname]["ratio"],
                      "agree", row[cname]["folds_agree"], "BDvsPre", summary["bd_vs_pretrained"], "BDx265",
                      summary["bd_vs_hevc"], "worse", summary["worse"], f"{time.time() - t:.0f}s", flush=True)
            rows.append(row)
            out["sets"][name] = {"pretrained_bd_vs_hevc": H.bd_dice(hevc, ref), "draws": rows}
            Path(a.out).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
