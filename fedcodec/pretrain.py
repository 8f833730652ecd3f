"""Pretraining: the task network on uncompressed images, then the semantic codec end to end.

The codec is semantic from the start: after a short rate-distortion warm-up (MVMICNet's stage 1) it trains
on rate + distortion + the frozen task network's loss over random qualities, so one model learns the whole
rate-task curve. The policy head is trained with the base; the adapters stay at identity so that few-shot
adaptation starts from the pretrained behaviour.
"""

from __future__ import annotations

import csv
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from fedcodec.codec import SemanticCodec
from fedcodec.data import make_phantoms, normalize
from fedcodec.losses import LabelMapDiscriminator, LossWeights, SemanticLoss
from fedcodec.model_io import check_new_output, save_codec, save_task, write_json
from fedcodec.task_net import freeze, train_task_network

log = logging.getLogger(__name__)


@dataclass
class Stage:
    """One stage of the schedule: a fraction of the steps with its own loss weights and peak learning rate."""

    name: str
    fraction: float
    lambda_d: float
    lambda_t: float
    lr: float


def default_stages() -> list[Stage]:
    return [Stage("rate-distortion warm-up", 0.1, 2e-3, 0.0, 3e-4),
            Stage("semantic", 0.9, 2e-4, 1.0, 3e-4)]


def fine_tune_stages() -> list[Stage]:
    """The schedule when training continues from a codec file (``init``): the semantic stage, lower rate."""
    return [Stage("semantic fine-tune", 1.0, 2e-4, 1.0, 1e-4)]


@dataclass
class PretrainConfig:
    """Every knob of ``fedcodec pretrain`` (the CLI flags mirror these names)."""

    steps: int = 3000
    batch_size: int = 8
    crop: int = 128
    images: int = 256
    image_size: int = 256
    hospital: int = 0
    seed: int = 0
    N: int = 48
    M: int = 64
    num_qualities: int = 8
    lambda_adv: float = 0.0
    task_steps: int = 800
    semantic: bool = True           # False trains an MSE codec of the same architecture (a baseline)
    z_gain: bool = False            # per-quality gains on the hyper-latent (SemanticCodec z_gain)
    init: str = ""                  # continue from this codec file (its N, M and qualities; z gains added if set)
    gain_lr_scale: float = 1.0      # learning-rate multiplier of the per-quality gains (1 = the stage's rate)
    stages: list[Stage] = field(default_factory=default_stages)
    log_every: int = 100
    checkpoint_every: int = 1000


def _crops(images: np.ndarray, masks: np.ndarray, rng: np.random.Generator, batch: int, crop: int):
    idx = rng.integers(0, len(images), batch)
    h, w = images.shape[1:]
    ys, xs = rng.integers(0, h - crop + 1, batch), rng.integers(0, w - crop + 1, batch)
    x = np.stack([images[i, a:a + crop, b:b + crop] for i, a, b in zip(idx, ys, xs)])
    m = np.stack([masks[i, a:a + crop, b:b + crop] for i, a, b in zip(idx, ys, xs)])
    flip = rng.random(batch) < 0.5
    x[flip], m[flip] = x[flip, :, ::-1], m[flip, :, ::-1]
    return torch.from_numpy(x[:, None].copy()), torch.from_numpy(m[:, None].copy())


def initial_codec(config: PretrainConfig) -> SemanticCodec:
    """A fresh codec, or the codec in ``config.init`` (with neutral z gains added when ``config.z_gain``)."""
    if not config.init:
        return SemanticCodec(N=config.N, M=config.M, num_qualities=config.num_qualities, z_gain=config.z_gain)
    from fedcodec.model_io import load_codec

    start = load_codec(config.init)
    if not config.z_gain or start.log_z_gain is not None:
        return start
    codec = SemanticCodec(**{**start.config, "z_gain": True})
    missing, unexpected = codec.load_state_dict(start.state_dict(), strict=False)
    assert missing == ["log_z_gain"] and not unexpected, (missing, unexpected)
    return codec


