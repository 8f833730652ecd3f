"""Round time and peak memory of the real Flower app (``flwr run``, Ray) at 10, 100, 1,000 and 10,000 hospitals.

Each scale runs the ``scale-1000`` scenario with only the number of hospitals changed (20 train and 10 evaluate
per round, or all of them when fewer, 1 shot, 3 rounds, seeded random shifts, the embedded default codec)
through ``python -m simulations.run`` in a fresh process, which samples the memory of its whole process tree
(SuperLink, simulation, Ray and its workers). Results: ``benchmarks/results/scale/scale.json`` and
``scale.md``; each run's folder (report, metrics, checkpoints, log) under ``--work``.

    python benchmarks/scale.py                       # 10, 100, 1000, 10000
    python benchmarks/scale.py --hospitals 10 100 --out /tmp/scale
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def scenario_text(hospitals: int, rounds: int) -> str:
    base = (ROOT / "simulations" / "scenarios" / "scale-1000.toml").read_text()
    train, evaluate = min(20, hospitals), min(10, hospitals)
    text = re.sub(r"(?m)^hospitals = \d+", f"hospitals = {hospitals}", base)
    text = re.sub(r"(?m)^train-per-round = \d+", f"train-per-round = {train}", text)
    text = re.sub(r"(?m)^evaluate-per-round = \d+", f"evaluate-per-round = {evaluate}", text)
    text = re.sub(r"(?m)^rounds = \d+", f"rounds = {rounds}", text)
    text = re.sub(r'(?m)^name = ".*"', f'name = "scale-{hospitals}"', text)
    return re.sub(r'(?m)^description = ".*"', f'description = "{hospitals} hospitals, {train} train and '
                  f'{evaluate} evaluate per round, 1 shot, {rounds} rounds"', text)


def run_scale(hospitals: int, rounds: int, out: Path, port: int, timeout: float) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    scenario = out / f"scale-{hospitals}.toml"
    scenario.write_text(scenario_text(hospitals, rounds))
    run_dir = out / f"scale-{hospitals}"
    cmd = [sys.executable, "-W", "ignore", "-m", "simulations.run", "--scenario", str(scenario), "--out", str(run_dir),
           "--flwr-home", str(out / "flwr-home"), "--port", str(port), "--timeout", str(timeout)]
    t0 = time.monotonic()
    with open(out / f"scale-{hospitals}.log", "w") as log:
        proc = subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, timeout=timeout + 300)
    row = {"hospitals": hospitals, "exit_code": proc.returncode, "seconds": round(time.monotonic() - t0, 1)}
    report_path = run_dir / "report.json"
    if report_path.is_file():
        rep = json.loads(report_path.read_text())
        times = [r["seconds"] for r in rep["rounds"] if r["round"] > 0]
        row.update({"status": rep["status"], "wall_s": rep["wall_s"], "peak_rss_mb": rep["peak_rss_mb"],
                    "peak_pss_mb": rep["peak_pss_mb"], "round0_s": next((r["seconds"] for r in rep["rounds"]
                                                                          if r["round"] == 0), None),
                    "round_s": times, "median_round_s": statistics.median(times) if times else None,
                    "trained_per_round": [r["hospitals"] for r in rep["rounds"] if r["round"] > 0],
                    "dice_before_after": [rep["summary"].get("before", {}) and rep["summary"]["before"]["eval_dice"],
                                          rep["summary"].get("after", {}) and rep["summary"]["after"]["eval_dice"]]
                    if rep.get("summary") else None})
    return row


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--hospitals", type=int, nargs="+", default=[10, 100, 1000, 10000])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "scale"))
    p.add_argument("--work", default="~/.fedcodec/benchmarks/scale", help="the runs' folders")
    p.add_argument("--port", type=int, default=39691)
    p.add_argument("--timeout", type=float, default=1800)
    args = p.parse_args()
    out = Path(args.out).resolve()
    work = Path(args.work).expanduser().resolve() / time.strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for n in args.hospitals:
        print(f"scale {n}: running ...", flush=True)
        row = run_scale(n, args.rounds, work, args.port, args.timeout)
        rows.append(row)
        print(f"scale {n}: {json.dumps(row)}", flush=True)
    import torch

    meta = {"machine": platform.node(), "cpus": os.cpu_count(), "python": platform.python_version(),
            "torch": torch.__version__, "flwr": __import__("flwr").__version__, "ray": __import__("ray").__version__,
            "gpu": torch.cuda.is_available(), "command": " ".join(["python"] + sys.argv),
            "date": time.strftime("%Y-%m-%d %H:%M"), "load_average_at_end": os.getloadavg()}
    (out / "scale.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    lines = ["| hospitals | trained / round | median round (s) | round 0 incl. Ray start (s) | wall (s) | "
             "peak RSS sum (MiB) | peak PSS (MiB) | status |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['hospitals']:,} | {max(r.get('trained_per_round') or [0])} | "
                     f"{r.get('median_round_s') or float('nan'):.1f} | {r.get('round0_s') or float('nan'):.1f} | "
                     f"{r.get('wall_s') or float('nan'):.1f} | {r.get('peak_rss_mb') or float('nan'):,.0f} | "
                     f"{r.get('peak_pss_mb') or float('nan'):,.0f} | {r.get('status', 'failed')} |")
    (out / "scale.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0 if all(r.get("status") == "finished:completed" for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
