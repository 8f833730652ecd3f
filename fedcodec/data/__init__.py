"""Image loading, intensity windowing and synthetic angiography phantoms.

Everything fedcodec trains on or compresses enters through this module as a list of :class:`Sample`:
one 2-D grayscale image with its stored pixel values, an optional binary vessel/lesion mask, a name and the
intensity window used to map the stored values to ``[0, 1]``.

Sources (see DESIGN.md, "Data conventions"):

* a folder ``DIR/images/<name>.<png|tif|tiff|dcm>`` with masks ``DIR/masks/<name>.png`` (same stem;
  0 = background, any nonzero label = foreground), read by :func:`load_folder`;
* DICOM files or series (pydicom), read by :func:`load_dicom_series`;
* NIfTI volumes with optional label volumes (nibabel), sliced to 2-D by :func:`load_nifti`;
* synthetic coronary-angiography-like phantoms with exact masks and per-hospital domain shifts,
  made by :func:`make_phantoms`.

:func:`load_samples` dispatches on the kind of path. :func:`write_folder` writes the folder layout back.

Pixel conventions: images are ``(H, W)`` ``uint8`` (bit depth 8, window ``(0, 255)``) or ``uint16``
(bit depth 16, window from the DICOM header or ``(min, max)`` of the image). :func:`normalize` maps them to
``float32`` in ``[0, 1]`` and :func:`denormalize` maps back. Every problem with the input raises
:class:`~fedcodec.errors.DataError` with a message naming the file and the problem.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedcodec.errors import DataError, OutputExistsError

__all__ = [
    "Sample",
    "normalize",
    "denormalize",
    "read_image",
    "read_mask",
    "load_folder",
    "load_dicom_series",
    "load_nifti",
    "load_samples",
    "write_folder",
    "DomainShift",
    "hospital_shift",
    "make_phantom",
    "make_phantoms",
]

PathLike = str | os.PathLike[str]
Window = tuple[float, float]

IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".dcm")
"""File suffixes (lower case) that :func:`load_folder` accepts in ``DIR/images``."""

WINDOWS_FILE = "windows.json"
"""Optional sidecar ``DIR/windows.json`` (``{name: [lo, hi]}``) keeping the window of 16-bit images, which a
PNG cannot store. :func:`write_folder` writes it, :func:`load_folder` reads it when present."""


# ----------------------------------------------------------------------------------------------------------
# Sample and intensity windows
# ----------------------------------------------------------------------------------------------------------


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
            :func:`normalize`. ``(0, 255)`` for 8-bit images.

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


def _check_window(window: Window) -> tuple[float, float]:
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
    lo, hi = _check_window(window)
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
    lo, hi = _check_window(window)
    dtype = {8: np.uint8, 16: np.uint16}.get(bit_depth)
    if dtype is None:
        raise DataError(f"bit_depth must be 8 or 16, got {bit_depth}")
    x = np.asarray(x, dtype=np.float64)
    if np.isnan(x).any():
        raise DataError("denormalize: input contains NaN")
    v = np.rint(lo + np.clip(x, 0.0, 1.0) * (hi - lo))
    return np.clip(v, 0, 2**bit_depth - 1).astype(dtype)


def _minmax_window(image: np.ndarray) -> Window:
    """``(min, max)`` of an image as a window, widened to ``(v, v + 1)`` for a constant image."""
    lo, hi = float(image.min()), float(image.max())
    return (lo, hi) if hi > lo else (lo, lo + 1.0)


# ----------------------------------------------------------------------------------------------------------
# Reading single files
# ----------------------------------------------------------------------------------------------------------


def _existing_file(path: PathLike, what: str = "image") -> Path:
    p = Path(path)
    if not p.exists():
        raise DataError(f"{p}: {what} file does not exist")
    if not p.is_file():
        raise DataError(f"{p}: is not a file (expected an {what} file)")
    return p


def _is_dicom(path: Path) -> bool:
    """True for a ``.dcm`` suffix or a file with the ``DICM`` marker after the 128-byte preamble."""
    if path.suffix.lower() == ".dcm":
        return True
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def _dicom_frames(path: Path) -> tuple[np.ndarray, int, Window, int | None]:
    """Read a DICOM file as ``(frames (N, H, W) uint8/uint16, bit_depth, window, InstanceNumber)``.

    Stored values are kept (no Rescale Slope/Intercept applied), except that signed data holding negative
    values is shifted by ``2**(BitsStored-1)`` to become unsigned; MONOCHROME1 is inverted (``2**BitsStored - 1 - v``) so that
    high values are bright. The header window ``[WindowCenter - WindowWidth/2, WindowCenter + WindowWidth/2]``
    (rescaled units) is converted to stored units with the same shift and inversion. 8-bit data gets
    the window ``(0, 255)``; 16-bit data without a (valid) header window gets ``(min, max)``.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(path, force=True)
    except (InvalidDicomError, OSError, ValueError, EOFError) as e:
        raise DataError(f"{path}: not a readable DICOM file ({e})") from e
    if "PixelData" not in ds:
        raise DataError(f"{path}: DICOM file has no pixel data (not an image)")
    if int(ds.get("SamplesPerPixel", 1)) != 1:
        raise DataError(
            f"{path}: colour DICOM ({ds.get('PhotometricInterpretation', '?')}, "
            f"{ds.get('SamplesPerPixel')} samples per pixel) is not supported; expected grayscale"
        )
    try:
        arr = np.asarray(ds.pixel_array)
    except Exception as e:  # pydicom raises many types for missing decoders / corrupt data
        raise DataError(f"{path}: cannot decode DICOM pixel data ({type(e).__name__}: {e})") from e
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3 or (n_frames > 1 and arr.shape[0] != n_frames):
        raise DataError(f"{path}: unexpected DICOM pixel array shape {arr.shape}")
    if arr.size == 0:
        raise DataError(f"{path}: DICOM image is empty (shape {arr.shape})")
    if not np.issubdtype(arr.dtype, np.integer):
        raise DataError(f"{path}: DICOM pixel data of type {arr.dtype} is not supported (integer data expected)")

    bits_alloc = int(ds.get("BitsAllocated", arr.dtype.itemsize * 8))
    bits_stored = int(ds.get("BitsStored", bits_alloc) or bits_alloc)
    bits_stored = min(bits_stored, 16)
    signed = int(ds.get("PixelRepresentation", 0)) == 1
    values = arr.astype(np.int64)
    shift = 2 ** (bits_stored - 1) if signed and values.min() < 0 else 0
    maxval = 2**bits_stored - 1
    values += shift
    if values.min() < 0 or values.max() > 65535:
        raise DataError(
            f"{path}: DICOM values {values.min()}..{values.max()} do not fit 16 bits "
            f"(BitsAllocated {bits_alloc}, BitsStored {bits_stored})"
        )
    invert = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper() == "MONOCHROME1"
    if invert:
        values = np.clip(maxval - values, 0, maxval)

    if bits_alloc <= 8 and values.max() <= 255:
        return values.astype(np.uint8), 8, (0.0, 255.0), _instance_number(ds)

    image = values.astype(np.uint16)
    window = _minmax_window(image)
    wc, ww = ds.get("WindowCenter"), ds.get("WindowWidth")
    if wc is not None and ww is not None:
        wc = float(wc[0] if isinstance(wc, pydicom.multival.MultiValue) else wc)
        ww = float(ww[0] if isinstance(ww, pydicom.multival.MultiValue) else ww)
        slope = float(ds.get("RescaleSlope", 1) or 1)
        intercept = float(ds.get("RescaleIntercept", 0) or 0)
        if ww > 0 and math.isfinite(wc) and slope != 0:
            a = (wc - ww / 2 - intercept) / slope + shift
            b = (wc + ww / 2 - intercept) / slope + shift
            lo, hi = min(a, b), max(a, b)
            if invert:
                lo, hi = maxval - hi, maxval - lo
            window = (lo, hi)
        else:
            warnings.warn(f"{path}: ignoring invalid DICOM window (center {wc}, width {ww}); using min..max")
    return image, 16, window, _instance_number(ds)


