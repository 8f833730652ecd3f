"""Aggregation of the adaptable parameter subset: subset-aware Flower strategies, robust aggregation,
central differential privacy and server-side validation of every client reply.

- :mod:`strategies.validation`: plain checks of one reply (keys, shapes, dtypes, finite values, update norm,
  scalar metrics);
- :mod:`strategies.validated`: :class:`ValidatedStrategy`, the outermost wrapper that drops bad replies with
  a logged reason and never lets a bad aggregate replace the global subset;
- :mod:`strategies.factory`: FedAvg, FedProx, FedAdam, median, trimmed mean and Krum over the subset
  (``build_strategy``, Flower's own strategies composed, none subclassed), Flower's client-side fixed-clipping
  central DP with an RDP accountant, and the strategy/accountant state for checkpoints.
"""

from strategies.metrics import aggregate_evaluate_metrics, aggregate_train_metrics
from strategies.factory import (
    DP_COMPATIBLE,
    STRATEGIES,
    StrategySpec,
    SubsetStrategy,
    build_strategy,
    central_dp_noise_scale,
    load_strategy_state,
    privacy_spent,
    strategy_state,
)
from strategies.validated import RoundStats, ValidatedStrategy
from strategies.validation import check_arrays, check_evaluate_reply, check_metrics, check_train_reply, update_norm

__all__ = [
    "DP_COMPATIBLE", "STRATEGIES", "RoundStats", "StrategySpec", "SubsetStrategy", "ValidatedStrategy",
    "aggregate_evaluate_metrics", "aggregate_train_metrics", "build_strategy", "central_dp_noise_scale", "check_arrays", "check_evaluate_reply",
    "check_metrics",
    "check_train_reply", "load_strategy_state", "privacy_spent", "strategy_state", "update_norm",
]
