"""Declarative multi-hospital scenarios: TOML files, checked field by field, turned into a Flower run.

A scenario file says what a researcher varies (how many hospitals, how many sampled per round, shots, domain
shifts, trained groups, strategy, DP, dropouts, stragglers, attackers, resources); :func:`load_scenario`
checks every field and turns the file into the app's run config (``[tool.flwr.app.config]`` keys) plus the
simulated federation (number of SuperNodes, CPUs and GPU fraction per virtual hospital). An invalid file
raises one :class:`ScenarioError` whose message names the file and the field.

The built-in scenarios are the files in ``simulations/scenarios/`` (``python -m simulations.run --list``);
``python -m simulations.run --scenario NAME|PATH`` runs one. Every field, with its default::

    name = "my-scenario"              # default: the file name
    description = ""

    [federation]
    hospitals = 4                     # virtual hospitals (simulated SuperNodes)
    train-per-round = 4               # hospitals sampled for training each round (default: all)
    evaluate-per-round = 4            # hospitals sampled for federated evaluation (default: train-per-round)
    rounds = 5
    evaluate-before = true            # evaluate the pretrained subset as round 0
    wait-for-hospitals = 120          # seconds
    round-timeout = 1800              # seconds

    [data]                            # phantom hospitals (partition p plays one phantom hospital)
    shots = 1                         # K per hospital, or a list each hospital draws from: [1, 2, 4, 8]
    shift = "fixed"                   # fixed: hospital ids (default p + 1; ids 1-5 a fixed table, > 5 seeded)
                                      # random: seeded random shifts (ids from shift-seed); source: no shift
    hospital-ids = [1, 2, 3, 4]       # fixed only: partition p plays hospital-ids[p mod n]
    shift-seed = 0                    # random only
    eval-samples = 2                  # held-out phantoms per hospital
    phantom-size = 256
    seed = 0

    [training]
    groups = ["policy", "adapters"]   # any non-empty subset of policy, adapters
    local-steps = 10
    lr = 0.001
    crop = 128
    loss-weights = "run-config"       # run-config: the two below | codec: the weights the codec was trained with
    lambda-d = 0.0002
    lambda-t = 1.0
    train-qualities = ""              # 1-based, comma-separated; "" = all
    eval-qualities = ""               # "" = lowest, middle, highest; "all"
    train-dice = true

    [strategy]
    name = "fedavg"                   # fedavg | fedprox | fedadam | median | trimmed-mean | krum
    proximal-mu = 0.01                # fedprox
    fedadam-eta = 0.01                # fedadam
    trimmed-beta = 0.2                # trimmed-mean
    krum-malicious = 0                # krum
    max-update-norm = 20.0            # L2 bound on one update (0 = none)

    [privacy.central]                 # client-level central DP (fedavg / fedprox only)
    enabled = false
    noise-multiplier = 1.0
    clipping-norm = 1.0
    delta = 0.001
    max-epsilon = 50.0                # 0 = no budget

    [privacy.sample]                  # sample-level DP-SGD at each hospital (Opacus)
    enabled = false
    noise-multiplier = 1.0
    max-grad-norm = 1.0
    delta = 1e-5
    sample-rate = 1.0                 # Poisson rate per step, 1/m (< 1: amplification by sampling)

    [faults]
    dropout = 0.0                     # probability that a hospital fails a round
    stragglers = 0.0                  # probability that a hospital replies straggler-delay seconds late
    straggler-delay = 10.0
    malicious = 0.0                   # a fraction of the hospitals, or their partition ids: [0, 3]
    attack = ""                       # scale | sign-flip | random | stale | nan | shape

    [resources]
    num-cpus = 1                      # CPUs per virtual hospital (Ray); parallel hospitals = CPUs / num-cpus
    num-gpus = 0.25                   # GPU fraction per virtual hospital, used only when a GPU exists
    device = "auto"                   # auto | cpu | cuda: where hospitals train and evaluate

    [run-config]                      # any other key of [tool.flwr.app.config], as is
"""

from __future__ import annotations