def _instance_number(ds: Any) -> int | None:
    try:
        v = ds.get("InstanceNumber")
        return None if v is None or v == "" else int(v)
    except (TypeError, ValueError):
        return None


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
        return arr.astype(np.uint8), 8, (0.0, 255.0)
    if mode.startswith("I;16"):
        arr = np.asarray(img).astype(np.uint16)
        return arr, 16, _minmax_window(arr)
    if mode == "I":
        arr = np.asarray(img)
        if arr.min() < 0 or arr.max() > 65535:
            raise DataError(f"{path}: 32-bit integer image with values {arr.min()}..{arr.max()} does not fit 16 bits")
        arr = arr.astype(np.uint16)
        return arr, 16, _minmax_window(arr)
    if mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        if not np.isfinite(arr).all():
            bad = "NaN" if np.isnan(arr).any() else "infinite values"
            raise DataError(f"{path}: floating-point image contains {bad}")
        if arr.size and np.all(arr == np.rint(arr)) and arr.min() >= 0 and arr.max() <= 65535:
            u16 = arr.astype(np.uint16)
            return u16, 16, _minmax_window(u16)
        warnings.warn(f"{path}: floating-point image rescaled from {arr.min():g}..{arr.max():g} to uint16 0..65535")
        return _float_to_u16(arr), 16, (0.0, 65535.0)
    raise DataError(f"{path}: unsupported image mode {mode!r} (expected 8/16-bit grayscale or RGB)")


def _float_to_u16(arr: np.ndarray, lo: float | None = None, hi: float | None = None) -> np.ndarray:
    """Scale a finite float array linearly from ``(lo, hi)`` (default: its min, max) to uint16 0..65535."""
    lo = float(arr.min()) if lo is None else lo
    hi = float(arr.max()) if hi is None else hi
    if hi <= lo:
        return np.zeros(arr.shape, np.uint16)
    return np.rint((arr - lo) / (hi - lo) * 65535.0).clip(0, 65535).astype(np.uint16)


def read_image(path: PathLike) -> tuple[np.ndarray, int, Window]:
    """Read one 2-D grayscale image.

    PNG/TIFF go through Pillow: 8-bit gray -> ``uint8``; 16-bit gray -> ``uint16``; RGB/palette -> 8-bit
    luminance (a warning says so, unless all channels are equal); 32-bit integer TIFF -> ``uint16`` if the
    values fit; float TIFF -> ``uint16`` (kept if integral in 0..65535, else rescaled min..max to 0..65535
    with a warning). DICOM (``.dcm`` or the ``DICM`` marker) goes through pydicom, see :func:`_dicom_frames`.

    Returns:
        ``(image, bit_depth, window)``: ``image`` is ``(H, W)`` ``uint8`` (bit depth 8, window ``(0, 255)``)
        or ``uint16`` (bit depth 16, window from the DICOM header, else ``(min, max)`` of the image).

    Raises:
        DataError: missing or non-image file, NaN/inf in a float image, more than one frame/page (3-D),
        an empty image, or an unsupported pixel format.
    """
    p = _existing_file(path)
    if _is_dicom(p):
        frames, depth, window, _ = _dicom_frames(p)
        if frames.shape[0] != 1:
            raise DataError(f"{p}: DICOM has {frames.shape[0]} frames (3-D); use load_dicom_series for volumes")
        return frames[0], depth, window

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
    p = _existing_file(path, "mask")
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


# ----------------------------------------------------------------------------------------------------------
# Folders, DICOM series, NIfTI volumes
# ----------------------------------------------------------------------------------------------------------


