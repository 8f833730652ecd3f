"""The experiments researchers ask for, with small settings, through the real ServerApp and ClientApp (in-process
Grid, no Ray: the apps are the same; Ray only schedules them).

(a) K = 1, 2, 4, 8 shots; (b) trained subset (policy / adapters / both): bytes per round against BD-rate gain;
(c) federated vs local-only vs centralized pooled vs no adaptation; (d) central DP, epsilon in {1, 3, 8, none}
at 100 and 1,000 hospitals (``benchmarks/dp_frontier.py``'s emulation: 20 hospitals trained for real per
round, Flower's DP wrapper and accountant on all of them); (e) 20 % dropouts and 10 % malicious (sign-flip)
hospitals with FedAvg, median, trimmed mean and Krum; (f) non-IID: 8 hospitals with different random shifts and
one shot, 1-8 shots, or 8 shots each.

Every BD-rate is bpp vs Dice (pchip, real bitstreams, all 8 qualities) of the adapted codec against the
pretrained one on held-out phantoms (seed 1000, never trained on) of the participating hospitals, negative =
fewer bits for the same Dice. Settings: embedded default codec, ``--rounds`` 3 x ``--local-steps`` 10,
crop 128.

    python -m simulations.experiments                     # all, about an hour on a busy 2-core machine
    python -m simulations.experiments --only a,e          # some of them
Results: simulations/results/experiments.json, experiments.md and one plot per experiment.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", default="a,b,c,d,e,f")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--local-steps", type=int, default=10)
    p.add_argument("--eval-images", type=int, default=1, help="held-out phantoms per evaluated hospital")
    p.add_argument("--eval-hospitals", type=int, default=4, help="at most this many participants evaluated")
    p.add_argument("--out", default=str(ROOT / "simulations" / "results"))
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--quick", action="store_true", help="tiny settings (checks that the script runs)")
    args = p.parse_args(argv)
    if args.quick:
        args.rounds, args.local_steps = 1, 1
    return args


class Lab:
    """Shared pieces: the pretrained codec, the held-out sets and their evaluation, federated runs."""

    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        from fedcodec.model_io import load_codec, load_task

        self.args, self.work = args, work
        self.base = load_codec(None)
        self.task = load_task(None)
        self.qualities = list(range(self.base.num_qualities))
        self._held: dict[int, list] = {}
        self._pretrained: dict[tuple, list] = {}
        self.n = 0

    def held_out(self, h: int) -> list:
        from fedcodec.data import make_phantoms

        if h not in self._held:
            self._held[h] = make_phantoms(self.args.eval_images, seed=1000, size=256, hospital=h)
        return self._held[h]

    def curve(self, codec_for: Any, hospitals: list[int]) -> list[dict]:
        from federated import curve

        from fedcodec.evaluate import evaluate_codec

        return curve([evaluate_codec(codec_for(h), self.task, self.held_out(h), qualities=self.qualities)
                      for h in hospitals])

    def pretrained(self, hospitals: list[int]) -> list[dict]:
        key = tuple(hospitals)
        if key not in self._pretrained:
            self._pretrained[key] = self.curve(lambda h: self.base, hospitals)
        return self._pretrained[key]

    def bd(self, curve: list[dict], hospitals: list[int]) -> float | None:
        from federated import bd_vs

        return bd_vs(self.pretrained(hospitals), curve).get("bd_rate_percent")

    def federate(self, n: int, overrides: dict, hospital_ids: list[int]) -> dict:
        """A federated run of ``n`` simulated hospitals (partition p plays ``hospital_ids[p]``); BD-rate on the
        held-out phantoms of the first ``--eval-hospitals`` participants."""
        from fedcodec.model_io import load_codec
        from simulations.inprocess import run_inprocess

        self.n += 1
        out = self.work / f"run{self.n:03d}"
        rc = {"num-server-rounds": self.args.rounds, "local-steps": self.args.local_steps, "shots": 1,
              "sim.hospitals": ",".join(str(h) for h in hospital_ids), "min-available-hospitals": n,
              "min-train-hospitals": n, "min-evaluate-hospitals": 1, "fraction-evaluate": 0.0,
              "evaluate-before": False, "train-dice": False, "eval-samples": 1, "wait-for-hospitals": 5,
              "out-dir": str(out), "threads": self.args.threads, **overrides}
        t0 = time.perf_counter()
        summary, _ = run_inprocess(rc, n)
        codec = load_codec(out / "adapted_codec.pt")
        evaluated = hospital_ids[:self.args.eval_hospitals]
        c = self.curve(lambda h: codec, evaluated)
        return {"bd_rate_percent": self.bd(c, evaluated), "curve": c, "evaluated_hospitals": evaluated,
                "bytes_per_round_down": summary["bytes_per_client_per_round_down"],
                "bytes_per_round_up": summary["bytes_per_client_per_round_up"],
                "rejected_updates": summary["rejected_updates"], "failed_replies": summary["failed_replies"],
                "rounds_completed": summary["rounds_completed"], "seconds": round(time.perf_counter() - t0, 1),
                "settings": {k: v for k, v in overrides.items()}}


def exp_a(lab: Lab) -> dict:
    hs = [1, 2, 3, 4]
    return {f"K={k}": lab.federate(4, {"shots": k}, hs) for k in (1, 2, 4, 8)}


def exp_b(lab: Lab) -> dict:
    hs = [1, 2, 3, 4]
    res = {g: lab.federate(4, {"groups": g}, hs) for g in ("policy", "adapters", "policy,adapters")}
    full = lab.base.state_dict()
    res["full (reference, not run)"] = {
        "bd_rate_percent": None, "bytes_per_round_down": int(sum(v.numel() * v.element_size() for v in full.values())),
        "note": "full fine-tuning is not a federated mode (entropy models and GDN cannot train under the "
                "subset exchange); only its message size is shown"}
    return res


def exp_c(lab: Lab, fed_k1: dict | None) -> dict:
    from clients.site import adapt_config
    from fedcodec.adapt import adapt
    from fedcodec.data import make_phantoms

    hs = [1, 2, 3, 4]
    fed = fed_k1 or lab.federate(4, {}, hs)
    steps_rc = {"local-steps": lab.args.rounds * lab.args.local_steps}
    cfg = adapt_config(steps_rc, lab.base.num_qualities, ("policy", "adapters"),
                       has_training_loss=lab.base.training_loss is not None)
    shots = {h: make_phantoms(1, seed=0, size=256, hospital=h) for h in hs}
    local = {}
    for h in hs:
        local[h] = copy.deepcopy(lab.base)
        adapt(local[h], lab.task, shots[h], cfg)
    pooled = copy.deepcopy(lab.base)
    adapt(pooled, lab.task, [s for h in hs for s in shots[h]], cfg)
    out = {"no adaptation": {"bd_rate_percent": 0.0}, "federated (FedAvg)": fed}
    c = lab.curve(lambda h: local[h], hs)
    out["local only (each hospital alone)"] = {"bd_rate_percent": lab.bd(c, hs), "curve": c}
    c = lab.curve(lambda h: pooled, hs)
    out["centralized (pooled shots)"] = {"bd_rate_percent": lab.bd(c, hs), "curve": c}
    return out


def exp_d(lab: Lab) -> dict:
    """Central DP at 100 and 1,000 hospitals for epsilon 1, 3, 8 (noise from Flower's accountant) and none."""
    import dp_frontier
    from flwr.serverapp import (GaussianPrivacyEvent, NeighboringRelation, PrivacyConfig, RdpAccountant,
                                SamplingMethod)

    def epsilon(z: float, rounds: int, n: int) -> float:
        acc = RdpAccountant(PrivacyConfig(target_delta=1 / n, population_size=n,
                                          neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
                                          sampling_method=SamplingMethod.NO_AMPLIFICATION))
        acc.compose(GaussianPrivacyEvent(noise_multiplier=z, sample_size=n, population_size=n), count=rounds)
        return acc.get_epsilon(1 / n)

    def noise_for(eps: float, rounds: int, n: int) -> float:
        lo, hi = 0.05, 100.0
        for _ in range(50):
            mid = (lo * hi) ** 0.5
            lo, hi = (lo, mid) if epsilon(mid, rounds, n) <= eps else (mid, hi)
        return round(hi, 3)

    out = {}
    for n in (100, 1000):
        settings = [f"{lab.args.rounds}:{noise_for(e, lab.args.rounds, n)}" for e in (1, 3, 8)]
        res_dir = lab.work / f"dp-{n}"
        dp_frontier.main(["--population", str(n), "--per-round", str(n), "--settings", *settings,
                          "--local-steps", str(lab.args.local_steps), "--eval-hospitals", "4",
                          "--eval-samples", str(lab.args.eval_images), "--out", str(res_dir),
                          "--work", str(lab.work / f"dp-{n}-runs")] + (["--distinct", "4"] if lab.args.quick else []))
        rows = json.loads((res_dir / "dp_frontier.json").read_text())["rows"]
        out[f"{n} hospitals"] = [{"target_epsilon": None if r["noise_multiplier"] is None else
                                  [1, 3, 8][[float(s.split(':')[1]) for s in settings].index(r["noise_multiplier"])],
                                  "noise_multiplier": r["noise_multiplier"], "epsilon": r["epsilon"],
                                  "bd_rate_percent": r["bd_rate_vs_pretrained"].get("bd_rate_percent"),
                                  "clip": r["clip"], "per_round": r["per_round"]} for r in rows]
    return out


def exp_e(lab: Lab) -> dict:
    from simulations.scenario import RANDOM_SHIFT_BASE

    n = 10
    hs = [RANDOM_SHIFT_BASE + p for p in range(n)]
    faults = {"sim.dropout": 0.2, "sim.attack": "sign-flip", "sim.attack-partitions": "3", "max-update-norm": 0.0,
              "min-train-hospitals": 1}
    out = {"FedAvg, no faults": lab.federate(n, {"max-update-norm": 0.0}, hs)}
    for name, extra in (("FedAvg", {}), ("median", {"strategy": "median"}),
                        ("trimmed mean (beta 0.2)", {"strategy": "trimmed-mean"}),
                        ("Krum (f=1)", {"strategy": "krum", "krum.num-malicious": 1})):
        out[f"{name}, 20% dropout + 10% sign-flip"] = lab.federate(n, {**faults, **extra}, hs)
    return out


def exp_f(lab: Lab) -> dict:
    from simulations.scenario import RANDOM_SHIFT_BASE

    n = 8
    rnd = [RANDOM_SHIFT_BASE + p for p in range(n)]
    return {"8 random shifts, 1 shot each": lab.federate(n, {}, rnd),
            "8 random shifts, 1, 2, 4 or 8 shots": lab.federate(n, {"shots": 8, "sim.shots": "1,2,4,8"}, rnd),
            "8 random shifts, 8 shots each (reference)": lab.federate(n, {"shots": 8}, rnd)}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)   # 2 threads per process oversubscribe a busy 2-core machine
    only = {x.strip() for x in args.only.split(",")}
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"settings": vars(args), "date": time.strftime("%Y-%m-%d %H:%M"),
                               "cpus": os.cpu_count()}
    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="fedcodec-exp-") as tmp:
        lab = Lab(args, Path(tmp))
        for key, fn in (("a", exp_a), ("b", exp_b), ("c", None), ("d", exp_d), ("e", exp_e), ("f", exp_f)):
            if key not in only:
                continue
            t0 = time.perf_counter()
            if key == "c":
                results[key] = exp_c(lab, (results.get("b") or {}).get("policy,adapters"))
            else:
                results[key] = fn(lab)
            print(f"experiment ({key}) done in {time.perf_counter() - t0:.0f} s: "
                  f"{json.dumps(headline(key, results[key]))}", flush=True)
            results["seconds"] = round(time.perf_counter() - t_all, 1)
            (out / "experiments.json").write_text(json.dumps(results, indent=2, default=float))
    write_md(out / "experiments.md", results)
    plot(out, results)
    print((out / "experiments.md").read_text())
    return 0


