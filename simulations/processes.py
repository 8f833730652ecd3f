"""Finding and stopping the processes of a local Flower deployment by PID (never by name pattern).

``flwr run`` starts a managed SuperLink in the background, and a SuperLink or SuperNode spawns SuperExec,
ServerApp and ClientApp processes in their own sessions; :func:`kill_tree` collects a process's descendants
first and then stops each of them by PID.
"""

from __future__ import annotations

import os
import time
from pathlib import Path


def process_table() -> dict[int, tuple[int, str]]:
    """pid -> (ppid, command line) for every process (from /proc)."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, IndexError, ValueError):
            continue
        table[int(entry.name)] = (ppid, cmd)
    return table


def pids_matching(text: str) -> list[int]:
    """PIDs whose command line contains ``text`` (e.g. this test's unique FLWR_HOME path)."""
    me = os.getpid()
    return [pid for pid, (_, cmd) in process_table().items() if text in cmd and pid != me]


def descendants(pid: int) -> list[int]:
    table = process_table()
    out, frontier = [], [pid]
    while frontier:
        parent = frontier.pop()
        kids = [p for p, (pp, _) in table.items() if pp == parent]
        out.extend(kids)
        frontier.extend(kids)
    return out


def kill_tree(pid: int, timeout: float = 15) -> None:
    """Stop ``pid`` and all its descendants (collected first, each killed by PID): SIGTERM, then SIGKILL."""
    victims = [pid] + descendants(pid)
    for sig in (15, 9):
        for p in victims:
            try:
                os.kill(p, sig)
            except (ProcessLookupError, PermissionError):
                pass
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and any(_alive(p) for p in victims):
            time.sleep(0.2)
        if not any(_alive(p) for p in victims):
            return


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def superlink_healthy(port: int, timeout: float = 2.0) -> bool:
    """Whether a SuperLink answers ``/health`` on 127.0.0.1:``port``."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=timeout) as r:
            return 200 <= r.status < 300
    except (urllib.error.URLError, OSError, ValueError):
        return False


def start_local_superlink(home: Path, port: int, env: dict, timeout: float = 180.0):
    """Start the managed local (simulation) SuperLink that ``flwr run`` would start, but wait up to ``timeout``.

    ``flwr run`` gives its auto-started SuperLink only 15 s to come up, which a busy machine can exceed; started
    here first (same command, same FLWR_HOME paths and ports), ``flwr run`` finds it healthy and uses it.
    Returns the ``Popen`` (stop it with :func:`kill_tree`), or None when one already answers on ``port``.
    """
    import subprocess
    import sys

    if superlink_healthy(port):
        return None
    runtime = home / "local-superlink"
    runtime.mkdir(parents=True, exist_ok=True)
    exe = Path(sys.executable).parent / "flower-superlink"
    cmd = [str(exe) if exe.exists() else "flower-superlink", "--insecure", "--simulation", "--isolation",
           "subprocess", "--control-api-address", f"127.0.0.1:{env.get('FLWR_LOCAL_CONTROL_API_PORT', port + 2)}",
           "--host", "127.0.0.1", "--port", str(port), "--log-file", str(runtime / "superlink.log"),
           "--database", str(runtime / "state.db"), "--disable-runtime-dependency-installation"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"flower-superlink exited with code {proc.returncode}; see {runtime / 'superlink.log'}")
        if superlink_healthy(port):
            return proc
        time.sleep(0.5)
    kill_tree(proc.pid)
    raise RuntimeError(f"the local SuperLink did not come up within {timeout:.0f} s; see {runtime / 'superlink.log'}")