def _read_windows_file(root: Path) -> dict[str, Window]:
    f = root / WINDOWS_FILE
    if not f.is_file():
        return {}
    try:
        raw = json.loads(f.read_text())
        out = {str(k): (float(v[0]), float(v[1])) for k, v in raw.items()}
    except (ValueError, TypeError, KeyError, IndexError, AttributeError) as e:
        raise DataError(f"{f}: not a valid windows file ({e}); expected {{name: [lo, hi]}}") from e
    for k, (lo, hi) in out.items():
        if not (math.isfinite(lo) and math.isfinite(hi) and hi > lo):
            raise DataError(f"{f}: window for {k!r} must be finite with hi > lo, got {[lo, hi]}")
    return out


def load_folder(data_dir: PathLike, limit: int | None = None, require_masks: bool = True) -> list[Sample]:
    """Load ``DIR/images/<stem>.<png|tif|tiff|dcm>`` with masks ``DIR/masks/<stem>.png``.

    Args:
        data_dir: the folder ``DIR``.
        limit: keep only the first ``limit`` images (after sorting by name); ``None`` keeps all.
        require_masks: raise when a mask is missing; when False a missing mask gives ``mask=None``.

    Returns:
        Samples sorted by name. A 16-bit image takes its window from ``DIR/windows.json`` when listed there.

    Raises:
        DataError: missing folder or ``images`` subfolder, no images ("empty folder"), two images with the same
        stem, a missing mask (when ``require_masks``), or any unreadable image/mask.
    """
    root = Path(data_dir)
    if not root.is_dir():
        raise DataError(f"{root}: data folder does not exist" if not root.exists() else f"{root}: is not a folder")
    img_dir = root / "images"
    if not img_dir.is_dir():
        raise DataError(f"{root}: no 'images' subfolder (expected {img_dir}/<name>.png|tif|tiff|dcm)")
    if limit is not None and limit < 1:
        raise DataError(f"limit must be a positive number of images, got {limit}")
    files: dict[str, Path] = {}
    for f in sorted(img_dir.iterdir()):
        if f.name.startswith(".") or not f.is_file() or f.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        if f.stem in files:
            raise DataError(f"{img_dir}: two images share the name {f.stem!r} ({files[f.stem].name}, {f.name})")
        files[f.stem] = f
    if not files:
        raise DataError(f"{img_dir}: empty folder, no images with suffix {', '.join(IMAGE_SUFFIXES)}")
    mask_dir = root / "masks"
    if require_masks and not mask_dir.is_dir():
        raise DataError(f"{root}: no 'masks' subfolder (expected {mask_dir}/<name>.png); pass require_masks=False")
    windows = _read_windows_file(root)
    names = sorted(files)[:limit]
    samples = []
    for name in names:
        image, depth, window = read_image(files[name])
        if depth == 16 and name in windows:
            window = windows[name]
        mpath = mask_dir / f"{name}.png"
        if mpath.is_file():
            mask = read_mask(mpath, image.shape)
        elif require_masks:
            raise DataError(f"{mpath}: mask for image {files[name]} does not exist")
        else:
            mask = None
        samples.append(Sample(image, mask, name, depth, window))
    return samples


def load_dicom_series(path: PathLike) -> list[Sample]:
    """Load a DICOM file or a folder of DICOM files as 2-D samples without masks.

    A folder's DICOM files (``.dcm`` or with the ``DICM`` marker; hidden files and ``DICOMDIR`` skipped) are
    sorted by InstanceNumber (files without one last, then by file name). A multi-frame file gives one sample
    per frame, named ``<stem>_f<k:03d>``; otherwise the name is the file stem.

    Returns:
        Samples with ``(H, W)`` ``uint8``/``uint16`` images, see :func:`read_image` for values and windows.

    Raises:
        DataError: missing path, a folder without DICOM files, or an unreadable DICOM file.
    """
    p = Path(path)
    if not p.exists():
        raise DataError(f"{p}: DICOM file or folder does not exist")
    if p.is_dir():
        files = [
            f for f in sorted(p.iterdir())
            if f.is_file() and not f.name.startswith(".") and f.name.upper() != "DICOMDIR" and _is_dicom(f)
        ]
        if not files:
            raise DataError(f"{p}: empty folder, no DICOM files (.dcm or DICM marker)")
    else:
        if not _is_dicom(p):
            raise DataError(f"{p}: not a DICOM file (no .dcm suffix and no DICM marker)")
        files = [p]
    read = []
    for f in files:
        frames, depth, window, number = _dicom_frames(f)
        read.append((number is None, number or 0, f.name, f, frames, depth, window))
    read.sort(key=lambda r: r[:3])
    samples = []
    for _, _, _, f, frames, depth, window in read:
        for k, frame in enumerate(frames):
            name = f.stem if len(frames) == 1 else f"{f.stem}_f{k:03d}"
            samples.append(Sample(np.ascontiguousarray(frame), None, name, depth, window))
    return samples


def _nifti_stem(p: Path) -> str:
    name = p.name
    for suf in (".nii.gz", ".nii"):
        if name.lower().endswith(suf):
            return name[: -len(suf)]
    return p.stem


def _load_nifti_array(path: PathLike, what: str) -> np.ndarray:
    import nibabel as nib

    p = _existing_file(path, what)
    try:
        arr = np.asanyarray(nib.load(str(p)).dataobj)
    except Exception as e:  # nibabel raises ImageFileError, OSError, EOFError, zlib errors...
        raise DataError(f"{p}: not a readable NIfTI {what} ({type(e).__name__}: {e})") from e
    while arr.ndim > 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3:
        raise DataError(f"{p}: NIfTI {what} has shape {arr.shape}; expected a 3-D volume")
    if arr.size == 0:
        raise DataError(f"{p}: NIfTI {what} is empty (shape {arr.shape})")
    if arr.dtype.kind not in "biuf":
        raise DataError(f"{p}: NIfTI {what} has unsupported data type {arr.dtype}")
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise DataError(f"{p}: NIfTI {what} contains NaN or infinite values")
    return arr


