"""Pretraining: task networks on uncompressed images, then the semantic codec end to end.

The codec is semantic from the start: after a short rate-distortion warm-up (MVMICNet's stage 1) it trains
on rate + distortion + a frozen task network's loss over random qualities, so one model learns the whole
rate-task curve. The policy head is trained with the base; the adapters stay at identity so that few-shot
adaptation starts from the pretrained behaviour.

What keeps the codec from serving one segmenter and one domain only (the ``lean`` recipe, see
:func:`lean_config`):

- an *ensemble* of task networks (several MONAI architectures, widths and seeds), one drawn per step, so the
  codec preserves what segmenters in general need rather than one network's quirks;
- domain-randomised phantoms (a random hospital shift per image, :mod:`fedcodec.training_data`) plus real
  labelled folders (``data``);
- a fidelity weight high enough that a segmenter the codec never saw still works.

Runs are resumable and steered: ``checkpoint.pt`` in the output folder holds everything needed to continue
exactly (model, optimisers, scheduler, step, RNG states, metrics so far), so a long schedule trains in chunks
(``max_minutes``); every ``val_every`` steps a held-out validation writes BD-rate(Dice) against x265 on
held-out phantoms of hospitals 0 and 1 to ``metrics.csv`` and keeps the best codec as ``best.pt``.
"""

from __future__ import annotations

import copy
import csv
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedcodec.codec import SemanticCodec
from fedcodec.device import resolve_device  # noqa: F401  (re-exported: pretrain.resolve_device)
from fedcodec.errors import DataError, ModelFileError
from fedcodec.losses import LabelMapDiscriminator, LossWeights, SemanticLoss, hyper_rate_weights
from fedcodec.model_io import check_new_output, save_codec, save_task, write_json
from fedcodec.task_net import freeze, load_task_network, train_task_network

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"
CHECKPOINT_FORMAT = "fedcodec-pretrain-checkpoint"
CHECKPOINT_VERSION = 1
#: Settings a resumed chunk may change: where it runs, not what it trains.
RUNTIME_KEYS = ("device", "bf16")


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


def lean_stages() -> list[Stage]:
    """Stages of the ``lean`` recipe: more fidelity weight, so segmenters the codec never saw still work."""
    return [Stage("rate-distortion warm-up", 0.08, 2e-3, 0.0, 4e-4),
            Stage("semantic", 0.92, 5e-4, 1.0, 4e-4)]


#: Task-network ensemble of the ``lean`` recipe: ``(architecture, features, seed)``. Benchmarks evaluate
#: with segmenters outside this list (another architecture, other seeds, trained on the hospital's data).
LEAN_TASK_ENSEMBLE: list[list[Any]] = [["basicunet", [8, 16, 32, 64, 128, 8], 11],
                                       ["unet", [16, 32, 64, 128], 13],
                                       ["basicunet", [16, 16, 32, 64, 128, 16], 12]]


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
    # --- the lean recipe (see lean_config); the defaults keep the first recipe unchanged
    arch: str = "v1"                # codec architecture (SemanticCodec arch)
    Nz: int = 0                     # hyper-latent channels (0 = the architecture's default)
    decoder_widths: list[int] = field(default_factory=list)
    gain_range: list[float] = field(default_factory=lambda: [0.25, 2.0])
    quality_weights: list[float] = field(default_factory=list)   # empty = losses.default_quality_weights
    randomise_domains: bool = False  # phantoms with a random hospital shift each (training_data)
    source_share: float = 0.25       # share of source-domain (hospital 0) phantoms when randomising
    intensity_windows: float = 0.0   # share of crops re-windowed to clip at black and white (training_data)
    intensity_windows_quality: int = 0  # re-windowed crops train at this quality (0-based) and above
    window_task: bool = False       # task loss on re-windowed crops too, read through the inverse window
    hyper_rate_weight: float | list[float] = 1.0  # weight of the hyper-latent's bits in the rate term: one, or one
    #                                                per quality (SemanticLoss)
    data: list[str] = field(default_factory=list)  # real labelled folders mixed into the pool
    task_ensemble: list[list[Any]] = field(default_factory=list)  # [[arch, features, seed], ...]; empty = one
    warmup_steps: int = 0           # linear learning-rate warm-up at the start of the schedule
    val_every: int = 0              # 0 = no steering validation
    val_images: int = 8             # held-out phantoms per validation hospital
    val_seed: int = 5000            # seed of the validation phantoms (benchmarks use other seeds)
    device: str = "cpu"
    bf16: bool = False              # bf16 autocast of the training forward pass (CUDA only)


