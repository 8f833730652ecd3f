"""Subset-aware strategies built on ``flwr.serverapp.strategy``, and their checkpointable state.

The Flower strategies aggregate an ArrayRecord key by key, so they work on the adaptable subset unchanged as
long as the server seeds them with the subset (never the full codec). What this module adds:

- a fixed per-round sample size (:class:`FixedSampleMixin`): central DP accounting needs exactly
  ``num_sampled_clients`` messages per round, whereas FedAvg recomputes the size from the nodes connected
  at that moment;
- train-metric aggregation that keeps the worst (largest) client epsilon instead of averaging it;
- :func:`build_strategy`: one of ``fedavg``, ``fedprox``, ``fedadam``, ``median``, ``trimmed-mean``,
  ``krum``, optionally inside Flower's client-side fixed-clipping central-DP wrapper with an RDP accountant,
  always inside :class:`strategies.validated.ValidatedStrategy`;
- :func:`strategy_state` / :func:`load_strategy_state`: FedAdam moments and the privacy accountant, for
  checkpoints and resume.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid, NeighboringRelation, PrivacyConfig, SamplingMethod
from flwr.serverapp.strategy import (
    DifferentialPrivacyClientSideFixedClipping,
    FedAdam,
    FedAvg,
    FedMedian,
    FedProx,
    FedTrimmedAvg,
    Krum,
    Strategy,
)
from flwr.serverapp.strategy.strategy_utils import sample_nodes

from strategies.metrics import aggregate_evaluate_metrics, aggregate_train_metrics
from strategies.validated import ValidatedStrategy

log = logging.getLogger("flwr.fedcodec.strategies")

STRATEGIES = ("fedavg", "fedprox", "fedadam", "median", "trimmed-mean", "krum")
#: Strategies whose aggregation is FedAvg's own (the only ones Flower's DP accounting accepts).
DP_COMPATIBLE = ("fedavg", "fedprox")


# ---------------------------------------------------------------------------------------------- sampling


class FixedSampleMixin(FedAvg):
    """FedAvg sampling, or exactly ``fixed_train_size`` / ``fixed_evaluate_size`` nodes when set.

    It overrides only ``configure_train``/``configure_evaluate``; ``aggregate_train`` stays FedAvg's (or the
    concrete strategy's), which Flower's accounted DP wrapper checks.
    """

    fixed_train_size: int | None = None
    fixed_evaluate_size: int | None = None

    def _sample(self, grid: Grid, fraction: float, minimum: int, fixed: int | None) -> list[int]:
        if fixed is None:
            size = max(int(len(list(grid.get_node_ids())) * fraction), minimum)
        else:
            size = fixed
        node_ids, _ = sample_nodes(grid, self.min_available_nodes, size)
        return node_ids

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        if self.fraction_train == 0.0:
            return []
        node_ids = self._sample(grid, self.fraction_train, self.min_train_nodes, self.fixed_train_size)
        config["server-round"] = server_round
        record = RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: config})
        return self._construct_messages(record, node_ids, MessageType.TRAIN)

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        if self.fraction_evaluate == 0.0:
            return []
        node_ids = self._sample(grid, self.fraction_evaluate, self.min_evaluate_nodes, self.fixed_evaluate_size)
        config["server-round"] = server_round
        record = RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: config})
        return self._construct_messages(record, node_ids, MessageType.EVALUATE)


class SubsetFedAvg(FixedSampleMixin):
    """FedAvg over the adaptable subset."""


class SubsetFedProx(FedProx, FixedSampleMixin):
    """FedProx over the subset: sends ``proximal-mu``; the client adds the proximal term (``prox_mu``)."""


class SubsetFedAdam(FedAdam, FixedSampleMixin):
    """FedAdam (server-side Adam on the averaged subset update)."""


class SubsetFedMedian(FedMedian, FixedSampleMixin):
    """Coordinate-wise median of the subsets (robust)."""


class SubsetFedTrimmedAvg(FedTrimmedAvg, FixedSampleMixin):
    """Coordinate-wise trimmed mean of the subsets (robust)."""


class SubsetKrum(Krum, FixedSampleMixin):
    """Krum: keep the one subset closest to its neighbours (robust)."""


# ---------------------------------------------------------------------------------------------- factory


@dataclass
class StrategySpec:
    """Every aggregation setting (the run config's ``strategy``/``central-dp.*`` knobs map onto these)."""

    name: str = "fedavg"
    fraction_train: float = 1.0
    fraction_evaluate: float = 1.0
    min_train_nodes: int = 2
    min_evaluate_nodes: int = 2
    min_available_nodes: int = 2
    fixed_train_size: int | None = None
    fixed_evaluate_size: int | None = None
    proximal_mu: float = 0.01
    fedadam_eta: float = 0.01
    fedadam_beta_1: float = 0.9
    fedadam_beta_2: float = 0.99
    fedadam_tau: float = 1e-3
    trimmed_beta: float = 0.2
    krum_num_malicious: int = 0
    max_update_norm: float | None = None
    min_valid_replies: int = 1
    max_examples: int | None = None   # cap on a reply's num-examples (the configured shot count)
    equal_weights: bool = False       # every accepted reply weighs 1 (always on with central DP)
    # client-level central DP (client-side fixed clipping + RDP accounting)
    central_dp: bool = False
    dp_noise_multiplier: float = 1.0
    dp_clipping_norm: float = 1.0
    dp_delta: float = 1e-3
    dp_max_epsilon: float | None = None
    dp_population: int = 0            # number of hospitals in the federation (0 = the sample size)


def build_strategy(spec: StrategySpec) -> ValidatedStrategy:
    """Build the configured strategy: aggregation, optional central DP, always validation outermost."""
    name = spec.name.lower().strip()
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {spec.name!r}; choose one of {', '.join(STRATEGIES)}")
    common = dict(fraction_train=spec.fraction_train, fraction_evaluate=spec.fraction_evaluate,
                  min_train_nodes=spec.min_train_nodes, min_evaluate_nodes=spec.min_evaluate_nodes,
                  min_available_nodes=spec.min_available_nodes, train_metrics_aggr_fn=aggregate_train_metrics,
                  evaluate_metrics_aggr_fn=aggregate_evaluate_metrics)
    if name == "fedavg":
        base: FixedSampleMixin = SubsetFedAvg(**common)
    elif name == "fedprox":
        base = SubsetFedProx(**common, proximal_mu=spec.proximal_mu)
    elif name == "fedadam":
        base = SubsetFedAdam(**common, eta=spec.fedadam_eta, eta_l=spec.fedadam_eta, beta_1=spec.fedadam_beta_1,
                             beta_2=spec.fedadam_beta_2, tau=spec.fedadam_tau)
    elif name == "median":
        base = SubsetFedMedian(**common)
    elif name == "trimmed-mean":
        base = SubsetFedTrimmedAvg(**common, beta=spec.trimmed_beta)
    else:
        base = SubsetKrum(**common, num_malicious_nodes=spec.krum_num_malicious)
    base.fixed_train_size = spec.fixed_train_size
    base.fixed_evaluate_size = spec.fixed_evaluate_size

    inner: Strategy = base
    max_norm = spec.max_update_norm
    if spec.central_dp:
        if name not in DP_COMPATIBLE:
            raise ValueError(f"central DP with privacy accounting needs FedAvg aggregation; strategy {name!r} "
                             f"is not supported with it (use {' or '.join(DP_COMPATIBLE)})")
        if not spec.fixed_train_size:
            raise ValueError("central DP needs a fixed number of hospitals per round (fixed_train_size)")
        from flwr.serverapp import RdpAccountant

        accountant = RdpAccountant(PrivacyConfig(
            target_delta=spec.dp_delta, population_size=max(spec.dp_population, spec.fixed_train_size),
            neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
            sampling_method=SamplingMethod.NO_AMPLIFICATION,
            max_epsilon=spec.dp_max_epsilon if spec.dp_max_epsilon and spec.dp_max_epsilon > 0 else None))
        inner = DifferentialPrivacyClientSideFixedClipping(
            base, noise_multiplier=spec.dp_noise_multiplier, clipping_norm=spec.dp_clipping_norm,
            num_sampled_clients=spec.fixed_train_size, accountant=accountant)
        # Clients clip their update to the clipping norm: anything larger did not clip and is rejected.
        bound = spec.dp_clipping_norm * (1 + 1e-4) + 1e-6
        max_norm = min(max_norm, bound) if max_norm else bound
    return ValidatedStrategy(inner, max_update_norm=max_norm, min_valid_replies=spec.min_valid_replies,
                             max_examples=spec.max_examples, equal_weights=spec.equal_weights or spec.central_dp)


def central_dp_noise_scale(noise_multiplier: float, clipping_norm: float, hospitals_per_round: int,
                           subset_parameters: int) -> dict:
    """How large the server's Gaussian noise is next to the update it protects (a planning figure).

    Flower's client-side fixed-clipping wrapper adds noise with standard deviation
    ``noise_multiplier * clipping_norm / hospitals_per_round`` to every coordinate of the mean update, whose L2
    norm is at most ``clipping_norm``. The expected L2 norm of the noise over ``d`` coordinates is about
    ``std * sqrt(d)``, so ``noise_to_update_ratio = noise_multiplier * sqrt(d) / hospitals_per_round``: above 1
    the noise is larger than the largest possible mean update and the adapted subset degrades; it falls only
    with more hospitals per round (or a smaller subset, or less noise, i.e. a larger epsilon).
    """
    n = max(1, int(hospitals_per_round))
    std = noise_multiplier * clipping_norm / n
    ratio = noise_multiplier * float(np.sqrt(max(1, int(subset_parameters)))) / n
    return {"noise_std_per_coordinate": std, "expected_noise_norm": std * float(np.sqrt(max(1, subset_parameters))),
            "noise_to_update_ratio": ratio,
            # hospitals per round at which the noise norm equals the clipping norm, at this noise multiplier
            "hospitals_for_ratio_1": int(np.ceil(noise_multiplier * np.sqrt(max(1, subset_parameters))))}


# ---------------------------------------------------------------------------------------------- state


def base_strategy(strategy: Strategy) -> Strategy:
    """The innermost (aggregating) strategy below the validation and DP wrappers."""
    while hasattr(strategy, "strategy") and isinstance(strategy.strategy, Strategy):
        strategy = strategy.strategy
    return strategy


def dp_wrapper(strategy: Strategy) -> DifferentialPrivacyClientSideFixedClipping | None:
    """The central-DP wrapper inside ``strategy``, if any."""
    while strategy is not None:
        if isinstance(strategy, DifferentialPrivacyClientSideFixedClipping):
            return strategy
        strategy = getattr(strategy, "strategy", None)
    return None


def privacy_spent(strategy: Strategy) -> dict | None:
    """``{"epsilon", "delta", "releases"}`` of the central-DP accountant, or None without central DP."""
    dp = dp_wrapper(strategy)
    if dp is None or dp.accountant is None:
        return None
    spent = dp.accountant.get_privacy_spent()
    return {"epsilon": float(spent.epsilon), "delta": float(spent.delta), "releases": int(spent.num_releases)}


def strategy_state(strategy: Strategy) -> dict:
    """Checkpointable state: FedAdam/FedOpt moments (as float arrays) and the DP accountant (JSON)."""
    base = base_strategy(strategy)
    state: dict = {"name": type(base).__name__}
    for attr in ("m_t", "v_t"):
        value = getattr(base, attr, None)
        if value:
            state[attr] = {k: np.asarray(v).copy() for k, v in value.items()}
    dp = dp_wrapper(strategy)
    if dp is not None and dp.accountant is not None:
        state["accountant"] = json.dumps(dp.accountant.state_dict())
    return state


def load_strategy_state(strategy: Strategy, state: dict) -> None:
    """Restore what :func:`strategy_state` saved (raises ValueError on a mismatching strategy or accountant)."""
    base = base_strategy(strategy)
    for attr in ("m_t", "v_t"):
        if attr in state:
            if not hasattr(base, attr):
                raise ValueError(f"the checkpoint holds {state.get('name', 'FedOpt')} moments ({attr}) that the "
                                 f"configured {type(base).__name__} cannot use; resume with the same strategy")
            setattr(base, attr, {k: np.asarray(v) for k, v in state[attr].items()})
    dp = dp_wrapper(strategy)
    if "accountant" in state:
        if dp is None or dp.accountant is None:
            raise ValueError("the checkpoint holds a central-DP accountant but central DP is off; enable it "
                             "with the same settings to resume")
        dp.accountant.load_state_dict(json.loads(state["accountant"]))
    elif dp is not None and dp.accountant is not None:
        raise ValueError("central DP is on but the checkpoint holds no accountant state; resuming would "
                         "under-report epsilon")
