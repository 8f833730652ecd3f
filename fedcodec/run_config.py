"""The run configuration of the Flower app: every knob, its default and its meaning, written once.

Both apps import this module: the ClientApp (``clients/``) and the ServerApp (``server/``). It lives in the
library, not in ``server/``, so that a hospital's code imports nothing of the server; like the rest of
``fedcodec`` it imports no Flower, and both apps already depend on the installed ``fedcodec`` (a FAB carries
only the app code). The apps read the run config only through :func:`get`, which falls back to
:data:`DEFAULTS`, so they also run with an empty run config (tests, ``run_simulation``) or an older pyproject.

Where each default is written:

- knobs that ``fedcodec adapt`` has too (``lr``, ``groups``, ``seed``, ``sample-dp.*``) take
  :class:`fedcodec.adapt.AdaptConfig`'s and :class:`fedcodec.adapt.DPConfig`'s defaults; ``lambda-d`` and
  ``lambda-t`` take :class:`fedcodec.losses.LossWeights`' (used when ``loss-weights`` is ``run-config`` or
  the codec file records no training trade-off);
- the federation's own knobs (rounds, strategy, central DP, simulation) are written in :data:`SECTIONS`;
- ``[tool.flwr.app.config]`` in pyproject.toml (which Flower reads, and which must list a key for
  ``flwr run --run-config`` to override it) is generated from :data:`SECTIONS`:
  ``python -m fedcodec.run_config --write-pyproject``; a test checks that it is up to date.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fedcodec.adapt import AdaptConfig, DPConfig
from fedcodec.losses import LossWeights

_ADAPT, _DP = AdaptConfig(), DPConfig()

#: Every run-config key by section: ``(key, default, comment)``. The comments go into pyproject.toml.
SECTIONS: list[tuple[str, list[tuple[str, Any, str]]]] = [
    ("federation", [
        ("num-server-rounds", 5, "total rounds (a resumed run continues up to this number)"),
        ("fraction-train", 1.0, "fraction of connected hospitals trained per round"),
        ("fraction-evaluate", 1.0, "fraction of connected hospitals evaluated per round"),
        ("min-train-hospitals", 2, ""),
        ("min-evaluate-hospitals", 2, ""),
        ("min-available-hospitals", 2, "the run waits for this many hospitals (2 = Flower's default simulation)"),
        ("wait-for-hospitals", 120, "seconds"),
        ("round-timeout", 1800, "seconds to wait for the replies of one round"),
        ("evaluate-before", True, "federated evaluation of the pretrained subset as round 0"),
    ]),
    ("local adaptation (fedcodec.adapt.AdaptConfig; unlisted fields keep its defaults)", [
        ("local-steps", 10, "per round (5 rounds x 10 = the 50 steps of `fedcodec adapt`)"),
        ("lr", _ADAPT.lr, ""),
        ("shots", 1, "K annotated samples per hospital used for training"),
        ("groups", ",".join(_ADAPT.groups), "parameter groups that train and travel"),
        ("loss-weights", "run-config", "run-config: lambda-d / lambda-t | codec: the loss weights the codec was "
                                       "trained with (its file's record), as `fedcodec adapt` does (measured "
                                       "worse in rounds: BENCHMARKS.md federated)"),
        ("lambda-d", LossWeights.lambda_d, ""),
        ("lambda-t", LossWeights.lambda_t, ""),
        ("crop", 128, "training crop (0 = the largest multiple of 64 that fits)"),
        ("train-qualities", "", '1-based, comma-separated; "" = all'),
        ("threads", 0, "torch threads per ClientApp (0 = torch's default; Ray sets 1 per CPU)"),
        ("device", "auto", "auto | cpu | cuda: where a hospital trains and evaluates (node config device wins)"),
    ]),
    ("aggregation", [
        ("strategy", "fedavg", "fedavg | fedprox | fedadam | median | trimmed-mean | krum"),
        ("proximal-mu", 0.01, "FedProx"),
        ("fedadam.eta", 0.01, ""),
        ("fedadam.beta-1", 0.9, ""),
        ("fedadam.beta-2", 0.99, ""),
        ("fedadam.tau", 0.001, ""),
        ("trimmed-mean.beta", 0.2, ""),
        ("krum.num-malicious", 0, ""),
        ("max-update-norm", 20.0, "L2 bound on one client's update (0 = none)"),
    ]),
    ("client-level central DP (client-side fixed clipping, RDP accountant)", [
        ("central-dp.enabled", False, ""),
        ("central-dp.noise-multiplier", 1.0, ""),
        ("central-dp.clipping-norm", 1.0, ""),
        ("central-dp.delta", 0.001, ""),
        ("central-dp.max-epsilon", 50.0, "stop before a round would exceed it (0 = no budget)"),
    ]),
    ("sample-level DP-SGD at each hospital (Opacus; fedcodec.adapt.DPConfig)", [
        ("sample-dp.enabled", False, ""),
        ("sample-dp.noise-multiplier", _DP.noise_multiplier, ""),
        ("sample-dp.max-grad-norm", _DP.max_grad_norm, ""),
        ("sample-dp.delta", _DP.delta, ""),
        ("sample-dp.sample-rate", _DP.sample_rate, "Poisson rate per step, 1/m (< 1: amplification by sampling)"),
    ]),
    ("models, data, outputs", [
        ("model-path", "", 'pretrained codec ("" = the embedded default); sites may override'),
        ("task-path", "", 'task network ("" = the embedded default); sites may override'),
        ("out-dir", "", 'absolute; "" = ~/.fedcodec/runs/<time>-run<id>'),
        ("resume-from", "", "a checkpoint file or a run's out-dir"),
        ("export", True, "write the merged adapted codec at the end"),
        ("seed", _ADAPT.seed, ""),
        ("eval-samples", 2, "held-out samples per hospital for the evaluate handler"),
        ("eval-qualities", "", '1-based, comma-separated; "" = lowest, middle, highest; "all"'),
        ("train-dice", True, "also report the real-bitstream Dice on the K training samples"),
    ]),
    ("simulation only (ignored when a site has a data-dir)", [
        ("sim.hospital-offset", 1, "partition p simulates phantom hospital p + offset"),
        ("sim.phantom-size", 256, ""),
        ("sim.hospitals", "", 'comma-separated phantom hospital ids: partition p -> id p mod n ("" = offset)'),
        ("sim.shots", "", 'comma-separated shot counts a hospital draws from, by partition ("" = shots)'),
        ("sim.dropout", 0.0, "probability that a simulated hospital fails a round"),
        ("sim.straggler", 0.0, "probability that a simulated hospital replies late in a round"),
        ("sim.straggler-delay", 10.0, "seconds a straggler waits before replying"),
        ("sim.attack", "", '"" | nan | scale | shape | sign-flip | random | stale: attack-partitions\' updates'),
        ("sim.attack-partitions", "", "comma-separated partition ids"),
    ]),
]

#: Every run-config key with its default (flattened, as Flower passes it in ``context.run_config``).
DEFAULTS: dict[str, Any] = {key: default for _, knobs in SECTIONS for key, default, _ in knobs}


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


LOSS_WEIGHTS = ("codec", "run-config")


def parse_loss_weights(value: str) -> str:
    """``loss-weights``: ``codec`` or ``run-config`` (ValueError otherwise)."""
    value = str(value).strip()
    if value not in LOSS_WEIGHTS:
        raise ValueError(f"loss-weights must be one of {', '.join(LOSS_WEIGHTS)}; got {value!r}")
    return value


def parse_candidates(value: str) -> tuple[tuple[str, ...], ...]:
    """``"policy+adapters,policy"`` -> ``(("policy", "adapters"), ("policy",))``: group sets separated by commas,
    the groups of one set joined by ``+`` (``""`` = none: adapt trains its ``groups`` alone)."""
    return tuple(parse_groups(c.replace("+", ",")) for c in str(value).split(",") if c.strip())


def adapt_groups(groups: str | None, candidates: str | None) -> dict[str, tuple]:
    """:class:`AdaptConfig`'s ``groups`` and ``candidates`` from their command-line forms (None = not given, the
    config's default): ``groups`` alone trains exactly those groups (no candidates); candidates naming a group
    that ``groups`` does not train are refused. Raises ValueError naming the flag."""
    out: dict[str, tuple] = {}
    if groups is not None:
        try:
            out["groups"] = parse_groups(groups)
        except ValueError as exc:
            raise ValueError(f"--groups: {exc}") from None
    if candidates is None:
        if "groups" in out:
            out["candidates"] = ()
        return out
    try:
        out["candidates"] = parse_candidates(candidates)
    except ValueError as exc:
        raise ValueError(f"--candidates: {exc}") from None
    extra = {g for c in out["candidates"] for g in c} - set(out.get("groups", ()))
    if "groups" in out and extra:
        raise ValueError(f"--candidates names groups that --groups does not train: {', '.join(sorted(extra))}")
    return out


def format_candidates(candidates: tuple[tuple[str, ...], ...]) -> str:
    """The inverse of :func:`parse_candidates`."""
    return ",".join("+".join(c) for c in candidates)


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


# ------------------------------------------------------------------------------- pyproject.toml (generated)
TABLE = "[tool.flwr.app.config]"
PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(str(value))


def render_table() -> str:
    """The body of ``[tool.flwr.app.config]`` (below its header), generated from :data:`SECTIONS`."""
    lines = ["# Generated from fedcodec/run_config.py: edit the defaults there, then run",
             "# `python -m fedcodec.run_config --write-pyproject`."]
    for title, knobs in SECTIONS:
        lines.append(f"# {title}")
        for key, default, comment in knobs:
            line = f"{key} = {_toml_value(default)}"
            lines.append(f"{line:<39} # {comment}" if comment else line)
    return "\n".join(lines) + "\n"


def _split_pyproject(text: str) -> tuple[str, str, str]:
    """``(before the table body, the table body, after it)``; the body ends at the next table or EOF."""
    lines = text.splitlines(keepends=True)
    try:
        start = next(i for i, line in enumerate(lines) if line.strip() == TABLE) + 1
    except StopIteration:
        raise ValueError(f"pyproject.toml has no {TABLE} table") from None
    end = next((i for i in range(start, len(lines)) if lines[i].lstrip().startswith("[")), len(lines))
    while end > start and not lines[end - 1].strip():
        end -= 1   # blank lines before the next table stay outside the body
    return "".join(lines[:start]), "".join(lines[start:end]), "".join(lines[end:])


def pyproject_table(path: Path = PYPROJECT) -> str:
    """The body of ``[tool.flwr.app.config]`` as pyproject.toml holds it now."""
    return _split_pyproject(path.read_text())[1]


def write_pyproject(path: Path = PYPROJECT) -> bool:
    """Rewrite the body of ``[tool.flwr.app.config]`` from :data:`SECTIONS`; True when it changed."""
    before, body, after = _split_pyproject(path.read_text())
    new = render_table()
    if body == new:
        return False
    path.write_text(before + new + after)
    return True


if __name__ == "__main__":
    if sys.argv[1:] == ["--write-pyproject"]:
        print(f"{PYPROJECT}: {'rewritten' if write_pyproject() else 'already up to date'}")
    elif sys.argv[1:] == ["--check"]:
        ok = pyproject_table() == render_table()
        print(f"{PYPROJECT}: [tool.flwr.app.config] {'is up to date' if ok else 'is stale; run --write-pyproject'}")
        sys.exit(0 if ok else 1)
    else:
        sys.exit("usage: python -m fedcodec.run_config --write-pyproject | --check")
