"""One real, bare ``flwr run .`` of the app (managed local SuperLink, Ray simulation runtime, Flower's default
federation of 2 simulated SuperNodes) with tiny models.

About 50 s on an idle 2-core machine (not marked slow). The exit code of ``flwr run --stream`` is 0 even when
the run fails, so success is read from
``flwr list --format json``. The test uses its own FLWR_HOME and ports and stops the background SuperLink
(and everything below it) by PID afterwards.
"""

from __future__ import annotations

import json
import subprocess
import time

from conftest_flower import ROOT, flwr_env, free_ports, kill_tree, pids_matching, run_status, tiny_assets  # noqa: F401

from simulations.processes import start_local_superlink


def test_flwr_run_simulation(tiny_assets, tmp_path):  # noqa: F811
    home = tmp_path / "flwr-home"
    out = tmp_path / "out"
    port, control_port = free_ports(2)
    env = flwr_env(home, FLWR_LOCAL_SUPERLINK_HTTP_API_PORT=str(port), FLWR_LOCAL_CONTROL_API_PORT=str(control_port))
    # Flower's default federation (2 simulated SuperNodes since flwr 1.32, 2 CPUs each) and the app's default
    # hospital counts: a bare `flwr run .` must complete. Only the models and sizes are made tiny here.
    run_config = (f"model-path='{tiny_assets['codec']}' task-path='{tiny_assets['task']}' out-dir='{out}' "
                  "num-server-rounds=2 local-steps=2 crop=64 sim.phantom-size=64 eval-samples=1 "
                  "eval-qualities='1,4'")
    cmd = ["flwr", "run", ".", "--run-config", run_config, "--stream"]
    t0 = time.monotonic()
    superlink = None
    try:
        # The SuperLink `flwr run` would auto-start (it allows it only 15 s, too little on a busy machine).
        superlink = start_local_superlink(home, port, env)
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=540)
        log = proc.stdout + proc.stderr
        runs = run_status(env)
        assert len(runs) == 1, log
        assert runs[0]["status"] == "finished:completed", (runs[0], log[-4000:])
    finally:
        if superlink is not None:
            kill_tree(superlink.pid)
            superlink.wait(timeout=30)
        for pid in pids_matching(str(home)):   # anything else still running for this FLWR_HOME
            kill_tree(pid)
    elapsed = time.monotonic() - t0
    assert "fedcodec federation: 2 round(s)" in log and "round hosp" in log
    rounds = json.loads((out / "metrics.json").read_text())["rounds"]
    assert [r["round"] for r in rounds] == [0, 1, 2] and all(r["hospitals"] == 2 for r in rounds[1:])
    assert (out / "adapted_codec.pt").is_file() and (out / "checkpoints" / "latest.pt").is_file()
    print(f"flwr run smoke test: {elapsed:.1f} s")
