"""Named multi-hospital scenarios: run-config overrides plus the simulated federation's size.

Every scenario runs the real Flower app (``flwr run .``, Ray simulation runtime) on phantom hospitals
(partition ``p`` = hospital ``p + 1``, each with its own domain shift); see :mod:`simulations.run`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    supernodes: int = 4
    run_config: dict[str, Any] = field(default_factory=dict)


def _hospitals(n: int, train: int | None = None, evaluate: int | None = None) -> dict[str, Any]:
    return {"min-available-hospitals": n, "min-train-hospitals": train or n, "min-evaluate-hospitals": evaluate or n}


SCENARIOS: dict[str, Scenario] = {s.name: s for s in [
    Scenario("default", "4 hospitals (shifts 1-4), 1-shot, FedAvg: the `flwr run .` main job", 4, {}),
    Scenario("many-hospitals", "12 hospitals, half of them train each round, 4 evaluate", 12,
             {**_hospitals(12, 6, 4), "fraction-train": 0.5, "fraction-evaluate": 0.34, "local-steps": 10}),
    Scenario("shots-4", "4 hospitals, 4 annotated samples each", 4, {"shots": 4}),
    Scenario("fedprox", "4 hospitals, FedProx (client proximal term)", 4, {"strategy": "fedprox", "proximal-mu": 0.1}),
    Scenario("fedadam", "4 hospitals, FedAdam (server-side Adam)", 4, {"strategy": "fedadam", "fedadam.eta": 0.01}),
    Scenario("central-dp", "4 hospitals, client-level central DP (clipping 0.5, noise 1.0, budget 50)", 4,
             {"central-dp.enabled": True, "central-dp.noise-multiplier": 1.0, "central-dp.clipping-norm": 0.5,
              "central-dp.max-epsilon": 50.0}),
    Scenario("sample-dp", "4 hospitals, 4 shots, sample-level DP-SGD (Opacus, noise 1.0)", 4,
             {"shots": 4, "sample-dp.enabled": True, "sample-dp.noise-multiplier": 1.0,
              "sample-dp.max-grad-norm": 1.0}),
    Scenario("dp-off", "the central-dp scenario's settings with DP off (utility reference)", 4,
             {"central-dp.enabled": False}),
    Scenario("dropouts", "6 hospitals, each drops out of a round with probability 0.3", 6,
             {**_hospitals(6, 6, 6), "sim.dropout": 0.3}),
    Scenario("attack-validation", "4 hospitals, hospital 1 sends 10^4-scaled updates: rejected by validation", 4,
             {"sim.attack": "scale", "sim.attack-partitions": "0"}),
    Scenario("attack-median", "5 hospitals, one sends scaled updates, no norm bound, coordinate-wise median", 5,
             {**_hospitals(5), "strategy": "median", "max-update-norm": 0.0, "sim.attack": "scale",
              "sim.attack-partitions": "0"}),
]}
