"""Aggregation of the clients' scalar metrics (train: weighted means, worst epsilon, total examples)."""

from __future__ import annotations

from flwr.app import MetricRecord, RecordDict


def aggregate_train_metrics(records: list[RecordDict], weight_key: str) -> MetricRecord:
    """Weighted mean of every scalar metric, except ``epsilon`` (max over clients) and ``examples`` (sum)."""
    weights = [float(next(iter(r.metric_records.values()))[weight_key]) for r in records]
    total = sum(weights) or 1.0
    out: dict[str, float] = {}
    keys: dict[str, None] = {}     # ordered set: linear in the number of keys
    for r in records:
        for k in next(iter(r.metric_records.values())).keys():
            if k != weight_key:
                keys.setdefault(k)
    for k in keys:
        values = [(float(next(iter(r.metric_records.values()))[k]), w) for r, w in zip(records, weights)
                  if k in next(iter(r.metric_records.values()))]
        if k == "epsilon":
            out[k] = max(v for v, _ in values)
        elif k == "examples":
            out[k] = sum(v for v, _ in values)
        else:
            out[k] = sum(v * w for v, w in values) / total
    out["clients"] = float(len(records))
    return MetricRecord(out)


def aggregate_evaluate_metrics(records: list[RecordDict], weight_key: str) -> MetricRecord:
    """Weighted mean (by held-out examples) of every scalar metric, plus the total number of examples."""
    weights = [float(next(iter(r.metric_records.values()))[weight_key]) for r in records]
    total = sum(weights) or 1.0
    keys: dict[str, None] = {}
    for r in records:
        for k in next(iter(r.metric_records.values())).keys():
            if k != weight_key:
                keys.setdefault(k)
    out = {}
    for k in keys:
        pairs = [(float(next(iter(r.metric_records.values()))[k]), w) for r, w in zip(records, weights)
                 if k in next(iter(r.metric_records.values()))]
        wsum = sum(w for _, w in pairs) or 1.0
        out[k] = sum(v * w for v, w in pairs) / wsum
    out["examples"] = float(total)
    out["clients"] = float(len(records))
    return MetricRecord(out)