def load_nifti(
    volume_path: PathLike,
    label_path: PathLike | None = None,
    axis: int = 2,
    every: int = 1,
    only_labeled: bool = False,
) -> list[Sample]:
    """Slice a NIfTI volume (and an optional label volume of the same shape) into 2-D samples.

    Voxel values (after the header's scl_slope/scl_inter, as nibabel applies them) become:

    * float volumes: scaled linearly from the volume's ``(min, max)`` to ``uint16`` 0..65535, window
      ``(0, 65535)``;
    * ``uint8`` volumes: kept as ``uint8`` (bit depth 8, window ``(0, 255)``);
    * other integer volumes with values in 0..65535: kept as ``uint16`` with the volume's ``(min, max)`` as
      window (the same for every slice); with a range of at most 65535 but negative values (e.g. CT in HU):
      shifted by ``-min`` (with a warning); wider ranges are scaled like float volumes.

    Args:
        volume_path: ``.nii`` or ``.nii.gz`` file, 3-D (2-D is treated as one slice; trailing size-1 axes
            are dropped).
        label_path: label volume of the same shape; any nonzero voxel is foreground. ``None``: no masks.
        axis: voxel axis (0, 1 or 2) to slice along; slice ``k`` is ``volume[..., k, ...]`` in voxel order
            (no reorientation), named ``<stem>_<x|y|z><k:03d>``, e.g. ``vol1_z042``.
        every: keep every ``every``-th slice (``k = 0, every, 2*every, ...``).
        only_labeled: keep only slices with at least one foreground label voxel (needs ``label_path``).

    Returns:
        Samples in slice order with ``(H, W)`` images and ``uint8`` masks (or ``None``).

    Raises:
        DataError: unreadable file, not 3-D, NaN, label shape different from volume shape, bad ``axis`` /
        ``every``, ``only_labeled`` without labels.
    """
    if axis not in (0, 1, 2):
        raise DataError(f"axis must be 0, 1 or 2, got {axis}")
    if not isinstance(every, int) or every < 1:
        raise DataError(f"every must be a positive integer, got {every}")
    if only_labeled and label_path is None:
        raise DataError("only_labeled=True needs a label volume (label_path)")
    vpath = Path(volume_path)
    vol = _load_nifti_array(vpath, "volume")
    labels = None
    if label_path is not None:
        labels = _load_nifti_array(label_path, "label volume")
        if labels.shape != vol.shape:
            raise DataError(f"{label_path}: label volume shape {labels.shape} differs from volume shape {vol.shape}")

    if vol.dtype == np.uint8:
        data, depth, window = vol, 8, (0.0, 255.0)
    elif vol.dtype.kind in "biu":
        vmin, vmax = int(vol.min()), int(vol.max())
        if vmin >= 0 and vmax <= 65535:
            data, depth, window = vol.astype(np.uint16), 16, _minmax_window(vol)
        elif vmax - vmin <= 65535:
            warnings.warn(f"{vpath}: integer volume shifted by {-vmin} to fit uint16 (values {vmin}..{vmax})")
            data = (vol.astype(np.int64) - vmin).astype(np.uint16)
            depth, window = 16, _minmax_window(data)
        else:
            data, depth, window = _float_to_u16(vol.astype(np.float64)), 16, (0.0, 65535.0)
    else:
        data, depth, window = _float_to_u16(vol.astype(np.float64)), 16, (0.0, 65535.0)

    stem = _nifti_stem(vpath)
    samples = []
    for k in range(0, vol.shape[axis], every):
        mask = None
        if labels is not None:
            mask = np.ascontiguousarray(np.take(labels, k, axis=axis) != 0).astype(np.uint8)
            if only_labeled and not mask.any():
                continue
        image = np.ascontiguousarray(np.take(data, k, axis=axis))
        samples.append(Sample(image, mask, f"{stem}_{'xyz'[axis]}{k:03d}", depth, window))
    if not samples:
        raise DataError(f"{vpath}: no slices selected (only_labeled={only_labeled}, every={every})")
    return samples


def load_samples(path: PathLike, **kw: Any) -> list[Sample]:
    """Load samples from any supported source, chosen by the kind of ``path``.

    * a folder with an ``images`` subfolder -> :func:`load_folder` (``limit``, ``require_masks``);
    * ``.nii`` / ``.nii.gz`` file -> :func:`load_nifti` (``label_path``, ``axis``, ``every``, ``only_labeled``);
    * a DICOM file or a folder of DICOM files -> :func:`load_dicom_series` (no options);
    * a single PNG/TIFF file -> one sample without mask (no options).

    Raises:
        DataError: a missing path, an unrecognised path, or an option the chosen loader does not take.
    """
    p = Path(path)
    if not p.exists():
        raise DataError(f"{p}: data path does not exist")

    def check(allowed: set[str], kind: str) -> None:
        extra = sorted(set(kw) - allowed)
        if extra:
            raise DataError(f"{p}: option(s) {', '.join(extra)} do not apply to {kind} input")

    if p.is_dir():
        if (p / "images").is_dir():
            check({"limit", "require_masks"}, "a data folder")
            return load_folder(p, **kw)
        if any(f.is_file() and not f.name.startswith(".") and _is_dicom(f) for f in p.iterdir()):
            check(set(), "a DICOM series")
            return load_dicom_series(p)
        raise DataError(f"{p}: not a data folder (no 'images' subfolder) and holds no DICOM files")
    if p.name.lower().endswith((".nii", ".nii.gz")):
        check({"label_path", "axis", "every", "only_labeled"}, "a NIfTI volume")
        return load_nifti(p, **kw)
    if _is_dicom(p):
        check(set(), "a DICOM file")
        return load_dicom_series(p)
    if p.suffix.lower() in IMAGE_SUFFIXES:
        check(set(), "a single image")
        image, depth, window = read_image(p)
        return [Sample(image, None, p.stem, depth, window)]
    raise DataError(f"{p}: unrecognised input (expected a data folder, DICOM, NIfTI, PNG or TIFF)")


