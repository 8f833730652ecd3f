"""Training data for pretraining and task networks: domain-randomised phantoms plus real labelled folders.

A pretrained codec must serve hospitals it has never seen, so it does not train on one domain: each phantom
of the pool gets its own random hospital shift (contrast, noise, blur, gamma, offset, resolution, bit depth;
:func:`fedcodec.data.hospital_shift` of an id drawn from a range no benchmark uses), a share of the pool stays
in the source domain (hospital 0), and real labelled CT/MR slices (``fedcodec datasets fetch``) can be
mixed in. Images of any size are used: :func:`random_crops` pads images smaller than the crop.

Everything is a pure function of its seed, so a resumed run rebuilds exactly the same pool.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from fedcodec.data import Sample, hospital_shift, make_phantom, normalize
from fedcodec.errors import DataError

log = logging.getLogger(__name__)

#: Hospital ids of the randomised training shifts start here: far from the fixed table (0-5) and from the
#: ids benchmarks and scenarios draw (below 10,000), so no evaluated hospital was trained on.
RANDOM_SHIFT_BASE = 1_000_000


@dataclass
class TrainingPool:
    """Normalised images and masks of any sizes.

    Attributes:
        images: list of ``(H_i, W_i)`` float32 arrays in [0, 1].
        masks: list of ``(H_i, W_i)`` uint8 arrays in {0, 1}.
        names: one name per image (phantom name or ``folder/stem``).
    """

    images: list[np.ndarray]
    masks: list[np.ndarray]
    names: list[str]

    def __len__(self) -> int:
        return len(self.images)

    @classmethod
    def from_samples(cls, samples: Sequence[Sample]) -> "TrainingPool":
        unlabelled = [s.name for s in samples if s.mask is None]
        if unlabelled:
            raise DataError(f"training needs masks; these samples have none: {unlabelled[:5]}")
        return cls([normalize(s.image, s.window).astype(np.float32) for s in samples],
                   [(s.mask > 0).astype(np.uint8) for s in samples], [s.name for s in samples])

    def extend(self, other: "TrainingPool") -> "TrainingPool":
        return TrainingPool(self.images + other.images, self.masks + other.masks, self.names + other.names)


def randomised_phantoms(n: int, seed: int, size: int = 256, source_share: float = 0.25) -> list[Sample]:
    """``n`` phantoms, each with its own random hospital shift; ``source_share`` of them in hospital 0's domain.

    Phantom ``i`` is drawn from ``default_rng([seed, 0xD0, i])`` with the shift of hospital
    ``RANDOM_SHIFT_BASE + seed * n + i`` (or hospital 0), so it depends only on ``(seed, i, n)``.
    """
    if n < 1 or not 0.0 <= source_share <= 1.0:
        raise DataError(f"need n >= 1 and source_share in [0, 1], got n={n}, source_share={source_share}")
    out = []
    for i in range(n):
        rng = np.random.default_rng([seed, 0xD0, i])
        hospital = 0 if rng.random() < source_share else RANDOM_SHIFT_BASE + seed * n + i
        shift = hospital_shift(hospital)
        image, mask = make_phantom(rng, size, shift)
        window = (0.0, 255.0) if shift.bit_depth == 8 else (0.0, 65535.0)
        out.append(Sample(image, mask, f"rand{seed}_{i:05d}_h{hospital}", shift.bit_depth, window))
    return out


def random_crops(pool: TrainingPool, rng: np.random.Generator, batch: int, crop: int,
                 flips: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of random ``crop x crop`` windows: ``(B, 1, crop, crop)`` float in [0, 1] and uint8 masks.

    Images smaller than the crop are replicate-padded (the mask with 0) on the bottom/right first; horizontal
    flips and 90-degree rotations augment (both keep vessels vessels).
    """
    if len(pool) == 0:
        raise DataError("the training pool is empty")
    xs, ms = [], []
    for i in rng.integers(0, len(pool), batch):
        img, msk = pool.images[i], pool.masks[i]
        h, w = img.shape
        ph, pw = max(0, crop - h), max(0, crop - w)
        if ph or pw:
            img = np.pad(img, ((0, ph), (0, pw)), mode="edge")
            msk = np.pad(msk, ((0, ph), (0, pw)))
            h, w = img.shape
        a, b = int(rng.integers(0, h - crop + 1)), int(rng.integers(0, w - crop + 1))
        x, m = img[a:a + crop, b:b + crop], msk[a:a + crop, b:b + crop]
        if flips:
            k = int(rng.integers(0, 4))
            x, m = np.rot90(x, k), np.rot90(m, k)
            if rng.random() < 0.5:
                x, m = x[:, ::-1], m[:, ::-1]
        xs.append(np.ascontiguousarray(x))
        ms.append(np.ascontiguousarray(m))
    return torch.from_numpy(np.stack(xs)[:, None]), torch.from_numpy(np.stack(ms)[:, None])


