"""Scenario files end to end through the Ray backend (``python -m simulations.run`` -> ``flwr run`` -> Ray), and the
same runner attached to an existing Ray cluster (``ray start --head`` on loopback).

Each run takes about a minute on a busy 2-core machine (Ray start-up dominates). Every process these tests start
is stopped by PID (the SuperLink by the runner, the Ray head here with everything below it).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from conftest_flower import ROOT, free_ports, kill_tree, tiny_assets  # noqa: F401

from simulations.run import main as run_main

TINY = """
name = "tiny-ray"
description = "3 hospitals, 2 train and 2 evaluate per round, shots 1 or 2, random shifts, one sign-flipper"

[federation]
hospitals = 3
train-per-round = 2
evaluate-per-round = 2
rounds = 2
wait-for-hospitals = 120

[data]
shots = [1, 2]
shift = "random"
eval-samples = 1
phantom-size = 64

[training]
local-steps = 2
crop = 64
eval-qualities = "1,4"

[faults]
malicious = [2]
attack = "sign-flip"

[resources]
num-cpus = 1
device = "auto"

[run-config]
threads = 1
"""


def _run(tmp_path: Path, assets: dict, extra: list[str]) -> tuple[int, dict, Path]:
    scenario = tmp_path / "tiny.toml"
    scenario.write_text(TINY)
    out = tmp_path / "out"
    port = free_ports(1)[0]
    code = run_main(["--scenario", str(scenario), "--out", str(out), "--model", assets["codec"], "--task",
                     assets["task"], "--flwr-home", str(tmp_path / "flwr-home"), "--port", str(port),
                     "--timeout", "480", *extra])
    report = json.loads((out / "report.json").read_text())
    return code, report, out


def _check_report(code: int, report: dict, out: Path) -> None:
    assert code == 0, report["flower"]
    assert report["status"] == "finished:completed"
    assert report["wall_s"] > 0 and report["peak_rss_mb"] > 100 and report["peak_pss_mb"] > 0
    assert [r["round"] for r in report["rounds"]] == [0, 1, 2]
    assert all(r["hospitals"] == 2 for r in report["rounds"][1:])
    assert report["scenario"]["supernodes"] == 3 and "num-supernodes=3" in report["scenario"]["federation_config"]
    assert (out / "report.csv").read_text().splitlines()[0].startswith("round,hospitals")
    assert (out / "report.png").stat().st_size > 1000 and (out / "scenario.toml").read_text() == TINY
    assert (out / "metrics.json").is_file() and (out / "adapted_codec.pt").is_file()


def test_tiny_scenario_file_through_ray(tmp_path, tiny_assets):  # noqa: F811
    code, report, out = _run(tmp_path, tiny_assets, [])
    _check_report(code, report, out)
    # the process tree that was measured held the SuperLink, the simulation and Ray with its workers
    assert report["measures"]["peak_processes"] >= 6
    assert "this process tree" in report["measures"]["memory_scope"]


def _ray_head(tmp: Path) -> tuple[subprocess.Popen, str]:
    gcs, client, agent, agent_grpc, metrics, runtime = free_ports(6)
    ray = str(Path(sys.executable).parent / "ray")
    cmd = [ray, "start", "--head", "--block", "--node-ip-address", "127.0.0.1", "--port", str(gcs),
           "--num-cpus", "2", "--num-gpus", "0", "--include-dashboard", "false", "--disable-usage-stats",
           "--ray-client-server-port", str(client), "--dashboard-agent-listen-port", str(agent),
           "--dashboard-agent-grpc-port", str(agent_grpc), "--metrics-export-port", str(metrics),
           "--runtime-env-agent-port", str(runtime), "--temp-dir", str(tmp)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    address = f"127.0.0.1:{gcs}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"ray start --head exited with {proc.returncode}")
        if list(tmp.glob("session_*/logs/raylet.out")) and subprocess.run(
                [ray, "status", "--address", address], capture_output=True, timeout=60).returncode == 0:
            return proc, address
        time.sleep(1)
    kill_tree(proc.pid)
    raise RuntimeError("the Ray head did not come up within 120 s")


def test_runner_attaches_to_an_existing_ray_cluster(tmp_path, tiny_assets):  # noqa: F811
    ray_tmp = Path(tempfile.mkdtemp(prefix="fcray", dir="/tmp"))   # Ray's socket paths must stay short
    head, address = _ray_head(ray_tmp)
    try:
        drivers_before = set(ray_tmp.glob("session_*/logs/python-core-driver-*"))
        code, report, out = _run(tmp_path, tiny_assets, ["--ray-address", address])
        drivers = set(ray_tmp.glob("session_*/logs/python-core-driver-*")) - drivers_before
        workers = list(ray_tmp.glob("session_*/logs/python-core-worker-*"))
    finally:
        kill_tree(head.pid)
        head.wait(timeout=60)
    _check_report(code, report, out)
    assert report["scenario"]["ray_address"] == address and address in report["flower"]["mode"]
    # the simulation process connected to this cluster as a Ray driver and ran the hospitals on its workers
    assert drivers, "no Ray driver connected to the cluster"
    assert workers
    assert "not counted" in report["measures"]["memory_scope"]


@pytest.mark.parametrize("bad", ["[federation]\nhospitals = -1\n"])
def test_runner_refuses_before_starting_anything(tmp_path, bad):
    path = tmp_path / "bad.toml"
    path.write_text(bad)
    t0 = time.monotonic()
    assert run_main(["--scenario", str(path), "--out", str(tmp_path / "o"), "--flwr-home",
                     str(tmp_path / "home")]) == 2
    assert time.monotonic() - t0 < 5 and not (tmp_path / "home").exists()
