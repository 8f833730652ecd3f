"""Fixed-size training crops from images of any size (padding the ones smaller than the crop).

Real multi-patient folders mix image sizes (a 120x126 CT crop beside a 512x512 slice); training draws
``crop x crop`` windows from them. An image smaller than the crop along an axis is padded symmetrically on
that axis first: the image by reflection (``"reflect"``, the default) or by repeating its edge
(``"edge"``/``"replicate"``), the mask with 0 (background), so padding never invents foreground.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fedcodec.data.sample import Sample
from fedcodec.data.windowing import normalize
from fedcodec.errors import DataError

_NUMPY_PAD = {"reflect": "reflect", "edge": "edge", "replicate": "edge", "constant": "constant"}


def pad_to_min_size(image: np.ndarray, mask: np.ndarray | None, height: int, width: int,
                    mode: str = "reflect") -> tuple[np.ndarray, np.ndarray | None]:
    """Pad ``(H, W)`` arrays symmetrically to at least ``(height, width)``.

    Args:
        image: ``(H, W)`` array (any dtype).
        mask: ``(H, W)`` array or ``None``; padded with 0.
        mode: ``"reflect"`` (mirror without repeating the edge pixel; works for pads larger than the image),
            ``"edge"`` / ``"replicate"`` or ``"constant"`` (0).

    Returns:
        ``(image, mask)``, unchanged where they are already large enough.
    """
    if mode not in _NUMPY_PAD:
        raise DataError(f"pad mode must be one of {sorted(_NUMPY_PAD)}, got {mode!r}")
    h, w = image.shape
    ph, pw = max(0, height - h), max(0, width - w)
    if not ph and not pw:
        return image, mask
    pads = ((ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2))
    np_mode = _NUMPY_PAD[mode]
    if np_mode == "reflect" and min(h, w) < 2:
        np_mode = "edge"  # a 1-pixel axis has nothing to mirror
    image = np.pad(image, pads, mode=np_mode)
    if mask is not None:
        mask = np.pad(mask, pads, mode="constant", constant_values=0)
    return image, mask


def random_crop(image: np.ndarray, mask: np.ndarray | None, rng: np.random.Generator, crop: int | tuple[int, int],
                pad_mode: str = "reflect") -> tuple[np.ndarray, np.ndarray | None]:
    """One ``crop`` window (padded first where the image is smaller), at a uniformly random position."""
    ch, cw = (crop, crop) if isinstance(crop, int) else crop
    if ch < 1 or cw < 1:
        raise DataError(f"crop size must be positive, got {crop}")
    image, mask = pad_to_min_size(image, mask, ch, cw, pad_mode)
    h, w = image.shape
    top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    return (image[top:top + ch, left:left + cw],
            None if mask is None else mask[top:top + ch, left:left + cw])


def random_crop_batch(samples: Sequence[Sample], rng: np.random.Generator, batch: int, crop: int,
                      pad_mode: str = "reflect", require_masks: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """A training batch of random crops from samples of any sizes.

    Each of the ``batch`` entries draws a sample uniformly with replacement, normalises it through its own
    window to ``[0, 1]`` (:func:`~fedcodec.data.normalize`), pads it to at least ``crop x crop`` when smaller
    (image by ``pad_mode``, mask by 0) and takes a ``crop x crop`` window at a random position. Draws use only
    ``rng``, so a seeded generator gives the same batch.

    Args:
        samples: annotated samples (2-D, any sizes and bit depths).
        rng: the generator to draw samples and positions from.
        batch: number of crops.
        crop: crop side in pixels.
        pad_mode: ``"reflect"`` (default), ``"edge"``/``"replicate"`` or ``"constant"``.
        require_masks: raise when a drawn sample has no mask; with False its mask is all zeros.

    Returns:
        ``(images, masks)``: ``(batch, 1, crop, crop)`` ``float32`` in ``[0, 1]`` and ``(batch, 1, crop, crop)``
        ``uint8`` in ``{0, 1}`` (``torch.from_numpy`` takes both as they are).
    """
    if not samples:
        raise DataError("random_crop_batch needs at least one sample")
    if batch < 1 or crop < 1:
        raise DataError(f"batch and crop must be positive, got batch={batch}, crop={crop}")
    xs = np.empty((batch, 1, crop, crop), np.float32)
    ms = np.empty((batch, 1, crop, crop), np.uint8)
    for b, i in enumerate(rng.integers(0, len(samples), batch)):
        s = samples[int(i)]
        if s.mask is None and require_masks:
            raise DataError(f"sample {s.name!r} has no mask (pass require_masks=False to use it unannotated)")
        mask = s.mask if s.mask is not None else np.zeros(s.image.shape, np.uint8)
        x, m = random_crop(normalize(s.image, s.window), mask, rng, crop, pad_mode)
        xs[b, 0], ms[b, 0] = x, m
    return xs, ms


def padded_arrays(samples: Sequence[Sample], min_size: int,
                  pad_mode: str = "reflect") -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Normalised images and masks of annotated samples, each padded to at least ``min_size`` on both axes.

    For trainers that draw their own random crops (e.g. MONAI's ``RandSpatialCropd`` in
    :func:`fedcodec.task_net.train_task_network`) from a list of ``(H, W)`` arrays: sizes may differ, none is
    smaller than the crop. Images already large enough are returned normalised and otherwise unchanged.

    Returns:
        ``(images, masks)``: lists of ``(H_i, W_i)`` ``float32`` in ``[0, 1]`` and ``uint8`` ``{0, 1}``.

    Raises:
        DataError: a sample without a mask, or no samples.
    """
    if not samples:
        raise DataError("no samples to train on")
    images, masks = [], []
    for s in samples:
        if s.mask is None:
            raise DataError(f"sample {s.name!r} has no mask; training needs annotated samples")
        x, m = pad_to_min_size(normalize(s.image, s.window), s.mask, min_size, min_size, pad_mode)
        images.append(np.ascontiguousarray(x))
        masks.append(np.ascontiguousarray(m))
    return images, masks
