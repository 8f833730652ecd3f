"""Which check on a site's unannotated archive lets K=1 adaptation keep its gains and never leave a site worse? (issue 9)

``adapt(unlabeled=)`` (:class:`fedcodec.adapt.ArchiveCheck`) judges the codec refit on the whole shot by the
scoreboard's rule for "worse" on 8 unannotated archive scans, the site segmenter's reading of each original
standing in for its annotation. On the scoreboard's draws it left 0 of 64 worse but kept only 6 adaptations
(10 and 19 kept on hospital 1 and the unseen hospital without it). This script records, for every K=1 draw and
every candidate group set that adapt's selection ranks (in its order: the refit codec of each), what any
archive rule needs, so the rules can be compared on the same draws without re-running adaptation:

- the candidate's held-out rate-Dice points (the scoreboard's evaluation: real bitstreams, the site's own
  segmenter, true masks) and so whether it leaves the site worse (``heldout.draw_summary``);
- per archive scan and quality: bpp, Dice of the segmenter's reading of the decoded scan against its reading
  of the original (what a site can compute) and against the scan's true mask (what it cannot: the oracle), for
  the 16 scans ``heldout.unannotated_scans(n=16)`` picks and the 8 it picks with ``n=8`` (the union is stored);
- the same on the shot itself (the codec was trained on it).

Rules (written down before any draw was recorded; the first ranked candidate that passes is kept, else the
pretrained codec, as adapt does; BD and top-Dice limits are heldout's WORSE_BD = 1 %, WORSE_TOP_DICE = 0.005):

- ``shots``:   no archive check (the scoreboard's protocol).
- ``a8``:      ArchiveCheck as it is: 8 scans, reading of the originals as annotation.
- ``a16``:     the same on 16 scans.
- ``oracle16``: the same on 16 scans with their true masks (not available to a site: it shows what the proxy
               annotation costs, apart from the number of scans).
- ``a16_bd``:  16 scans, BD-rate limit only (no top-quality Dice limit).
- ``a16_top``: 16 scans, top-quality Dice limit only.
- ``a16_shot``: 16 scans, but the limits relative to the shot: refuse when the archive's BD-rate exceeds the
               shot's own consistency BD-rate by more than 1 % + the limit, or its top-Dice drop exceeds the
               shot's by more than the limit (an adaptation that moves the segmenter's reading away from its
               reading of the original on the shot, where the annotation showed that move to be right, may move
               it as far on the archive).
- ``a16_shot_true`` (added after the design sets and 2 of the 40 test draws had been recorded):
               ``a16_shot``, the allowance granted only where the shot's annotation calls the move right (on the
               shot, BD-rate on true-mask Dice against the starting codec at most 0 and top-quality Dice not
               down): without that condition a codec that wrecks everything earns a wide allowance from the shot.

Design sets ``mr`` and ``h1`` (where the scoreboard's harm and the refused gains are); ``unseen`` and ``ct`` are
the test, summarised apart.

    python benchmarks/experiments/archive_rules.py --sets mr,h1,unseen,ct --draws 30 \
        --out benchmarks/results/heldout/experiment_archive_rules.json
    python benchmarks/experiments/archive_rules.py --summarize benchmarks/results/heldout/experiment_archive_rules.json

Result (2026-11-28, embedded default e5666ca6bda2, this machine's segmenters; 100 K=1 draws, 74 min;
``experiment_archive_rules.json``, its summary ``experiment_archive_rules_summary.txt``), kept / worse, and
the mean BD-rate (Dice) against the pretrained codec over all draws (a refused draw counts 0):

=============== ====================== ======================== ==============
rule            design: MR 30 + h1 30  test: unseen 30 + CT 10  all 100
=============== ====================== ======================== ==============
shots           31 / 4, -5.7 %         24 / 3, -8.8 %           55 / 7
a8 (adapt's)    6 / 1, -1.2 %          7 / 1, -1.6 %            13 / 2
a16             7 / 1, -1.3 %          6 / 1, -1.5 %            13 / 2
oracle16        16 / 2, -4.3 %         22 / 0, -9.6 %           38 / 2
a16_bd          24 / 4, -5.1 %         6 / 1, -2.1 %            30 / 5
a16_top         14 / 2, -1.9 %         9 / 2, -1.6 %            23 / 4
a16_shot        14 / 1, -3.8 %         11 / 2, -4.4 %           25 / 3
a16_shot_true   14 / 1, -3.8 %         11 / 2, -4.4 %           25 / 3
=============== ====================== ======================== ==============

What it says: the proxy annotation, not the number of scans, refuses the gains. With their true masks the same
16 scans keep 10 of hospital 1's 10 gains and 16 of the unseen hospital's 17 (0 worse on the test sets); with
the segmenter's reading of the originals 2 and 0, because every gain there lowers the scans' top-quality
consistency by 0.004-0.043 while their true-mask Dice rises: the task-trained codec makes the segmenter read
closer to the truth, which is further from what it read in the originals. Widening the limits by the shot's
own move (``a16_shot_true``) doubles the gains kept but lets one more draw through on the test sets (CT shot 3,
-21.3 % yet top-quality Dice down 0.0057, past 0.005: a CT shot's reading moved by 0.06, an allowance nothing
bounds), so it is kept as an option (``AdaptConfig.archive_relative_to_shots``), off by default. Brain MR is
beyond every archive rule measured: even the true masks let MR shot 28 (+4.9 %) and shot 17 (+1.1 %) through,
on 16 evaluation slices whose BD-rate carries a 95 % interval of about +-12 %. The shot-alone draws called
worse here (MR 12, 17, 22, 28; unseen 14; CT 3, 4) are not the scoreboard's (MR 1, 11, 18, 24, 25, 27): this
machine's segmenters were retrained and read differently; which draws cross a 1 % limit depends on them.

Uses heldout.py's data and segmenter cache (benchmarks/results/heldout/segmenters).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))

import heldout as H  # noqa: E402

import fedcodec.adapt as A  # noqa: E402
from fedcodec.evaluate import evaluate_codec  # noqa: E402
from fedcodec.model_io import load_codec  # noqa: E402

DESIGN, TEST = ("mr", "h1"), ("unseen", "ct")
RULES = ("shots", "a8", "a16", "oracle16", "a16_bd", "a16_top", "a16_shot", "a16_shot_true")


def per_scan(codec, task_net, images: torch.Tensor, reads: torch.Tensor, truth: torch.Tensor) -> list[dict]:
    """Per quality: ``{"bpp": [...], "cons": [...], "true": [...]}`` one value per scan, as ArchiveCheck reads
    (:func:`fedcodec.adapt.decoded_readings`, every quality)."""
    return [{"bpp": bpp.tolist(), "cons": cons.tolist(), "true": true.tolist()}
            for bpp, cons, true in A.decoded_readings(codec, task_net, images, range(codec.num_qualities), reads, truth)]


class Recorder:
    """Stands in for ArchiveCheck inside adapt: records each refit candidate and refuses it, so adapt refits
    every ranked candidate in turn (and then leaves the codec as it started)."""

    def __init__(self, task_net, images, truth, shot, heldout, seg, record: list):
        self.task_net, self.images, self.truth, self.shot = task_net, images, truth, shot
        self.reads = A.consistency_targets(task_net, images).float()
        self.shot_reads = A.consistency_targets(task_net, shot[0]).float()
        self.heldout, self.seg, self.record = heldout, seg, record

    def __call__(self, codec, task_net, scans, config, device, shots=None):   # adapt's ArchiveCheck(...) call
        return self

    def judge(self, codec):
        t = time.time()
        self.record.append({"points": evaluate_codec(codec, self.seg, self.heldout),
                            "archive": per_scan(codec, self.task_net, self.images, self.reads, self.truth),
                            "shot": per_scan(codec, self.task_net, self.shot[0], self.shot_reads, self.shot[1]),
                            "seconds": round(time.time() - t, 1)})
        return False, "recorded"

    def metrics(self):
        return {}


def _curve(rows: list[dict], key: str, idx: list[int]) -> list[tuple[float, float]]:
    return [(sum(r["bpp"][i] for i in idx) / len(idx), sum(r[key][i] for i in idx) / len(idx)) for r in rows]


_bd = A._bd_rate   # BD-rate (%) of one (bpp, Dice) curve against another, +inf without a common Dice range


def passes(rule: str, pre: dict, cand: dict, names: dict) -> bool:
    """Whether candidate ``cand`` passes ``rule`` against the pretrained codec's readings ``pre``."""
    if rule == "shots":
        return True
    idx = names["a8"] if rule == "a8" else names["a16"]
    key = "true" if rule == "oracle16" else "cons"
    s, n = _curve(pre["archive"], key, idx), _curve(cand["archive"], key, idx)
    bd, drop = _bd(s, n), s[-1][1] - n[-1][1]
    bd_lim, top_lim = H.WORSE_BD, H.WORSE_TOP_DICE
    if rule in ("a16_shot", "a16_shot_true"):   # ArchiveCheck.allowance's rule, on the recorded readings
        one = list(range(len(pre["shot"][0]["bpp"])))
        move = A.ShotMove.between(*([(b, c, t) for (b, c), (_, t) in zip(_curve(r["shot"], "cons", one),
                                                                         _curve(r["shot"], "true", one))]
                                    for r in (pre, cand)))
        if rule == "a16_shot" or move.right:
            bd_lim += move.bd_extra
            top_lim += move.top_extra
    ok_bd, ok_top = bd <= bd_lim, drop <= top_lim
    return {"a16_bd": ok_bd, "a16_top": ok_top}.get(rule, ok_bd and ok_top)


