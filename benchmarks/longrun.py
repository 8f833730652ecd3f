"""Long-run check of the federation server: memory (RSS) over many rounds with many hospitals (a script).

Runs the real ServerApp logic (:func:`server.federation.run_federation`) and the real ClientApp through the
in-process grid (:mod:`simulations.inprocess`, no Ray, no SuperLink) for ``--rounds`` rounds with
``--hospitals`` hospitals, every hospital training and evaluating every round, with checkpoints, metrics
files and (by default) FedAdam or central DP, whose state (moments, accountant ledger) lives on the server.
After each round's evaluation it samples this process's resident memory (``VmRSS`` from ``/proc``) and
prints the figures every ``--every`` rounds; at the end it reports the growth between round ``--from-round``
(default 10, after the warm-up) and the last round, and exits 1 when it exceeds ``--max-growth`` (10 %).

The grid here does not keep the messages it delivered: :class:`~simulations.inprocess.InProcessGrid` keeps
every message in ``sent``/``received`` so that tests can audit them, which at 20 hospitals and 100 rounds
would be ~200 MB of test bookkeeping, not server memory.

Tiny models by default (the test suite's N=16, M=16 codec with 4 qualities), so the figure is the server's
and the ClientApp's bookkeeping, not the model's size; ``--model``/``--task`` take other ones.

    python benchmarks/longrun.py                                    # 100 rounds, 20 hospitals, FedAdam
    python benchmarks/longrun.py --central-dp                       # FedAvg + client-level central DP
    python benchmarks/longrun.py --rounds 30 --hospitals 8 --json /tmp/longrun.json
    python benchmarks/longrun.py --keep-messages                    # with the test grid's message log: a leak
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
for _p in (ROOT, ROOT / "benchmarks"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))


def rss_bytes(pid: int | str = "self") -> int:
    """Resident set size of a process (``VmRSS``), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS in /proc/{pid}/status")


def children_rss_bytes() -> int:
    """RSS of this process's children (the isolated rANS decoder helper), in bytes."""
    total = 0
    me = str(os.getpid())
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if (entry / "stat").read_text().rsplit(")", 1)[1].split()[1] == me:
                total += rss_bytes(entry.name)
        except (OSError, IndexError, RuntimeError):
            continue
    return total


