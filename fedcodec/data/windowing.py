"""Intensity windows: how stored pixel values map to the ``[0, 1]`` values the codec and the task network see.

A window ``(lo, hi)`` with ``hi > lo`` is in stored-value units: ``lo`` maps to 0 and ``hi`` to 1.
:func:`default_window` is the one place that says what an image without an explicit window uses.
"""

from __future__ import annotations

import math

import numpy as np

from fedcodec.errors import DataError

Window = tuple[float, float]


def default_window(bit_depth: int) -> Window:
    """The window of an image that carries none: the full range of its stored type.

    ``(0, 255)`` for 8-bit and ``(0, 65535)`` for 16-bit images.
    """
    if bit_depth == 8:
        return (0.0, 255.0)
    if bit_depth == 16:
        return (0.0, 65535.0)
    raise DataError(f"bit_depth must be 8 or 16, got {bit_depth}")


def check_window(window: Window) -> tuple[float, float]:
    """``(lo, hi)`` as floats; raises :class:`DataError` unless both are finite and ``hi > lo``."""
    lo, hi = float(window[0]), float(window[1])
    if not (math.isfinite(lo) and math.isfinite(hi) and hi > lo):
        raise DataError(f"intensity window must be finite with hi > lo, got {window}")
    return lo, hi


def normalize(image: np.ndarray, window: Window) -> np.ndarray:
    """Map stored pixel values to ``[0, 1]`` through an intensity window.

    Args:
        image: any shape, any real dtype (normally ``(H, W)`` ``uint8``/``uint16``).
        window: ``(lo, hi)``, ``hi > lo``, in stored-value units.

    Returns:
        ``float32`` array of the same shape, ``(image - lo) / (hi - lo)`` clipped to ``[0, 1]``.
    """
    lo, hi = check_window(window)
    x = (np.asarray(image, dtype=np.float64) - lo) / (hi - lo)
    return np.clip(x, 0.0, 1.0).astype(np.float32)


def denormalize(x: np.ndarray, window: Window, bit_depth: int) -> np.ndarray:
    """Inverse of :func:`normalize`: ``[0, 1]`` values back to stored pixels.

    Args:
        x: any shape, float; values outside ``[0, 1]`` are clipped first. NaN raises ``DataError``.
        window: the ``(lo, hi)`` given to :func:`normalize`.
        bit_depth: 8 (returns ``uint8``) or 16 (returns ``uint16``).

    Returns:
        ``lo + x * (hi - lo)`` rounded to the nearest integer and clipped to ``[0, 2**bit_depth - 1]``.
        Exact inverse for stored values inside the window (computed in float64).
    """
    lo, hi = check_window(window)
    dtype = {8: np.uint8, 16: np.uint16}.get(bit_depth)
    if dtype is None:
        raise DataError(f"bit_depth must be 8 or 16, got {bit_depth}")
    x = np.asarray(x, dtype=np.float64)
    if np.isnan(x).any():
        raise DataError("denormalize: input contains NaN")
    v = np.rint(lo + np.clip(x, 0.0, 1.0) * (hi - lo))
    return np.clip(v, 0, 2**bit_depth - 1).astype(dtype)


def minmax_window(image: np.ndarray) -> Window:
    """``(min, max)`` of an image as a window, widened to ``(v, v + 1)`` for a constant image."""
    lo, hi = float(image.min()), float(image.max())
    return (lo, hi) if hi > lo else (lo, lo + 1.0)


def float_to_u16(arr: np.ndarray, lo: float | None = None, hi: float | None = None) -> np.ndarray:
    """Scale a finite float array linearly from ``(lo, hi)`` (default: its min, max) to uint16 0..65535."""
    lo = float(arr.min()) if lo is None else lo
    hi = float(arr.max()) if hi is None else hi
    if hi <= lo:
        return np.zeros(arr.shape, np.uint16)
    return np.rint((arr - lo) / (hi - lo) * 65535.0).clip(0, 65535).astype(np.uint16)
