"""training/train_gpu.py, issue 9's GPU round, run on the CPU with --tiny (the GPU run itself needs a lent GPU)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch

from fedcodec.model_io import load_codec

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "training" / "train_gpu.py"
DEFAULT = REPO / "fedcodec" / "assets" / "default" / "codec.pt"


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=600,
                          env={"PATH": "/usr/bin:/bin", "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"})


def test_round_plans_its_steps_into_the_budget_and_leaves_only_what_comes_back(tmp_path):
    r = _run("--device", "cpu", "--tiny", "--budget-min", "1", "--arms", "long", "--out", str(tmp_path))
    assert r.returncode == 0, r.stdout + r.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    arm = summary["arms"]["long"]
    # the step count comes from the timed calibration, and the schedule ran to its end inside the budget
    assert arm["finished"] and arm["step"] == arm["planned_steps"] > 10
    # (the safety net stops an arm at its budget, which `finished` would show; 20 s for a loaded machine's saving)
    assert arm["seconds_total"] < 60 + 20, arm
    run = json.loads((tmp_path / "long" / "run.json").read_text())
    assert run["config"]["init"].endswith("assets/default/codec.pt") and run["config"]["steps"] == arm["step"]
    assert run["rows"][-1]["step"] == arm["step"]
    # the result is a codec continued from the default, not the default itself
    trained, start = load_codec(tmp_path / "long" / "codec.pt"), load_codec(DEFAULT)
    assert trained.config == start.config
    assert any(not torch.equal(a, b) for a, b in zip(trained.state_dict().values(), start.state_dict().values()))
    # checkpoints and segmenter copies are gone: the device tool brings back 8 files at most
    files = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    assert files == ["long/codec.pt", "long/run.json", "summary.json"]


def test_calibration_too_slow_for_the_budget_is_a_clear_error(tmp_path):
    r = _run("--device", "cpu", "--tiny", "--budget-min", "0.01", "--arms", "fidelity", "--out", str(tmp_path))
    assert r.returncode == 1
    assert "calibration steps took more than a quarter of the" in r.stderr
    assert not (tmp_path / "fidelity" / "work").exists() and not (tmp_path / "fidelity" / "codec.pt").exists()
    assert json.loads((tmp_path / "summary.json").read_text())["exit_codes"] == {"fidelity": 1}


def test_unknown_arm_and_missing_gpu_are_refused(tmp_path):
    r = _run("--arms", "long,longer", "--out", str(tmp_path), "--device", "cpu")
    assert r.returncode == 2 and "unknown arms ['longer']" in r.stderr
    if not torch.cuda.is_available():
        r = _run("--arms", "long", "--out", str(tmp_path))
        assert r.returncode == 2 and "torch sees no CUDA device" in r.stderr
    assert not any(tmp_path.iterdir())
