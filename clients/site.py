"""What one hospital does, without Flower: load its models and data, adapt the subset, evaluate.

The ClientApp (:mod:`clients.client_app`) only translates messages to and from these functions, so they are
tested and reused directly (the benchmark's single-site baseline calls the same :func:`fedcodec.adapt.adapt`).

Where a site's inputs come from:

- base codec: node config ``model-path``, else run config ``model-path``, else the embedded default;
- task network: node config ``task-path``, else run config ``task-path``, else the embedded default;
- annotated samples: node config ``data-dir`` (``DIR/images`` + ``DIR/masks``, sorted by name: the first
  ``shots`` train, the next ``eval-samples`` are held out; or node config ``eval-dir`` for a separate held-out
  folder); without a ``data-dir`` (simulation) the phantom hospital ``partition-id + sim.hospital-offset``.
"""

from __future__ import annotations

import copy
import logging
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedcodec import run_config as C
from fedcodec.adapt import AdaptConfig, adapt, dp_config
from fedcodec.codec import SemanticCodec
from fedcodec.data import Sample, load_folder, make_phantoms
from fedcodec.errors import DataError, ModelMismatchError, UpdateRejectedError
from fedcodec.evaluate import evaluate_codec, uncompressed_dice
from fedcodec.losses import default_quality_weights
from fedcodec.model_io import load_codec, load_task

log = logging.getLogger("flwr.fedcodec.clients")

_LOCK = threading.Lock()
_CODECS: dict[tuple, tuple[SemanticCodec, str]] = {}
_TASKS: dict[tuple, torch.nn.Module] = {}
_DATA: "OrderedDict[tuple, SiteData]" = OrderedDict()
#: Site data kept per process (least recently used first out): a Ray worker serves many simulated hospitals
#: (1,000 in ``scale-1000``), each of which generates its phantoms from its partition id when it is sampled.
DATA_CACHE_SIZE = 8


def _file_key(path: str | None) -> tuple:
    if not path:
        return ("<embedded>",)
    p = Path(path).expanduser()
    try:
        st = p.stat()
        return (str(p.resolve()), st.st_mtime_ns, st.st_size)
    except OSError:
        return (str(p),)


def site_value(node_config: Mapping[str, Any], run_config: Mapping[str, Any], key: str) -> str:
    """A path setting: the node config wins over the run config; ``""`` means unset."""
    value = str(node_config.get(key, "") or "").strip()
    return value or str(C.get(run_config, key)).strip()


def load_site_codec(path: str | None) -> tuple[SemanticCodec, str]:
    """A fresh copy of the site's base codec and its base identity hash (loaded once per process)."""
    key = _file_key(path)
    with _LOCK:
        if key not in _CODECS:
            codec = load_codec(Path(path).expanduser() if path else None)
            _CODECS[key] = (codec, codec.identity_hash(["base"]))
        codec, base_hash = _CODECS[key]
        return copy.deepcopy(codec), base_hash


def load_site_task(path: str | None) -> torch.nn.Module:
    """The site's frozen task network (loaded once per process; it is never modified)."""
    key = _file_key(path)
    with _LOCK:
        if key not in _TASKS:
            _TASKS[key] = load_task(Path(path).expanduser() if path else None)
        return _TASKS[key]


def check_base(site_hash: str, expected: str, model_path: str) -> None:
    """Refuse to work on a subset made for another base codec (the message names no local path)."""
    if not expected:
        raise ModelMismatchError("the server did not send the base codec's identity hash; refusing to train")
    if site_hash != expected:
        log.warning("base codec mismatch: the site's codec is %s", model_path or "the embedded default")
        raise ModelMismatchError(
            f"base codec mismatch: this site's codec has base identity {site_hash[:16]}..., the server's subset "
            f"was made for base {expected[:16]}...; provision the server's pretrained codec at this site (node "
            "config model-path) before joining; refusing to train")


@dataclass
class SiteData:
    """A hospital's annotated samples: the K training shots and the held-out samples."""

    train: list[Sample]
    held_out: list[Sample]
    description: str   # for local logs only: never sent