def lean_config(**overrides: Any) -> PretrainConfig:
    """The recipe of the lean embedded default: light encoder, small hyper-latent, task-network ensemble,
    randomised domains, wide rate range, steered validation."""
    base = dict(arch="lean", N=64, M=64, Nz=16, decoder_widths=[128, 64, 48], z_gain=True, gain_lr_scale=10.0,
                gain_range=[0.15, 4.0], quality_weights=_geometric(8, 0.04, 32.0), randomise_domains=True,
                images=384, task_ensemble=copy.deepcopy(LEAN_TASK_ENSEMBLE), task_steps=700, steps=20000,
                stages=lean_stages(), warmup_steps=300, val_every=1000, checkpoint_every=250)
    base.update(overrides)
    return PretrainConfig(**base)


def _geometric(n: int, low: float, high: float) -> list[float]:
    from fedcodec.losses import default_quality_weights

    return [round(w, 6) for w in default_quality_weights(n, low, high)]


def config_from_dict(d: dict) -> PretrainConfig:
    """Inverse of ``asdict(PretrainConfig)`` (stages back to :class:`Stage`)."""
    d = dict(d)
    d["stages"] = [Stage(**s) for s in d.get("stages", [])] or default_stages()
    known = set(PretrainConfig.__dataclass_fields__)
    unknown = sorted(set(d) - known)
    if unknown:
        raise ModelFileError(f"pretraining config has unknown keys {unknown}")
    return PretrainConfig(**d)


def initial_codec(config: PretrainConfig) -> SemanticCodec:
    """A fresh codec, or the codec in ``config.init`` (with neutral z gains added when ``config.z_gain``)."""
    if not config.init:
        kw: dict[str, Any] = {}
        if config.arch != "v1":
            kw = dict(arch=config.arch, Nz=config.Nz or None, decoder_widths=config.decoder_widths or None)
        return SemanticCodec(N=config.N, M=config.M, num_qualities=config.num_qualities, z_gain=config.z_gain,
                             gain_range=tuple(config.gain_range), **kw)
    from fedcodec.model_io import load_codec

    start = load_codec(config.init)
    if not config.z_gain or start.log_z_gain is not None:
        return start
    codec = SemanticCodec(**{**start.config, "z_gain": True})
    missing, unexpected = codec.load_state_dict(start.state_dict(), strict=False)
    assert missing == ["log_z_gain"] and not unexpected, (missing, unexpected)
    return codec


# ------------------------------------------------------------------------------------------------ data
def training_pool(config: PretrainConfig):
    """The training images: phantoms (randomised or of ``config.hospital``) plus ``config.data`` folders."""
    from fedcodec.data import load_samples, make_phantoms
    from fedcodec.training_data import TrainingPool, randomised_phantoms

    if config.randomise_domains:
        samples = randomised_phantoms(config.images, seed=config.seed, size=config.image_size,
                                      source_share=config.source_share)
    else:
        samples = make_phantoms(config.images, seed=config.seed, size=config.image_size, hospital=config.hospital)
    pool = TrainingPool.from_samples(samples)
    for folder in config.data:
        real = TrainingPool.from_samples(load_samples(folder))
        log.info("pretrain: %d labelled images from %s", len(real), folder)
        pool = pool.extend(real)
    return pool


def _task_networks(config: PretrainConfig, pool, out_dir: Path, progress: bool) -> list[torch.nn.Module]:
    """The ensemble, trained on the pool's uncompressed images (or loaded from ``out_dir`` when present)."""
    nets = []
    images = [im for im in pool.images]
    masks = [m for m in pool.masks]
    same = len({im.shape for im in images}) == 1
    for i, (arch, features, seed) in enumerate(config.task_ensemble):
        path = out_dir / f"task_{i}.pt"
        if path.is_file():
            nets.append(load_task_network(path))
            continue
        log.info("pretrain: task network %d/%d (%s %s, seed %d)", i + 1, len(config.task_ensemble), arch,
                 features, seed)
        imgs = np.stack(images) if same else images
        msks = np.stack(masks) if same else masks
        net = train_task_network(imgs, msks, steps=config.task_steps, seed=seed, features=features,
                                 progress=progress, arch=arch)
        save_task(net, path, overwrite=True)
        nets.append(freeze(net))
    return nets