def pretrain(config: PretrainConfig, out_dir: str | Path, task_net: torch.nn.Module | None = None,
             overwrite: bool = False, progress: bool = True) -> tuple[SemanticCodec, torch.nn.Module, dict]:
    """Train task network (unless given) and codec; write ``codec.pt``, ``task.pt``, ``pretrain.json`` and
    ``metrics.csv`` into ``out_dir``. Returns ``(codec, task_net, summary)``."""
    out_dir = Path(out_dir)
    codec_path = check_new_output(out_dir / "codec.pt", overwrite)
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    start = time.perf_counter()

    samples = make_phantoms(config.images, seed=config.seed, size=config.image_size, hospital=config.hospital)
    images = np.stack([normalize(s.image, s.window) for s in samples]).astype(np.float32)
    masks = np.stack([s.mask for s in samples]).astype(np.uint8)
    log.info("pretrain: %d source phantoms (hospital %d), %dx%d", len(samples), config.hospital,
             config.image_size, config.image_size)

    if task_net is None:
        task_net = train_task_network(images, masks, steps=config.task_steps, seed=config.seed, progress=progress)
    task_net = freeze(task_net)
    task_seconds = time.perf_counter() - start

    codec = initial_codec(config)
    # A codec file given as ``init`` fixes the architecture; record what is really trained.
    config.N, config.M, config.num_qualities = codec.N, codec.M, codec.num_qualities
    trainable = codec.set_trainable(["base", "policy"])
    aux_params = [p for k, p in codec.named_parameters() if k.endswith(".quantiles")]
    for p in aux_params:
        p.requires_grad_(True)
    gain_ids = {id(p) for k, p in codec.named_parameters() if k in ("log_gain", "log_z_gain")}
    param_groups = [{"params": [p for p in trainable if id(p) not in gain_ids], "scale": 1.0},
                    {"params": [p for p in trainable if id(p) in gain_ids], "scale": config.gain_lr_scale}]
    opt = torch.optim.Adam(param_groups, lr=config.stages[0].lr)
    aux_opt = torch.optim.Adam(aux_params, lr=1e-3)
    disc = LabelMapDiscriminator() if config.lambda_adv > 0 else None
    disc_opt = torch.optim.Adam(disc.parameters(), lr=1e-4) if disc is not None else None

    bounds = np.cumsum([round(s.fraction * config.steps) for s in config.stages])
    bounds[-1] = config.steps
    metrics_path = out_dir / "metrics.csv"
    rows: list[dict] = []
    codec.train()
    stage_idx, step_start = -1, 0
    for step in range(1, config.steps + 1):
        new_stage = int(np.searchsorted(bounds, step - 1, side="right"))
        if new_stage != stage_idx:
            stage_idx = new_stage
            stage = config.stages[stage_idx]
            lambda_t = stage.lambda_t if config.semantic else 0.0
            loss_fn = SemanticLoss(LossWeights(stage.lambda_d, lambda_t, config.lambda_adv if lambda_t else 0.0),
                                   config.num_qualities, discriminator=disc)
            step_start = step
            stage_len = int(bounds[stage_idx]) - step + 1
            log.info("pretrain stage %d/%d '%s': %d steps, lambda_d %g, lambda_t %g", stage_idx + 1,
                     len(config.stages), stage.name, stage_len, stage.lambda_d, lambda_t)
        # cosine decay of the learning rate within each stage
        frac = (step - step_start) / max(stage_len, 1)
        for group in opt.param_groups:
            group["lr"] = group["scale"] * stage.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * frac)))

        x, m = _crops(images, masks, rng, config.batch_size, config.crop)
        quality = torch.from_numpy(rng.integers(0, config.num_qualities, config.batch_size))
        out = codec(x, quality)
        losses = loss_fn(out, x, m, quality, task_net, codec)
        opt.zero_grad()
        losses["loss"].backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        opt.step()
        aux_opt.zero_grad()
        codec.aux_loss().backward()
        aux_opt.step()
        if disc is not None and lambda_t:
            with torch.no_grad():
                fake = 1 - torch.softmax(task_net(codec.task_input(out["x_hat"].detach())), 1)[:, :1]
            d_loss = disc.loss(x, m.float(), fake)
            disc_opt.zero_grad()
            d_loss.backward()
            disc_opt.step()

        if step % config.log_every == 0 or step == config.steps:
            row = {"step": step, "stage": stage.name, "seconds": round(time.perf_counter() - start, 1),
                   **{k: round(float(losses[k].detach()), 6) for k in ("loss", "bpp", "mse", "task", "adv")}}
            rows.append(row)
            if progress:
                log.info("pretrain step %d/%d  loss %.4f  bpp %.4f  mse %.5f  task %.4f  (%.0f s)", step,
                         config.steps, row["loss"], row["bpp"], row["mse"], row["task"], row["seconds"])
            with open(metrics_path, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=list(rows[0]))
                writer.writeheader()
                writer.writerows(rows)
        if step % config.checkpoint_every == 0 and step < config.steps:
            save_codec(codec, codec_path, meta={"partial": True, "step": step}, overwrite=True)
            codec.train()

    codec.eval()
    seconds = time.perf_counter() - start
    counts = codec.parameter_counts()
    summary = {"config": asdict(config), "seconds_total": round(seconds, 1),
               "seconds_task_network": round(task_seconds, 1), "parameter_counts": counts,
               "adaptable_fraction": (counts["policy"] + counts["adapters"]) / counts["total"],
               "torch_threads": torch.get_num_threads(), "final": rows[-1] if rows else {}}
    save_codec(codec, codec_path, meta={"pretrain": summary}, overwrite=True)
    task_path = out_dir / "task.pt"
    save_task(task_net, task_path, overwrite=True)
    write_json(out_dir / "pretrain.json", summary)
    return codec, task_net, summary
