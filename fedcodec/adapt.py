"""Few-shot adaptation of the codec's adaptable subset on K annotated samples.

One function, :func:`adapt`, serves ``fedcodec adapt`` (one site), the Flower ClientApp (one hospital per
round) and the centralised baseline (pooled samples). Only the named groups (``policy``, ``adapters`` by
default) are trained; the base codec and the task network stay frozen and bit-identical, which is checked.

Optional extras, both off by default:

- FedProx: after every optimiser step the subset is pulled towards the global subset,
  ``w <- w - lr * mu * (w - w_global)`` (the proximal term's gradient step; applied outside the loss so that
  it also works under DP-SGD without touching per-sample gradients);
- sample-level DP-SGD with Opacus: full-batch Poisson sampling (q = 1 with few shots), per-sample clipping
  and Gaussian noise; the accountant's history is returned so that a caller can compose epsilon across
  rounds.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from fedcodec.codec import ADAPTABLE_GROUPS, SemanticCodec, pad_to_multiple
from fedcodec.data import Sample, normalize
from fedcodec.errors import DataError
from fedcodec.losses import LossWeights, SemanticLoss

log = logging.getLogger(__name__)


@dataclass
class DPConfig:
    """Sample-level DP-SGD (Opacus) settings."""

    noise_multiplier: float = 1.0
    max_grad_norm: float = 1.0
    delta: float = 1e-5
    accountant: str = "rdp"


def dp_config(enabled: bool, noise_multiplier: float = DPConfig.noise_multiplier,
              max_grad_norm: float = DPConfig.max_grad_norm, delta: float = DPConfig.delta) -> DPConfig | None:
    """The one mapping from DP settings (``fedcodec adapt --dp-*``, the run config's ``sample-dp.*``) to the
    :class:`DPConfig` that :func:`adapt` takes: ``None`` when DP is off; unset values keep DPConfig's."""
    return DPConfig(noise_multiplier, max_grad_norm, delta) if enabled else None


@dataclass
class AdaptConfig:
    """Every knob of few-shot adaptation, and its default: ``fedcodec adapt``'s flags and the Flower run config
    (:mod:`fedcodec.run_config`) take their defaults from here; the loss weights' from :class:`LossWeights`."""

    steps: int = 50
    lr: float = 1e-3
    groups: tuple[str, ...] = ADAPTABLE_GROUPS
    lambda_d: float = LossWeights.lambda_d
    lambda_t: float = LossWeights.lambda_t
    qualities: tuple[int, ...] = ()   # qualities to train on (sampled per step); empty = all
    crop: int = 0                     # 0 = the largest multiple of 64 that fits every sample
    prox_mu: float = 0.0
    seed: int = 0
    dp: DPConfig | None = None
    quality_weights: list[float] = field(default_factory=list)


@dataclass
class AdaptResult:
    """What adaptation produced: the trained subset, scalar metrics and (with DP) the accountant history."""

    state: dict[str, torch.Tensor]
    metrics: dict[str, float]
    dp_history: list = field(default_factory=list)


def samples_to_tensors(samples: Sequence[Sample], crop: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack annotated samples into ``(K, 1, S, S')`` float images in [0, 1] and ``(K, 1, S, S')`` uint8 masks.

    Images of different sizes are centre-cropped to the largest multiple of 64 that fits all of them (or
    padded when one is smaller than 64).
    """
    if not samples:
        raise DataError("adaptation needs at least one annotated sample")
    missing = [s.name for s in samples if s.mask is None]
    if missing:
        raise DataError(f"adaptation needs masks; these samples have none: {missing[:5]}")
    h = min(s.image.shape[0] for s in samples)
    w = min(s.image.shape[1] for s in samples)
    th = crop or max(64, h // 64 * 64)
    tw = crop or max(64, w // 64 * 64)
    xs, ms = [], []
    for s in samples:
        x = torch.from_numpy(normalize(s.image, s.window))[None, None]
        m = torch.from_numpy(s.mask.astype(np.uint8))[None, None]
        x, _ = pad_to_multiple(x, 64)
        m = torch.nn.functional.pad(m, (0, x.shape[-1] - m.shape[-1], 0, x.shape[-2] - m.shape[-2]))
        top, left = (x.shape[-2] - th) // 2, (x.shape[-1] - tw) // 2
        if top < 0 or left < 0:
            x, _ = pad_to_multiple(x, max(th, tw))
            m = torch.nn.functional.pad(m, (0, x.shape[-1] - m.shape[-1], 0, x.shape[-2] - m.shape[-2]))
            top, left = 0, 0
        xs.append(x[..., top:top + th, left:left + tw])
        ms.append(m[..., top:top + th, left:left + tw])
    return torch.cat(xs).float(), torch.cat(ms)


def _frozen_fingerprint(codec: SemanticCodec, groups: Sequence[str]) -> str:
    frozen = [g for g in ("base", *ADAPTABLE_GROUPS) if g not in groups]
    return codec.identity_hash(frozen) if frozen else ""


def adapt(codec: SemanticCodec, task_net: torch.nn.Module, samples: Sequence[Sample] | tuple[torch.Tensor, torch.Tensor],
          config: AdaptConfig, global_state: Mapping[str, torch.Tensor] | None = None,
          dp_history: list | None = None, progress: bool = False) -> AdaptResult:
    """Train ``config.groups`` of ``codec`` in place on the samples.

    Args:
        codec: the codec to adapt (its other groups are frozen and verified unchanged).
        task_net: the frozen task network.
        samples: annotated samples, or already stacked ``(images, masks)`` tensors as from
            :func:`samples_to_tensors`.
        config: the adaptation settings.
        global_state: the subset received from the server (FedProx anchor); defaults to the starting subset.
        dp_history: Opacus accountant history from earlier rounds, to compose epsilon across rounds.
    Returns:
        The adapted subset, metrics (``examples``, ``loss``, ``bpp``, ``task``, ``epsilon``, ``seconds``,
        ``steps``) and the updated accountant history.
    """
    start = time.perf_counter()
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    images, masks = samples if isinstance(samples, tuple) else samples_to_tensors(samples, config.crop)
    qualities = list(config.qualities) or list(range(codec.num_qualities))
    before = _frozen_fingerprint(codec, config.groups)
    params = codec.set_trainable(config.groups)
    if not params:
        raise ValueError(f"groups {config.groups} have no trainable parameters")
    anchor = {k: v.detach().clone() for k, v in (global_state or codec.group_state_dict(config.groups)).items()}
    named = {k: p for k, p in codec.named_parameters() if p.requires_grad}
    loss_fn = SemanticLoss(LossWeights(config.lambda_d, config.lambda_t, 0.0, list(config.quality_weights)),
                           codec.num_qualities)
    optimizer = torch.optim.Adam(params, lr=config.lr)
    model: torch.nn.Module = codec
    loader = DataLoader(TensorDataset(images, masks), batch_size=len(images), shuffle=False)
    engine = None
    codec.train()  # Opacus validates the module in training mode
    if config.dp is not None:
        from opacus import PrivacyEngine

        engine = PrivacyEngine(accountant=config.dp.accountant)
        if dp_history:
            engine.accountant.history = [tuple(h) for h in dp_history]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "secure RNG off" and per-module notices
            model, optimizer, loader = engine.make_private(
                module=codec, optimizer=optimizer, data_loader=loader,
                noise_multiplier=config.dp.noise_multiplier, max_grad_norm=config.dp.max_grad_norm,
                poisson_sampling=True)
    # The frozen entropy models must not re-estimate anything: keep their modules in eval mode.
    codec.entropy_bottleneck.eval()
    codec.gaussian_conditional.eval()
    history: list[dict] = []
    step = 0
    while step < config.steps:
        for xb, mb in loader:
            if step >= config.steps:
                break
            q = int(rng.choice(qualities))
            n = xb.shape[0]
            # Never skip an empty Poisson batch: Opacus still adds noise and the accountant counts the step.
            out = model(xb, q)
            losses = loss_fn(out, xb, mb, torch.full((n,), q, dtype=torch.long), task_net, codec)
            loss = losses["per_sample"].sum() / max(n, 1)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if config.prox_mu > 0:
                with torch.no_grad():
                    for k, p in named.items():
                        p.sub_(config.lr * config.prox_mu * (p - anchor[k]))
            step += 1
            if n:
                history.append({k: float(losses[k].detach()) for k in ("loss", "bpp", "task")})
            if progress and (step % 20 == 0 or step == config.steps):
                log.info("adapt step %d/%d  loss %.4f  bpp %.4f  task %.4f", step, config.steps,
                         float(losses["loss"].detach()), float(losses["bpp"].detach()), float(losses["task"].detach()))
    if engine is not None:
        model._close()  # remove Opacus hooks and per-sample grads so the codec can be adapted again
    codec.eval()
    after = _frozen_fingerprint(codec, config.groups)
    if before != after:
        raise RuntimeError("adaptation changed frozen parameters; this is a bug")
    codec.update(force=True)
    tail = history[-min(10, len(history)):] or [{"loss": math.nan, "bpp": math.nan, "task": math.nan}]
    metrics = {"examples": float(len(images)), "steps": float(config.steps),
               "loss": float(np.mean([h["loss"] for h in tail])), "bpp": float(np.mean([h["bpp"] for h in tail])),
               "task": float(np.mean([h["task"] for h in tail])), "epsilon": 0.0,
               "seconds": time.perf_counter() - start}
    new_history: list = []
    if engine is not None:
        metrics["epsilon"] = float(engine.get_epsilon(config.dp.delta))
        new_history = [list(h) for h in engine.accountant.history]
    return AdaptResult(codec.group_state_dict(config.groups), metrics, new_history)


def config_dict(config: AdaptConfig) -> dict:
    """JSON-friendly form of an :class:`AdaptConfig`."""
    return asdict(config)