# ------------------------------------------------------------------------------------------------ validation
class SteeringValidation:
    """BD-rate(Dice) of the codec against x265 on held-out phantoms of hospitals 0 and 1.

    The x265 points depend only on the images and the segmenter, so they are computed once and cached in
    ``out_dir/val_anchors.json``. Coding runs on the CPU (entropy coding always does).
    """

    hospitals = (0, 1)

    def __init__(self, config: PretrainConfig, task_net: torch.nn.Module, out_dir: Path) -> None:
        from fedcodec.data import make_phantoms

        self.task_net = copy.deepcopy(task_net).cpu()
        self.sets = {h: make_phantoms(config.val_images, seed=config.val_seed, size=config.image_size, hospital=h)
                     for h in self.hospitals}
        cache = out_dir / "val_anchors.json"
        if cache.is_file():
            self.anchor = {int(k): v for k, v in json.loads(cache.read_text()).items()}
        else:
            from fedcodec.evaluate import evaluate_anchor

            self.anchor = {h: evaluate_anchor("hevc", self.task_net, s) for h, s in self.sets.items()}
            write_json(cache, {str(k): v for k, v in self.anchor.items()})

    def __call__(self, codec: SemanticCodec) -> dict[str, float]:
        from fedcodec.bdrate import bd_rate
        from fedcodec.errors import FedcodecError
        from fedcodec.evaluate import evaluate_codec

        cpu = copy.deepcopy(codec).cpu().eval()
        cpu.update(force=True)
        out: dict[str, float] = {}
        for h, samples in self.sets.items():
            pts = evaluate_codec(cpu, self.task_net, samples)
            ref = self.anchor[h]
            try:
                bd = bd_rate([p["bpp"] for p in ref], [p["dice"] for p in ref],
                             [p["bpp"] for p in pts], [p["dice"] for p in pts]).bd_rate_percent
            except FedcodecError:  # no common Dice interval yet: worse than any measured value
                bd = 1000.0
            out[f"val_bd_h{h}"] = round(bd, 2)
            out[f"val_dice_top_h{h}"] = round(pts[-1]["dice"], 4)
            out[f"val_bpp_low_h{h}"] = round(pts[0]["bpp"], 4)
        out["val_score"] = round(float(np.mean([out[f"val_bd_h{h}"] for h in self.hospitals])), 2)
        return out


# ------------------------------------------------------------------------------------------------ training
def _schedule(config: PretrainConfig) -> tuple[np.ndarray, Any]:
    """Stage boundaries (cumulative steps) and the learning-rate multiplier of a step (1-based)."""
    bounds = np.cumsum([round(s.fraction * config.steps) for s in config.stages])
    bounds[-1] = config.steps

    def factor(step: int) -> float:
        step = min(step, config.steps)  # the scheduler also asks for the step after the last
        stage_idx = int(np.searchsorted(bounds, step - 1, side="right"))
        start = int(bounds[stage_idx - 1]) + 1 if stage_idx else 1
        stage_len = int(bounds[stage_idx]) - start + 1
        frac = (step - start) / max(stage_len, 1)
        warm = min(1.0, step / config.warmup_steps) if config.warmup_steps else 1.0
        # cosine decay within each stage to 5 % of the stage's peak rate
        return warm * config.stages[stage_idx].lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * frac)))

    return bounds, factor