def write_folder(samples: list[Sample], out_dir: PathLike, overwrite: bool = False) -> None:
    """Write samples in the folder layout that :func:`load_folder` reads.

    Images go to ``out_dir/images/<name>.png`` (8-bit or 16-bit grayscale PNG matching ``bit_depth``, values
    unchanged), masks to ``out_dir/masks/<name>.png`` as 0/255 8-bit PNG (only for samples that have one),
    and the windows of 16-bit images to ``out_dir/windows.json``.

    Args:
        overwrite: allow an existing non-empty ``out_dir``; image files (png/tif/tiff/dcm) already in its
            ``images``/``masks`` subfolders and its ``windows.json`` are deleted first so stale samples do not
            mix in. Other files are left alone.

    Raises:
        OutputExistsError: ``out_dir`` is an existing file, or an existing non-empty folder without
            ``overwrite``.
        DataError: duplicate names or names that are not plain file names.
    """
    from PIL import Image

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise OutputExistsError(f"{out}: folder exists and is not empty (pass overwrite=True to replace)")
    seen: set[str] = set()
    for s in samples:
        if not s.name or s.name in (".", "..") or "/" in s.name or "\\" in s.name or s.name.startswith("."):
            raise DataError(f"sample name {s.name!r} is not a plain file name")
        if s.name in seen:
            raise DataError(f"two samples share the name {s.name!r}; names must be unique to write a folder")
        seen.add(s.name)

    img_dir, mask_dir = out / "images", out / "masks"
    if overwrite:
        for d in (img_dir, mask_dir):
            if d.is_dir():
                for f in d.iterdir():
                    if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES:
                        f.unlink()
        (out / WINDOWS_FILE).unlink(missing_ok=True)
    img_dir.mkdir(parents=True, exist_ok=True)
    if any(s.mask is not None for s in samples):
        mask_dir.mkdir(parents=True, exist_ok=True)
    windows: dict[str, list[float]] = {}
    for s in samples:
        # Sample guarantees uint8 (-> mode "L") or uint16 (-> mode "I;16", a 16-bit grayscale PNG).
        Image.fromarray(np.ascontiguousarray(s.image)).save(img_dir / f"{s.name}.png")
        if s.bit_depth == 16:
            windows[s.name] = [float(s.window[0]), float(s.window[1])]
        if s.mask is not None:
            Image.fromarray((s.mask != 0).astype(np.uint8) * 255).save(mask_dir / f"{s.name}.png")
    if windows:
        (out / WINDOWS_FILE).write_text(json.dumps(windows, indent=1, sort_keys=True) + "\n")


# ----------------------------------------------------------------------------------------------------------
# Synthetic coronary-angiography phantoms
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DomainShift:
    """How one hospital's images differ from the source (pretraining) domain.

    Attributes:
        contrast: multiplier of vessel (and catheter) attenuation; < 1 = fainter vessels.
        noise: multiplier of the Poisson-Gaussian noise level; 0 = noiseless.
        blur: Gaussian blur sigma in pixels (at the output size), applied before the detector noise.
        gamma: display gamma, ``x -> x ** gamma`` on the ``[0, 1]`` image (< 1 brightens).
        offset: brightness offset added after gamma, in ``[-0.2, 0.2]``.
        scale: detector resolution; the image is resampled to ``size * scale``, gets its noise there and is
            resampled back to ``size`` (< 1 = lower resolution, blockier noise).
        bit_depth: 8 (``uint8``, window ``(0, 255)``) or 16 (``uint16``, same content scaled to
            0..65535, window ``(0, 65535)``).
    """

    contrast: float = 1.0
    noise: float = 1.0
    blur: float = 0.0
    gamma: float = 1.0
    offset: float = 0.0
    scale: float = 1.0
    bit_depth: int = 8

    def __post_init__(self) -> None:
        if not (self.contrast >= 0 and self.noise >= 0 and self.blur >= 0 and self.gamma > 0):
            raise DataError(f"invalid DomainShift {self}: contrast, noise, blur must be >= 0 and gamma > 0")
        if not -0.2 <= self.offset <= 0.2:
            raise DataError(f"invalid DomainShift {self}: offset must be in [-0.2, 0.2]")
        if not 0.1 <= self.scale <= 4.0:
            raise DataError(f"invalid DomainShift {self}: scale must be in [0.1, 4]")
        if self.bit_depth not in (8, 16):
            raise DataError(f"invalid DomainShift {self}: bit_depth must be 8 or 16")


_HOSPITALS: dict[int, DomainShift] = {
    0: DomainShift(),  # source domain used for pretraining
    1: DomainShift(contrast=0.5, noise=1.8, offset=0.05),  # low-dose: faint vessels, noisy
    2: DomainShift(blur=1.2, scale=0.5, noise=0.8),  # older system: blurry, half resolution
    3: DomainShift(gamma=0.6, offset=0.1, contrast=0.8),  # bright display gamma, washed out
    4: DomainShift(bit_depth=16, gamma=1.4, offset=-0.08, noise=0.6),  # 16-bit flat-panel detector, darker
    5: DomainShift(noise=3.0, contrast=0.9, blur=0.5),  # strong noise (fluoroscopy-like)
}