def headline(key: str, res: dict) -> dict:
    if key == "d":
        return {n: [(r["target_epsilon"], r["bd_rate_percent"]) for r in rows] for n, rows in res.items()}
    return {name: r.get("bd_rate_percent") for name, r in res.items()}


def _pct(v: Any) -> str:
    return "n/a" if v is None else f"{v:+.1f} %"


def write_md(path: Path, results: dict) -> None:
    s = results["settings"]
    lines = [f"Settings: embedded default codec, {s['rounds']} rounds x {s['local_steps']} local steps, "
             f"{s['eval_images']} held-out phantom(s) per evaluated hospital (at most {s['eval_hospitals']}), "
             f"all 8 qualities; BD-rate vs the pretrained codec (negative = fewer bits at equal Dice). "
             f"{results['date']}, {results.get('seconds', 0):.0f} s in all.", ""]
    titles = {"a": "(a) shots per hospital (4 hospitals, shifts 1-4)",
              "b": "(b) trained subset (4 hospitals, K=1): bytes per hospital and round",
              "c": "(c) federated vs local-only vs centralized vs none (4 hospitals, K=1)",
              "e": "(e) 10 hospitals (random shifts), 20 % dropouts, hospital 4 sends 10x sign-flipped updates "
                   "(no norm bound)",
              "f": "(f) non-IID: 8 hospitals with different random shifts (evaluated on 4 of them)"}
    for key in ("a", "b", "c", "e", "f"):
        if key not in results:
            continue
        lines += [f"### {titles[key]}", "", "| setting | BD-rate vs pretrained | bytes down / up per round | "
                  "rejected / failed replies |", "|---|---|---|---|"]
        for name, r in results[key].items():
            down, up = r.get("bytes_per_round_down"), r.get("bytes_per_round_up")
            b = "-" if down is None else f"{down / 1024:,.1f} KB / {(up or 0) / 1024:,.1f} KB"
            rf = "-" if r.get("rejected_updates") is None else f"{r['rejected_updates']} / {r['failed_replies']}"
            lines.append(f"| {name} | {_pct(r.get('bd_rate_percent'))} | {b} | {rf} |")
        lines.append("")
    if "d" in results:
        lines += ["### (d) client-level central DP at 100 and 1,000 hospitals (all sampled every round, delta = 1/N)",
                  "", "| hospitals | target epsilon | noise multiplier | epsilon (Flower) | BD-rate vs pretrained |",
                  "|---|---|---|---|---|"]
        for n, rows in results["d"].items():
            for r in rows:
                lines.append(f"| {n} | {r['target_epsilon'] or 'none'} | {r['noise_multiplier'] or '-'} | "
                             f"{'-' if r['epsilon'] is None else format(r['epsilon'], '.2f')} | "
                             f"{_pct(r['bd_rate_percent'])} |")
        lines.append("")
    path.write_text("\n".join(lines))


