"""The :class:`Sample`: one 2-D image with its stored pixel values, optional mask, name and window."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np

from fedcodec.data.windowing import Window
from fedcodec.errors import DataError

PathLike = str | os.PathLike[str]


@dataclass(frozen=True, eq=False)
class Sample:
    """One 2-D image with its optional mask.

    Attributes:
        image: ``(H, W)`` ``uint8`` or ``uint16``, the raw stored pixel values.
        mask: ``(H, W)`` ``uint8`` with values in ``{0, 1}``, or ``None`` when the image is not annotated.
        name: file stem, e.g. ``"case_003"`` or ``"vol1_z042"``.
        bit_depth: 8 (``uint8``) or 16 (``uint16``): the stored depth, even when a 16-bit image holds only
            small values.
        window: ``(lo, hi)`` with ``hi > lo``: stored values ``lo`` and ``hi`` map to 0 and 1 in
            :func:`~fedcodec.data.normalize`. ``(0, 255)`` for 8-bit images.

    Equality is identity (``eq=False``): numpy arrays have no single truth value.
    """

    image: np.ndarray
    mask: np.ndarray | None
    name: str
    bit_depth: int
    window: Window

    def __post_init__(self) -> None:
        img = self.image
        where = f"sample {self.name!r}"
        if not isinstance(img, np.ndarray) or img.ndim != 2 or img.size == 0:
            raise DataError(f"{where}: image must be a non-empty 2-D array, got {getattr(img, 'shape', type(img))}")
        expected = {8: np.uint8, 16: np.uint16}.get(self.bit_depth)
        if expected is None:
            raise DataError(f"{where}: bit_depth must be 8 or 16, got {self.bit_depth}")
        if img.dtype != expected:
            raise DataError(f"{where}: a {self.bit_depth}-bit image must be {np.dtype(expected).name}, got {img.dtype}")
        lo, hi = self.window
        if not (math.isfinite(lo) and math.isfinite(hi) and hi > lo):
            raise DataError(f"{where}: window must be finite with hi > lo, got {self.window}")
        if self.mask is not None:
            m = self.mask
            if not isinstance(m, np.ndarray) or m.shape != img.shape:
                raise DataError(f"{where}: mask shape {getattr(m, 'shape', None)} differs from image shape {img.shape}")
            if m.dtype != np.uint8 or (m.size and m.max() > 1):
                raise DataError(f"{where}: mask must be uint8 with values in {{0, 1}}")


def evenly_spaced(items: list, n: int) -> list:
    """``n`` of ``items`` spread evenly over the list, in order, first and last included (all of them when there are
    no more than ``n``): a series' slices are ordered, and its first few are its edge (a head's first slices hold
    little brain), not a fair sample of it."""
    if n <= 0 or not items:
        return []
    return [items[i] for i in np.linspace(0, len(items) - 1, min(n, len(items))).round().astype(int)]