#: Range of the random intensity windows of :func:`random_intensity_windows`, as fractions of a crop's own
#: intensity range (lower edge, upper edge) and of the gamma (log-uniform). Phantoms span about 0.3-0.9 of
#: [0, 1]; real CT and MR have black air and near-white bone or fat. A codec that never saw either decodes
#: brain MR's bright tissue (0.6-0.93) at about 0.45 and its black background at 0.03 (measured on the
#: embedded default of 2026-11-27), so the window stretches crops until they clip at both ends.
WINDOW_LOW = (-0.1, 0.45)
WINDOW_HIGH = (0.6, 1.1)
WINDOW_GAMMA = (0.5, 2.0)
#: ``lo, hi, gamma, w_min, w_max`` of a crop that was not re-windowed.
IDENTITY_WINDOW = torch.tensor([0.0, 1.0, 1.0, 0.0, 1.0], dtype=torch.float64)


def random_intensity_windows(x: torch.Tensor, rng: np.random.Generator,
                             share: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Re-window a random ``share`` of a batch so that it covers the whole of [0, 1], clipped at both ends.

    ``x``: ``(B, 1, H, W)`` float in [0, 1]. Each chosen crop goes through MONAI's ``ScaleIntensityRange``
    (a window drawn inside :data:`WINDOW_LOW` / :data:`WINDOW_HIGH` of the crop's own range, mapped to [0, 1],
    clipped) and ``AdjustContrast`` (gamma from :data:`WINDOW_GAMMA`). Every draw comes from ``rng``, so a
    resumed run repeats them. Returns the batch, a ``(B,)`` bool tensor marking the re-windowed crops (their
    masks still hold, but a task network trained on un-windowed images may not read them) and the windows,
    ``(B, 5)``: ``lo, hi, gamma, w_min, w_max`` per crop (identity rows for the others), which
    :func:`undo_intensity_windows` inverts.
    """
    from monai.transforms import AdjustContrast, ScaleIntensityRange

    if not 0.0 <= share <= 1.0:
        raise DataError(f"share of re-windowed crops must lie in [0, 1], got {share}")
    chosen = rng.random(x.shape[0]) < share
    out = x.clone()
    windows = IDENTITY_WINDOW[None].repeat(x.shape[0], 1)
    for i in np.flatnonzero(chosen):
        lo_f, hi_f = rng.uniform(*WINDOW_LOW), rng.uniform(*WINDOW_HIGH)
        gamma = float(np.exp(rng.uniform(*np.log(WINDOW_GAMMA))))
        lo, hi = float(x[i].min()), float(x[i].max())
        span = max(hi - lo, 1e-3)
        a_min, a_max = lo + lo_f * span, lo + hi_f * span
        y = ScaleIntensityRange(a_min, a_max, 0.0, 1.0, clip=True)(x[i])
        windows[i] = torch.tensor([a_min, a_max, gamma, float(y.min()), float(y.max())])
        y = AdjustContrast(gamma=gamma)(y)
        out[i] = torch.as_tensor(y, dtype=x.dtype).clamp(0.0, 1.0)
    return out, torch.from_numpy(chosen), windows


def undo_intensity_windows(y: torch.Tensor, windows: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`random_intensity_windows` on (decoded) crops, differentiable.

    ``y``: ``(B, 1, H, W)``; ``windows``: its ``(B, 5)`` windows. The gamma is undone over the window's own
    ``[w_min, w_max]`` (as MONAI's ``AdjustContrast`` applied it, its base clamped away from 0 so that the
    gradient stays finite), then the window is mapped back to ``[lo, hi]``; what the window clipped stays at
    ``lo`` / ``hi``. Identity rows return ``y`` unchanged. Lets task networks trained on un-windowed images
    read a re-windowed crop the way they read its original.
    """
    if windows.shape != (y.shape[0], 5):
        raise DataError(f"need ({y.shape[0]}, 5) windows for {y.shape[0]} crops, got {tuple(windows.shape)}")
    identity = (windows == IDENTITY_WINDOW.to(windows)).all(1).to(y.device)[:, None, None, None]
    lo, hi, gamma, w_min, w_max = windows.to(y.device, y.dtype)[:, :, None, None, None].unbind(1)
    span = (w_max - w_min).clamp_min(1e-6)
    base = ((y - w_min) / span).clamp(1e-4, 1.0)
    original = lo + (hi - lo) * (w_min + span * base.pow(1.0 / gamma))
    return torch.where(identity, y, original)


def pad_batch(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Replicate-pad ``(B, C, H, W)`` on the bottom/right to multiples of ``multiple``."""
    ph, pw = (-x.shape[-2]) % multiple, (-x.shape[-1]) % multiple
    return F.pad(x, (0, pw, 0, ph), mode="replicate") if (ph or pw) else x