def build_tiny_assets(root: Path) -> dict:
    """The test suite's tiny codec (N=16, M=16, 4 qualities) and task network, saved under ``root``."""
    import torch

    from fedcodec.codec import SemanticCodec
    from fedcodec.model_io import save_codec, save_task
    from fedcodec.task_net import build_task_network

    root.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    codec = SemanticCodec(N=16, M=16, num_qualities=4)
    codec.update(force=True)
    return {"codec": str(save_codec(codec, root / "codec.pt", overwrite=True)),
            "task": str(save_task(build_task_network((4, 8, 8, 16, 16, 4)).eval(), root / "task.pt",
                                  overwrite=True))}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Federation memory over a long run (in-process)")
    p.add_argument("--rounds", type=int, default=100)
    p.add_argument("--hospitals", type=int, default=20)
    p.add_argument("--strategy", default="fedadam", help="fedavg | fedprox | fedadam | median | trimmed-mean | krum")
    p.add_argument("--central-dp", action="store_true",
                   help="client-level central DP (forces fedavg; noise 1.0, no epsilon budget so the run goes on)")
    p.add_argument("--local-steps", type=int, default=1)
    p.add_argument("--from-round", type=int, default=10, help="the reference round of the growth figure")
    p.add_argument("--every", type=int, default=10, help="print a line every this many rounds")
    p.add_argument("--max-growth", type=float, default=0.10, help="exit 1 above this relative RSS growth")
    p.add_argument("--model", default="", help="codec file (default: a tiny codec built here)")
    p.add_argument("--task", default="", help="task network file (default: a tiny one built here)")
    p.add_argument("--out", default="", help="run folder (default: a temporary folder, deleted at the end)")
    p.add_argument("--json", default="", help="write the figures to this JSON file")
    p.add_argument("--md", default="", help="rewrite this configuration's section (longrun-STRATEGY[-dp]) of "
                   "this markdown file, e.g. BENCHMARKS.md")
    p.add_argument("--keep-messages", action="store_true",
                   help="keep the grid's log of every message (what the tests audit): shows what a leak looks like")
    a = p.parse_args(argv)
    if a.rounds <= a.from_round or a.from_round < 1:
        p.error("need 1 <= --from-round < --rounds")
    if a.hospitals < 2:
        p.error("--hospitals must be at least 2")
    if a.central_dp:
        a.strategy = "fedavg"
    return a


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    import logging

    from rate_task import command_line, machine_info

    machine = machine_info()   # before the run: the load average at start

    import torch

    torch.set_num_threads(1)
    from clients.client_app import app as client_app
    from server.federation import run_federation
    from simulations.inprocess import InProcessGrid

    # Flower logs two INFO lines per round; keep the output to the figures.
    logging.getLogger("flwr").setLevel(logging.WARNING)

    samples: dict[int, dict[str, Any]] = {}
    console = sys.stdout   # the server's own table goes to a buffer below
    t_start = time.perf_counter()

    class SamplingGrid(InProcessGrid):
        """The in-process grid, without the message log, sampling RSS after each round's evaluation."""

        def send_and_receive(self, messages, *, timeout=None):
            messages = list(messages)
            replies = super().send_and_receive(messages, timeout=timeout)
            if not a.keep_messages:
                self.sent.clear()
                self.received.clear()
            if messages and messages[0].metadata.message_type == "evaluate":
                r = int(next(iter(messages[0].content.config_records.values()))["server-round"])
                if r > 0:
                    s = {"round": r, "rss": rss_bytes(), "children_rss": children_rss_bytes(),
                         "seconds": time.perf_counter() - t_start}
                    if r % a.every == 0 or r in (a.from_round, a.rounds):
                        gc.collect()   # count live objects, not garbage waiting for the cycle collector
                        s["objects"] = len(gc.get_objects())
                        line = (f"round {r:4d}  RSS {s['rss'] / 2**20:8.1f} MiB  helper {s['children_rss'] / 2**20:6.1f}"
                                f" MiB  python objects {s['objects']:9d}  elapsed {s['seconds']:7.1f} s")
                        if a.from_round in samples:
                            ref = samples[a.from_round]["rss"]
                            line += f"  vs round {a.from_round}: {100 * (s['rss'] - ref) / ref:+.2f} %"
                        print(line, file=console, flush=True)
                    samples[r] = s
            return replies

    tmp = tempfile.TemporaryDirectory(prefix="fedcodec-longrun-")
    try:
        work = Path(tmp.name)
        assets = {"codec": a.model, "task": a.task} if a.model and a.task else build_tiny_assets(work / "assets")
        out = Path(a.out).resolve() if a.out else work / "run"
        n = a.hospitals
        rc = {"model-path": assets["codec"], "task-path": assets["task"], "out-dir": str(out),
              "num-server-rounds": a.rounds, "local-steps": a.local_steps, "crop": 64, "sim.phantom-size": 64,
              "eval-samples": 1, "eval-qualities": "1", "train-dice": False, "threads": 1,
              "min-available-hospitals": n, "min-train-hospitals": n, "min-evaluate-hospitals": n,
              "wait-for-hospitals": 5, "evaluate-before": False, "export": False, "strategy": a.strategy,
              "central-dp.enabled": a.central_dp, "central-dp.noise-multiplier": 1.0,
              "central-dp.max-epsilon": 0.0}
        print(f"longrun: {a.rounds} rounds, {n} hospitals, strategy {a.strategy}"
              f"{' + central DP' if a.central_dp else ''}, {a.local_steps} local step(s)"
              f"{', keeping every message' if a.keep_messages else ''}, run folder {out}",
              flush=True)
        grid = SamplingGrid(client_app, n, rc)
        rss_before = rss_bytes()   # torch, CompressAI, MONAI and Flower imported: the baseline of any run
        import contextlib
        import io

        quiet = io.StringIO()   # the server's per-round table (kept in metrics.json anyway)
        with contextlib.redirect_stdout(quiet):
            summary = run_federation(grid, rc, run_id=1)
        ckpt = out / "checkpoints" / "latest.pt"
        figures = {
            "rounds": a.rounds, "hospitals": n, "strategy": a.strategy, "central_dp": a.central_dp,
            "keep_messages": a.keep_messages,
            "local_steps": a.local_steps, "rounds_completed": summary["rounds_completed"],
            "from_round": a.from_round,
            "rss_from_mib": samples[a.from_round]["rss"] / 2**20, "rss_last_mib": samples[a.rounds]["rss"] / 2**20,
            "growth": (samples[a.rounds]["rss"] - samples[a.from_round]["rss"]) / samples[a.from_round]["rss"],
            "rss_first_mib": samples[1]["rss"] / 2**20, "rss_before_run_mib": rss_before / 2**20,
            "growth_mib": (samples[a.rounds]["rss"] - samples[a.from_round]["rss"]) / 2**20,
            "rss_max_mib": max(s["rss"] for s in samples.values()) / 2**20,
            "helper_rss_last_mib": samples[a.rounds]["children_rss"] / 2**20,
            "objects_from": samples[a.from_round]["objects"], "objects_last": samples[a.rounds]["objects"],
            "objects_per_round": (samples[a.rounds]["objects"] - samples[a.from_round]["objects"])
            / (a.rounds - a.from_round),
            "seconds": time.perf_counter() - t_start,
            "latest_checkpoint_bytes": ckpt.stat().st_size,
            "metrics_json_bytes": (out / "metrics.json").stat().st_size,
            "epsilon_central": (summary["epsilon_central"] or {}).get("epsilon"),
            "machine": machine, "command": command_line(),
            "per_round": [{k: v for k, v in s.items()} for _, s in sorted(samples.items())],
        }
    finally:
        tmp.cleanup()
    ok = figures["growth"] <= a.max_growth and figures["rounds_completed"] == a.rounds
    print(f"\nlongrun: {figures['rounds_completed']} rounds in {figures['seconds']:.0f} s; RSS after round "
          f"{a.from_round}: {figures['rss_from_mib']:.1f} MiB, after round {a.rounds}: {figures['rss_last_mib']:.1f} "
          f"MiB ({100 * figures['growth']:+.2f} %, {figures['growth_mib']:+.1f} MiB, limit {100 * a.max_growth:.0f} %); "
          f"before round 1 (imports done): {figures['rss_before_run_mib']:.1f} MiB, after round 1: "
          f"{figures['rss_first_mib']:.1f} MiB; max {figures['rss_max_mib']:.1f} MiB; python objects "
          f"{figures['objects_from']} -> {figures['objects_last']} ({figures['objects_per_round']:+.1f} per round); latest checkpoint "
          f"{figures['latest_checkpoint_bytes'] / 1024:.0f} KB, metrics.json {figures['metrics_json_bytes'] / 1024:.0f} KB"
          + (f"; central epsilon {figures['epsilon_central']:.2f}" if figures["epsilon_central"] else "")
          + ("" if ok else "  FAILED"), flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps(figures, indent=2) + "\n")
    if a.md:
        write_section(a.md, figures, a.max_growth, a.json)
    return 0 if ok else 1