def plot(out: Path, results: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [k for k in ("a", "b", "c", "d", "e", "f") if k in results]
    cols = min(3, len(panels))
    rows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.9 * rows), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    for ax, key in zip(axes.flat, panels):
        res = results[key]
        if key == "d":
            for n, rows in res.items():
                pts = [(r["epsilon"], r["bd_rate_percent"]) for r in rows if r["epsilon"] and r["bd_rate_percent"] is not None]
                ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=n)
                ref = [r["bd_rate_percent"] for r in rows if r["epsilon"] is None]
                if ref and ref[0] is not None:
                    ax.axhline(ref[0], ls="--", lw=1)
            ax.set(xlabel="epsilon (delta = 1/N)", ylabel="BD-rate vs pretrained (%)", title="(d) central DP")
            ax.legend(fontsize=7)
        elif key == "b":
            for name, r in res.items():
                if r.get("bd_rate_percent") is not None:
                    ax.scatter(r["bytes_per_round_down"] / 1024, r["bd_rate_percent"])
                    ax.annotate(name, (r["bytes_per_round_down"] / 1024, r["bd_rate_percent"]), fontsize=7)
            ax.set(xlabel="KB per hospital and round (down)", ylabel="BD-rate vs pretrained (%)", title="(b) subset")
        else:
            names = list(res)
            vals = [res[n].get("bd_rate_percent") for n in names]
            ax.barh(range(len(names)), [v if v is not None else 0 for v in vals])
            ax.set_yticks(range(len(names)), [n[:40] for n in names], fontsize=7)
            ax.set(xlabel="BD-rate vs pretrained (%)", title=f"({key})")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "experiments.png", dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