def hospital_shift(hospital: int) -> DomainShift:
    """The domain shift of a hospital id.

    0 is the source domain (``DomainShift()``); 1..5 are a fixed table (1 low-contrast + noisy, 2 blurry
    low-resolution, 3 bright gamma, 4 16-bit detector, 5 strong noise); ids > 5 are drawn from a random
    generator seeded with the id, so they are the same on every run.
    """
    if isinstance(hospital, bool) or not isinstance(hospital, (int, np.integer)) or hospital < 0:
        raise DataError(f"hospital id must be a non-negative integer, got {hospital!r}")
    hospital = int(hospital)
    if hospital in _HOSPITALS:
        return _HOSPITALS[hospital]
    rng = np.random.default_rng([hospital, 0x5EED])
    return DomainShift(
        contrast=round(float(rng.uniform(0.45, 1.3)), 3),
        noise=round(float(rng.uniform(0.4, 3.0)), 3),
        blur=round(float(rng.choice([0.0, 0.0, rng.uniform(0.3, 2.0)])), 3),
        gamma=round(float(np.exp(rng.uniform(-0.5, 0.4))), 3),
        offset=round(float(rng.uniform(-0.15, 0.15)), 3),
        scale=float(rng.choice([1.0, 1.0, 0.75, 0.5])),
        bit_depth=int(rng.choice([8, 8, 16])),
    )


def _walk(
    rng: np.random.Generator,
    start: tuple[float, float],
    theta: float,
    length: float,
    step: float,
    curvature: float,
    size: int,
) -> np.ndarray:
    """A smooth random centreline: ``(n, 2)`` float points ``(x, y)``, ``step`` apart, cut where it leaves the
    image by more than ``0.06 * size + 2`` pixels.

    The direction changes by a curvature that itself follows a damped random walk (``curvature`` = its
    stationary std in radians per pixel), so the path bends smoothly.
    """
    n = max(2, int(length / step) + 1)
    kappa = np.empty(n - 1)
    k = rng.normal(0.0, curvature)
    shocks = rng.normal(0.0, curvature * 0.45, n - 1)
    for i in range(n - 1):
        k = 0.9 * k + shocks[i]
        kappa[i] = k
    angles = theta + np.cumsum(kappa) * step
    pts = np.empty((n, 2))
    pts[0] = start
    pts[1:, 0] = start[0] + np.cumsum(np.cos(angles)) * step
    pts[1:, 1] = start[1] + np.cumsum(np.sin(angles)) * step
    margin = 0.06 * size + 2.0
    outside = (pts < -margin).any(axis=1) | (pts > size - 1 + margin).any(axis=1)
    if outside.any():
        pts = pts[: max(2, int(np.argmax(outside)) + 1)]
    return pts


def _vessel_tree(rng: np.random.Generator, size: int, s: float) -> list[np.ndarray]:
    """Centrelines of one tree as ``(n, 3)`` arrays of ``(x, y, radius)`` (pixels at ``size``).

    Root at (or just outside) an image edge pointing inwards, radius 4-6 px (times ``s = size / 256``)
    tapering along each branch; each branch end bifurcates into a continuation and a side branch (Murray's law
    radii) for 2-4 generations; the last generation tapers to a radius of 1 px.
    """
    edge = int(rng.integers(4))
    along = rng.uniform(0.15, 0.85) * size
    inset = rng.uniform(-0.04, 0.03) * size  # the thick root starts at or just outside the border
    start, inward = [
        ((along, inset), math.pi / 2),
        ((size - 1 - inset, along), math.pi),
        ((along, size - 1 - inset), -math.pi / 2),
        ((inset, along), 0.0),
    ][edge]
    generations = int(rng.integers(2, 5))
    r_min = 1.0 * s
    branches: list[np.ndarray] = []

    def grow(pos: tuple[float, float], theta: float, radius: float, length: float, gen: int) -> None:
        pts = _walk(rng, pos, theta, length, 2.0 * s, 0.02 / s, size)
        leaf = gen >= generations or radius <= r_min * 1.2
        r_end = r_min if leaf else max(r_min, radius * rng.uniform(0.8, 0.92))  # leaves taper to ~1 px
        radii = np.linspace(radius, r_end, len(pts))
        branches.append(np.column_stack([pts, radii]))
        end = pts[-1]
        if leaf or not (0 <= end[0] <= size - 1 and 0 <= end[1] <= size - 1):
            return
        d = pts[-1] - pts[-2]
        heading = math.atan2(d[1], d[0])
        side = 1.0 if rng.random() < 0.5 else -1.0
        r_main = max(r_min, r_end * rng.uniform(0.8, 0.92))
        r_side = max(r_min, (max(r_end**3 - r_main**3, 0.0)) ** (1 / 3))
        grow(tuple(end), heading + side * rng.uniform(0.05, 0.3), r_main, length * rng.uniform(0.75, 1.0), gen + 1)
        grow(tuple(end), heading - side * rng.uniform(0.5, 1.1), r_side, length * rng.uniform(0.55, 0.85), gen + 1)

    grow(start, inward + rng.uniform(-0.5, 0.5), rng.uniform(4.0, 6.0) * s, rng.uniform(0.28, 0.42) * size, 1)
    return branches


def _catheter(rng: np.random.Generator, size: int, s: float) -> np.ndarray:
    """Catheter centreline ``(n, 3)`` of ``(x, y, radius)``: enters from the border, long, nearly straight,
    constant radius 2-3 px (times ``s``)."""
    edge = int(rng.integers(4))
    along = rng.uniform(0.2, 0.8) * size
    start, inward = [
        ((along, -4.0), math.pi / 2),
        ((size + 3.0, along), math.pi),
        ((along, size + 3.0), -math.pi / 2),
        ((-4.0, along), 0.0),
    ][edge]
    pts = _walk(rng, start, inward + rng.uniform(-0.6, 0.6), rng.uniform(0.5, 0.85) * size, 2.5 * s, 0.004 / s,
                size)
    return np.column_stack([pts, np.full(len(pts), rng.uniform(2.0, 3.0) * s)])


def _tube_area(centrelines: list[np.ndarray], size: int) -> float:
    """Approximate in-image area in pixels of tubes around centrelines (``2 r`` times length, overlaps
    counted twice); cheap enough to steer the vessel density before rendering."""
    area = 0.0
    for c in centrelines:
        mid = (c[1:] + c[:-1]) / 2
        keep = ((mid[:, :2] >= 0) & (mid[:, :2] <= size - 1)).all(axis=1)
        seglen = np.hypot(*(c[1:, :2] - c[:-1, :2]).T)
        area += float((2 * mid[keep, 2] * seglen[keep]).sum())
    return area