def load_site_data(node_config: Mapping[str, Any], run_config: Mapping[str, Any]) -> SiteData:
    """Read the site's K shots and held-out samples (see the module docstring)."""
    shots = sim_shots(node_config, run_config)
    n_eval = C.get(run_config, "eval-samples")
    if shots < 1:
        raise DataError(f"shots must be >= 1, got {shots}")
    data_dir = str(node_config.get("data-dir", "") or "").strip()
    eval_dir = str(node_config.get("eval-dir", "") or "").strip()
    if data_dir:
        key = ("dir", _dir_key(data_dir), _dir_key(eval_dir) if eval_dir else None, shots, n_eval)
    else:
        if "partition-id" not in node_config:
            raise DataError("this SuperNode has no node config 'data-dir' (and is not a simulated node); start "
                            "it with --node-config \"data-dir='/path/to/annotated' model-path='/path/codec.pt'\"")
        hospital = sim_hospital(node_config, run_config)
        key = ("sim", hospital, C.get(run_config, "seed"), C.get(run_config, "sim.phantom-size"), shots, n_eval)
    with _LOCK:
        if key in _DATA:
            _DATA.move_to_end(key)
            return _DATA[key]
    if data_dir:
        samples = load_folder(Path(data_dir).expanduser())
        if len(samples) < shots:
            raise DataError(f"{data_dir}: {len(samples)} annotated sample(s), but shots = {shots}")
        train = samples[:shots]
        if eval_dir:
            held = load_folder(Path(eval_dir).expanduser(), limit=n_eval or None)
        else:
            held = samples[shots:shots + n_eval] if n_eval else []
        data = SiteData(train, held, f"folder {data_dir}")
    else:
        size = C.get(run_config, "sim.phantom-size")
        samples = make_phantoms(shots + n_eval, seed=C.get(run_config, "seed"), size=size, hospital=hospital)
        data = SiteData(samples[:shots], samples[shots:], f"phantom hospital {hospital}")
    with _LOCK:
        _DATA[key] = data
        while len(_DATA) > DATA_CACHE_SIZE:
            _DATA.popitem(last=False)
    return data


def sim_hospital(node_config: Mapping[str, Any], run_config: Mapping[str, Any]) -> int:
    """The phantom hospital a simulated node plays: ``sim.hospitals[p mod n]``, else ``p + sim.hospital-offset``."""
    p = int(node_config["partition-id"])
    ids = [int(x) for x in C.get(run_config, "sim.hospitals").split(",") if x.strip()]
    return ids[p % len(ids)] if ids else p + C.get(run_config, "sim.hospital-offset")


def sim_shots(node_config: Mapping[str, Any], run_config: Mapping[str, Any]) -> int:
    """K of this site: ``shots``, or for a simulated node a draw from ``sim.shots`` seeded by its partition id."""
    choices = [int(x) for x in C.get(run_config, "sim.shots").split(",") if x.strip()]
    if not choices or "data-dir" in node_config or "partition-id" not in node_config:
        return C.get(run_config, "shots")
    rng = np.random.default_rng([C.get(run_config, "seed"), int(node_config["partition-id"]), 0x5407])
    return int(rng.choice(choices))


def site_device(node_config: Mapping[str, Any], run_config: Mapping[str, Any]) -> torch.device:
    """Where this site trains and evaluates: node config ``device``, else the run config's (``auto``: CUDA when
    the node sees a GPU, else the CPU). ``cuda`` on a node without a GPU is a :class:`DeviceError`."""
    from fedcodec.pretrain import resolve_device

    name = str(node_config.get("device", "") or "").strip() or C.get(run_config, "device").strip() or "auto"
    try:
        return resolve_device(name)
    except DataError as exc:
        raise DeviceError(str(exc)) from None
    except RuntimeError:   # torch's own message for a string that is not a device at all
        raise DeviceError(f"unknown device {name!r}; use auto, cpu or cuda") from None


class DeviceError(DataError):
    """The configured device does not exist on this node (the message names no local file: safe to send)."""

    safe_to_send = True


def _dir_key(path: str) -> tuple:
    p = Path(path).expanduser()
    try:
        return (str(p.resolve()), p.stat().st_mtime_ns, (p / "images").stat().st_mtime_ns)
    except OSError:
        return (str(p),)


def adapt_config(run_config: Mapping[str, Any], num_qualities: int, groups: tuple[str, ...],
                 prox_mu: float = 0.0, seed_offset: int = 0, device: str = "cpu",
                 has_training_loss: bool = False) -> AdaptConfig:
    """The AdaptConfig of one local round (the same settings ``fedcodec adapt`` exposes).
    ``has_training_loss``: the codec records the trade-off it was trained with (``codec.training_loss``)."""
    tq = C.get(run_config, "train-qualities")
    qualities = tuple(C.parse_qualities(tq, num_qualities, default="all")) if tq.strip() else ()
    dp = dp_config(C.get(run_config, "sample-dp.enabled"), C.get(run_config, "sample-dp.noise-multiplier"),
                   C.get(run_config, "sample-dp.max-grad-norm"), C.get(run_config, "sample-dp.delta"),
                   C.get(run_config, "sample-dp.sample-rate"))
    # None = the codec's training trade-off (adapt reads codec.training_loss); the run config's lambda-d and
    # lambda-t when asked for, or when the codec file records no trade-off.
    own = C.parse_loss_weights(C.get(run_config, "loss-weights")) == "codec" and has_training_loss
    lambda_d = None if own else C.get(run_config, "lambda-d")
    lambda_t = None if own else C.get(run_config, "lambda-t")
    quality_weights = [] if own else default_quality_weights(num_qualities)   # [] = the codec's
    return AdaptConfig(steps=C.get(run_config, "local-steps"), lr=C.get(run_config, "lr"), groups=groups,
                       lambda_d=lambda_d, lambda_t=lambda_t, quality_weights=quality_weights,
                       qualities=qualities, crop=C.get(run_config, "crop"), prox_mu=float(prox_mu),
                       seed=C.get(run_config, "seed") + seed_offset, dp=dp,
                       # One federated round is judged by aggregation and federated evaluation, not by the
                       # site alone: a local fallback would only send the global subset back unchanged.
                       select="none", device=str(device))