def summarize(path: str) -> None:
    data = json.loads(Path(path).read_text())
    for rule in RULES:
        print(f"== {rule}")
        for label, sets in (("design", DESIGN), ("test", TEST)):
            worse, kept, n, gains, per_set = [], 0, 0, [], {}
            for name in sets:
                s = data["sets"].get(name)
                if not s:
                    continue
                per_set[name] = [0, 0.0]
                for row in s["draws"]:
                    n += 1
                    pick = next((c for c in row["candidates"] if passes(rule, row["pretrained"], c, row["names"])), None)
                    if pick is None:
                        continue
                    kept += 1
                    gains.append(pick["bd_vs_pretrained"])
                    per_set[name][0] += 1
                    per_set[name][1] += (pick["bd_vs_pretrained"] or 0.0) / len(s["draws"])
                    if pick["worse"]:
                        worse.append((name, row["shot"], round(pick["bd_vs_pretrained"] or math.nan, 1)))
            mean = sum(g for g in gains if g is not None) / max(1, n)
            print(f"  {label} ({'+'.join(sets)}): {n} draws, kept {kept}, worse {len(worse)} {worse}; "
                  f"mean BD-rate vs pretrained over all draws {mean:+.1f} %; per set " + ", ".join(
                      f"{k} {per_set[k][0]} kept {per_set[k][1]:+.1f} %" for k in sets if k in per_set))