def _render_tubes(centrelines: list[np.ndarray], size: int) -> tuple[np.ndarray, np.ndarray]:
    """Rasterise tubes around piecewise-linear centrelines on a ``(size, size)`` pixel grid.

    Each consecutive point pair is a segment whose radius varies linearly along it. For pixel centre ``p``
    (pixel ``(i, j)`` is at ``x = j, y = i``) and segment ``a -> b``: ``t`` = the clamped projection of ``p``
    on the segment, ``d`` = distance from ``p`` to ``a + t (b - a)``, ``r = r_a + t (r_b - r_a)``.

    Returns:
        ``(chord, inside)``: ``chord`` ``(size, size)`` float32, the largest ``2 sqrt(r^2 - d^2)`` over all
        segments (the path length of a ray through a tube of that cross-section, 0 outside); ``inside``
        ``(size, size)`` bool, pixels with ``d <= r`` for some segment.
    """
    chord = np.zeros(size * size, np.float32)
    inside = np.zeros(size * size, bool)
    segs = [np.column_stack([c[:-1], c[1:]]) for c in centrelines if len(c) >= 2]
    if not segs:
        return chord.reshape(size, size), inside.reshape(size, size)
    seg = np.concatenate(segs)  # (S, 6): xa, ya, ra, xb, yb, rb
    xa, ya, ra, xb, yb, rb = seg.T
    # Half-width of the pixel box around each segment's midpoint that contains the whole tube piece.
    half = np.ceil(np.hypot(xb - xa, yb - ya) / 2 + np.maximum(ra, rb) + 1).astype(int)
    for h in np.unique(half):  # few groups: boxes of equal size are processed together
        g = half == h
        off = np.arange(-h, h + 1, dtype=np.float32)
        cx = np.rint((xa[g] + xb[g]) / 2).astype(int)
        cy = np.rint((ya[g] + yb[g]) / 2).astype(int)
        px = (cx[:, None, None] + off[None, None, :]).astype(np.float32)  # (G, 1, K)
        py = (cy[:, None, None] + off[None, :, None]).astype(np.float32)  # (G, K, 1)
        ax, ay = xa[g].astype(np.float32)[:, None, None], ya[g].astype(np.float32)[:, None, None]
        dx, dy = (xb[g] - xa[g]).astype(np.float32)[:, None, None], (yb[g] - ya[g]).astype(np.float32)[:, None, None]
        len2 = np.maximum(dx * dx + dy * dy, 1e-12)
        t = np.clip(((px - ax) * dx + (py - ay) * dy) / len2, 0.0, 1.0)  # (G, K, K)
        d2 = (px - ax - t * dx) ** 2 + (py - ay - t * dy) ** 2
        r = ra[g].astype(np.float32)[:, None, None] + t * (rb[g] - ra[g]).astype(np.float32)[:, None, None]
        c2 = r * r - d2
        hit = c2 >= 0
        valid = hit & (px >= 0) & (px < size) & (py >= 0) & (py < size)
        flat = (np.broadcast_to(py, valid.shape)[valid].astype(np.int64) * size
                + np.broadcast_to(px, valid.shape)[valid].astype(np.int64))
        inside[flat] = True
        np.maximum.at(chord, flat, 2.0 * np.sqrt(c2[valid]))
    return chord.reshape(size, size), inside.reshape(size, size)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Smooth anatomy as an attenuation map ``(size, size)`` float32 >= 0 (larger = darker): low-frequency
    blobs, a dark heart shadow (soft ellipse), 3-5 soft rib-like bands and a mild vignette.

    Everything here is smooth, so it is computed on a grid of ``size // 4`` and resampled (bicubic).
    """
    n = max(16, size // 4)
    u = ((np.arange(n) + 0.5) / n).astype(np.float32)  # normalised coordinates in (0, 1)
    att = np.full((n, n), 0.2, np.float32)
    for _ in range(6):  # separable Gaussian blobs
        cx, cy = rng.uniform(-0.1, 1.1, 2)
        sig = rng.uniform(0.1, 0.35)
        att += rng.uniform(-0.08, 0.1) * np.outer(np.exp(-((u - cy) ** 2) / (2 * sig**2)),
                                                  np.exp(-((u - cx) ** 2) / (2 * sig**2)))
    X, Y = np.meshgrid(u, u)
    # Heart shadow.
    hx, hy = rng.uniform(0.35, 0.65), rng.uniform(0.45, 0.75)
    a, b, phi = rng.uniform(0.25, 0.42), rng.uniform(0.2, 0.35), rng.uniform(0, math.pi)
    cu, su = math.cos(phi), math.sin(phi)
    ex, ey = (X - hx) * cu + (Y - hy) * su, -(X - hx) * su + (Y - hy) * cu
    rho = np.sqrt((ex / a) ** 2 + (ey / b) ** 2)
    att += rng.uniform(0.18, 0.3) / (1.0 + np.exp((rho - 1.0) / 0.08))
    # Rib-like bands: gently curved, flat-topped stripes.
    phi = rng.uniform(-0.5, 0.5) + math.pi / 7
    cu, su = math.cos(phi), math.sin(phi)
    along, across = X * cu + Y * su, -X * su + Y * cu
    bend = rng.uniform(-0.4, 0.4)
    first, gap = rng.uniform(-0.2, 0.1), rng.uniform(0.16, 0.24)
    for k in range(int(rng.integers(3, 6))):
        d = across - (first + k * gap) - bend * (along - 0.5) ** 2
        att += rng.uniform(0.04, 0.08) * np.exp(-((d / rng.uniform(0.035, 0.05)) ** 4))
    # Vignette of the image intensifier.
    att += 0.25 * ((X - 0.5) ** 2 + (Y - 0.5) ** 2)
    return _resample(att, (size, size)) if n != size else att


def _resample(img: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Resize a float image ``(h, w)`` to ``shape`` (bicubic upsampling, antialiased downsampling)."""
    from PIL import Image

    out = Image.fromarray(img.astype(np.float32)).resize((shape[1], shape[0]), Image.Resampling.BICUBIC)
    return np.asarray(out, dtype=np.float32)