import difflib
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SCENARIO_DIR = Path(__file__).resolve().parent / "scenarios"
STRATEGY_NAMES = ("fedavg", "fedprox", "fedadam", "median", "trimmed-mean", "krum")
DP_STRATEGIES = ("fedavg", "fedprox")
GROUPS = ("policy", "adapters")
SHIFTS = ("fixed", "random", "source")
ATTACKS = ("scale", "sign-flip", "random", "stale", "nan", "shape")
DEVICES = ("auto", "cpu", "cuda")
LOSS_WEIGHTS = ("codec", "run-config")   # fedcodec.run_config.LOSS_WEIGHTS (checked equal in the tests)
RANDOM_SHIFT_BASE = 6            # hospital ids > 5 get a shift drawn from a generator seeded with the id
RANDOM_SHIFT_STRIDE = 10_000_000


class ScenarioError(ValueError):
    """An invalid scenario file; the message names the file and the field."""


@dataclass(frozen=True)
class Scenario:
    """A checked scenario: the app's run config and the simulated federation."""

    name: str
    description: str
    supernodes: int = 4
    run_config: dict[str, Any] = field(default_factory=dict)
    num_cpus: int = 1
    num_gpus: float = 0.0     # per virtual hospital when a GPU exists
    source: str = ""          # the file it was read from
    text: str = ""            # the file's text (written beside the run's outputs)

    def federation_config(self, gpu_available: bool | None = None) -> str:
        """``flwr run --federation-config``: SuperNodes, CPUs and (only when a GPU exists) a GPU fraction."""
        if gpu_available is None:
            gpu_available = cuda_available()
        gpus = self.num_gpus if gpu_available else 0.0
        return (f"num-supernodes={self.supernodes} client-resources-num-cpus={self.num_cpus} "
                f"client-resources-num-gpus={gpus:g}")


def cuda_available() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:  # noqa: BLE001 - no usable torch means no GPU
        return False


# ------------------------------------------------------------------------------------------------ checks
Check = Callable[[Any], Any]


class _Bad(Exception):
    pass


def _int(lo: int | None = None, hi: int | None = None) -> Check:
    def check(v: Any) -> int:
        if isinstance(v, bool) or not isinstance(v, int):
            raise _Bad(f"must be an integer, got {v!r}")
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            raise _Bad(f"must lie in {lo if lo is not None else '-inf'}..{hi if hi is not None else 'inf'}, got {v}")
        return v
    return check


def _float(lo: float | None = None, hi: float | None = None, hi_open: bool = False) -> Check:
    def check(v: Any) -> float:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v or v in (float("inf"), float("-inf")):
            raise _Bad(f"must be a finite number, got {v!r}")
        v = float(v)
        if lo is not None and v < lo:
            raise _Bad(f"must be >= {lo:g}, got {v:g}")
        if hi is not None and (v >= hi if hi_open else v > hi):
            raise _Bad(f"must be {'<' if hi_open else '<='} {hi:g}, got {v:g}")
        return v
    return check


def _bool(v: Any) -> bool:
    if not isinstance(v, bool):
        raise _Bad(f"must be true or false, got {v!r}")
    return v


def _text(v: Any) -> str:
    if not isinstance(v, str):
        raise _Bad(f"must be a string, got {v!r}")
    return v


def _str(v: Any) -> str:
    if not isinstance(v, str):
        raise _Bad(f"must be a string, got {v!r}")
    if "'" in v:
        raise _Bad("must not contain a single quote")
    return v


def _choice(options: tuple[str, ...], allow_empty: bool = False) -> Check:
    def check(v: Any) -> str:
        if not isinstance(v, str) or (v not in options and not (allow_empty and v == "")):
            raise _Bad(f"must be one of {', '.join(options)}, got {v!r}")
        return v
    return check


def _qualities(v: Any) -> str:
    v = _str(v).strip()
    if v and v != "all" and not all(x.strip().isdigit() for x in v.split(",")):
        raise _Bad(f'must be "", "all" or comma-separated 1-based qualities, got {v!r}')
    return v


def _groups(v: Any) -> str:
    items = [g.strip() for g in v.split(",")] if isinstance(v, str) else v
    if not isinstance(items, list) or not items or not all(isinstance(g, str) for g in items):
        raise _Bad(f"must be a non-empty list of {', '.join(GROUPS)}, got {v!r}")
    bad = [g for g in items if g not in GROUPS]
    if bad:
        hint = " (full fine-tuning is a reference, not a federated mode)" if "full" in bad else ""
        raise _Bad(f"unknown group(s) {bad}: choose from {', '.join(GROUPS)}{hint}")
    return ",".join(dict.fromkeys(items))