def set_threads(run_config: Mapping[str, Any]) -> None:
    n = C.get(run_config, "threads")
    if n > 0 and torch.get_num_threads() != n:
        torch.set_num_threads(n)


def mean_points(points: list[dict], prefix: str = "") -> dict[str, float]:
    """Scalar summary of evaluate_codec points: means over qualities and per-quality bpp/Dice."""
    out = {f"{prefix}bpp": float(np.mean([p["bpp"] for p in points])),
           f"{prefix}dice": float(np.mean([p["dice"] for p in points])),
           f"{prefix}psnr": float(np.mean([p["psnr"] for p in points]))}
    for p in points:
        out[f"{prefix}bpp-q{p['quality']}"] = float(p["bpp"])
        out[f"{prefix}dice-q{p['quality']}"] = float(p["dice"])
    return out


def train_site(codec: SemanticCodec, task_net: torch.nn.Module, data: SiteData, run_config: Mapping[str, Any],
               groups: tuple[str, ...], global_state: Mapping[str, torch.Tensor], prox_mu: float = 0.0,
               dp_history: list | None = None, server_round: int = 0, equal_weights: bool = False,
               device: str | torch.device = "cpu") -> tuple[dict[str, torch.Tensor], dict[str, float], list]:
    """Adapt ``groups`` of ``codec`` (already holding ``global_state``) on the site's K shots.

    Returns the trained subset, scalar metrics (``num-examples``, ``examples``, ``loss``, ``bpp``, ``task``,
    ``dice``, ``epsilon``, ``seconds``) and the Opacus accountant history (empty without sample-level DP).
    """
    cfg = adapt_config(run_config, codec.num_qualities, groups, prox_mu, seed_offset=1000 * server_round,
                       device=str(device), has_training_loss=codec.training_loss is not None)
    result = adapt(codec, task_net, data.train, cfg, global_state=dict(global_state), dp_history=dp_history)
    m = result.metrics
    metrics = {"num-examples": 1.0 if equal_weights else float(m["examples"]), "examples": float(m["examples"]),
               "loss": float(m["loss"]), "bpp": float(m["bpp"]), "task": float(m["task"]),
               "epsilon": float(m["epsilon"]), "seconds": float(m["seconds"])}
    if C.get(run_config, "train-dice"):
        qs = C.parse_qualities(C.get(run_config, "eval-qualities"), codec.num_qualities)
        points = evaluate_codec(codec, task_net, data.train, qualities=qs)
        metrics["dice"] = float(np.mean([p["dice"] for p in points]))
    # Sanitize: NaN losses (e.g. an all-empty Poisson batch history) become 0 so the reply stays valid.
    metrics = {k: (v if np.isfinite(v) else 0.0) for k, v in metrics.items()}
    return result.state, metrics, result.dp_history


def evaluate_site(codec: SemanticCodec, task_net: torch.nn.Module, data: SiteData,
                  run_config: Mapping[str, Any], device: str | torch.device = "cpu") -> dict[str, float]:
    """bpp (real bytes) and Dice of the site's held-out samples at the evaluation qualities (on ``device`` when
    :func:`fedcodec.evaluate.evaluate_codec` takes one; rANS coding always runs on the host)."""
    if not data.held_out:
        raise DataError("this site has no held-out samples to evaluate (eval-samples = 0 or too few images)")
    qs = C.parse_qualities(C.get(run_config, "eval-qualities"), codec.num_qualities)
    extra = {"device": str(device)} if _takes_device(evaluate_codec) else {}
    points = evaluate_codec(codec, task_net, data.held_out, qualities=qs, **extra)
    out = {"num-examples": float(len(data.held_out)), **mean_points(points)}
    out["dice-uncompressed"] = float(uncompressed_dice(task_net, data.held_out))
    return out


