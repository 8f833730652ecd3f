"""Run a multi-hospital scenario (a built-in name or a TOML file) with the real Flower app and write its report.

    python -m simulations.run --list
    python -m simulations.run --scenario default --out /abs/out
    python -m simulations.run --scenario my-study.toml --out /abs/out      # see simulations/scenario.py
    python -m simulations.run --scenario central-dp --rounds 8 --model /path/codec.pt --task /path/task.pt
    python -m simulations.run --scenario dropouts --set local-steps=10 --set seed=3
    python -m simulations.run --scenario scale-1000 --out /abs/out       # 1,000 virtual hospitals
    python -m simulations.run --scenario default --ray-address 127.0.0.1:6379   # an existing Ray cluster
    python -m simulations.run --scenario many-hospitals --inprocess      # no Ray/SuperLink (debugging)

It drives ``flwr run . --run-config ... --federation-config "num-supernodes=N client-resources-num-cpus=1"
--stream`` with a dedicated FLWR_HOME (``~/.fedcodec/flwr-home`` by default) and its own local-SuperLink
ports, so it never talks to another SuperLink. ``flwr run --stream`` exits 0 even when the run fails, so the
outcome is read from ``flwr list --run-id ID --format json``. The runner starts the local simulation SuperLink
itself (same command as ``flwr run``'s auto-start, which allows only 15 s to come up) and stops it by PID
afterwards (unless ``--keep-superlink``). Outputs (metrics, checkpoints, adapted codec,
``report.json``/``report.csv``/``report.png``, ``flwr-run.log``, the scenario file as ``scenario.toml``) go to
``--out`` (default ``~/.fedcodec/simulations/<scenario>-<time>``). ``report.json`` records ``status``,
``wall_s`` and ``peak_rss_mb``: the peak of the summed resident memory of this process and all its descendants
(the SuperLink, the simulation process, Ray's raylet/GCS and every Ray worker), sampled twice a second, plus
``peak_pss_mb`` (shared pages counted once). With ``--ray-address`` the simulation attaches to an existing
Ray cluster (``RAY_ADDRESS``), whose processes are not descendants and are not counted.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from simulations.processes import kill_tree, pids_matching, start_local_superlink
from simulations.scenario import ScenarioError, builtin_scenarios, cuda_available, load_scenario

ROOT = Path(__file__).resolve().parents[1]


def toml_value(value: Any) -> str:
    """A run-config value as TOML for ``--run-config``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    text = str(value)
    if "'" in text:
        raise ValueError(f"run-config strings cannot contain a single quote: {text!r}")
    return f"'{text}'"


def parse_value(text: str) -> Any:
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text.strip().strip("'\"")