def _shots(v: Any) -> list[int]:
    one = _int(1, 64)
    if isinstance(v, list):
        if not v:
            raise _Bad("must be an integer 1..64 or a non-empty list of them")
        return [one(x) for x in v]
    return [one(v)]


def _id_list(v: Any) -> list[int]:
    if not isinstance(v, list) or not v:
        raise _Bad(f"must be a non-empty list of non-negative integers, got {v!r}")
    return [_int(0)(x) for x in v]


def _malicious(v: Any) -> float | list[int]:
    if isinstance(v, list):
        return sorted(set(_int(0)(x) for x in v))
    return _float(0.0, 1.0, hi_open=True)(v)


#: Every field: (check, run-config key it sets directly, or None when handled below).
FIELDS: dict[str, tuple[Check, str | None]] = {
    "name": (_text, None),
    "description": (_text, None),
    "federation.hospitals": (_int(1, 1_000_000), None),
    "federation.train-per-round": (_int(1), None),
    "federation.evaluate-per-round": (_int(0), None),
    "federation.rounds": (_int(1, 100_000), "num-server-rounds"),
    "federation.evaluate-before": (_bool, "evaluate-before"),
    "federation.wait-for-hospitals": (_int(1), "wait-for-hospitals"),
    "federation.round-timeout": (_int(1), "round-timeout"),
    "data.shots": (_shots, None),
    "data.shift": (_choice(SHIFTS), None),
    "data.hospital-ids": (_id_list, None),
    "data.shift-seed": (_int(0, 1000), None),
    "data.eval-samples": (_int(0, 64), "eval-samples"),
    "data.phantom-size": (_int(64, 2048), "sim.phantom-size"),
    "data.seed": (_int(0), "seed"),
    "training.groups": (_groups, "groups"),
    "training.local-steps": (_int(1, 100_000), "local-steps"),
    "training.lr": (_float(0.0), "lr"),
    "training.crop": (_int(0, 2048), "crop"),
    "training.loss-weights": (_choice(LOSS_WEIGHTS), "loss-weights"),
    "training.lambda-d": (_float(0.0), "lambda-d"),
    "training.lambda-t": (_float(0.0), "lambda-t"),
    "training.train-qualities": (_qualities, "train-qualities"),
    "training.eval-qualities": (_qualities, "eval-qualities"),
    "training.train-dice": (_bool, "train-dice"),
    "strategy.name": (_choice(STRATEGY_NAMES), "strategy"),
    "strategy.proximal-mu": (_float(0.0), "proximal-mu"),
    "strategy.fedadam-eta": (_float(0.0), "fedadam.eta"),
    "strategy.trimmed-beta": (_float(0.0, 0.5, hi_open=True), "trimmed-mean.beta"),
    "strategy.krum-malicious": (_int(0), "krum.num-malicious"),
    "strategy.max-update-norm": (_float(0.0), "max-update-norm"),
    "privacy.central.enabled": (_bool, "central-dp.enabled"),
    "privacy.central.noise-multiplier": (_float(0.0), "central-dp.noise-multiplier"),
    "privacy.central.clipping-norm": (_float(0.0), "central-dp.clipping-norm"),
    "privacy.central.delta": (_float(0.0, 1.0, hi_open=True), "central-dp.delta"),
    "privacy.central.max-epsilon": (_float(0.0), "central-dp.max-epsilon"),
    "privacy.sample.enabled": (_bool, "sample-dp.enabled"),
    "privacy.sample.noise-multiplier": (_float(0.0), "sample-dp.noise-multiplier"),
    "privacy.sample.max-grad-norm": (_float(0.0), "sample-dp.max-grad-norm"),
    "privacy.sample.delta": (_float(0.0, 1.0, hi_open=True), "sample-dp.delta"),
    "privacy.sample.sample-rate": (_float(0.0, 1.0), "sample-dp.sample-rate"),
    "faults.dropout": (_float(0.0, 1.0, hi_open=True), "sim.dropout"),
    "faults.stragglers": (_float(0.0, 1.0, hi_open=True), "sim.straggler"),
    "faults.straggler-delay": (_float(0.0), "sim.straggler-delay"),
    "faults.malicious": (_malicious, None),
    "faults.attack": (_choice(ATTACKS, allow_empty=True), "sim.attack"),
    "resources.num-cpus": (_int(1, 1024), None),
    "resources.num-gpus": (_float(0.0, 1.0), None),
    "resources.device": (_choice(DEVICES), "device"),
}
#: Fields set through a dedicated field; [run-config] may not set them behind its back.
MANAGED_KEYS = {"min-available-hospitals", "min-train-hospitals", "min-evaluate-hospitals", "fraction-train",
                "fraction-evaluate", "shots", "sim.shots", "sim.hospitals", "sim.hospital-offset",
                "sim.attack-partitions", "out-dir"}


