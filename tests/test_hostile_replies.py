"""Federated replies crafted by one hostile hospital, through the real strategy wrappers (validation, Flower's
FedAvg and Flower's central-DP wrapper): none is accepted in a harmful form, no round stalls."""

from __future__ import annotations

import time

import numpy as np
from flwr.app import Error, Message, MetricRecord, RecordDict

from strategies import StrategySpec, build_strategy
from strategies.validation import sanitize_reason
from test_strategies import REFERENCE, arrays_of, grid, replies_for, shifted, to_np

from flwr.app import ConfigRecord


def fedavg(n: int, **kw):
    return build_strategy(StrategySpec(name="fedavg", min_train_nodes=n, min_available_nodes=n, max_examples=8,
                                       max_update_norm=10.0, **kw))


def train_metrics(examples: float = 1.0, **extra) -> dict:
    return {"num-examples": examples, "examples": 1.0, "loss": 1.0, "bpp": 0.1, "task": 0.5, "epsilon": 0.0,
            "seconds": 1.0, **extra}


def mean_of(updates: list[dict], weights: list[float]) -> dict:
    w = np.asarray(weights, np.float64) / np.sum(weights)
    return {k: sum(wi * u[k].astype(np.float64) for wi, u in zip(w, updates)) for k in REFERENCE}


def assert_aggregate(arrays, expected: dict) -> None:
    assert arrays is not None
    for k, v in to_np(arrays).items():
        np.testing.assert_allclose(v, expected[k], rtol=0, atol=1e-5)


def test_huge_example_counts_are_capped():
    ups = [shifted(0.01), shifted(0.02), shifted(0.03)]
    s = fedavg(3)
    # two hospitals claim 1e308 examples: the weight sum would be infinite and the aggregate zeros
    replies = replies_for(s, ups, metrics=[train_metrics(1e308), train_metrics(1e308), train_metrics(2.0)])
    arrays, _ = s.aggregate_train(1, replies)
    assert_aggregate(arrays, mean_of(ups, [8, 8, 2]))
    # one claims 1e300: the aggregate must not simply be its update
    s = fedavg(3)
    arrays, _ = s.aggregate_train(1, replies_for(s, ups, metrics=[train_metrics(1e300), train_metrics(1.0),
                                                                   train_metrics(1.0)]))
    assert_aggregate(arrays, mean_of(ups, [8, 1, 1]))


def test_bad_example_counts_are_dropped():
    ups = [shifted(0.01), shifted(0.02), shifted(0.03), shifted(0.04), shifted(0.05)]
    s = fedavg(5)
    replies = replies_for(s, ups, metrics=[train_metrics(2.5), train_metrics(-1.0), train_metrics(0.0),
                                           train_metrics(float("nan")), train_metrics(3.0)])
    arrays, _ = s.aggregate_train(1, replies)
    assert_aggregate(arrays, ups[4])
    reasons = " ".join(r["reason"] for r in s.rounds[1].rejected)
    assert s.rounds[1].accepted == 1 and len(s.rounds[1].rejected) == 4
    assert "positive integer" in reasons and "finite" in reasons


def test_metric_keys_and_ranges_are_checked_before_aggregation():
    ups = [shifted(0.01 * i) for i in range(1, 7)]
    s = fedavg(6)
    metrics = [train_metrics(), train_metrics(**{"/etc/passwd": 1.0}), train_metrics(dice=1e6),
               {k: v for k, v in train_metrics().items() if k != "loss"},   # missing key: would stall Flower
               {**train_metrics(), **{f"k{i}": 0.0 for i in range(4096)}}, train_metrics()]
    t0 = time.perf_counter()
    arrays, tm = s.aggregate_train(1, replies_for(s, ups, metrics=metrics))
    assert time.perf_counter() - t0 < 5
    assert_aggregate(arrays, mean_of([ups[0], ups[5]], [1, 1]))     # the round went on with the two good ones
    assert set(dict(tm)) <= {"examples", "loss", "bpp", "task", "epsilon", "seconds", "clients"}
    assert s.rounds[1].aggregated and len(s.rounds[1].rejected) == 4


def test_65536_metric_keys_are_refused_quickly():
    s = fedavg(2)
    huge = {**train_metrics(), **{f"m{i}": 0.0 for i in range(65536)}}
    t0 = time.perf_counter()
    arrays, _ = s.aggregate_train(1, replies_for(s, [shifted(0.01), shifted(0.02)], metrics=[huge, train_metrics()]))
    assert time.perf_counter() - t0 < 10
    assert_aggregate(arrays, shifted(0.02))


