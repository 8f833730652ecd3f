"""The task network: the (cloud) segmenter whose diagnosis the codec must preserve.

It is a MONAI 2-D segmenter trained on uncompressed images and then frozen. fedcodec stores its own MONAI
segmenters as config + weights (safetensors with a JSON header); a site can swap in its own segmenter (any
TorchScript module with the same contract) with ``--task PATH``:

- input: ``(B, 1, H, W)`` float in [0, 1] (a windowed grayscale image), H and W multiples of 16;
- output: logits ``(B, C, H, W)``; ``C >= 2`` means softmax over classes with class 0 = background,
  ``C == 1`` means a sigmoid foreground logit.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.losses import DiceLoss
from monai.networks.nets import BasicUNet

from fedcodec.errors import ModelFileError

log = logging.getLogger(__name__)

DEFAULT_FEATURES = (8, 16, 32, 64, 128, 8)
_DICE_SOFTMAX = DiceLoss(to_onehot_y=True, softmax=True, include_background=False, reduction="none")
_DICE_SIGMOID = DiceLoss(sigmoid=True, reduction="none")


#: Segmenter architectures :func:`build_task_network` knows (all MONAI networks, instance norm), with the
#: features each uses by default.
ARCH_FEATURES: dict[str, tuple[int, ...]] = {"basicunet": DEFAULT_FEATURES, "unet": (16, 32, 64, 128),
                                             "segresnet": (8,)}
TASK_ARCHITECTURES = tuple(ARCH_FEATURES)


def build_task_network(features: Sequence[int] = DEFAULT_FEATURES, out_channels: int = 2,
                       arch: str = "basicunet") -> nn.Module:
    """A MONAI 2-D segmenter for ``(B, 1, H, W)`` images (instance norm: no batch statistics, Opacus-safe).

    Args:
        features: ``basicunet``: its six feature widths; ``unet``: the channels of each level (strides 2);
            ``segresnet``: the first width (``init_filters``) is ``features[0]``.
        arch: one of :data:`TASK_ARCHITECTURES`. Several architectures let pretraining avoid tying the codec to
            one segmenter, and let benchmarks evaluate with one the codec never saw.
    """
    features = [int(f) for f in features]
    if arch == "basicunet":
        net = BasicUNet(spatial_dims=2, in_channels=1, out_channels=out_channels, features=tuple(features))
    elif arch == "unet":
        from monai.networks.nets import UNet

        net = UNet(spatial_dims=2, in_channels=1, out_channels=out_channels, channels=tuple(features),
                   strides=(2,) * (len(features) - 1), num_res_units=1, norm="instance")
    elif arch == "segresnet":
        from monai.networks.nets import SegResNet

        net = SegResNet(spatial_dims=2, in_channels=1, out_channels=out_channels, init_filters=features[0],
                        blocks_down=(1, 2, 2, 2), blocks_up=(1, 1, 1), norm="instance")
    else:
        raise ValueError(f"unknown task network architecture {arch!r}; choose from {TASK_ARCHITECTURES}")
    # What save_task_network records so the file rebuilds the network without pickled or scripted code.
    net.fedcodec_config = {"arch": arch, "features": features, "out_channels": int(out_channels)}
    return net


def foreground_probability(logits: torch.Tensor) -> torch.Tensor:
    """``(B, C, H, W)`` logits -> ``(B, 1, H, W)`` foreground probability (1 - background for C >= 2)."""
    if logits.shape[1] == 1:
        return torch.sigmoid(logits)
    return 1 - torch.softmax(logits, dim=1)[:, :1]


def predict_mask(task_net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Binary foreground prediction ``(B, 1, H, W)`` uint8 of the task network on ``x``."""
    with torch.no_grad():
        return (foreground_probability(task_net(x)) > 0.5).to(torch.uint8)


def freeze(module: nn.Module) -> nn.Module:
    """Eval mode and no gradients for the module's own parameters (gradients still flow through it)."""
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module


TASK_FORMAT = "fedcodec-task"
TASK_FORMAT_VERSION = "1"


def _load_monai_network(path: Path) -> nn.Module:
    """A MONAI network saved by :func:`save_task_network`: its config in the safetensors header, its weights."""
    import json

    from fedcodec.model_io import read_safetensors  # imported here: model_io imports this module

    meta, state = read_safetensors(path, TASK_FORMAT, TASK_FORMAT_VERSION, "task network")
    try:
        cfg = json.loads(meta["config"])
        net = build_task_network(cfg["features"], int(cfg["out_channels"]), arch=cfg["arch"])
        net.load_state_dict(state)
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        first = " ".join(str(exc).split())[:300]
        raise ModelFileError(f"{path}: the weights do not fit the recorded task network: {first}") from exc
    return net