def build_run_config(args: argparse.Namespace, scenario_config: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    from fedcodec.run_config import DEFAULTS

    rc = dict(scenario_config)
    if args.rounds:
        rc["num-server-rounds"] = args.rounds
    if args.model:
        rc["model-path"] = str(Path(args.model).expanduser().resolve())
    if args.task:
        rc["task-path"] = str(Path(args.task).expanduser().resolve())
    for item in args.set or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set expects key=value, got {item!r}")
        rc[key.strip()] = parse_value(value)
    rc["out-dir"] = str(out_dir)
    unknown = sorted(set(rc) - set(DEFAULTS))
    if unknown:
        raise SystemExit(f"unknown run-config key(s) {unknown}; see [tool.flwr.app.config] in pyproject.toml")
    return rc


def flwr_environment(home: Path, port: int, ray_address: str = "") -> dict[str, str]:
    env = dict(os.environ)
    if ray_address:
        env["RAY_ADDRESS"] = ray_address   # ray.init() in the simulation process attaches to this cluster
    else:
        env.pop("RAY_ADDRESS", None)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env.update({"FLWR_HOME": str(home), "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1",
                "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
                "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(port), "FLWR_LOCAL_CONTROL_API_PORT": str(port + 2),
                "PYTHONWARNINGS": "ignore::FutureWarning",
                # Ray runs its workers at niceness 15 by default: simulated hospitals would crawl next to any
                # other CPU-bound process. Override with RAY_worker_niceness in the environment.
                "RAY_worker_niceness": os.environ.get("RAY_worker_niceness", "0")})
    return env


def managed_superlinks(home: Path) -> list[int]:
    return [pid for pid in pids_matching(str(home / "local-superlink")) if "flower-superlink" in _cmd(pid)]


def _cmd(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def run_with_flwr(rc: dict[str, Any], federation_config: str, out_dir: Path, home: Path, port: int, timeout: float,
                  keep_superlink: bool, ray_address: str = "") -> dict[str, Any]:
    """``flwr run`` the app; returns ``{"run_id", "status", "status_details", "seconds"}``."""
    env = flwr_environment(home, port, ray_address)
    home.mkdir(parents=True, exist_ok=True)
    before = set(managed_superlinks(home))
    run_config = " ".join(f"{k}={toml_value(v)}" for k, v in rc.items())
    cmd = ["flwr", "run", str(ROOT), "--run-config", run_config, "--federation-config", federation_config,
           "--stream"]
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    run_id = None
    superlink = None
    try:
        # Start the local SuperLink ourselves: `flwr run` allows its auto-start only 15 s.
        superlink = start_local_superlink(home, port, env)
        with open(out_dir / "flwr-run.log", "w") as log:
            proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    text=True)
            assert proc.stdout is not None
            for line in proc.stdout:
                sys.stdout.write(line)
                log.write(line)
                m = re.search(r"Successfully started run (\d+)", line)
                if m:
                    run_id = m.group(1)
                if time.monotonic() - t0 > timeout:
                    proc.kill()
                    break
            proc.wait(timeout=60)
        status = {"run_id": run_id, "status": "unknown", "status_details": "", "seconds": time.monotonic() - t0}
        if run_id:
            listing = subprocess.run(["flwr", "list", "--run-id", run_id, "--format", "json"], cwd=ROOT, env=env,
                                     capture_output=True, text=True, timeout=120)
            try:
                runs = json.loads(listing.stdout)["runs"]
                status["status"] = runs[0]["status"]
                status["status_details"] = runs[0].get("status-details", "")
            except (ValueError, KeyError, IndexError):
                status["status_details"] = (listing.stdout + listing.stderr)[-2000:]
        return status
    finally:
        if not keep_superlink:
            if superlink is not None:
                kill_tree(superlink.pid)
                superlink.wait(timeout=30)
            for pid in set(managed_superlinks(home)) - before:
                kill_tree(pid)


class TreeMemory:
    """Samples the summed RSS (and PSS) of this process and all its descendants in a background thread."""

    def __init__(self, interval: float = 0.5, progress_every: float = 30.0) -> None:
        import threading

        self.interval, self.progress_every = interval, progress_every
        self.peak_rss = self.peak_pss = 0
        self.peak_processes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._t0 = time.monotonic()

    def sample(self) -> tuple[int, int, int]:
        import psutil

        me = psutil.Process()
        procs = [me] + me.children(recursive=True)
        rss = pss = 0
        for p in procs:
            try:
                rss += p.memory_info().rss
                pss += _pss(p.pid)
            except (psutil.Error, OSError):
                pass
        self.peak_rss, self.peak_pss = max(self.peak_rss, rss), max(self.peak_pss, pss)
        self.peak_processes = max(self.peak_processes, len(procs))
        return rss, pss, len(procs)

    def _loop(self) -> None:
        last = time.monotonic()
        while not self._stop.wait(self.interval):
            rss, _, n = self.sample()
            if self.progress_every and time.monotonic() - last >= self.progress_every:
                last = time.monotonic()
                print(f"[simulations.run] {time.monotonic() - self._t0:6.0f} s elapsed, {n} processes, "
                      f"{rss / 2**20:,.0f} MiB resident now, peak {self.peak_rss / 2**20:,.0f} MiB", flush=True)

    def __enter__(self) -> "TreeMemory":
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def as_dict(self) -> dict[str, Any]:
        return {"peak_rss_mb": round(self.peak_rss / 2**20, 1), "peak_pss_mb": round(self.peak_pss / 2**20, 1),
                "peak_processes": self.peak_processes}


def _pss(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m simulations.run", description=__doc__.split("\n\n")[0])
    p.add_argument("--scenario", default="default", help="a built-in scenario name (see --list) or a .toml file")
    p.add_argument("--list", action="store_true", help="list the built-in scenarios and exit")
    p.add_argument("--check", action="store_true", help="check the scenario file, print its run config and exit")
    p.add_argument("--rounds", type=int, default=0, help="override num-server-rounds")
    p.add_argument("--model", help="pretrained codec (default: the embedded default)")
    p.add_argument("--task", help="task network (default: the embedded default)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="any other run-config override")
    p.add_argument("--out", help="output directory (default ~/.fedcodec/simulations/<scenario>-<time>)")
    p.add_argument("--flwr-home", default="~/.fedcodec/flwr-home", help="FLWR_HOME for the managed SuperLink")
    p.add_argument("--port", type=int, default=39391, help="local SuperLink port (and port+2 for control)")
    p.add_argument("--timeout", type=float, default=3600, help="give up after this many seconds")
    p.add_argument("--keep-superlink", action="store_true", help="leave the managed SuperLink running")
    p.add_argument("--ray-address", default="", help="attach the simulation to this running Ray cluster "
                   "(host:port of `ray start --head`) instead of starting a local Ray")
    p.add_argument("--inprocess", action="store_true", help="run the apps in this process (no Ray/SuperLink)")
    args = p.parse_args(argv)
    if args.list:
        for s in builtin_scenarios().values():
            print(f"{s.name:<18} {s.supernodes:>5} hospitals  {s.description}")
        return 0
    try:
        scenario = load_scenario(args.scenario)
    except ScenarioError as exc:
        print(f"simulations.run: error: {exc}", file=sys.stderr)
        return 2
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    out_dir = Path(args.out or f"~/.fedcodec/simulations/{scenario.name}-{stamp}").expanduser().resolve()
    rc = build_run_config(args, scenario.run_config, out_dir)
    gpu = cuda_available()
    fed_config = scenario.federation_config(gpu)
    if args.check:
        print(json.dumps({"scenario": scenario.name, "federation_config": fed_config, "run_config": rc}, indent=2))
        return 0
    if (out_dir / "report.json").exists():
        print(f"simulations.run: error: {out_dir} already holds a simulation report; choose another --out",
              file=sys.stderr)
        return 2
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "scenario.toml").write_text(scenario.text)
    print(f"scenario {scenario.name}: {scenario.description}\nsource: {scenario.source}\noutput: {out_dir}\n"
          f"federation: {fed_config}" + ("" if gpu or scenario.num_gpus == 0 else " (no GPU here: hospitals use the CPU)")
          + (f"\nRay cluster: {args.ray_address}" if args.ray_address else ""), flush=True)
    t0 = time.monotonic()
    with TreeMemory() as memory:
        if args.inprocess:
            from simulations.inprocess import run_inprocess

            status: dict[str, Any] = {"run_id": None, "status": "finished:failed", "status_details": "",
                                      "seconds": 0.0}
            try:
                run_inprocess(rc, scenario.supernodes)
                status["status"] = "finished:completed"
            except Exception as exc:  # report the failure like flwr list would
                status["status_details"] = f"{type(exc).__name__}: {exc}"
            status["seconds"] = time.monotonic() - t0
            status["mode"] = "in-process"
        else:
            status = run_with_flwr(rc, fed_config, out_dir, Path(args.flwr_home).expanduser().resolve(),
                                   args.port, args.timeout, args.keep_superlink, args.ray_address)
            status["mode"] = "flwr run" + (f" on Ray cluster {args.ray_address}" if args.ray_address else "")
    wall = time.monotonic() - t0
    ok = status["status"] == "finished:completed"
    from simulations.report import write_report

    sc = {"name": scenario.name, "description": scenario.description, "source": scenario.source,
          "supernodes": scenario.supernodes, "federation_config": fed_config, "gpu_available": gpu,
          "ray_address": args.ray_address, "run_config": rc}
    measures = {"wall_s": round(wall, 2), **memory.as_dict(),
                "memory_scope": ("this process tree; the external Ray cluster's processes are not counted"
                                 if args.ray_address else "this process tree (SuperLink, simulation, Ray, workers)")}
    paths = write_report(out_dir, sc, status, measures)
    print(f"report: {', '.join(str(v) for v in paths.values())}")
    print(f"status: {status['status']} ({wall:.1f} s, peak memory {measures['peak_rss_mb']:,.0f} MiB RSS / "
          f"{measures['peak_pss_mb']:,.0f} MiB PSS){'' if ok else ': ' + status['status_details']}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