def make_phantom(
    rng: np.random.Generator,
    size: int = 256,
    shift: DomainShift = DomainShift(),
    return_catheter: bool = False,
) -> tuple[np.ndarray, np.ndarray] | tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One synthetic X-ray coronary angiogram with its exact vessel mask.

    Geometry (at ``size``, lengths scaled by ``size / 256``): 1-3 vessel trees, each grown from a root near an
    edge with smoothly curving branches, radius 4-6 px tapering to about 1 px, 2-4 generations of
    bifurcations; a catheter (long smooth tube of constant radius 2-3 px entering from the border, with a
    radio-opaque wall) that is NOT in the mask; smooth background anatomy (:func:`_background`).

    Appearance: transmission ``exp(-(background + k * contrast * chord))`` with ``chord`` the ray length
    through each tube (soft vessel edges, darker where thicker); then blur, resampling to ``size * scale``,
    Poisson-Gaussian noise in its heteroscedastic Gaussian form (variance ``x / photons + read**2`` with
    ``photons = 1800 / noise**2`` at full brightness and ``read = 0.004 * noise``), resampling back, gamma,
    offset and quantisation. About 5-12% of the pixels are vessel (mean about 8%).

    Returns:
        ``(image, mask)``: image ``(size, size)`` ``uint8`` (or ``uint16`` scaled to 0..65535 when
        ``shift.bit_depth == 16``), vessels dark on a bright background; mask ``(size, size)`` ``uint8`` in
        ``{0, 1}``: exactly the pixels within the local vessel radius of a vessel centreline. With
        ``return_catheter=True`` a third ``(size, size)`` ``uint8`` ``{0, 1}`` array marks the catheter tube.
    """
    if size < 16:
        raise DataError(f"phantom size must be at least 16, got {size}")
    s = size / 256.0
    # 1-3 trees, added until their estimated area (2 r x length) reaches a drawn target of 6-10% of the image;
    # a tree that would take the total past 13% is regrown (at most 4 tries).
    target = rng.uniform(0.06, 0.10) * size * size
    trees: list[np.ndarray] = []
    area = 0.0
    for _ in range(3):
        for _ in range(4):
            tree = _vessel_tree(rng, size, s)
            tree_area = _tube_area(tree, size)
            if area + tree_area <= 0.13 * size * size:
                break
        trees.extend(tree)
        area += tree_area
        if area >= target:
            break
    vessel_chord, vessel_mask = _render_tubes(trees, size)
    cath = _catheter(rng, size, s)
    outer, cath_mask = _render_tubes([cath], size)
    inner = cath.copy()
    inner[:, 2] *= 0.6
    lumen, _ = _render_tubes([inner], size)
    cath_chord = outer - 0.5 * lumen  # wall denser than the contrast-filled lumen: "tram-track" edges

    k = np.float32(0.05 / s * shift.contrast)  # attenuation per pixel of path length
    att = _background(rng, size) + k * (vessel_chord + np.float32(1.2) * cath_chord)
    x = np.exp(-att)  # transmission in (0, 1), about 0.35..0.85 on the background
    if shift.blur > 0:
        from scipy.ndimage import gaussian_filter

        x = gaussian_filter(x, shift.blur, mode="nearest")
    low = max(8, int(round(size * shift.scale)))
    if low != size:
        x = _resample(x, (low, low))
    if shift.noise > 0:
        # Poisson-Gaussian noise in its usual heteroscedastic Gaussian form: variance x / photons + read**2.
        photons, read = 1800.0 / shift.noise**2, 0.004 * shift.noise
        sd = np.sqrt(np.clip(x, 0, None) / photons + read**2)
        x = x + sd * rng.standard_normal(x.shape, dtype=np.float32)
    if low != size:
        x = _resample(x, (size, size))
    x = np.clip(x, 0.0, 1.0)
    if shift.gamma != 1.0:
        x **= np.float32(shift.gamma)
    x = np.clip(x + np.float32(shift.offset), 0.0, 1.0)
    if shift.bit_depth == 16:
        image = np.rint(x * 65535.0).astype(np.uint16)
    else:
        image = np.rint(x * 255.0).astype(np.uint8)
    mask = vessel_mask.astype(np.uint8)
    if return_catheter:
        return image, mask, cath_mask.astype(np.uint8)
    return image, mask


def make_phantoms(n: int, seed: int = 0, size: int = 256, hospital: int = 0) -> list[Sample]:
    """``n`` phantoms of one hospital, named ``f"h{hospital}_{i:04d}"``.

    Phantom ``i`` uses ``np.random.default_rng([seed, hospital, i])``, so the output depends only on
    ``(seed, hospital, i)``: the same arguments give identical arrays, ``make_phantoms(5)[:3]`` equals
    ``make_phantoms(3)``, and different hospitals get different anatomy as well as a different
    :func:`hospital_shift`.

    Returns:
        Samples with ``(size, size)`` images (``uint8``, window ``(0, 255)``, or ``uint16``, window
        ``(0, 65535)``) and ``uint8`` ``{0, 1}`` masks.
    """
    if n < 0 or seed < 0:
        raise DataError(f"number of phantoms and seed must be >= 0, got n={n}, seed={seed}")
    shift = hospital_shift(hospital)
    window = (0.0, 255.0) if shift.bit_depth == 8 else (0.0, 65535.0)
    out = []
    for i in range(n):
        image, mask = make_phantom(np.random.default_rng([seed, hospital, i]), size, shift)
        out.append(Sample(image, mask, f"h{hospital}_{i:04d}", shift.bit_depth, window))
    return out
