"""benchmarks/dp_frontier.py's ReplicatingGrid: n sampled hospitals, only `distinct` of them trained for real,
and Flower's central-DP wrapper and accountant run on all n replies (noise z*C/n)."""

from __future__ import annotations

import sys

import pytest
from conftest_flower import ROOT, run_config, tiny_assets  # noqa: F401

sys.path.insert(0, str(ROOT / "benchmarks"))


def test_replicating_grid_feeds_all_sampled_hospitals_to_flowers_dp(tiny_assets, tmp_path):  # noqa: F811
    from dp_frontier import ReplicatingGrid

    from clients.client_app import app as client_app
    from server.federation import run_federation

    rc = run_config(tiny_assets, tmp_path / "out", {
        "num-server-rounds": 2, "min-available-hospitals": 12, "min-train-hospitals": 8, "fraction-train": 8 / 12,
        "fraction-evaluate": 0.0, "evaluate-before": False, "central-dp.enabled": True,
        "central-dp.noise-multiplier": 1.0, "central-dp.clipping-norm": 0.05, "central-dp.delta": 1 / 12,
        "central-dp.max-epsilon": 0.0, "sim.hospital-offset": 6})
    grid = ReplicatingGrid(client_app, 12, rc, distinct=3)
    summary = run_federation(grid, rc, run_id=1)
    assert summary["rounds_completed"] == 2 and summary["rejected_updates"] == 0
    assert grid.real_replies == 2 * 3 and grid.copied_replies == 2 * 5     # 8 sampled per round, 3 trained
    eps = summary["epsilon_central"]
    assert eps["releases"] == 2 and eps["epsilon"] > 0 and eps["delta"] == pytest.approx(1 / 12)