def _rng_state(rng: np.random.Generator, device: torch.device) -> dict:
    state = {"numpy": rng.bit_generator.state, "torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _write_rows(path: Path, rows: list[dict]) -> None:
    fields: list[str] = []
    for r in rows:
        fields += [k for k in r if k not in fields]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def read_checkpoint(out_dir: str | Path) -> dict:
    """Load ``out_dir/checkpoint.pt`` (tensors and plain data only: ``weights_only=True``)."""
    from fedcodec.model_io import read_tagged_file

    path = Path(out_dir) / CHECKPOINT
    if not path.is_file():
        raise ModelFileError(f"no pretraining checkpoint to resume in {out_dir} (expected {path.name})")
    return read_tagged_file(path, CHECKPOINT_FORMAT, CHECKPOINT_VERSION, "pretraining checkpoint")


def pretrain(config: PretrainConfig | None, out_dir: str | Path, task_net: torch.nn.Module | None = None,
             overwrite: bool = False, progress: bool = True, resume: bool = False,
             max_minutes: float = 0.0, device: str | None = None,
             bf16: bool | None = None) -> tuple[SemanticCodec, torch.nn.Module, dict]:
    """Train task network(s) (unless given) and codec into ``out_dir``.

    Writes ``codec.pt`` (at the end of the schedule), ``task.pt`` (the first task network), ``task_<i>.pt``
    (ensemble members), ``checkpoint.pt`` (every ``checkpoint_every`` steps and when stopping),
    ``best.pt`` (best validation score), ``metrics.csv`` and ``pretrain.json``.

    Args:
        config: the settings; with ``resume`` it may be None (the checkpoint's config is used; a given config
            must equal it).
        resume: continue the run in ``out_dir`` from its checkpoint, exactly (model, optimisers, scheduler,
            step, RNG states).
        max_minutes: stop after this much wall time with a checkpoint (0 = run to the end); resume later.
        device, bf16: override ``config.device`` / ``config.bf16`` (where this chunk runs).
    Returns:
        ``(codec, task_net, summary)``; ``summary["finished"]`` says whether the schedule completed.
    """
    out_dir = Path(out_dir)
    ckpt = None
    if resume:
        ckpt = read_checkpoint(out_dir)
        saved = config_from_dict(ckpt["config"])
        if config is not None:
            # Where a chunk runs (device, bf16) may change between chunks; what it trains may not.
            diff = sorted(k for k, v in asdict(config).items() if asdict(saved)[k] != v and k not in RUNTIME_KEYS)
            if diff:
                raise DataError(f"--resume continues the checkpoint's own settings; these differ: {diff}")
            saved.device, saved.bf16 = config.device, config.bf16
        config = saved
    elif config is None:
        raise ValueError("pretrain needs a config unless it resumes")
    if device is not None:
        config.device = device
    if bf16 is not None:
        config.bf16 = bf16
    try:   # before anything is written: the loss would refuse it only after the segmenters trained
        hyper_rate_weights(config.hyper_rate_weight, config.num_qualities)
    except ValueError as e:
        raise DataError(str(e)) from None
    codec_path = out_dir / "codec.pt"
    if not resume:
        check_new_output(codec_path, overwrite)
        if (out_dir / CHECKPOINT).exists() and not overwrite:
            raise DataError(f"{out_dir} holds a pretraining checkpoint; pass --resume to continue it or "
                            "--overwrite to start again")
    out_dir.mkdir(parents=True, exist_ok=True)
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    start = time.perf_counter()

    pool = training_pool(config)
    log.info("pretrain: %d training images (%s)", len(pool),
             "randomised domains" if config.randomise_domains else f"hospital {config.hospital}")
    if task_net is not None:
        task_nets = [freeze(task_net)]
    elif config.task_ensemble:
        task_nets = _task_networks(config, pool, out_dir, progress)
    elif resume and (out_dir / "task.pt").is_file():
        task_nets = [load_task_network(out_dir / "task.pt")]
    else:
        same = len({im.shape for im in pool.images}) == 1
        imgs = np.stack(pool.images) if same else pool.images
        msks = np.stack(pool.masks) if same else pool.masks
        task_nets = [train_task_network(imgs, msks, steps=config.task_steps, seed=config.seed, progress=progress)]
    task_nets = [freeze(n).to(device) for n in task_nets]
    save_task(task_nets[0].cpu(), out_dir / "task.pt", overwrite=True)
    task_nets[0].to(device)
    task_seconds = time.perf_counter() - start

    codec = initial_codec(config)
    # A codec file given as ``init`` fixes the architecture; record what is really trained.
    config.N, config.M, config.num_qualities = codec.N, codec.M, codec.num_qualities
    codec.to(device)
    trainable = codec.set_trainable(["base", "policy"])
    aux_params = [p for k, p in codec.named_parameters() if k.endswith(".quantiles")]
    for p in aux_params:
        p.requires_grad_(True)
    gain_ids = {id(p) for k, p in codec.named_parameters() if k in ("log_gain", "log_z_gain")}
    param_groups = [{"params": [p for p in trainable if id(p) not in gain_ids], "scale": 1.0},
                    {"params": [p for p in trainable if id(p) in gain_ids], "scale": config.gain_lr_scale}]
    bounds, factor = _schedule(config)
    opt = torch.optim.Adam(param_groups, lr=1.0)  # the scheduler sets lr = scale * stage peak * decay
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, [lambda e, s=g["scale"]: s * factor(e + 1) for g in param_groups])
    aux_opt = torch.optim.Adam(aux_params, lr=1e-3)
    disc = LabelMapDiscriminator().to(device) if config.lambda_adv > 0 else None
    disc_opt = torch.optim.Adam(disc.parameters(), lr=1e-4) if disc is not None else None
    validation = SteeringValidation(config, task_nets[0], out_dir) if config.val_every else None

    rows: list[dict] = []
    first_step, best = 1, math.inf
    if ckpt is not None:
        codec.load_state_dict(ckpt["codec"])
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        aux_opt.load_state_dict(ckpt["aux_optimizer"])
        if disc is not None:
            disc.load_state_dict(ckpt["discriminator"])
            disc_opt.load_state_dict(ckpt["discriminator_optimizer"])
        rng.bit_generator.state = ckpt["rng"]["numpy"]
        torch.set_rng_state(ckpt["rng"]["torch"])
        if "cuda" in ckpt["rng"] and device.type == "cuda":
            torch.cuda.set_rng_state(ckpt["rng"]["cuda"], device)
        rows, best = list(ckpt["rows"]), float(ckpt["best"])
        first_step = int(ckpt["step"]) + 1
        log.info("pretrain: resumed %s at step %d/%d", out_dir, first_step - 1, config.steps)

    def save_checkpoint(step: int) -> None:
        state = {"format": CHECKPOINT_FORMAT, "format_version": CHECKPOINT_VERSION, "config": asdict(config),
                 "step": step,
                 "codec": {k: v.detach().cpu() for k, v in codec.state_dict().items()},
                 "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                 "aux_optimizer": aux_opt.state_dict(), "rng": _rng_state(rng, device), "rows": rows, "best": best}
        if disc is not None:
            state["discriminator"] = disc.state_dict()
            state["discriminator_optimizer"] = disc_opt.state_dict()
        tmp = out_dir / (CHECKPOINT + ".tmp")
        torch.save(state, tmp)
        tmp.replace(out_dir / CHECKPOINT)

    from fedcodec.training_data import random_crops, random_intensity_windows, undo_intensity_windows

    metrics_path = out_dir / "metrics.csv"
    codec.train()
    autocast = config.bf16 and device.type == "cuda"
    stage_idx, loss_fn, lambda_t = -1, None, 0.0
    step, stopped_early = first_step - 1, False
    for step in range(first_step, config.steps + 1):
        new_stage = int(np.searchsorted(bounds, step - 1, side="right"))
        if new_stage != stage_idx:
            stage_idx = new_stage
            stage = config.stages[stage_idx]
            lambda_t = stage.lambda_t if config.semantic else 0.0
            loss_fn = SemanticLoss(LossWeights(stage.lambda_d, lambda_t, config.lambda_adv if lambda_t else 0.0,
                                               list(config.quality_weights)),
                                   config.num_qualities, discriminator=disc,
                                   hyper_rate_weight=config.hyper_rate_weight).to(device)
            if lambda_t:   # the trade-off adaptation will use by default (saved with every codec file)
                codec.training_loss = LossWeights(stage.lambda_d, lambda_t, 0.0, list(config.quality_weights))
            log.info("pretrain stage %d/%d '%s' from step %d, lambda_d %g, lambda_t %g", stage_idx + 1,
                     len(config.stages), stage.name, step, stage.lambda_d, lambda_t)
        x, m = random_crops(pool, rng, config.batch_size, config.crop)
        task_weight, task_view = None, None
        if config.intensity_windows:
            x, windowed, windows = random_intensity_windows(x, rng, config.intensity_windows)
            if config.window_task:
                # The ensemble segmenters read a re-windowed crop's reconstruction through the inverse window.
                task_view = partial(undo_intensity_windows, windows=windows.to(device))
            else:
                # Rate and distortion only on re-windowed crops: the segmenters never saw such images.
                task_weight = (~windowed).float().to(device)
        quality = torch.from_numpy(rng.integers(0, config.num_qualities, config.batch_size))
        if config.intensity_windows and config.intensity_windows_quality:
            # Full-range fidelity only where the ladder is meant to be faithful; the low qualities keep the
            # semantic objective alone (their bit allocation is what wins on the phantom hospitals).
            low = min(config.intensity_windows_quality, config.num_qualities - 1)
            quality[windowed] = torch.from_numpy(rng.integers(low, config.num_qualities, int(windowed.sum())))
        net = task_nets[int(rng.integers(0, len(task_nets)))] if len(task_nets) > 1 else task_nets[0]
        x, m, quality = x.to(device), m.to(device), quality.to(device)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=autocast):
            out = codec(x, quality)
            losses = loss_fn(out, x, m, quality, net, codec, task_weight, task_view)
        opt.zero_grad()
        losses["loss"].backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        opt.step()
        sched.step()
        aux_opt.zero_grad()
        codec.aux_loss().backward()
        aux_opt.step()
        if disc is not None and lambda_t:
            with torch.no_grad():
                fake = 1 - torch.softmax(net(codec.task_input(out["x_hat"].detach())), 1)[:, :1]
            d_loss = disc.loss(x, m.float(), fake)
            disc_opt.zero_grad()
            d_loss.backward()
            disc_opt.step()

        row = None
        if step % config.log_every == 0 or step == config.steps:
            row = {"step": step, "stage": stage.name, "seconds": round(time.perf_counter() - start, 1),
                   "lr": round(opt.param_groups[0]["lr"], 8),
                   **{k: round(float(losses[k].detach()), 6) for k in ("loss", "bpp", "mse", "task", "adv")}}
            if progress:
                log.info("pretrain step %d/%d  loss %.4f  bpp %.4f  mse %.5f  task %.4f  (%.0f s)", step,
                         config.steps, row["loss"], row["bpp"], row["mse"], row["task"], row["seconds"])
        if validation is not None and (step % config.val_every == 0 or step == config.steps):
            v = validation(codec)
            codec.train()
            row = {**(row or {"step": step, "stage": stage.name,
                              "seconds": round(time.perf_counter() - start, 1)}), **v}
            if v["val_score"] < best:
                best = v["val_score"]
                save_codec(copy.deepcopy(codec).cpu(), out_dir / "best.pt",
                           meta={"partial": step < config.steps, "step": step, "validation": v}, overwrite=True)
                row["best"] = 1
            codec.train()
            log.info("pretrain validation at step %d: BD-rate vs x265 h0 %s %%, h1 %s %% (best %s)", step,
                     v["val_bd_h0"], v["val_bd_h1"], best)
        if row is not None:
            rows.append(row)
            _write_rows(metrics_path, rows)
        if step % config.checkpoint_every == 0 and step < config.steps:
            save_checkpoint(step)
        if max_minutes and time.perf_counter() - start > 60 * max_minutes and step < config.steps:
            save_checkpoint(step)
            stopped_early = True
            log.info("pretrain: stopping after %.1f min at step %d; continue with --resume %s", max_minutes, step,
                     out_dir)
            break

    codec.eval()
    seconds = time.perf_counter() - start
    counts = codec.parameter_counts()
    summary = {"config": asdict(config), "seconds_total": round(seconds, 1),
               "seconds_task_network": round(task_seconds, 1), "parameter_counts": counts,
               "adaptable_fraction": (counts["policy"] + counts["adapters"]) / counts["total"],
               "torch_threads": torch.get_num_threads(), "device": str(device), "step": step,
               "finished": not stopped_early, "best_val_score": best,
               "final": rows[-1] if rows else {}}
    cpu_codec = codec.cpu()
    if not stopped_early:
        save_codec(cpu_codec, codec_path, meta={"pretrain": summary}, overwrite=True)
        save_checkpoint(step)
    write_json(out_dir / "pretrain.json", summary)
    return cpu_codec, task_nets[0].cpu(), summary
