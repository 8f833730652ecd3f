"""Federated few-shot adaptation benchmark (a script, not a test).

Measures, on phantom hospitals with different domain shifts (hospital h = 1..H, K shots each, held-out
samples per hospital), for the pretrained codec (``--model``/``--task``, default: the embedded default):

- communication: bytes per client per round (down and up, as serialized ArrayRecords) and their ratio to
  the full codec's state-dict bytes; round time;
- bpp (real bytes) and Dice at every evaluated quality on each hospital's held-out samples, and BD-rate
  (bpp at equal Dice) against the non-adapted codec, for:
  ``pretrained`` (no adaptation), ``federated`` (FedAvg over the subset: the Flower apps through the
  in-process grid, i.e. the exact ServerApp/ClientApp code without Ray), ``single-site`` (each hospital
  runs ``fedcodec.adapt.adapt`` alone with the same total number of steps), ``centralized`` (one ``adapt``
  on the pooled shots of all hospitals, same number of steps);
- the epsilon reached by each DP setting tried (client-level central DP, sample-level DP-SGD), with its
  Dice/bpp.

Writes ``benchmarks/results/federated.json``, ``federated.md`` (the section), ``federated.csv`` (one row per
method/setting and quality) and ``federated.png`` (Dice vs bpp per method), and rewrites the ``federated``
section of ``BENCHMARKS.md`` (``--md``; a ``--quick`` run writes its own file under ``--out`` instead).

    python benchmarks/federated.py                                  # embedded default, small defaults
    python benchmarks/federated.py --model codec.pt --task task.pt --rounds 8 --shots 2
    python benchmarks/federated.py --quick --model /tmp/pt_smoke/codec.pt --task /tmp/pt_smoke/task.pt
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
for _p in (ROOT, ROOT / "benchmarks"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from rate_task import command_line, machine_info, machine_lines, rel, update_section  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Federated few-shot adaptation benchmark")
    p.add_argument("--model", default="", help="pretrained codec (default: embedded default)")
    p.add_argument("--task", default="", help="task network (default: embedded default)")
    p.add_argument("--hospitals", type=int, default=4)
    p.add_argument("--shots", type=int, default=1)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--local-steps", type=int, default=10)
    p.add_argument("--lr", type=float, default=0.001)
    p.add_argument("--crop", type=int, default=128)
    p.add_argument("--eval-samples", type=int, default=4)
    p.add_argument("--phantom-size", type=int, default=256)
    p.add_argument("--qualities", default="all", help='1-based list, "all" or "spread"')
    p.add_argument("--central-dp", action="append", default=None, metavar="NOISE:CLIP",
                   help="client-level central DP settings to try (default 1.0:0.5, 0.3:0.5, 0.03:0.5)")
    p.add_argument("--sample-dp", action="append", default=None, metavar="NOISE",
                   help="sample-level DP-SGD noise multipliers to try (default 1.0)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    p.add_argument("--md", default=str(ROOT / "BENCHMARKS.md"), help="the file whose federated section is rewritten")
    p.add_argument("--quick", action="store_true", help="tiny settings to check the script runs")
    args = p.parse_args(argv)
    if args.quick:
        args.hospitals, args.rounds, args.local_steps, args.eval_samples = 2, 2, 2, 1
        args.phantom_size, args.crop, args.qualities = 128, 64, "spread"
        if args.out == str(ROOT / "benchmarks" / "results"):
            args.out = str(ROOT / "benchmarks" / "results" / "federated_quick")
        if args.md == str(ROOT / "BENCHMARKS.md"):
            args.md = str(Path(args.out) / "BENCHMARKS.md")
    args.central_dp = args.central_dp or ["1.0:0.5", "0.3:0.5", "0.03:0.5"]
    args.sample_dp = args.sample_dp or ["1.0"]
    return args


def curve(points_per_hospital: list[list[dict]]) -> list[dict]:
    """Mean over hospitals (each with the same number of held-out samples) per quality."""
    out = []
    for q_points in zip(*points_per_hospital):
        out.append({"quality": q_points[0]["quality"],
                    "bpp": float(np.mean([p["bpp"] for p in q_points])),
                    "dice": float(np.mean([p["dice"] for p in q_points])),
                    "psnr": float(np.mean([p["psnr"] for p in q_points]))})
    return out


def bd_vs(reference: list[dict], test: list[dict]) -> dict:
    from fedcodec.bdrate import bd_rate

    try:
        r = bd_rate([p["bpp"] for p in reference], [p["dice"] for p in reference],
                    [p["bpp"] for p in test], [p["dice"] for p in test], method="pchip")
        return {"bd_rate_percent": r.bd_rate_percent, "dice_interval": list(r.metric_interval),
                "overlap_fraction": r.overlap_fraction}
    except Exception as exc:  # curves that do not overlap or are not monotonic enough
        return {"bd_rate_percent": None, "note": f"{type(exc).__name__}: {exc}"}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    torch.set_num_threads(max(1, args.threads))
    from clients.site import adapt_config
    from fedcodec.adapt import adapt
    from fedcodec.data import make_phantoms
    from fedcodec.evaluate import evaluate_codec, uncompressed_dice
    from fedcodec.model_io import load_codec, load_task
    from fedcodec.run_config import parse_qualities
    from simulations.inprocess import run_inprocess
    from strategies import central_dp_noise_scale

    machine = machine_info()

    t_start = time.perf_counter()
    model = str(Path(args.model).expanduser().resolve()) if args.model else ""
    task = str(Path(args.task).expanduser().resolve()) if args.task else ""
    base = load_codec(model or None)
    task_net = load_task(task or None)
    subset_params = int(sum(v.numel() for v in base.group_state_dict(("policy", "adapters")).values()))
    qualities = parse_qualities(args.qualities if args.qualities != "spread" else "", base.num_qualities,
                                default="spread")
    hospitals = list(range(1, args.hospitals + 1))
    data = {}
    for h in hospitals:
        s = make_phantoms(args.shots + args.eval_samples, seed=args.seed, size=args.phantom_size, hospital=h)
        data[h] = (s[:args.shots], s[args.shots:])

    def evaluate(codec_for: Any) -> dict:
        per_h = {h: evaluate_codec(codec_for(h), task_net, data[h][1], qualities=qualities) for h in hospitals}
        return {"curve": curve([per_h[h] for h in hospitals]),
                "per_hospital": {str(h): per_h[h] for h in hospitals}}

    base_rc = {"model-path": model, "task-path": task, "num-server-rounds": args.rounds,
               "local-steps": args.local_steps, "lr": args.lr, "shots": args.shots, "crop": args.crop,
               "sim.phantom-size": args.phantom_size, "eval-samples": args.eval_samples, "seed": args.seed,
               "min-available-hospitals": args.hospitals, "min-train-hospitals": args.hospitals,
               "min-evaluate-hospitals": args.hospitals, "fraction-evaluate": 0.0, "evaluate-before": False,
               "train-dice": False, "threads": args.threads, "wait-for-hospitals": 5}
    results: dict[str, Any] = {
        "settings": {k: v for k, v in vars(args).items()}, "machine": machine, "command": command_line(),
        "subset_parameters": subset_params,
        "model": model or "<embedded default>", "task": task or "<embedded default>",
        "qualities": [q + 1 for q in qualities], "hospitals": hospitals,
        "uncompressed_dice": {str(h): uncompressed_dice(task_net, data[h][1]) for h in hospitals},
        "methods": {}, "dp": [],
    }
    print(f"benchmark: {args.hospitals} hospitals x {args.shots} shot(s), {args.rounds} rounds x "
          f"{args.local_steps} local steps, {args.eval_samples} held-out per hospital, qualities "
          f"{[q + 1 for q in qualities]}", flush=True)

    # --- pretrained (no adaptation)
    t0 = time.perf_counter()
    results["methods"]["pretrained"] = {**evaluate(lambda h: base), "seconds": time.perf_counter() - t0}
    print(f"pretrained: evaluated in {time.perf_counter() - t0:.1f} s", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        # --- federated (FedAvg over the subset, the real apps in-process)
        t0 = time.perf_counter()
        summary, _ = run_inprocess({**base_rc, "out-dir": f"{tmp}/fedavg"}, args.hospitals)
        fed = load_codec(Path(tmp) / "fedavg" / "adapted_codec.pt")
        train_s = time.perf_counter() - t0
        results["methods"]["federated"] = {**evaluate(lambda h: fed), "train_seconds": train_s}
        results["communication"] = {
            "bytes_per_client_per_round_down": summary["bytes_per_client_per_round_down"],
            "bytes_per_client_per_round_up": summary["bytes_per_client_per_round_up"],
            "subset_state_bytes": summary["subset_state_bytes"],
            "full_codec_state_bytes": summary["full_codec_state_bytes"],
            "ratio_message_to_full_codec": summary["ratio_subset_to_full"],
            "ratio_subset_state_to_full_codec": summary["ratio_subset_state_to_full"],
            "median_round_seconds_inprocess": summary["median_round_seconds"],
        }
        print(f"federated: {train_s:.1f} s, {summary['bytes_per_client_per_round_down']} B/client/round", flush=True)

        # --- DP settings
        for setting in args.central_dp:
            noise, clip = (float(x) for x in setting.split(":"))
            rc = {**base_rc, "out-dir": f"{tmp}/cdp-{noise}-{clip}", "central-dp.enabled": True,
                  "central-dp.noise-multiplier": noise, "central-dp.clipping-norm": clip,
                  "central-dp.max-epsilon": 0.0}
            s, _ = run_inprocess(rc, args.hospitals)
            codec = load_codec(Path(rc["out-dir"]) / "adapted_codec.pt")
            ev = evaluate(lambda h, c=codec: c)
            results["dp"].append({"kind": "central (client-level)", "noise_multiplier": noise, "clipping_norm": clip,
                                  "delta": 1e-3, "rounds": s["rounds_completed"],
                                  "noise_scale": central_dp_noise_scale(noise, clip, args.hospitals, subset_params),
                                  "epsilon": (s["epsilon_central"] or {}).get("epsilon"), **ev,
                                  "bd_rate_vs_pretrained": bd_vs(results["methods"]["pretrained"]["curve"],
                                                                 ev["curve"])})
            print(f"central DP {setting}: epsilon {results['dp'][-1]['epsilon']}", flush=True)
        for setting in args.sample_dp:
            noise = float(setting)
            rc = {**base_rc, "out-dir": f"{tmp}/sdp-{noise}", "sample-dp.enabled": True,
                  "sample-dp.noise-multiplier": noise}
            s, _ = run_inprocess(rc, args.hospitals)
            codec = load_codec(Path(rc["out-dir"]) / "adapted_codec.pt")
            ev = evaluate(lambda h, c=codec: c)
            results["dp"].append({"kind": "sample-level DP-SGD", "noise_multiplier": noise, "max_grad_norm": 1.0,
                                  "delta": 1e-5, "rounds": s["rounds_completed"],
                                  "epsilon": s["epsilon_sample_max"], **ev,
                                  "bd_rate_vs_pretrained": bd_vs(results["methods"]["pretrained"]["curve"],
                                                                 ev["curve"])})
            print(f"sample DP {setting}: epsilon {results['dp'][-1]['epsilon']}", flush=True)

    # --- single-site and centralized baselines: the same adapt() with the same total number of steps
    steps_rc = {**base_rc, "local-steps": args.rounds * args.local_steps}
    cfg = adapt_config(steps_rc, base.num_qualities, ("policy", "adapters"),
                       has_training_loss=base.training_loss is not None)
    t0 = time.perf_counter()
    single = {}
    for h in hospitals:
        c = copy.deepcopy(base)
        adapt(c, task_net, data[h][0], cfg)
        single[h] = c
    results["methods"]["single-site"] = {**evaluate(lambda h: single[h]), "train_seconds": time.perf_counter() - t0}
    t0 = time.perf_counter()
    central = copy.deepcopy(base)
    adapt(central, task_net, [s for h in hospitals for s in data[h][0]], cfg)
    results["methods"]["centralized"] = {**evaluate(lambda h: central), "train_seconds": time.perf_counter() - t0}
    print("baselines done", flush=True)

    ref = results["methods"]["pretrained"]["curve"]
    for name, m in results["methods"].items():
        if name != "pretrained":
            m["bd_rate_vs_pretrained"] = bd_vs(ref, m["curve"])
        m["mean_dice"] = float(np.mean([p["dice"] for p in m["curve"]]))
        m["mean_bpp"] = float(np.mean([p["bpp"] for p in m["curve"]]))
    results["seconds"] = time.perf_counter() - t_start
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "federated.json").write_text(json.dumps(results, indent=2, default=float) + "\n")
    write_csv(results, out / "federated.csv")
    plot(results, out / "federated.png")
    section = markdown(results, out, Path(args.md))
    (out / "federated.md").write_text(section)
    update_section(args.md, "federated", section)
    print(section)
    print(f"wrote {out / 'federated.json'}, federated.csv, federated.png, federated.md and the federated section of "
          f"{args.md} ({results['seconds']:.0f} s)")
    return 0


def _rows(r: dict):
    """(method, setting, quality point) for every curve: methods, then DP settings."""
    for name, m in r["methods"].items():
        for p in m["curve"]:
            yield name, "", p
    for d in r["dp"]:
        setting = f"noise {d['noise_multiplier']}" + (f", clip {d['clipping_norm']}" if "clipping_norm" in d else "")
        for p in d["curve"]:
            yield d["kind"], setting, p


def write_csv(r: dict, path: Path) -> None:
    import csv

    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["method", "setting", "quality", "bpp", "dice", "psnr"])
        for name, setting, p in _rows(r):
            w.writerow([name, setting, p["quality"], f"{p['bpp']:.6f}", f"{p['dice']:.6f}", f"{p['psnr']:.4f}"])


def plot(r: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 5))
    curves: dict[str, list[dict]] = {}
    for name, setting, p in _rows(r):
        curves.setdefault(f"{name} ({setting})" if setting else name, []).append(p)
    for label, pts in curves.items():
        style = "--" if "DP" in label or "central" in label else "-"
        ax.plot([p["bpp"] for p in pts], [p["dice"] for p in pts], style, marker="o", ms=3, label=label)
    unc = float(np.mean(list(r["uncompressed_dice"].values())))
    ax.axhline(unc, color="grey", lw=0.8, ls=":", label=f"uncompressed ({unc:.3f})")
    ax.set_xscale("log")
    ax.set_xlabel("bpp (real bytes, log scale)")
    ax.set_ylabel("Dice of the frozen task network")
    s = r["settings"]
    ax.set_title(f"{len(r['hospitals'])} phantom hospitals, {s['shots']}-shot, {s['rounds']} rounds x "
                 f"{s['local_steps']} steps: held-out mean")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _fmt(v: Any, spec: str = ".3f") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return format(v, spec)


def markdown(r: dict, out: Path, md_path: Path) -> str:
    s = r["settings"]
    c = r["communication"]
    md_dir = md_path.resolve().parent
    unc = {h: v for h, v in r["uncompressed_dice"].items()}
    lines = [f"## Federated few-shot adaptation ({len(r['hospitals'])} phantom hospitals, {s['shots']}-shot, "
             f"{s['rounds']} rounds x {s['local_steps']} local steps)", "",
             f"Codec `{r['model']}`, task network `{r['task']}`. Phantom hospitals {r['hospitals']} (each its own "
             f"domain shift), {s['shots']} training shot(s) and {s['eval_samples']} held-out images each "
             f"({s['phantom_size']}x{s['phantom_size']}, seed {s['seed']}); curves are means over hospitals at "
             f"qualities {r['qualities']}. Uncompressed Dice per hospital: "
             + ", ".join(f"{h}: {v:.3f}" for h, v in unc.items()) + ". Federated = the real ServerApp/ClientApp "
             "through the in-process grid (FedAvg over the subset, lr "
             f"{s['lr']}); single-site = each hospital runs `fedcodec.adapt` alone on its own shot(s); "
             "centralized = one `adapt` on the pooled shots; both baselines with the same total number of steps "
             f"({s['rounds'] * s['local_steps']}). Plot: [{rel(out / 'federated.png', md_dir)}]"
             f"({rel(out / 'federated.png', md_dir)}), data: `{rel(out / 'federated.json', md_dir)}`, "
             f"`{rel(out / 'federated.csv', md_dir)}`.", "",
             "| communication | value |", "|---|---|",
             f"| adaptable subset | {r.get('subset_parameters', 0):,} parameters |",
             f"| message per client per round, down / up | {c['bytes_per_client_per_round_down'] / 1024:.1f} KB / "
             f"{c['bytes_per_client_per_round_up'] / 1024:.1f} KB |",
             f"| full codec (state dict) | {c['full_codec_state_bytes'] / 1024:.0f} KB |",
             f"| ratio (message / full codec) | {100 * c['ratio_message_to_full_codec']:.2f}% "
             f"(raw tensors {100 * c['ratio_subset_state_to_full_codec']:.2f}%) |",
             f"| median round time (in-process, {len(r['hospitals'])} hospitals in sequence) | "
             f"{_fmt(c['median_round_seconds_inprocess'], '.1f')} s |", "",
             "| method | mean bpp | mean Dice | BD-rate vs pretrained (bpp at equal Dice) | Dice interval | train s |",
             "|---|---|---|---|---|---|"]
    for name, m in r["methods"].items():
        bd = m.get("bd_rate_vs_pretrained", {}) if name != "pretrained" else {}
        bd_s = "-" if name == "pretrained" else (_fmt(bd.get("bd_rate_percent"), "+.1f") + "%"
                                                 if bd.get("bd_rate_percent") is not None else "n/a")
        iv = bd.get("dice_interval")
        lines.append(f"| {name} | {m['mean_bpp']:.4f} | {m['mean_dice']:.3f} | {bd_s} | "
                     f"{f'{iv[0]:.3f} - {iv[1]:.3f}' if iv else '-'} | {_fmt(m.get('train_seconds'), '.1f')} |")
    lines += ["", "Per quality (bpp / Dice):", "",
              "| quality | " + " | ".join(r["methods"]) + " |", "|---|" + "---|" * len(r["methods"])]
    for i, q in enumerate(r["qualities"]):
        cells = [f"{m['curve'][i]['bpp']:.4f} / {m['curve'][i]['dice']:.3f}" for m in r["methods"].values()]
        lines.append(f"| {q} | " + " | ".join(cells) + " |")
    if r["dp"]:
        lines += ["", "### Differential privacy", "",
                  "Client-level central DP: each hospital clips its update to the clipping norm C, the server adds "
                  "Gaussian noise of std sigma*C/n per coordinate to the mean of n updates, and Flower's RDP "
                  "accountant composes epsilon over the rounds. *noise/update* is the expected noise norm "
                  "over the mean update's largest possible norm, sigma*sqrt(d)/n for d subset parameters (the "
                  "figure the server prints at start); above 1 the noise swamps the update. *n for 1x* is the "
                  "number of hospitals per round that would bring it to 1 at that sigma. Sample-level DP-SGD: "
                  "Opacus at every hospital, epsilon composed over rounds (max over hospitals).", "",
                  "| DP setting | rounds | epsilon (delta) | noise/update | n for 1x | mean bpp | mean Dice | "
                  "BD-rate vs pretrained |", "|---|---|---|---|---|---|---|---|"]
        for d in r["dp"]:
            what = (f"{d['kind']}, noise {d['noise_multiplier']}"
                    + (f", clip {d['clipping_norm']}" if "clipping_norm" in d else ""))
            ns = d.get("noise_scale") or {}
            bd = (d.get("bd_rate_vs_pretrained") or {}).get("bd_rate_percent")
            lines.append(f"| {what} | {d['rounds']} | {_fmt(d['epsilon'], '.2f')} ({d['delta']:g}) | "
                         f"{_fmt(ns.get('noise_to_update_ratio'), '.2f')} | {ns.get('hospitals_for_ratio_1', '-')} | "
                         f"{np.mean([p['bpp'] for p in d['curve']]):.4f} | "
                         f"{np.mean([p['dice'] for p in d['curve']]):.3f} | "
                         f"{_fmt(bd, '+.1f') + '%' if bd is not None else 'n/a (no Dice overlap)'} |")
    lines += ["", "### Reproduce", "", "```bash", ". .venv/bin/activate", r.get("command", "python benchmarks/federated.py"),
              "```", "", "### Run", ""]
    if r.get("machine"):
        lines += machine_lines(r["machine"])
    lines += [f"- Wall time: {r['seconds']:.0f} s.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
