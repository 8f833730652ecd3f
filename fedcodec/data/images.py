"""Single 2-D image files: PNG and TIFF through Pillow (DICOM files are passed on to :mod:`fedcodec.data.dicom`),
and mask files.

:func:`read_image` returns ``(image, bit_depth, window)`` with ``image`` ``(H, W)`` ``uint8`` or ``uint16``;
:func:`read_mask` returns a ``(H, W)`` ``uint8`` mask in ``{0, 1}``.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np

from fedcodec.data.sample import PathLike
from fedcodec.data.windowing import Window, default_window, float_to_u16, minmax_window
from fedcodec.errors import DataError

IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".dcm")
"""File suffixes (lower case) that :func:`~fedcodec.data.load_folder` accepts in ``DIR/images``."""


def existing_file(path: PathLike, what: str = "image") -> Path:
    """``path`` as a :class:`Path`; raises :class:`DataError` when it is missing or not a file."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"{p}: {what} file does not exist")
    if not p.is_file():
        raise DataError(f"{p}: is not a file (expected an {what} file)")
    return p


def _pil_to_array(img: Any, path: Path) -> tuple[np.ndarray, int, Window]:
    """Convert one opened Pillow frame to ``(image, bit_depth, window)``."""
    mode = img.mode
    if mode in ("1", "L", "P", "LA", "PA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"):
        if mode == "1":
            arr = np.asarray(img.convert("L"))
        elif mode in ("L", "LA"):
            arr = np.asarray(img.getchannel("L"))
        else:
            rgb = np.asarray(img.convert("RGB"))
            if np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2]):
                arr = np.ascontiguousarray(rgb[..., 0])  # gray stored as colour: take it exactly
            else:
                warnings.warn(
                    f"{path}: {mode} colour image converted to 8-bit luminance "
                    "(ITU-R BT.601: 0.299 R + 0.587 G + 0.114 B)"
                )
                arr = np.asarray(img.convert("L"))
        return arr.astype(np.uint8), 8, default_window(8)
    if mode.startswith("I;16"):
        arr = np.asarray(img).astype(np.uint16)
        return arr, 16, minmax_window(arr)
    if mode == "I":
        arr = np.asarray(img)
        if arr.min() < 0 or arr.max() > 65535:
            raise DataError(f"{path}: 32-bit integer image with values {arr.min()}..{arr.max()} does not fit 16 bits")
        arr = arr.astype(np.uint16)
        return arr, 16, minmax_window(arr)
    if mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        if not np.isfinite(arr).all():
            bad = "NaN" if np.isnan(arr).any() else "infinite values"
            raise DataError(f"{path}: floating-point image contains {bad}")
        if arr.size and np.all(arr == np.rint(arr)) and arr.min() >= 0 and arr.max() <= 65535:
            u16 = arr.astype(np.uint16)
            return u16, 16, minmax_window(u16)
        warnings.warn(f"{path}: floating-point image rescaled from {arr.min():g}..{arr.max():g} to uint16 0..65535")
        return float_to_u16(arr), 16, default_window(16)
    raise DataError(f"{path}: unsupported image mode {mode!r} (expected 8/16-bit grayscale or RGB)")


def read_image(path: PathLike) -> tuple[np.ndarray, int, Window]:
    """Read one 2-D grayscale image.

    PNG/TIFF go through Pillow: 8-bit gray -> ``uint8``; 16-bit gray -> ``uint16``; RGB/palette -> 8-bit
    luminance (a warning says so, unless all channels are equal); 32-bit integer TIFF -> ``uint16`` if the
    values fit; float TIFF -> ``uint16`` (kept if integral in 0..65535, else rescaled min..max to 0..65535
    with a warning). DICOM (``.dcm`` or the ``DICM`` marker) goes through pydicom, see :func:`fedcodec.data.dicom.read_dicom`.

    Returns:
        ``(image, bit_depth, window)``: ``image`` is ``(H, W)`` ``uint8`` (bit depth 8, window ``(0, 255)``)
        or ``uint16`` (bit depth 16, window from the DICOM header, else ``(min, max)`` of the image).

    Raises:
        DataError: missing or non-image file, NaN/inf in a float image, more than one frame/page (3-D),
        an empty image, or an unsupported pixel format.
    """
    p = existing_file(path)
    from fedcodec.data.dicom import is_dicom, read_dicom

    if is_dicom(p):
        d = read_dicom(p)
        if d.frames.shape[0] != 1:
            raise DataError(f"{p}: DICOM has {d.frames.shape[0]} frames (3-D); use load_dicom_series for volumes")
        return d.frames[0], d.bit_depth, d.window

    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(p) as img:
            n_frames = getattr(img, "n_frames", 1)
            if n_frames > 1:
                raise DataError(f"{p}: image has {n_frames} frames/pages (3-D); expected one 2-D image")
            img.load()
            if img.width == 0 or img.height == 0:
                raise DataError(f"{p}: image is empty ({img.width}x{img.height})")
            image, depth, window = _pil_to_array(img, p)
    except DataError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise DataError(f"{p}: not a readable image file ({e})") from e
    if image.ndim != 2:
        raise DataError(f"{p}: expected a 2-D image, got array of shape {image.shape}")
    if image.size == 0:
        raise DataError(f"{p}: image is empty (shape {image.shape})")
    return np.ascontiguousarray(image), depth, window


def read_mask(path: PathLike, shape: tuple[int, ...]) -> np.ndarray:
    """Read a mask PNG (or any Pillow-readable file) as ``(H, W)`` ``uint8`` in ``{0, 1}``.

    0 is background, any nonzero value (255, label ids, palette indices, any nonzero colour channel) is
    foreground.

    Raises:
        DataError: missing or unreadable file, more than one frame, or a shape different from ``shape``.
    """
    p = existing_file(path, "mask")
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(p) as img:
            if getattr(img, "n_frames", 1) > 1:
                raise DataError(f"{p}: mask has {img.n_frames} frames/pages; expected one 2-D mask")
            img.load()
            if img.mode == "P":
                arr = np.asarray(img)  # palette indices: index 0 is background
            elif img.mode in ("RGB", "RGBA", "LA", "PA", "RGBX", "CMYK", "YCbCr"):
                arr = np.asarray(img.convert("RGB")).max(axis=-1)
            else:
                arr = np.asarray(img)
    except DataError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise DataError(f"{p}: not a readable mask image ({e})") from e
    if arr.ndim != 2:
        raise DataError(f"{p}: expected a 2-D mask, got array of shape {arr.shape}")
    if tuple(arr.shape) != tuple(shape):
        raise DataError(f"{p}: mask shape {tuple(arr.shape)} differs from image shape {tuple(shape)}")
    if arr.dtype.kind == "f" and np.isnan(arr).any():
        raise DataError(f"{p}: mask contains NaN")
    return (arr != 0).astype(np.uint8)