def _flatten(table: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (arrays stay values)."""
    out: dict[str, Any] = {}
    for key, value in table.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, name + "."))
        else:
            out[name] = value
    return out


def _known_tables() -> set[str]:
    tables = set()
    for f in FIELDS:
        parts = f.split(".")
        tables.update(".".join(parts[:i]) for i in range(1, len(parts)))
    return tables


def parse_scenario(text: str, source: str = "<scenario>", name: str = "") -> Scenario:
    """Check a scenario's TOML text; raises :class:`ScenarioError` naming the field on the first problem."""
    from fedcodec.run_config import DEFAULTS

    def fail(fieldname: str, problem: str) -> ScenarioError:
        return ScenarioError(f"{source}: field '{fieldname}': {problem}")

    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{source}: not valid TOML: {exc}") from None
    raw_rc = doc.pop("run-config", {})
    if not isinstance(raw_rc, dict):
        raise fail("run-config", "must be a table of run-config keys")
    flat = _flatten(doc)
    values: dict[str, Any] = {}
    tables = _known_tables()
    for key, value in flat.items():
        if key not in FIELDS:
            if key in tables:
                raise fail(key, "must be a table, not a value")
            close = difflib.get_close_matches(key, list(FIELDS), n=1)
            raise fail(key, "unknown field" + (f" (did you mean '{close[0]}'?)" if close else
                                               f"; known tables: {', '.join(sorted(t for t in tables if '.' not in t))}"))
        try:
            values[key] = FIELDS[key][0](value)
        except _Bad as exc:
            raise fail(key, str(exc)) from None

    rc: dict[str, Any] = {}
    for key, value in values.items():
        target = FIELDS[key][1]
        if target is not None:
            rc[target] = value

    # federation size and sampling
    n = values.get("federation.hospitals", 4)
    train = values.get("federation.train-per-round", n)
    if train > n:
        raise fail("federation.train-per-round", f"must be <= federation.hospitals ({n}), got {train}")
    evaluate = values.get("federation.evaluate-per-round", min(train, n))
    if evaluate > n:
        raise fail("federation.evaluate-per-round", f"must be <= federation.hospitals ({n}), got {evaluate}")
    rc.update({"min-available-hospitals": n, "min-train-hospitals": train, "fraction-train": train / n,
               "min-evaluate-hospitals": max(evaluate, 1), "fraction-evaluate": evaluate / n})
    if evaluate == 0:
        rc["evaluate-before"] = False

    # shots
    shots = values.get("data.shots", [1])
    rc["shots"] = max(shots)
    if len(set(shots)) > 1:
        rc["sim.shots"] = ",".join(str(k) for k in shots)

    # domain shifts
    shift = values.get("data.shift", "fixed")
    if "data.hospital-ids" in values and shift != "fixed":
        raise fail("data.hospital-ids", f"applies to shift = \"fixed\" only (shift is {shift!r})")
    if "data.shift-seed" in values and shift != "random":
        raise fail("data.shift-seed", f"applies to shift = \"random\" only (shift is {shift!r})")
    if shift == "fixed" and "data.hospital-ids" in values:
        rc["sim.hospitals"] = ",".join(str(i) for i in values["data.hospital-ids"])
    elif shift == "random":
        rc["sim.hospital-offset"] = RANDOM_SHIFT_BASE + RANDOM_SHIFT_STRIDE * values.get("data.shift-seed", 0)
    elif shift == "source":
        rc["sim.hospitals"] = "0"

    # strategy and privacy
    strategy = values.get("strategy.name", "fedavg")
    if values.get("privacy.central.enabled") and strategy not in DP_STRATEGIES:
        raise fail("privacy.central.enabled", f"client-level central DP works with {' or '.join(DP_STRATEGIES)} "
                                              f"(Flower's accountant), not strategy.name = {strategy!r}")
    if values.get("privacy.central.enabled") and values.get("privacy.central.noise-multiplier", 1.0) <= 0:
        raise fail("privacy.central.noise-multiplier", "must be > 0 when central DP is enabled")

    # attacks
    malicious = values.get("faults.malicious", 0.0)
    attack = values.get("faults.attack", "")
    seed = values.get("data.seed", DEFAULTS["seed"])
    if isinstance(malicious, list):
        bad = [i for i in malicious if i >= n]
        if bad:
            raise fail("faults.malicious", f"partition ids must be < federation.hospitals ({n}), got {bad}")
        ids = malicious
    else:
        import numpy as np

        count = int(round(malicious * n))
        ids = sorted(int(i) for i in np.random.default_rng([seed, 0xBAD]).choice(n, count, replace=False))
    if ids and not attack:
        raise fail("faults.attack", "malicious hospitals need an attack (scale, sign-flip, random, stale, nan, shape)")
    if attack and not ids:
        raise fail("faults.malicious", f"attack = {attack!r} needs malicious hospitals (a fraction or partition ids)")
    if ids:
        rc["sim.attack-partitions"] = ",".join(str(i) for i in ids)

    rate = values.get("privacy.sample.sample-rate", 1.0)
    if rate <= 0 or abs(1.0 / max(1, round(1.0 / rate)) - rate) > 1e-9:
        raise fail("privacy.sample.sample-rate", f"must be 1/m (1, 0.5, 0.25, 0.2, ...), got {rate:g}")
    if values.get("privacy.central.enabled"):
        # Flower's accounted fixed-clipping wrapper needs exactly num_sampled_clients valid replies every round.
        for key in ("faults.dropout", "faults.malicious"):
            if values.get(key):
                raise fail(key, "cannot be combined with privacy.central (Flower's DP accountant needs every "
                                "sampled hospital's update each round; a missing or rejected one skips the round)")

    # raw run-config overrides
    for key, value in raw_rc.items():
        where = f"run-config.{key}"
        if key not in DEFAULTS:
            close = difflib.get_close_matches(key, list(DEFAULTS), n=1)
            raise fail(where, "unknown run-config key" + (f" (did you mean '{close[0]}'?)" if close else ""))
        if key in MANAGED_KEYS:
            raise fail(where, "is set by the scenario's own fields ([federation], [data], [faults]) or the runner")
        default = DEFAULTS[key]
        ok = (isinstance(value, bool) if isinstance(default, bool) else
              isinstance(value, int) and not isinstance(value, bool) if isinstance(default, int) else
              isinstance(value, (int, float)) and not isinstance(value, bool) if isinstance(default, float) else
              isinstance(value, str) and "'" not in value)
        if not ok:
            raise fail(where, f"must be a {type(default).__name__} like its default {default!r}, got {value!r}")
        rc[key] = value

    return Scenario(name=values.get("name", name or Path(source).stem), description=values.get("description", ""),
                    supernodes=n, run_config=rc, num_cpus=values.get("resources.num-cpus", 1),
                    num_gpus=values.get("resources.num-gpus", 0.25), source=source, text=text)


def load_scenario(name_or_path: str | Path) -> Scenario:
    """A built-in scenario by name (``simulations/scenarios/NAME.toml``) or any scenario file by path."""
    text = str(name_or_path)
    path = Path(text).expanduser()
    if not (text.endswith(".toml") or path.is_file() or "/" in text):
        path = SCENARIO_DIR / f"{text}.toml"
        if not path.is_file():
            raise ScenarioError(f"unknown scenario {text!r}; built-in: {', '.join(builtin_names())} "
                                "(or give the path of a .toml file)")
    if not path.is_file():
        raise ScenarioError(f"{path}: no such scenario file")
    try:
        content = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ScenarioError(f"{path}: cannot read: {exc}") from None
    return parse_scenario(content, source=str(path), name=path.stem)


def builtin_names() -> list[str]:
    return sorted(p.stem for p in SCENARIO_DIR.glob("*.toml"))


def builtin_scenarios() -> dict[str, Scenario]:
    """Every built-in scenario, by name."""
    return {s.name: s for s in (load_scenario(SCENARIO_DIR / f"{n}.toml") for n in builtin_names())}
