"""Subset-aware strategies built from ``flwr.serverapp.strategy`` by composition, and their checkpointable state.

The Flower strategies aggregate an ArrayRecord key by key, so they work on the adaptable subset unchanged as
long as the server seeds them with the subset (never the full codec). :func:`build_strategy` stacks three
layers, each an unmodified object, and names every layer on the result (:class:`SubsetStrategy`)::

    SubsetStrategy (= strategies.validated.ValidatedStrategy: validates every reply, outermost)
      -> DifferentialPrivacyClientSideFixedClipping (Flower's central DP + RDP accountant; optional)
        -> FedAvg | FedProx | FedAdam | FedMedian | FedTrimmedAvg | Krum (Flower's, aggregation and sampling)

- a fixed per-round sample size (:func:`flower_sampling`): central DP accounting needs exactly
  ``num_sampled_clients`` messages per round, whereas FedAvg samples a fraction of the nodes connected at that
  moment; the size is expressed through FedAvg's own public sampling arguments, so no strategy is subclassed;
- train-metric aggregation that keeps the worst (largest) client epsilon instead of averaging it;
- :func:`strategy_state` / :func:`load_strategy_state`: FedAdam moments and the privacy accountant, for
  checkpoints and resume, read from the named layers (nothing is unwrapped by probing attributes).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

import numpy as np
from flwr.serverapp import NeighboringRelation, PrivacyConfig, RdpAccountant, SamplingMethod
from flwr.serverapp.strategy import (
    DifferentialPrivacyClientSideFixedClipping,
    FedAdam,
    FedAvg,
    FedMedian,
    FedProx,
    FedTrimmedAvg,
    Krum,
)

from strategies.metrics import aggregate_evaluate_metrics, aggregate_train_metrics
from strategies.validated import ValidatedStrategy

log = logging.getLogger("flwr.fedcodec.strategies")

STRATEGIES = ("fedavg", "fedprox", "fedadam", "median", "trimmed-mean", "krum")
#: Strategies whose aggregation is FedAvg's own (the only ones Flower's DP accounting accepts).
DP_COMPATIBLE = ("fedavg", "fedprox")
#: The ``name`` saved with a strategy's checkpoint state: the class names these strategies had when they were
#: subclasses, kept so that checkpoints written before and after read alike (it appears only in messages).
STATE_NAMES = {"fedavg": "SubsetFedAvg", "fedprox": "SubsetFedProx", "fedadam": "SubsetFedAdam",
               "median": "SubsetFedMedian", "trimmed-mean": "SubsetFedTrimmedAvg", "krum": "SubsetKrum"}


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


# ---------------------------------------------------------------------------------------------- sampling

#: A fraction that counts no node in any federation below a billion nodes (``int(connected * 1e-9) == 0``).
NO_FRACTION = 1e-9


def flower_sampling(fraction: float, minimum: int, fixed: int | None) -> tuple[float, int]:
    """FedAvg's ``(fraction, minimum)`` sampling arguments that sample ``fixed`` nodes per round when it is set.

    Every Flower FedAvg-family strategy samples ``max(int(connected * fraction), minimum)`` nodes (after waiting
    until ``max(min_available_nodes, that size)`` are connected); a fraction of 0 skips the step. A fixed size
    is that formula with the fraction term made zero and the minimum set to the size, so the strategies are
    used as Flower ships them. Without a fixed size (or with a fraction of 0) the arguments pass unchanged.
    """
    if fixed is None or fraction == 0.0:
        return fraction, minimum
    return NO_FRACTION, int(fixed)


# ---------------------------------------------------------------------------------------------- factory


class SubsetStrategy(ValidatedStrategy):
    """What :func:`build_strategy` returns: the validating wrapper, with each layer below it named.

    Attributes:
        aggregator: Flower's aggregation strategy (it samples the nodes and holds FedAdam's moments).
        central_dp: Flower's client-side fixed-clipping DP wrapper around ``aggregator`` (with its RDP
            accountant), or ``None`` without central DP.
        state_name: the strategy's name in checkpoints (:data:`STATE_NAMES`).
    """

    def __init__(self, aggregator: FedAvg, central_dp: DifferentialPrivacyClientSideFixedClipping | None,
                 state_name: str, **validation) -> None:
        super().__init__(central_dp if central_dp is not None else aggregator, **validation)
        self.aggregator = aggregator
        self.central_dp = central_dp
        self.state_name = state_name


def aggregation_strategy(name: str, spec: StrategySpec) -> FedAvg:
    """Flower's strategy ``name`` with the spec's sampling and aggregation settings and fedcodec's metric
    aggregation (the worst client epsilon, total examples)."""
    fraction_train, min_train = flower_sampling(spec.fraction_train, spec.min_train_nodes, spec.fixed_train_size)
    fraction_evaluate, min_evaluate = flower_sampling(spec.fraction_evaluate, spec.min_evaluate_nodes,
                                                      spec.fixed_evaluate_size)
    common = dict(fraction_train=fraction_train, fraction_evaluate=fraction_evaluate, min_train_nodes=min_train,
                  min_evaluate_nodes=min_evaluate, min_available_nodes=spec.min_available_nodes,
                  train_metrics_aggr_fn=aggregate_train_metrics, evaluate_metrics_aggr_fn=aggregate_evaluate_metrics)
    if name == "fedavg":
        return FedAvg(**common)
    if name == "fedprox":   # sends ``proximal-mu``; the client adds the proximal term
        return FedProx(**common, proximal_mu=spec.proximal_mu)
    if name == "fedadam":   # server-side Adam on the averaged subset update
        return FedAdam(**common, eta=spec.fedadam_eta, eta_l=spec.fedadam_eta, beta_1=spec.fedadam_beta_1,
                       beta_2=spec.fedadam_beta_2, tau=spec.fedadam_tau)
    if name == "median":    # coordinate-wise median (robust)
        return FedMedian(**common)
    if name == "trimmed-mean":   # coordinate-wise trimmed mean (robust)
        return FedTrimmedAvg(**common, beta=spec.trimmed_beta)
    return Krum(**common, num_malicious_nodes=spec.krum_num_malicious)   # the one subset closest to its neighbours


def central_dp_wrapper(name: str, aggregator: FedAvg,
                       spec: StrategySpec) -> DifferentialPrivacyClientSideFixedClipping:
    """Flower's client-side fixed-clipping central DP around ``aggregator``, with an RDP accountant."""
    if name not in DP_COMPATIBLE:
        raise ValueError(f"central DP with privacy accounting needs FedAvg aggregation; strategy {name!r} "
                         f"is not supported with it (use {' or '.join(DP_COMPATIBLE)})")
    if not spec.fixed_train_size:
        raise ValueError("central DP needs a fixed number of hospitals per round (fixed_train_size)")
    accountant = RdpAccountant(PrivacyConfig(
        target_delta=spec.dp_delta, population_size=max(spec.dp_population, spec.fixed_train_size),
        neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
        sampling_method=SamplingMethod.NO_AMPLIFICATION,
        max_epsilon=spec.dp_max_epsilon if spec.dp_max_epsilon and spec.dp_max_epsilon > 0 else None))
    return DifferentialPrivacyClientSideFixedClipping(
        aggregator, noise_multiplier=spec.dp_noise_multiplier, clipping_norm=spec.dp_clipping_norm,
        num_sampled_clients=spec.fixed_train_size, accountant=accountant)