def main() -> int:
    if sys.argv[1:2] == ["--summarize"]:
        summarize(sys.argv[2])
        return 0
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sets", default="mr,h1,unseen,ct")
    p.add_argument("--draws", type=int, default=30)
    p.add_argument("--first", type=int, default=0, help="first shot index")
    p.add_argument("--n", type=int, default=16)
    p.add_argument("--out", default="/tmp/archive_rules.json")
    a = p.parse_args()
    args = H.parse_args(["--n", str(a.n)])
    codec = load_codec(None)
    out = {"command": " ".join(sys.argv), "model_id": codec.identity_hash()[:12], "sets": {}}
    original, original_train = A.ArchiveCheck, A.train_subset

    def _remembering(seen: list):
        """train_subset that notes the groups of every call (the last before a judge is the refit's)."""
        def train(codec_, task_net, samples, config_, *rest, **kw):
            seen.append(tuple(config_.groups))
            return original_train(codec_, task_net, samples, config_, *rest, **kw)
        return train
    for name in a.sets.split(","):
        train, shots, heldout = H.site_data(name, args.n, args.train_images, max(8, a.draws))
        seg = H.site_segmenter(name, train, args)[0]
        ref = evaluate_codec(codec, seg, heldout)
        config = H._adapt_config(args)
        rows = []
        for first in range(a.first, min(a.first + a.draws, len(shots))):
            group = shots[first:first + 1]
            used = {s.name for s in group}
            rest = [s for s in train if s.name not in used]
            eight = [s.name for s in H.unannotated_scans(train, group, 8)]
            sixteen = [s.name for s in H.unannotated_scans(train, group, 16)]
            union = [s for s in rest if s.name in set(eight) | set(sixteen)]
            images, truth = A.samples_to_tensors(union, config.crop)
            shot = A.samples_to_tensors(group, config.crop)
            names = {"a8": [i for i, s in enumerate(union) if s.name in eight],
                     "a16": [i for i, s in enumerate(union) if s.name in sixteen]}
            record: list = []
            groups_seen: list = []
            rec = Recorder(seg, images, truth.float(), (shot[0], shot[1].float()), heldout, seg, record)
            # the archive changes with the shot left out: the pretrained codec is read on it for every draw
            pre = {"archive": per_scan(codec, seg, images, rec.reads, truth.float()),
                   "shot": per_scan(codec, seg, shot[0], rec.shot_reads, shot[1].float())}
            t = time.time()
            A.ArchiveCheck, A.train_subset = rec, _remembering(groups_seen)
            try:
                # any non-None unlabeled makes adapt build its archive check, here the recorder (which reads
                # its own scans); the shot is passed only as a placeholder
                r = A.adapt(copy.deepcopy(codec), seg, group, config, unlabeled=list(group))
            finally:
                A.ArchiveCheck, A.train_subset = original, original_train
            cands = []
            for c, groups in zip(record, groups_seen[-len(record):] if record else []):
                c["groups"] = list(groups)
                summary = H.draw_summary(first, {"points": c["points"], "kept": 1.0, "selection": ""}, ref, None)
                cands.append({**c, "bd_vs_pretrained": summary["bd_vs_pretrained"], "worse": summary["worse"],
                              "top_dice": summary["top_dice"]})
            row = {"shot": first, "selection": r.reason, "candidates": cands, "pretrained": pre, "names": names,
                   "seconds": round(time.time() - t, 1)}
            rows.append(row)
            print(name, "shot", first, "candidates", len(cands), "BD vs pretrained",
                  [round(c["bd_vs_pretrained"], 1) if c["bd_vs_pretrained"] is not None else None for c in cands],
                  "worse", [c["worse"] for c in cands], f"{time.time() - t:.0f}s", flush=True)
            out["sets"][name] = {"pretrained_points": ref, "draws": rows}
            Path(a.out).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