def load_task_network(path: str | Path) -> nn.Module:
    """Load a segmenter, frozen: a MONAI network config + weights (safetensors, what fedcodec writes) or a
    TorchScript module (a site's own network, or files written before). Raises :class:`ModelFileError`."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"task network file not found: {path}")
    from fedcodec.model_io import is_safetensors_file  # imported here: model_io imports this module

    if is_safetensors_file(path):
        net = _load_monai_network(path)
    else:
        try:
            net = torch.jit.load(str(path), map_location="cpu")
        except Exception as exc:  # torch raises RuntimeError/ValueError/zipfile errors for foreign files
            raise ModelFileError(f"{path} is not a task network (neither fedcodec's safetensors nor TorchScript; "
                                 f"{type(exc).__name__}: {exc})") from exc
    net = freeze(net)
    try:
        with torch.no_grad():
            out = net(torch.zeros(1, 1, 64, 64))
    except Exception as exc:
        raise ModelFileError(f"{path}: the task network fails on a (1, 1, 64, 64) input: {exc}") from exc
    if not isinstance(out, torch.Tensor) or out.ndim != 4 or out.shape[0] != 1 or out.shape[-2:] != (64, 64):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ModelFileError(f"{path}: the task network must map (B,1,H,W) to (B,C,H,W) logits, got {shape}")
    return net


def save_task_network(net: nn.Module, path: str | Path) -> None:
    """Save a network built by :func:`build_task_network` as its MONAI config + weights (safetensors, JSON
    header: no code runs on load); any other module (a site's own) as TorchScript traced on a 64x64 input."""
    net = freeze(net)
    cfg = getattr(net, "fedcodec_config", None)
    if cfg is None:
        traced = torch.jit.trace(net, torch.rand(1, 1, 64, 64), check_trace=False)
        torch.jit.save(traced, str(path))
        return
    import json

    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    save_file(state, str(path), metadata={"format": TASK_FORMAT, "format_version": TASK_FORMAT_VERSION,
                                          "config": json.dumps(cfg)})


def segmentation_loss(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-sample Dice + cross-entropy ``(B,)`` of logits ``(B, C, H, W)`` against a mask ``(B, 1, H, W)`` in {0, 1}.

    The Dice part is MONAI's DiceLoss evaluated per sample (``reduction="none"``; MONAI's DiceCELoss only
    reduces over the batch), so losses can be weighted per sample (per-quality weights) and stay per-sample
    for Opacus; the cross-entropy part is torch's.
    """
    if logits.shape[1] == 1:
        dice = _DICE_SIGMOID(logits, mask.float()).flatten(1).mean(1)
        ce = F.binary_cross_entropy_with_logits(logits, mask.float(), reduction="none").flatten(1).mean(1)
    else:
        dice = _DICE_SOFTMAX(logits, mask.float()).flatten(1).mean(1)
        ce = F.cross_entropy(logits, mask[:, 0].long(), reduction="none").flatten(1).mean(1)
    return dice + ce


def train_task_network(images: np.ndarray, masks: np.ndarray, steps: int = 600, batch_size: int = 8,
                       crop: int = 128, lr: float = 2e-3, seed: int = 0,
                       features: Sequence[int] | None = None, progress: bool = True,
                       arch: str = "basicunet", device: str | torch.device = "cpu") -> nn.Module:
    """Train the segmenter on uncompressed images.

    Args:
        images: ``(S, H, W)`` float32 in [0, 1].
        masks: ``(S, H, W)`` uint8 in {0, 1}.
        features: the architecture's widths (default :data:`ARCH_FEATURES`).
        device: where to train (``auto``, ``cpu``, ``cuda``); the network is returned on the CPU.
    Returns:
        The trained, frozen network.
    """
    from monai.transforms import Compose, RandFlipd, RandRotate90d, RandSpatialCropd

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    from fedcodec.device import resolve_device

    dev = resolve_device(device)
    net = build_task_network(features or ARCH_FEATURES[arch], arch=arch).to(dev)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    augment = Compose([
        RandSpatialCropd(keys=("image", "mask"), roi_size=(crop, crop), random_size=False),
        RandFlipd(keys=("image", "mask"), prob=0.5, spatial_axis=1),
        RandRotate90d(keys=("image", "mask"), prob=0.5),
    ])
    augment.set_random_state(seed=seed)
    net.train()
    start = time.perf_counter()
    for step in range(1, steps + 1):
        idx = rng.integers(0, len(images), batch_size)
        batch = [augment({"image": images[i][None], "mask": masks[i][None]}) for i in idx]
        x = torch.stack([torch.as_tensor(np.asarray(b["image"])) for b in batch]).float().to(dev)
        m = torch.stack([torch.as_tensor(np.asarray(b["mask"])) for b in batch]).to(dev)
        loss = segmentation_loss(net(x), m).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if progress and (step % 50 == 0 or step == steps):
            log.info("task-train step %d/%d loss %.4f (%.0f s)", step, steps, loss.item(),
                     time.perf_counter() - start)
    return freeze(net.cpu())