def update_norm_bound(spec: StrategySpec) -> float | None:
    """The bound on a reply's update norm: the configured one, and with central DP at most the clipping norm
    (clients clip their update to it, so anything larger did not clip and is rejected)."""
    if not spec.central_dp:
        return spec.max_update_norm
    bound = spec.dp_clipping_norm * (1 + 1e-4) + 1e-6
    return min(spec.max_update_norm, bound) if spec.max_update_norm else bound


def build_strategy(spec: StrategySpec) -> SubsetStrategy:
    """Build the configured strategy: aggregation, optional central DP, always validation outermost."""
    name = spec.name.lower().strip()
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {spec.name!r}; choose one of {', '.join(STRATEGIES)}")
    aggregator = aggregation_strategy(name, spec)
    central_dp = central_dp_wrapper(name, aggregator, spec) if spec.central_dp else None
    return SubsetStrategy(aggregator, central_dp, STATE_NAMES[name], max_update_norm=update_norm_bound(spec),
                          min_valid_replies=spec.min_valid_replies, max_examples=spec.max_examples,
                          equal_weights=spec.equal_weights or spec.central_dp)


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


def base_strategy(strategy: SubsetStrategy) -> FedAvg:
    """The innermost (aggregating) strategy below the validation and DP wrappers."""
    return strategy.aggregator


def dp_wrapper(strategy: SubsetStrategy) -> DifferentialPrivacyClientSideFixedClipping | None:
    """The central-DP wrapper inside ``strategy``, if any."""
    return strategy.central_dp


def privacy_spent(strategy: SubsetStrategy) -> dict | None:
    """``{"epsilon", "delta", "releases"}`` of the central-DP accountant, or None without central DP."""
    dp = dp_wrapper(strategy)
    spent = dp.privacy_spent() if dp is not None else None
    if spent is None:
        return None
    return {"epsilon": float(spent.epsilon), "delta": float(spent.delta), "releases": int(spent.num_releases)}


def strategy_state(strategy: SubsetStrategy) -> dict:
    """Checkpointable state: FedAdam/FedOpt moments (as float arrays) and the DP accountant (JSON)."""
    base = base_strategy(strategy)
    state: dict = {"name": strategy.state_name}
    for attr in ("m_t", "v_t"):
        value = getattr(base, attr, None)
        if value:
            state[attr] = {k: np.asarray(v).copy() for k, v in value.items()}
    dp = dp_wrapper(strategy)
    if dp is not None and dp.accountant is not None:
        state["accountant"] = json.dumps(dp.accountant.state_dict())
    return state


def load_strategy_state(strategy: SubsetStrategy, state: dict) -> None:
    """Restore what :func:`strategy_state` saved (raises ValueError on a mismatching strategy or accountant)."""
    base = base_strategy(strategy)
    for attr in ("m_t", "v_t"):
        if attr in state:
            if not hasattr(base, attr):
                raise ValueError(f"the checkpoint holds {state.get('name', 'FedOpt')} moments ({attr}) that the "
                                 f"configured {strategy.state_name} cannot use; resume with the same strategy")
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
