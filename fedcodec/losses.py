"""Training objective of the semantic codec.

``loss = bpp + w[q] * (lambda_d * 255^2 * MSE(x_hat, x) + lambda_t * DiceCE(task(task_input(x_hat)), mask)
                        + lambda_adv * adversarial)``

- ``bpp`` is estimated from the entropy models' likelihoods (the real bitstream is within about 1 % of it);
- the task term is the frozen task network's Dice + cross-entropy on the decoded image (MVMICNet,
  Liu et al.); the task network is never updated by this loss;
- ``w[q]`` is a per-quality multiplier, so one variable-rate model learns a whole rate-task curve
  (quality 0 = lowest rate = smallest multiplier);
- the optional adversarial term is Liu et al.'s label-map discriminator: it asks the task network's label map
  on the decoded image to be indistinguishable from the ground-truth label map.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from fedcodec.codec import bits_per_pixel
from fedcodec.task_net import foreground_probability, segmentation_loss


def training_loss_from_meta(meta: Mapping[str, Any], num_qualities: int) -> LossWeights | None:
    """The rate-distortion-task trade-off a codec was trained with, from its file's metadata: the
    ``training_loss`` record (written by :func:`fedcodec.model_io.save_codec`) or else the last semantic stage
    of its ``pretrain`` record. None when the file records neither.

    Few-shot adaptation uses it by default (:class:`fedcodec.adapt.AdaptConfig`): adapting with other weights
    than the codec's ladder was trained with moves every quality to another operating point (fewer bits at
    the top quality, a worse reading there) instead of improving the curve at the points it has.

    Raises ValueError for a record that is not a valid set of weights (a hostile or damaged file)."""
    record = meta.get("training_loss")
    if record is None:
        pretrain = meta.get("pretrain")
        config = pretrain.get("config") if isinstance(pretrain, Mapping) else None
        stages = config.get("stages") if isinstance(config, Mapping) else None
        semantic = [st for st in stages if isinstance(st, Mapping) and st.get("lambda_t")] \
            if isinstance(stages, list) else []
        if not semantic:
            return None
        record = {"lambda_d": semantic[-1].get("lambda_d"), "lambda_t": semantic[-1].get("lambda_t"),
                  "quality_weights": config.get("quality_weights") or []}
    if not isinstance(record, Mapping):
        raise ValueError(f"training_loss must be a mapping, got {type(record).__name__}")
    try:
        lambda_d, lambda_t = float(record["lambda_d"]), float(record["lambda_t"])
        weights = [float(w) for w in record.get("quality_weights") or []]
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"training_loss is not a set of loss weights ({exc})") from None
    values = [lambda_d, lambda_t, *weights]
    if not all(math.isfinite(v) and v >= 0 for v in values):
        raise ValueError(f"training_loss holds negative or non-finite weights: {values}")
    if weights and len(weights) != num_qualities:
        raise ValueError(f"training_loss has {len(weights)} quality weights for {num_qualities} qualities")
    return LossWeights(lambda_d, lambda_t, 0.0, weights)


def default_quality_weights(num_qualities: int, low: float = 0.06, high: float = 8.0) -> list[float]:
    """Geometric per-quality multipliers from ``low`` (quality 0) to ``high`` (last quality)."""
    if num_qualities == 1:
        return [math.sqrt(low * high)]
    ratio = (high / low) ** (1 / (num_qualities - 1))
    return [low * ratio**i for i in range(num_qualities)]


@dataclass
class LossWeights:
    """Weights of the objective; ``quality_weights`` has one entry per quality (empty = default)."""

    lambda_d: float = 2e-4
    lambda_t: float = 1.0
    lambda_adv: float = 0.0
    quality_weights: list[float] = field(default_factory=list)


class LabelMapDiscriminator(nn.Module):
    """Patch discriminator on (image, foreground label map) pairs ``(B, 2, H, W)`` -> logits ``(B, 1, H/8, W/8)``."""

    def __init__(self, hidden: int = 32) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(2, hidden, 4, 2, 1), nn.LeakyReLU(0.2),
            nn.Conv2d(hidden, hidden * 2, 4, 2, 1), nn.GroupNorm(8, hidden * 2), nn.LeakyReLU(0.2),
            nn.Conv2d(hidden * 2, hidden * 2, 4, 2, 1), nn.GroupNorm(8, hidden * 2), nn.LeakyReLU(0.2),
            nn.Conv2d(hidden * 2, 1, 3, 1, 1),
        )

    def forward(self, image: torch.Tensor, label_map: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([image, label_map], dim=1))

    def loss(self, image: torch.Tensor, real_map: torch.Tensor, fake_map: torch.Tensor) -> torch.Tensor:
        """Discriminator loss (real = ground truth, fake = label map of the decoded image, detached)."""
        real = self(image, real_map)
        fake = self(image, fake_map.detach())
        return (F.binary_cross_entropy_with_logits(real, torch.ones_like(real))
                + F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake)))


def hyper_rate_weights(value: float | Sequence[float], num_qualities: int) -> list[float]:
    """``SemanticLoss``'s ``hyper_rate_weight`` as one weight per quality: one number for every quality, or a
    sequence of ``num_qualities``; each finite and >= 0, else ValueError."""
    hw = [float(value)] * num_qualities if isinstance(value, (int, float)) else [float(v) for v in value]
    if len(hw) != num_qualities or not all(math.isfinite(v) and v >= 0 for v in hw):
        raise ValueError(f"hyper_rate_weight must be one finite number >= 0 or {num_qualities} of them (one "
                         f"per quality), got {value}")
    return hw


class SemanticLoss(nn.Module):
    """Rate + weighted distortion + task (+ adversarial) loss; see the module docstring.

    ``forward(out, x, mask, quality, task_net, codec, task_weight=None)`` returns a dict of scalars (``loss``,
    ``bpp``, ``mse``, ``task``, ``adv``) and ``per_sample`` ``(B,)`` losses. ``task_weight`` ``(B,)`` scales the
    task and adversarial terms per sample (0 = rate and distortion only, e.g. for crops re-windowed beyond
    what the task network was trained on); ``task_view`` maps ``x_hat`` to what the task network reads (e.g.
    :func:`fedcodec.training_data.undo_intensity_windows`), before the codec's own ``task_input``.
    ``hyper_rate_weight`` multiplies the hyper-latent's bits in the rate term (1 = every bit costs the same;
    above 1 pushes side information down, which is what the lowest qualities' files are most sensitive to):
    one number for every quality, or one per quality (e.g. heavier at the lowest, where the side information
    is the largest share of a file); the reported ``bpp`` is always the real estimate.
    """

    def __init__(self, weights: LossWeights, num_qualities: int,
                 discriminator: LabelMapDiscriminator | None = None,
                 hyper_rate_weight: float | Sequence[float] = 1.0) -> None:
        super().__init__()
        hw = hyper_rate_weights(hyper_rate_weight, num_qualities)
        self.charges_hyper_latent = any(v != 1.0 for v in hw)   # else the rate term is the plain estimate
        self.register_buffer("hyper_rate_weights", torch.tensor(hw, dtype=torch.float32))
        qw = weights.quality_weights or default_quality_weights(num_qualities)
        if len(qw) != num_qualities:
            raise ValueError(f"need {num_qualities} quality weights, got {len(qw)}")
        self.weights = weights
        self.register_buffer("quality_weights", torch.tensor(qw, dtype=torch.float32))
        self.discriminator = discriminator

    def forward(self, out: dict, x: torch.Tensor, mask: torch.Tensor | None, quality: torch.Tensor,
                task_net: nn.Module | None, codec: nn.Module, task_weight: torch.Tensor | None = None,
                task_view: Callable[[torch.Tensor], torch.Tensor] | None = None) -> dict:
        b = x.shape[0]
        bpp = bits_per_pixel(out["likelihoods"], x.shape[-2] * x.shape[-1])
        rate = bpp
        q = torch.as_tensor(quality, device=x.device).expand(b)
        if self.charges_hyper_latent:
            z_bpp = bits_per_pixel({"z": out["likelihoods"]["z"]}, x.shape[-2] * x.shape[-1])
            rate = bpp + (self.hyper_rate_weights[q] - 1.0) * z_bpp
        mse = (out["x_hat"] - x).pow(2).flatten(1).mean(1)
        w = self.quality_weights[q]
        weighted = self.weights.lambda_d * 255**2 * mse
        task = torch.zeros_like(mse)
        adv = torch.zeros_like(mse)
        if self.weights.lambda_t > 0 or self.weights.lambda_adv > 0:
            if task_net is None or mask is None:
                raise ValueError("the task and adversarial terms need a task network and masks")
            x_hat = out["x_hat"] if task_view is None else task_view(out["x_hat"])
            logits = task_net(codec.task_input(x_hat))
            task = segmentation_loss(logits, mask)
            tw = torch.ones_like(task) if task_weight is None else task_weight.to(task)
            weighted = weighted + self.weights.lambda_t * tw * task
            if self.weights.lambda_adv > 0 and self.discriminator is not None:
                fake = self.discriminator(x, foreground_probability(logits))
                adv = F.binary_cross_entropy_with_logits(fake, torch.ones_like(fake), reduction="none")
                adv = adv.flatten(1).mean(1)
                weighted = weighted + self.weights.lambda_adv * tw * adv
        per_sample = rate + w * weighted
        return {"loss": per_sample.mean(), "per_sample": per_sample, "bpp": bpp.mean(), "mse": mse.mean(),
                "task": task.mean(), "adv": adv.mean()}
