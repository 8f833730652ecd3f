"""Server-side validation and the subset-aware strategies, without any client training (fast)."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict

from fedcodec.errors import UpdateRejectedError
from simulations.inprocess import InProcessGrid
from strategies import (
    STRATEGIES,
    StrategySpec,
    build_strategy,
    check_arrays,
    check_train_reply,
    load_strategy_state,
    privacy_spent,
    strategy_state,
)
from strategies.factory import base_strategy
from strategies.metrics import aggregate_train_metrics

RNG = np.random.default_rng(0)
REFERENCE = {"policy.inp.weight": RNG.normal(size=(8, 4, 1, 1)).astype(np.float32),
             "policy.inp.bias": RNG.normal(size=(8,)).astype(np.float32),
             "adapters.0.up.weight": np.zeros((4, 2, 1, 1), np.float32)}


def arrays_of(values: dict) -> ArrayRecord:
    return ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in values.items()})


def shifted(delta: float) -> dict:
    return {k: v + np.float32(delta) for k, v in REFERENCE.items()}


def grid(n: int = 4) -> InProcessGrid:
    return InProcessGrid(client_app=None, num_nodes=n)


def replies_for(strategy, updates: list, server_round: int = 1, metrics: list | None = None):
    """Configure a round on a fake grid and answer each message with the given update (dict, Error or RecordDict)."""
    msgs = list(strategy.configure_train(server_round, arrays_of(REFERENCE), ConfigRecord({}), grid(len(updates))))
    assert len(msgs) == len(updates)
    out = []
    for i, (msg, upd) in enumerate(zip(msgs, updates)):
        if isinstance(upd, Error):
            out.append(Message(upd, reply_to=msg))
            continue
        if isinstance(upd, RecordDict):
            content = upd
        else:
            m = (metrics or [None] * len(updates))[i] or {"num-examples": 1.0, "loss": 1.0 + i, "epsilon": float(i)}
            content = RecordDict({"arrays": arrays_of(upd), "metrics": MetricRecord(m)})
        out.append(Message(content, reply_to=msg))
    return out


def to_np(record: ArrayRecord) -> dict:
    return {k: record[k].numpy() for k in record.keys()}


# ---------------------------------------------------------------------------------------------- checks


def test_check_arrays_accepts_a_good_update():
    out = check_arrays(arrays_of(shifted(0.01)), REFERENCE, max_update_norm=1.0)
    assert set(out) == set(REFERENCE)


@pytest.mark.parametrize("bad, reason", [
    ("nan", "NaN"), ("inf", "NaN or infinite"), ("shape", "shape"), ("dtype", "dtype"), ("missing", "missing"),
    ("extra", "unexpected"), ("oversized", "exceeds the bound"),
])
def test_check_arrays_rejects(bad, reason):
    values = shifted(0.01)
    if bad == "nan":
        values["policy.inp.bias"][3] = np.nan
    elif bad == "inf":
        values["policy.inp.weight"][0, 0, 0, 0] = np.inf
    elif bad == "shape":
        values["policy.inp.bias"] = values["policy.inp.bias"][:-1]
    elif bad == "dtype":
        values["policy.inp.bias"] = values["policy.inp.bias"].astype(np.float64)
    elif bad == "missing":
        del values["adapters.0.up.weight"]
    elif bad == "extra":
        values["g_a.0.weight"] = np.zeros((2, 2), np.float32)
    elif bad == "oversized":
        values = {k: v * 100 + 5 for k, v in values.items()}
    with pytest.raises(UpdateRejectedError, match=reason):
        check_arrays(arrays_of(values), REFERENCE, max_update_norm=10.0)


def test_check_arrays_catches_lying_metadata():
    rec = arrays_of(shifted(0.0))
    good = rec["policy.inp.bias"]
    # Metadata claims the right shape but the payload is shorter.
    rec["policy.inp.bias"] = Array(dtype=good.dtype, shape=good.shape, stype=good.stype,
                                   data=Array(np.zeros(3, np.float32)).data)
    with pytest.raises(UpdateRejectedError, match="payload"):
        check_arrays(rec, REFERENCE)


def test_check_train_reply_rejects_non_scalar_metrics_and_extra_records():
    content = RecordDict({"arrays": arrays_of(shifted(0.0)),
                          "metrics": MetricRecord({"num-examples": 1.0, "per-sample-loss": [0.1, 0.2]})})
    with pytest.raises(UpdateRejectedError, match="only scalar"):
        check_train_reply(content, REFERENCE)
    content = RecordDict({"arrays": arrays_of(shifted(0.0)), "metrics": MetricRecord({"num-examples": 1.0}),
                          "extra": ConfigRecord({"file": "case_001.png"})})
    with pytest.raises(UpdateRejectedError, match="ConfigRecord"):
        check_train_reply(content, REFERENCE)
    content = RecordDict({"arrays": arrays_of(shifted(0.0)), "metrics": MetricRecord({"loss": 1.0})})
    with pytest.raises(UpdateRejectedError, match="num-examples"):
        check_train_reply(content, REFERENCE)


# ---------------------------------------------------------------------------------------------- wrapper


def test_bad_replies_are_dropped_with_a_logged_reason(caplog):
    strategy = build_strategy(StrategySpec(name="fedavg", min_train_nodes=5, min_available_nodes=5,
                                           max_update_norm=10.0))
    nan = shifted(0.02)
    nan["policy.inp.bias"][0] = np.nan
    wrong_shape = shifted(0.02)
    wrong_shape["policy.inp.weight"] = wrong_shape["policy.inp.weight"].reshape(4, 8, 1, 1)
    oversized = {k: v + np.float32(50.0) for k, v in REFERENCE.items()}
    good = shifted(0.02)
    replies = replies_for(strategy, [good, nan, wrong_shape, oversized, Error(code=2, reason="site offline")])
    with caplog.at_level(logging.WARNING, logger="flwr.fedcodec.strategies"):
        arrays, metrics = strategy.aggregate_train(1, replies)
    assert arrays is not None
    for k, v in to_np(arrays).items():
        np.testing.assert_allclose(v, good[k], rtol=0, atol=1e-6)
        assert v.dtype == REFERENCE[k].dtype
    st = strategy.rounds[1]
    assert st.accepted == 1 and len(st.rejected) == 3 and len(st.failed) == 1
    reasons = " | ".join(r["reason"] for r in st.rejected)
    assert "NaN" in reasons and "shape" in reasons and "exceeds the bound" in reasons
    assert "dropped the update of node" in caplog.text and "exceeds the bound" in caplog.text
    assert metrics["clients"] == 1


def test_all_bad_replies_leave_the_global_state_unchanged():
    strategy = build_strategy(StrategySpec(name="fedavg", min_train_nodes=2, min_available_nodes=2))
    nan = shifted(0.0)
    nan["adapters.0.up.weight"][:] = np.nan
    replies = replies_for(strategy, [nan, Error(code=2, reason="x")])
    arrays, _ = strategy.aggregate_train(1, replies)
    assert arrays is None
    assert "global subset unchanged" in strategy.rounds[1].skipped_reason


def test_min_valid_replies():
    strategy = build_strategy(StrategySpec(name="fedavg", min_train_nodes=3, min_available_nodes=3,
                                           min_valid_replies=2))
    nan = shifted(0.0)
    nan["policy.inp.bias"][:] = np.nan
    arrays, _ = strategy.aggregate_train(1, replies_for(strategy, [shifted(0.1), nan, nan]))
    assert arrays is None


# ---------------------------------------------------------------------------------------------- strategies


@pytest.mark.parametrize("name", STRATEGIES)
def test_every_strategy_aggregates_the_subset(name):
    strategy = build_strategy(StrategySpec(name=name, min_train_nodes=5, min_available_nodes=5, fedadam_eta=0.01,
                                           trimmed_beta=0.2))
    updates = [shifted(d) for d in (0.01, 0.02, 0.03, 0.04, 0.05)]
    msgs = replies_for(strategy, updates)
    arrays, metrics = strategy.aggregate_train(1, msgs)
    assert arrays is not None and list(arrays.keys()) == list(REFERENCE)
    out = to_np(arrays)
    for k, v in out.items():
        assert v.shape == REFERENCE[k].shape and v.dtype == np.float32 and np.isfinite(v).all()
    delta = float(np.mean(out["policy.inp.bias"] - REFERENCE["policy.inp.bias"]))
    if name in ("fedavg", "fedprox", "median", "trimmed-mean"):
        assert delta == pytest.approx(0.03, abs=1e-5)
    elif name == "krum":
        assert min(abs(delta - d) for d in (0.02, 0.03, 0.04)) < 1e-5   # one of the most central updates
    else:  # fedadam moves by about eta in the direction of the mean update
        assert 0 < delta <= 0.011
    assert metrics["epsilon"] == 4.0   # the worst client's epsilon, not the mean


def test_fedprox_sends_the_proximal_mu():
    strategy = build_strategy(StrategySpec(name="fedprox", proximal_mu=0.25, min_train_nodes=2,
                                           min_available_nodes=2))
    msgs = list(strategy.configure_train(1, arrays_of(REFERENCE), ConfigRecord({}), grid(2)))
    assert msgs[0].content["config"]["proximal-mu"] == 0.25


def test_median_resists_an_outlier_that_passes_validation():
    strategy = build_strategy(StrategySpec(name="median", min_train_nodes=3, min_available_nodes=3))
    arrays, _ = strategy.aggregate_train(1, replies_for(strategy, [shifted(0.01), shifted(0.02), shifted(5.0)]))
    np.testing.assert_allclose(to_np(arrays)["policy.inp.bias"], shifted(0.02)["policy.inp.bias"], atol=1e-6)


def test_aggregate_train_metrics():
    recs = [RecordDict({"m": MetricRecord({"num-examples": w, "loss": l, "epsilon": e, "examples": w})})
            for w, l, e in ((1.0, 1.0, 2.0), (3.0, 3.0, 1.0))]
    m = aggregate_train_metrics(recs, "num-examples")
    assert m["loss"] == pytest.approx(2.5) and m["epsilon"] == 2.0 and m["examples"] == 4.0 and m["clients"] == 2


# ---------------------------------------------------------------------------------------------- DP + state


def test_central_dp_accounts_per_round_and_rejects_unclipped_updates():
    spec = StrategySpec(name="fedavg", min_train_nodes=3, min_available_nodes=3, fixed_train_size=3,
                        central_dp=True, dp_noise_multiplier=1.0, dp_clipping_norm=0.5, dp_delta=1e-3,
                        dp_population=3)
    strategy = build_strategy(spec)
    assert strategy.max_update_norm == pytest.approx(0.5, rel=1e-3)
    msgs = list(strategy.configure_train(1, arrays_of(REFERENCE), ConfigRecord({}), grid(3)))
    assert msgs[0].content["config"]["clipping_norm"] == 0.5
    arrays, _ = strategy.aggregate_train(1, replies_for_msgs(msgs, [shifted(0.001)] * 3))
    assert arrays is not None
    eps1 = privacy_spent(strategy)["epsilon"]
    # Round 2: one client did not clip -> rejected -> the accounted round is incomplete -> skipped, no release.
    msgs = list(strategy.configure_train(2, arrays, ConfigRecord({}), grid(3)))
    arrays2, _ = strategy.aggregate_train(2, replies_for_msgs(msgs, [shifted(0.001), shifted(0.001), shifted(1.0)]))
    assert arrays2 is None
    assert privacy_spent(strategy)["releases"] == 1
    msgs = list(strategy.configure_train(3, arrays, ConfigRecord({}), grid(3)))
    near = {k: v + np.float32(0.001) for k, v in to_np(arrays).items()}
    arrays3, _ = strategy.aggregate_train(3, replies_for_msgs(msgs, [near] * 3))
    assert arrays3 is not None and privacy_spent(strategy)["epsilon"] > eps1

    # The accountant survives a checkpoint round trip.
    fresh = build_strategy(spec)
    load_strategy_state(fresh, strategy_state(strategy))
    assert privacy_spent(fresh) == privacy_spent(strategy)


def replies_for_msgs(msgs, updates):
    return [Message(RecordDict({"arrays": arrays_of(u), "metrics": MetricRecord({"num-examples": 1.0})}),
                    reply_to=m) for m, u in zip(msgs, updates)]


def test_central_dp_needs_fedavg_aggregation():
    with pytest.raises(ValueError, match="not supported"):
        build_strategy(StrategySpec(name="median", central_dp=True, fixed_train_size=3))
    with pytest.raises(ValueError, match="unknown strategy"):
        build_strategy(StrategySpec(name="fedsgd"))


def test_fedadam_state_round_trip():
    spec = StrategySpec(name="fedadam", min_train_nodes=2, min_available_nodes=2)
    strategy = build_strategy(spec)
    strategy.aggregate_train(1, replies_for(strategy, [shifted(0.01), shifted(0.03)]))
    state = strategy_state(strategy)
    assert "m_t" in state and "v_t" in state
    fresh = build_strategy(spec)
    load_strategy_state(fresh, state)
    for attr in ("m_t", "v_t"):
        for k, v in getattr(base_strategy(strategy), attr).items():
            np.testing.assert_array_equal(getattr(base_strategy(fresh), attr)[k], v)
    with pytest.raises(ValueError, match="same strategy"):
        load_strategy_state(build_strategy(StrategySpec(name="fedavg")), state)
