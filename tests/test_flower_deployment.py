"""Deployment on loopback: a real ``flower-superlink --insecure`` and two ``flower-supernode --insecure`` whose
node configs point at different hospital data folders (and the site's copy of the base codec), driven by
``flwr run . <connection>`` with the connection in ``$FLWR_HOME/config.toml``; success is read from
``flwr list --format json``. Every process started here is stopped by PID (with its children) at the end.
About 90 s on an idle 2-core machine (every ClientApp message starts a process that imports torch): slow.
"""

from __future__ import annotations

import json
import subprocess
import time

import pytest
from conftest_flower import (  # noqa: F401
    ROOT,
    flwr_env,
    free_ports,
    run_status,
    stop_process,
    tiny_assets,
    wait_for,
    write_site_folder,
)

pytestmark = pytest.mark.slow


def test_superlink_and_two_supernodes_on_loopback(tiny_assets, tmp_path):  # noqa: F811
    home = tmp_path / "flwr-home"
    home.mkdir()
    link_port, *node_ports = free_ports(3)      # distinct: the SuperLink and each SuperNode's own port
    (home / "config.toml").write_text(
        '[superlink]\ndefault = "loopback"\n\n'
        f'[superlink.loopback]\naddress = "127.0.0.1:{link_port}"\ninsecure = true\n')
    env = flwr_env(home)
    sites = [write_site_folder(tmp_path / f"hospital-{h}", hospital=h, n=2) for h in (2, 4)]
    out = tmp_path / "out"
    logs = tmp_path / "logs"
    logs.mkdir()
    procs: list[subprocess.Popen] = []

    def start(name: str, cmd: list[str]) -> subprocess.Popen:
        f = open(logs / f"{name}.log", "w")
        p = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
        procs.append(p)
        return p

    def tail(n: int = 3000) -> str:
        return "\n".join(f"== {f.name}\n{f.read_text()[-n:]}" for f in sorted(logs.glob("*.log")))

    try:
        start("superlink", ["flower-superlink", "--insecure", "--host", "127.0.0.1", "--port", str(link_port),
                            "--disable-runtime-dependency-installation"])
        for i, site in enumerate(sites):
            node_config = (f"data-dir='{site}' model-path='{tiny_assets['codec']}' "
                           f"task-path='{tiny_assets['task']}'")
            start(f"supernode{i}", ["flower-supernode", "--insecure", "--superlink", f"127.0.0.1:{link_port}",
                                    "--host", "127.0.0.1", "--port", str(node_ports[i]), "--node-config", node_config])
        wait_for(lambda: sum("SuperNode ID" in (logs / f"supernode{i}.log").read_text() for i in range(2)) == 2,
                 timeout=180, what="two SuperNodes to register")
        run_config = (f"model-path='{tiny_assets['codec']}' task-path='{tiny_assets['task']}' out-dir='{out}' "
                      "num-server-rounds=1 local-steps=2 crop=64 eval-samples=1 eval-qualities='1,4' "
                      "min-available-hospitals=2 min-train-hospitals=2 min-evaluate-hospitals=2 "
                      "wait-for-hospitals=60")
        t0 = time.monotonic()
        proc = subprocess.run(["flwr", "run", ".", "loopback", "--run-config", run_config, "--stream"], cwd=ROOT,
                              env=env, capture_output=True, text=True, timeout=600)
        runs = run_status(env, connection="loopback")
        assert len(runs) == 1 and runs[0]["status"] == "finished:completed", (
            runs, proc.stdout[-3000:], proc.stderr[-2000:], tail())
        print(f"deployment run: {time.monotonic() - t0:.1f} s")
    finally:
        for p in reversed(procs):
            stop_process(p)
    rows = json.loads((out / "metrics.json").read_text())["rounds"]
    assert [r["round"] for r in rows] == [0, 1]
    assert all(r["hospitals"] == 2 and r["aggregated"] for r in rows[1:])
    assert all(r["eval_hospitals"] == 2 for r in rows)
    assert (out / "adapted_codec.pt").is_file()
    assert "fedcodec federation: 1 round(s)" in proc.stdout