def _takes_device(fn: Any) -> bool:
    import inspect

    try:
        return "device" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


#: Errors whose messages fedcodec composes from hashes, parameter names and settings only: safe to send.
SAFE_ERRORS = (ModelMismatchError, UpdateRejectedError)


def describe_error(exc: BaseException, node_config: Mapping[str, Any] | None = None,
                   run_config: Mapping[str, Any] | None = None) -> str:
    """The reason sent to the server in an error reply.

    Other errors' messages may name local files (a data folder, an image, a sample without a mask), which must
    not leave the site: the server gets the error type only, the site's log keeps the details. Configured paths
    are redacted from whatever is sent, as a second guard.
    """
    if isinstance(exc, SAFE_ERRORS) or getattr(exc, "safe_to_send", False):
        text = f"{type(exc).__name__}: {exc}"
    else:
        text = (f"{type(exc).__name__} at the site (details are in the site's log; they are not sent because "
                "they may name local files)")
    for cfg in (node_config or {}, run_config or {}):
        for key in ("data-dir", "eval-dir", "model-path", "task-path"):
            value = str(cfg.get(key, "") or "").strip()
            if value:
                text = text.replace(value, f"<{key}>")
    return text[:500]


def sim_is_attacker(node_config: Mapping[str, Any], run_config: Mapping[str, Any]) -> str:
    """The simulated attack of this node (simulation only), or ``""``."""
    attack = C.get(run_config, "sim.attack").strip().lower()
    if not attack or "data-dir" in node_config or "partition-id" not in node_config:
        return ""
    return attack if int(node_config["partition-id"]) in C.parse_ids(C.get(run_config, "sim.attack-partitions")) else ""


ATTACKS = ("nan", "scale", "shape", "sign-flip", "random", "stale")


def corrupt(state: dict[str, torch.Tensor], reference: Mapping[str, torch.Tensor], attack: str,
            stale: Mapping[str, torch.Tensor] | None = None, seed: int = 0) -> dict:
    """A corrupted update for the robustness scenarios: NaN, a huge scaled update, a wrong shape, the update
    sign-flipped (and scaled by 10), random noise of 10x the update's norm, or a stale subset (``stale``, the
    first global subset this hospital received, sent back instead of its update)."""
    out = {k: v.clone() for k, v in state.items()}
    first = next(iter(out))
    if attack == "nan":
        out[first].view(-1)[0] = float("nan")
    elif attack == "scale":
        out = {k: reference[k] + 1e4 * (v - reference[k]) + 1.0 for k, v in out.items()}
    elif attack == "shape":
        out[first] = out[first].reshape(-1)[:-1].clone()
    elif attack == "sign-flip":
        out = {k: reference[k] - 10.0 * (v - reference[k]) for k, v in out.items()}
    elif attack == "random":
        gen = torch.Generator().manual_seed(seed)
        norm = float(torch.sqrt(sum(((v - reference[k]).double() ** 2).sum() for k, v in out.items())))
        noise = {k: torch.randn(v.shape, generator=gen, dtype=torch.float64) for k, v in out.items()}
        scale = 10.0 * max(norm, 1e-3) / float(torch.sqrt(sum((n ** 2).sum() for n in noise.values())))
        out = {k: (reference[k].double() + scale * noise[k]).to(v.dtype) for k, v in out.items()}
    elif attack == "stale":
        out = {k: (stale[k] if stale is not None else reference[k]).clone() for k in out}
    else:
        raise ValueError(f"unknown sim.attack {attack!r} ({', '.join(ATTACKS)})")
    return out


def sim_dropout(node_config: Mapping[str, Any], run_config: Mapping[str, Any], server_round: int) -> bool:
    """Whether this simulated hospital drops out of this round (deterministic in seed, round and partition)."""
    p = C.get(run_config, "sim.dropout")
    if p <= 0 or "data-dir" in node_config or "partition-id" not in node_config:
        return False
    rng = np.random.default_rng([C.get(run_config, "seed"), server_round, int(node_config["partition-id"]), 7])
    return bool(rng.random() < p)


def sim_straggler_delay(node_config: Mapping[str, Any], run_config: Mapping[str, Any], server_round: int) -> float:
    """Seconds this simulated hospital waits before replying in this round (0 unless it straggles)."""
    p = C.get(run_config, "sim.straggler")
    if p <= 0 or "data-dir" in node_config or "partition-id" not in node_config:
        return 0.0
    rng = np.random.default_rng([C.get(run_config, "seed"), server_round, int(node_config["partition-id"]), 11])
    return C.get(run_config, "sim.straggler-delay") if rng.random() < p else 0.0
