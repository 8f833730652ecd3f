"""The run configuration of the Flower app: every knob, its default, and typed access.

``[tool.flwr.app.config]`` in pyproject.toml lists exactly the keys of :data:`DEFAULTS` (a test checks it),
so every knob can be overridden with ``flwr run . --run-config "key=value ..."``. The apps read the run
config only through :func:`get`, which falls back to these defaults: the apps also run with an empty run
config (tests, ``run_simulation``) and with an older pyproject.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

#: Every run-config key with its default (flattened, as Flower passes it in ``context.run_config``).
DEFAULTS: dict[str, Any] = {
    # federation
    "num-server-rounds": 5,           # total rounds (a resumed run continues up to this number)
    "fraction-train": 1.0,            # fraction of connected hospitals trained per round
    "fraction-evaluate": 1.0,         # fraction of connected hospitals evaluated per round
    "min-train-hospitals": 4,
    "min-evaluate-hospitals": 4,
    "min-available-hospitals": 4,     # the run waits for this many hospitals, then fails with a hint
    "wait-for-hospitals": 120,        # seconds
    "round-timeout": 1800,            # seconds to wait for the replies of one round
    "evaluate-before": True,          # federated evaluation of the pretrained subset as round 0
    # local adaptation (fedcodec.adapt.AdaptConfig)
    "local-steps": 10,
    "lr": 0.001,
    "shots": 1,                       # K annotated samples per hospital used for training
    "groups": "policy,adapters",      # parameter groups that train and travel
    "lambda-d": 0.0002,
    "lambda-t": 1.0,
    "crop": 128,                      # training crop (0 = the largest multiple of 64 that fits)
    "train-qualities": "",            # 1-based, comma-separated; "" = all
    "threads": 0,                     # torch threads per ClientApp (0 = torch's default; Ray sets 1 per CPU)
    # aggregation
    "strategy": "fedavg",             # fedavg | fedprox | fedadam | median | trimmed-mean | krum
    "proximal-mu": 0.01,              # FedProx
    "fedadam.eta": 0.01,
    "fedadam.beta-1": 0.9,
    "fedadam.beta-2": 0.99,
    "fedadam.tau": 0.001,
    "trimmed-mean.beta": 0.2,
    "krum.num-malicious": 0,
    "max-update-norm": 20.0,          # L2 bound on one client's update (0 = none)
    # client-level central DP (client-side fixed clipping, RDP accountant)
    "central-dp.enabled": False,
    "central-dp.noise-multiplier": 1.0,
    "central-dp.clipping-norm": 1.0,
    "central-dp.delta": 0.001,
    "central-dp.max-epsilon": 50.0,   # stop before a round would exceed it (0 = no budget)
    # sample-level DP-SGD at each hospital (Opacus)
    "sample-dp.enabled": False,
    "sample-dp.noise-multiplier": 1.0,
    "sample-dp.max-grad-norm": 1.0,
    "sample-dp.delta": 1e-5,
    # models, data, outputs
    "model-path": "",                 # pretrained codec ("" = the embedded default); sites may override
    "task-path": "",                  # task network ("" = the embedded default); sites may override
    "out-dir": "",                    # absolute; "" = ~/.fedcodec/runs/<time>-run<id>
    "resume-from": "",                # a checkpoint file or a run's out-dir
    "export": True,                   # write the merged adapted codec at the end
    "seed": 0,
    "eval-samples": 2,                # held-out samples per hospital for the evaluate handler
    "eval-qualities": "",             # 1-based, comma-separated; "" = lowest, middle, highest; "all"
    "train-dice": True,               # also report the real-bitstream Dice on the K training samples
    # simulation only (ignored when a site has a data-dir)
    "sim.hospital-offset": 1,         # partition p simulates phantom hospital p + offset
    "sim.phantom-size": 256,
    "sim.dropout": 0.0,               # probability that a simulated hospital fails a round
    "sim.attack": "",                 # "" | nan | scale | shape: corrupt the updates of attack-partitions
    "sim.attack-partitions": "",      # comma-separated partition ids
}


def get(run_config: Mapping[str, Any] | None, key: str) -> Any:
    """The value of ``key`` converted to its default's type (raises KeyError for an unknown key)."""
    default = DEFAULTS[key]
    value = (run_config or {}).get(key, default)
    if isinstance(default, bool):
        if isinstance(value, str):
            return value.strip().lower() in ("1", "true", "yes", "on")
        return bool(value)
    if isinstance(default, int):
        return int(value)
    if isinstance(default, float):
        return float(value)
    return str(value)


def parse_groups(value: str) -> tuple[str, ...]:
    """``"policy,adapters"`` -> ``("policy", "adapters")``."""
    from fedcodec.codec import ADAPTABLE_GROUPS

    groups = tuple(g.strip() for g in str(value).split(",") if g.strip())
    bad = [g for g in groups if g not in ADAPTABLE_GROUPS]
    if not groups or bad:
        raise ValueError(f"groups must be a comma-separated subset of {', '.join(ADAPTABLE_GROUPS)}; got {value!r}")
    return groups


def parse_qualities(value: str, num_qualities: int, default: str = "spread") -> list[int]:
    """1-based comma-separated qualities -> 0-based indices.

    ``""`` gives the ``default``: ``"spread"`` (lowest, middle, highest) or ``"all"``; ``"all"`` gives all.
    """
    text = str(value).strip().lower()
    if not text:
        text = default
    if text == "all":
        return list(range(num_qualities))
    if text == "spread":
        return sorted({0, (num_qualities - 1) // 2, num_qualities - 1})
    try:
        qs = [int(q) - 1 for q in text.split(",") if q.strip()]
    except ValueError as exc:
        raise ValueError(f"qualities must be comma-separated integers in 1..{num_qualities}, got {value!r}") from exc
    bad = [q + 1 for q in qs if not 0 <= q < num_qualities]
    if not qs or bad:
        raise ValueError(f"qualities must lie in 1..{num_qualities}; got {value!r}")
    return sorted(set(qs))


def parse_ids(value: str) -> set[int]:
    """``"0,3"`` -> ``{0, 3}``."""
    return {int(x) for x in str(value).split(",") if x.strip()}
