"""Client-level central DP at hundreds to thousands of hospitals: where does it pay off?

For a federation of ``--population`` hospitals (1 shot each; ``--shifts table``: partition p plays the shifted
hospital 1 + (p mod 4), ``random``: its own seeded random shift), this runs the real
ServerApp logic (``server.federation.run_federation``: Flower's ``DifferentialPrivacyClientSideFixedClipping``
with Flower's ``RdpAccountant``, the fixed-clipping mod in the real ClientApp, validation, export) for each
(rounds R, noise multiplier z, hospitals per round n), and measures:

- epsilon at delta = 1/population from Flower's accountant (no amplification by sampling: Flower's accounted
  fixed-clipping mode supports only that, so epsilon depends on z and R, not on n);
- the BD-rate (bpp vs Dice, pchip) of the exported codec against the pretrained one on held-out phantoms
  (never trained on) of hospitals 1-4 (``table``) or of unseen hospitals of the same distribution
  (``random``), at all qualities, and the share of the non-DP federated gain it keeps.

Emulation, stated plainly: training n distinct hospitals per round costs n local adaptations on this 2-core
machine. Each round trains ``--distinct`` (20) sampled hospitals for real and the other n - 20 sampled nodes
reply with copies of those clipped updates (:class:`ReplicatingGrid`). Flower's wrapper then adds its noise
(std z * C / n) to the mean of n replies exactly as it would; what is emulated is only the signal: the mean of
20 real hospitals' clipped updates stands for the mean of n (equal in expectation when hospitals come from the
same shift distribution, with less averaging of the hospitals' own variation). ``--check-distinct N`` reruns one
point with N hospitals trained for real to measure the difference.

The clipping norm is calibrated once on the non-DP reference: the median L2 norm of the round-1 updates of the
simulated hospitals (a public calibration on phantoms, not on any site's data).

    python benchmarks/dp_frontier.py                      # population 1000, n in 100 200 500 1000
    python benchmarks/dp_frontier.py --quick              # tiny settings to check the script
Results: benchmarks/results/dp_frontier/{dp_frontier.json,dp_frontier.md,dp_frontier.png}.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from simulations.inprocess import InProcessGrid, _set_task_identity  # noqa: E402


class ReplicatingGrid(InProcessGrid):
    """An in-process Grid that trains only the first ``distinct`` messages of a round for real and answers the
    others with copies of those replies (see the module docstring). Evaluate messages are all real."""

    def __init__(self, client_app: Any, num_nodes: int, run_config: dict, distinct: int) -> None:
        super().__init__(client_app, num_nodes, run_config)
        self.distinct = distinct
        self.real_replies = 0
        self.copied_replies = 0

    def send_and_receive(self, messages, *, timeout=None):
        from flwr.app import Message

        messages = list(messages)
        if not messages or not messages[0].metadata.message_type.startswith("train"):
            return super().send_and_receive(messages, timeout=timeout)
        real = list(super().send_and_receive(messages[:self.distinct], timeout=timeout))
        self.sent, self.received = self.sent[-len(real):], self.received[-len(real):]   # keep memory flat
        out = list(real)
        _set_task_identity(0)
        for i, m in enumerate(messages[self.distinct:]):
            src = real[i % len(real)]
            delivered = Message(content=m.content, dst_node_id=m.metadata.dst_node_id,
                                message_type=m.metadata.message_type)
            out.append(Message(src.error, reply_to=delivered) if src.has_error()
                       else Message(content=copy.deepcopy(src.content), reply_to=delivered))
        self.real_replies += len(real)
        self.copied_replies += len(out) - len(real)
        return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--population", type=int, default=1000)
    p.add_argument("--per-round", type=int, nargs="+", default=[100, 200, 500, 1000])
    p.add_argument("--settings", nargs="+", default=["3:1.0", "5:1.2"], metavar="ROUNDS:NOISE",
                   help="(rounds, noise multiplier) pairs; the defaults give epsilon about 7 at delta 1/1000")
    p.add_argument("--distinct", type=int, default=20, help="hospitals trained for real per round")
    p.add_argument("--local-steps", type=int, default=10)
    p.add_argument("--clip", default="auto", help="clipping norm, or auto (median round-1 update norm)")
    p.add_argument("--shifts", choices=("table", "random"), default="table",
                   help="table: partition p plays hospital 1 + (p mod 4) (the shifted hospitals 1-4 of the README), "
                        "evaluated on held-out phantoms of hospitals 1-4; random: every partition its own seeded "
                        "random shift, evaluated on unseen hospitals of that distribution")
    p.add_argument("--eval-hospitals", type=int, default=4)
    p.add_argument("--eval-samples", type=int, default=1)
    p.add_argument("--check-distinct", type=int, default=0, metavar="N",
                   help="also run the first setting at n = N with all N hospitals trained for real")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "dp_frontier"))
    p.add_argument("--work", default="~/.fedcodec/benchmarks/dp_frontier")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--quick", action="store_true", help="tiny settings (checks that the script runs)")
    args = p.parse_args(argv)
    if args.quick:
        args.population, args.per_round, args.settings = 40, [20, 40], ["2:1.0"]
        args.distinct, args.local_steps, args.eval_hospitals, args.eval_samples = 4, 2, 2, 1
        if args.out == str(ROOT / "benchmarks" / "results" / "dp_frontier"):
            args.out = str(ROOT / "benchmarks" / "results" / "dp_frontier_quick")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    # One thread: on a busy 2-core machine two threads per process oversubscribe the cores.
    torch.set_num_threads(args.threads)

    from clients.client_app import app as client_app
    from federated import bd_vs, curve
    from fedcodec.data import make_phantoms
    from fedcodec.evaluate import evaluate_codec
    from fedcodec.model_io import load_codec, load_task
    from server.federation import run_federation
    from simulations.scenario import RANDOM_SHIFT_BASE

    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    work = Path(args.work).expanduser().resolve() / time.strftime("%Y%m%d-%H%M%S")
    base = load_codec(None)
    task_net = load_task(None)
    qualities = list(range(base.num_qualities))
    if args.shifts == "table":
        eval_ids = [1, 2, 3, 4][:args.eval_hospitals]
        population_shift = {"sim.hospitals": "1,2,3,4"}
    else:   # held-out hospitals: unseen ids of the same seeded random-shift distribution as the population
        eval_ids = [RANDOM_SHIFT_BASE + args.population + 100 + k for k in range(args.eval_hospitals)]
        population_shift = {"sim.hospital-offset": RANDOM_SHIFT_BASE}
    held_out = {h: make_phantoms(args.eval_samples, seed=args.seed + 1000, size=256, hospital=h) for h in eval_ids}

    def measure(codec) -> list[dict]:
        return curve([evaluate_codec(codec, task_net, held_out[h], qualities=qualities) for h in eval_ids])

    t0 = time.perf_counter()
    pretrained = measure(base)
    print(f"pretrained: {len(eval_ids)} held-out hospitals x {args.eval_samples} images ({time.perf_counter() - t0:.0f} s)",
          flush=True)

    def run(rounds: int, per_round: int, noise: float | None, clip: float, distinct: int, tag: str) -> dict:
        rc = {"num-server-rounds": rounds, "local-steps": args.local_steps, "shots": 1, "seed": args.seed,
              **population_shift, "min-available-hospitals": args.population,
              "min-train-hospitals": per_round, "fraction-train": per_round / args.population,
              "fraction-evaluate": 0.0, "evaluate-before": False, "train-dice": False, "eval-samples": 1,
              "wait-for-hospitals": 5, "out-dir": str(work / tag), "export": True, "threads": args.threads}
        if noise is not None:
            rc.update({"central-dp.enabled": True, "central-dp.noise-multiplier": noise,
                       "central-dp.clipping-norm": clip, "central-dp.delta": 1.0 / args.population,
                       "central-dp.max-epsilon": 0.0})
        grid = ReplicatingGrid(client_app, args.population, rc, distinct)
        t = time.perf_counter()
        summary = run_federation(grid, rc, run_id=1)
        seconds = time.perf_counter() - t
        norms = []
        for sent, got in zip(grid.sent, grid.received):
            if got.has_content() and "arrays" in got.content:
                a, b = sent.content["arrays"], got.content["arrays"]
                norms.append(float(np.sqrt(sum(((b[k].numpy() - a[k].numpy()) ** 2).sum() for k in a.keys()))))
        adapted = load_codec(work / tag / "adapted_codec.pt")
        c = measure(adapted)
        eps = summary.get("epsilon_central") or {}
        row = {"tag": tag, "rounds": rounds, "per_round": per_round, "noise_multiplier": noise, "clip": clip,
               "distinct_trained_per_round": min(distinct, per_round), "population": args.population,
               "epsilon": eps.get("epsilon"), "delta": eps.get("delta"), "curve": c,
               "bd_rate_vs_pretrained": bd_vs(pretrained, c), "seconds": round(seconds, 1),
               "real_replies": grid.real_replies, "copied_replies": grid.copied_replies,
               "last_round_update_norms": norms, "rejected": summary.get("rejected_updates"),
               "stop_reason": summary.get("stop_reason")}
        bd = row["bd_rate_vs_pretrained"].get("bd_rate_percent")
        print(f"{tag}: epsilon {row['epsilon']}, BD-rate vs pretrained {bd}, {seconds:.0f} s", flush=True)
        return row

    settings = [(int(s.split(":")[0]), float(s.split(":")[1])) for s in args.settings]
    rows, reference = [], {}
    clip = None if args.clip == "auto" else float(args.clip)
    for rounds in sorted({r for r, _ in settings}):
        ref = run(rounds, args.distinct, None, 0.0, args.distinct, f"nodp-R{rounds}")
        if clip is None:
            clip = float(np.median(ref["last_round_update_norms"]))
            print(f"clipping norm: median update norm of the non-DP reference = {clip:.4f}", flush=True)
        reference[rounds] = ref
        rows.append(ref)
    for rounds, noise in settings:
        for n in args.per_round:
            rows.append(run(rounds, n, noise, clip, args.distinct, f"dp-R{rounds}-z{noise:g}-n{n}"))
    if args.check_distinct:
        rounds, noise = settings[0]
        n = args.check_distinct
        rows.append(run(rounds, n, noise, clip, n, f"dp-R{rounds}-z{noise:g}-n{n}-all-real"))

    subset_params = int(sum(v.numel() for v in base.group_state_dict(("policy", "adapters")).values()))
    for r in rows:
        ref = reference[r["rounds"]]["bd_rate_vs_pretrained"].get("bd_rate_percent")
        bd = r["bd_rate_vs_pretrained"].get("bd_rate_percent")
        r["kept_share_of_nodp_gain"] = (bd / ref) if (bd is not None and ref not in (None, 0) and ref < 0) else None
        if r["noise_multiplier"] is not None:
            r["noise_norm_over_clip"] = r["noise_multiplier"] * np.sqrt(subset_params) / r["per_round"]
            r["meets_target"] = bool(r["epsilon"] is not None and r["epsilon"] <= 8 and r["population"] >= 500
                                     and r["kept_share_of_nodp_gain"] is not None
                                     and r["kept_share_of_nodp_gain"] >= 0.5)
    import flwr

    meta = {"machine": platform.node(), "cpus": os.cpu_count(), "torch": torch.__version__,
            "flwr": flwr.__version__, "date": time.strftime("%Y-%m-%d %H:%M"), "command": " ".join(sys.argv),
            "clip": clip, "subset_parameters": subset_params, "eval_hospitals": eval_ids, "shifts": args.shifts,
            "eval_samples": args.eval_samples, "local_steps": args.local_steps, "distinct": args.distinct,
            "load_average_at_end": os.getloadavg(), "seconds": round(time.perf_counter() - t0, 1)}
    (out / "dp_frontier.json").write_text(json.dumps({"meta": meta, "pretrained": pretrained, "rows": rows},
                                                     indent=2, default=float))
    write_md(out / "dp_frontier.md", rows, meta)
    plot(out / "dp_frontier.png", rows, reference)
    print((out / "dp_frontier.md").read_text())
    return 0


def _f(v: Any, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def write_md(path: Path, rows: list[dict], meta: dict) -> None:
    lines = [f"Population {rows[0]['population']:,} hospitals ({meta['shifts']} shifts), 1 shot, "
             f"{meta['local_steps']} local steps, delta = "
             f"1/population, clipping norm {meta['clip']:.4f} (median non-DP update norm), "
             f"{meta['distinct']} hospitals trained for real per round.", "",
             "| rounds | noise z | hospitals / round | epsilon | noise norm / C | BD-rate vs pretrained | "
             "share of non-DP gain kept | eps <= 8 and >= half |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        bd = r["bd_rate_vs_pretrained"].get("bd_rate_percent")
        lines.append(f"| {r['rounds']} | {_f(r['noise_multiplier'], 'g') if r['noise_multiplier'] else 'no DP'} | "
                     f"{r['per_round']:,}{' (all real)' if r['tag'].endswith('all-real') else ''} | "
                     f"{_f(r['epsilon'], '.2f')} | {_f(r.get('noise_norm_over_clip'), '.2f')} | "
                     f"{_f(bd, '+.1f')}{'%' if bd is not None else ''} | "
                     f"{_f(r.get('kept_share_of_nodp_gain'), '.2f')} | "
                     f"{'yes' if r.get('meets_target') else ('-' if r['noise_multiplier'] is None else 'no')} |")
    path.write_text("\n".join(lines) + "\n")


def plot(path: Path, rows: list[dict], reference: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for (rounds, noise) in sorted({(r["rounds"], r["noise_multiplier"]) for r in rows if r["noise_multiplier"]}):
        pts = sorted((r["per_round"], r["bd_rate_vs_pretrained"].get("bd_rate_percent"), r["epsilon"]) for r in rows
                     if r["rounds"] == rounds and r["noise_multiplier"] == noise and not r["tag"].endswith("real"))
        pts = [p for p in pts if p[1] is not None]
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-",
                    label=f"R={rounds}, z={noise:g} (eps {pts[0][2]:.1f})")
        ref = reference[rounds]["bd_rate_vs_pretrained"].get("bd_rate_percent")
        if ref is not None:
            ax.axhline(ref, ls="--", lw=1, color="gray")
            ax.axhline(ref / 2, ls=":", lw=1, color="gray")
    ax.set(xscale="log", xlabel="hospitals per round", ylabel="BD-rate vs pretrained (%, lower is better)",
           title="client-level central DP (dashed: no DP; dotted: half its gain)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