def write_section(md: str, f: dict, limit: float, json_path: str) -> None:
    """This configuration's section of the benchmarks file."""
    from rate_task import machine_lines, rel, update_section

    label = f"{f['strategy']}{' + central DP' if f['central_dp'] else ''}"
    name = f"longrun-{f['strategy']}{'-dp' if f['central_dp'] else ''}"
    rows = [s for s in f["per_round"] if s["round"] in (1, f["from_round"], f["rounds"]) or s["round"] % 10 == 0]
    table = ["| after round | RSS (MiB) | vs round %d | rANS helper (MiB) | elapsed (s) |" % f["from_round"],
             "| --- | --- | --- | --- | --- |"]
    ref = next(s["rss"] for s in f["per_round"] if s["round"] == f["from_round"])
    for s in rows:
        table.append(f"| {s['round']} | {s['rss'] / 2**20:.1f} | {100 * (s['rss'] - ref) / ref:+.2f} % | "
                     f"{s['children_rss'] / 2**20:.1f} | {s['seconds']:.0f} |")
    verdict = "**met**" if f["growth"] <= limit and f["rounds_completed"] == f["rounds"] else "**not met**"
    body = "\n".join([
        f"## Long run: {f['rounds']} rounds, {f['hospitals']} hospitals, {label} (in-process, tiny models)", "",
        f"Every hospital trains ({f['local_steps']} local step, 64x64 phantoms) and evaluates (quality 1, one "
        "held-out phantom, real bitstreams) every round; torch runs 1 thread (run config `threads = 1`). "
        f"Resident memory of the server process (ServerApp logic and the {f['hospitals']} in-process ClientApps) "
        f"after round {f['from_round']}: {f['rss_from_mib']:.1f} MiB; after round {f['rounds']}: "
        f"{f['rss_last_mib']:.1f} MiB (**{100 * f['growth']:+.2f} %**, {f['growth_mib']:+.1f} MiB; target at most "
        f"{100 * limit:.0f} %: {verdict}). Of that, {f['rss_before_run_mib']:.0f} MiB were there before round 1 "
        "(torch, CompressAI, MONAI and Flower imported), so the percentage is diluted: the MiB figure is the one "
        f"to watch. Live Python objects {f['objects_from']} -> {f['objects_last']} "
        f"({f['objects_per_round']:+.1f} per round: the per-round history rows). Latest checkpoint "
        f"{f['latest_checkpoint_bytes'] / 1024:.0f} KB, metrics.json {f['metrics_json_bytes'] / 1024:.0f} KB"
        + (f"; central epsilon {f['epsilon_central']:.1f} (noise 1.0, no budget)" if f["epsilon_central"] else "")
        + f"; {f['seconds']:.0f} s in all.", "", *table, "",
        f"Command: `{f['command']}`" + (f"; raw results: `{rel(json_path)}`." if json_path else "."), "",
        *machine_lines(f["machine"])])
    update_section(md, name, body)


if __name__ == "__main__":
    sys.exit(main())