def test_evaluate_metrics_out_of_range_and_mismatched_keys():
    s = fedavg(3)
    msgs = list(s.configure_evaluate(1, arrays_of(REFERENCE), ConfigRecord({}), grid(4)))
    good = {"num-examples": 2.0, "bpp": 0.1, "dice": 0.8, "psnr": 30.0, "dice-uncompressed": 0.9, "dice-q1": 0.7}
    contents = [good, {**good, "dice": 1e6}, {k: v for k, v in good.items() if k != "psnr"}, dict(good)]
    replies = [Message(RecordDict({"metrics": MetricRecord(m)}), reply_to=msg) for m, msg in zip(contents, msgs)]
    result = s.aggregate_evaluate(1, replies)
    assert result is not None and 0 <= result["dice"] <= 1
    assert abs(result["dice"] - 0.8) < 1e-9 and s.rounds[1].evaluate_accepted == 2


def test_duplicate_replies_from_one_node_are_dropped():
    s = fedavg(3)
    ups = [shifted(0.5), shifted(0.01), shifted(0.02)]
    replies = replies_for(s, ups)
    evil = replies[0]
    copies = [Message(RecordDict({"arrays": arrays_of(ups[0]), "metrics": MetricRecord(train_metrics())}),
                      reply_to=s_msg) for s_msg in [_request_of(s, evil)] * 4]
    arrays, _ = s.aggregate_train(1, replies + copies)
    assert_aggregate(arrays, mean_of(ups, [1, 1, 1]))       # five copies count once, not 83 %
    assert sum("duplicate" in r["reason"] for r in s.rounds[1].rejected) == 4


def _request_of(strategy, reply):
    """The train message ``reply`` answers (rebuilt from the wrapper's last configure)."""
    msgs = list(strategy.strategy.configure_train(1, arrays_of(REFERENCE), ConfigRecord({}), grid(3)))
    return next(m for m in msgs if m.metadata.dst_node_id == reply.metadata.src_node_id)


def test_central_dp_with_unequal_weights_does_not_raise():
    spec = StrategySpec(name="fedavg", min_train_nodes=3, min_available_nodes=3, fixed_train_size=3,
                        central_dp=True, dp_noise_multiplier=0.01, dp_clipping_norm=1.0, dp_delta=1e-3)
    s = build_strategy(spec)
    ups = [shifted(0.001), shifted(0.002), shifted(0.003)]
    replies = replies_for(s, ups, metrics=[train_metrics(1.0), train_metrics(7.0), train_metrics(1.0)])
    arrays, _ = s.aggregate_train(1, replies)   # Flower's DP wrapper raises ValueError on unequal weights
    assert arrays is not None and s.rounds[1].aggregated


def test_any_exception_in_aggregation_skips_only_that_aggregate():
    """Central DP with one hospital missing: Flower's DP wrapper raises; the round is skipped, not the run."""
    spec = StrategySpec(name="fedavg", min_train_nodes=3, min_available_nodes=3, fixed_train_size=3,
                        central_dp=True, dp_noise_multiplier=0.01, dp_clipping_norm=1.0, dp_delta=1e-3)
    s = build_strategy(spec)
    replies = replies_for(s, [shifted(0.001), shifted(0.002), Error(code=2, reason="offline")])
    arrays, _ = s.aggregate_train(1, replies)
    assert arrays is None and "global subset unchanged" in s.rounds[1].skipped_reason
    replies = replies_for(s, [shifted(0.001), shifted(0.002), shifted(0.003)], server_round=2)
    arrays, _ = s.aggregate_train(2, replies)
    assert arrays is not None                   # the next round aggregates normally


def test_client_error_reasons_are_sanitised():
    s = fedavg(2)
    reason = "\x1b[31mboom\x1b[0m\n" + "/home/alice/patients/case_001.png " * 500 + "\x00\x07"
    arrays, _ = s.aggregate_train(1, replies_for(s, [shifted(0.01), Error(code=2, reason=reason)]))
    stored = s.rounds[1].failed[0]["reason"]
    assert len(stored) <= 300 and "\x1b" not in stored and "\n" not in stored and "\x00" not in stored
    assert stored == sanitize_reason(reason)
    assert arrays is not None


def test_replies_from_nodes_not_asked_are_dropped():
    s = fedavg(2)
    replies = replies_for(s, [shifted(0.01), shifted(0.02)])
    stranger = Message(RecordDict({"arrays": arrays_of(shifted(0.9)), "metrics": MetricRecord(train_metrics())}),
                       reply_to=replies[0])          # a "reply" whose source is not a sampled node
    arrays, _ = s.aggregate_train(1, replies + [stranger])
    assert_aggregate(arrays, mean_of([shifted(0.01), shifted(0.02)], [1, 1]))
    assert any("not sampled" in r["reason"] for r in s.rounds[1].rejected), s.rounds[1].rejected
