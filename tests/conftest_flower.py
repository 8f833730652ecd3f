"""Shared helpers for the Flower tests: tiny models, phantom data folders, run configs, env for flwr CLIs.

Imported explicitly by the test modules (``from conftest_flower import ...``), so it needs no conftest.py.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

import pytest
import torch

from simulations.processes import descendants, kill_tree, pids_matching  # noqa: F401 (re-exported)

ROOT = Path(__file__).resolve().parents[1]
_ASSETS: dict[str, dict] = {}


def build_tiny_assets(root: Path, seed: int = 0) -> dict:
    """A tiny codec (N=16, M=16, 4 qualities) and task network saved under ``root``."""
    from fedcodec.codec import SemanticCodec
    from fedcodec.model_io import save_codec, save_task
    from fedcodec.task_net import build_task_network

    root.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    codec = SemanticCodec(N=16, M=16, num_qualities=4)
    codec.update(force=True)
    codec_path = save_codec(codec, root / "codec.pt", overwrite=True)
    task_path = save_task(build_task_network((4, 8, 8, 16, 16, 4)).eval(), root / "task.pt", overwrite=True)
    return {"codec": str(codec_path), "task": str(task_path), "root": root}


@pytest.fixture(scope="session")
def tiny_assets(tmp_path_factory) -> dict:
    """Session-wide tiny codec + task network (built once per session, whichever module asks first)."""
    if "main" not in _ASSETS:
        _ASSETS["main"] = build_tiny_assets(tmp_path_factory.mktemp("flower_assets"))
    return _ASSETS["main"]


def run_config(assets: dict, out_dir: Path | str, overrides: dict | None = None) -> dict:
    """A small, fast run config: 64 px phantoms, 2 local steps, 1 held-out sample, 2 rounds, 3 hospitals."""
    rc = {
        "model-path": assets["codec"], "task-path": assets["task"], "out-dir": str(out_dir),
        "num-server-rounds": 2, "local-steps": 2, "crop": 64, "sim.phantom-size": 64, "eval-samples": 1,
        "eval-qualities": "1,4", "min-available-hospitals": 3, "min-train-hospitals": 3,
        "min-evaluate-hospitals": 3, "wait-for-hospitals": 5, "threads": 1,
    }
    rc.update(overrides or {})
    return rc


def write_site_folder(root: Path, hospital: int, n: int = 2, size: int = 64, seed: int = 0) -> Path:
    """A site's annotated data folder (DIR/images + DIR/masks) with ``n`` phantoms of ``hospital``."""
    from fedcodec.data import make_phantoms, write_folder

    write_folder(make_phantoms(n, seed=seed, size=size, hospital=hospital), root)
    return root


def free_ports(n: int) -> list[int]:
    """``n`` distinct free loopback ports.

    The sockets stay open until all are chosen: probing one port at a time can hand the same port out twice
    (it is released before the server that will use it binds), and a SuperLink and a SuperNode then race for it.
    """
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def free_port() -> int:
    return free_ports(1)[0]


def flwr_env(home: Path, **extra: str) -> dict:
    """Environment for flwr CLIs: a dedicated FLWR_HOME, no telemetry, no update check, no runtime installs."""
    env = dict(os.environ)
    venv_bin = str(Path(os.sys.executable).parent)
    env["PATH"] = venv_bin + os.pathsep + env.get("PATH", "")
    env.update({"FLWR_HOME": str(home), "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1",
                "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1", "RAY_DEDUP_LOGS": "0",
                # Ray starts its workers at niceness 15, which starves simulated ClientApps next to any
                # other CPU-bound job; run them at the test's own priority.
                "RAY_worker_niceness": "0",
                "PYTHONWARNINGS": "ignore::FutureWarning"})
    env.update(extra)
    return env


def run_status(env: dict, connection: str | None = None, timeout: float = 60) -> list[dict]:
    """``flwr list [connection] --format json`` runs (``flwr run --stream`` exits 0 even when a run fails)."""
    import json

    cmd = ["flwr", "list"] + ([connection] if connection else []) + ["--format", "json"]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    data = json.loads(out.stdout)
    assert data.get("success"), out.stdout + out.stderr
    return data["runs"]


def wait_for(predicate, timeout: float, interval: float = 0.5, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


def stop_process(proc: subprocess.Popen, timeout: float = 15) -> None:
    """Stop a process this test started, and everything it spawned (SuperExec, ServerApp, ClientApps)."""
    kill_tree(proc.pid, timeout)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        pass
