"""Sample-level DP-SGD with real Poisson sampling (sample rate below 1: amplification counts) and the Opacus
accountant carried between rounds through its own ``state_dict`` / ``load_state_dict``."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import make_tiny_codec
from conftest_flower import run_config, tiny_assets, write_site_folder  # noqa: F401

from clients.client_app import DP_STATE_KEY
from fedcodec.adapt import AdaptConfig, DPConfig, adapt
from fedcodec.data import make_phantoms
from fedcodec.errors import DataError
from fedcodec.task_net import build_task_network
from simulations.inprocess import run_inprocess


@pytest.fixture(scope="module")
def task_net():
    torch.manual_seed(0)
    return build_task_network((4, 8, 8, 16, 16, 4)).eval()


@pytest.fixture(scope="module")
def shots():
    return make_phantoms(2, seed=0, size=64, hospital=1)


def _cfg(q: float, steps: int = 8) -> AdaptConfig:
    return AdaptConfig(steps=steps, crop=64, select="none", dp=DPConfig(1.0, 1.0, 1e-5, sample_rate=q))


def test_poisson_sampling_below_one_is_accounted_and_amplifies(task_net, shots):
    full = adapt(make_tiny_codec(0), task_net, shots, _cfg(1.0))
    sampled = adapt(make_tiny_codec(0), task_net, shots, _cfg(0.25))
    assert full.dp_history == [[1.0, 1.0, 8]]
    assert sampled.dp_history == [[1.0, 0.25, 8]]          # every step counted at rate 0.25, empty ones too
    assert 0 < sampled.metrics["epsilon"] < full.metrics["epsilon"] / 2
    assert all(torch.isfinite(v).all() for v in sampled.state.values())
    # the update still moves the subset (some steps had shots; empty ones add only noise)
    start = make_tiny_codec(0).group_state_dict()
    assert any(not torch.equal(sampled.state[k], start[k]) for k in start)


def test_accountant_state_composes_across_rounds(task_net, shots):
    first = adapt(make_tiny_codec(0), task_net, shots, _cfg(0.5, steps=4))
    state = {"history": first.dp_history, "mechanism": "rdp"}
    second = adapt(make_tiny_codec(0), task_net, shots, _cfg(0.5, steps=4), dp_history=state)
    assert second.dp_history == [[1.0, 0.5, 8]] and second.metrics["epsilon"] > first.metrics["epsilon"]
    # the state goes through the accountant's load_state_dict, which refuses another mechanism's state
    with pytest.raises(ValueError, match="mechanism"):
        adapt(make_tiny_codec(0), task_net, shots, _cfg(0.5, steps=1), dp_history={**state, "mechanism": "prv"})


def test_sample_rate_must_be_one_over_m(task_net, shots):
    with pytest.raises(DataError, match="1/m"):
        adapt(make_tiny_codec(0), task_net, shots, _cfg(0.3, steps=1))


def test_federated_rounds_carry_the_accountant_state(tiny_assets, tmp_path):  # noqa: F811
    sites = [write_site_folder(tmp_path / f"h{h}", hospital=h, n=3) for h in (1, 2)]
    rc = run_config(tiny_assets, tmp_path / "out", {
        "num-server-rounds": 2, "shots": 2, "min-available-hospitals": 2, "min-train-hospitals": 2,
        "min-evaluate-hospitals": 2, "sample-dp.enabled": True, "sample-dp.noise-multiplier": 1.0,
        "sample-dp.sample-rate": 0.5})
    _, grid = run_inprocess(rc, 2, [{"data-dir": str(s)} for s in sites])
    rows = json.loads((tmp_path / "out" / "metrics.json").read_text())["rounds"]
    eps = [r["epsilon_sample"] for r in rows if r["round"] > 0]
    assert len(eps) == 2 and 0 < eps[0] < eps[1]
    for ctx in grid.contexts.values():
        record = ctx.state[DP_STATE_KEY]
        assert str(record["mechanism"]) == "rdp"
        assert json.loads(str(record["history"])) == [[1.0, 0.5, 4]]   # 2 rounds x 2 steps at rate 0.5
