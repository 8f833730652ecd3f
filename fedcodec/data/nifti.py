"""NIfTI volumes (nibabel) with optional label volumes, sliced into 2-D samples.

Slices are taken along a voxel axis as stored (the default, unchanged behaviour), or, with
``radiological=True``, as axial images shown like a DICOM axial slice: the volume is reoriented with nibabel
to LPS (whatever its stored orientation) and slice ``k`` (ascending S, i.e. from feet to head) has rows from
anterior to posterior and columns from the patient's right to left.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from fedcodec.data.images import existing_file
from fedcodec.data.sample import PathLike, Sample
from fedcodec.data.windowing import default_window, float_to_u16, minmax_window
from fedcodec.errors import DataError


def _nifti_stem(p: Path) -> str:
    name = p.name
    for suf in (".nii.gz", ".nii"):
        if name.lower().endswith(suf):
            return name[: -len(suf)]
    return p.stem


def _load_nifti_array(path: PathLike, what: str) -> np.ndarray:
    return _load_nifti(path, what)[0]


def _load_nifti(path: PathLike, what: str) -> tuple[np.ndarray, np.ndarray]:
    """``(array (X, Y, Z), affine (4, 4))`` of a NIfTI file, checked (3-D, finite, numeric)."""
    import nibabel as nib

    p = existing_file(path, what)
    try:
        img = nib.load(str(p))
        arr = np.asanyarray(img.dataobj)
        affine = np.asarray(img.affine, dtype=np.float64)
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
    return arr, affine


def to_lps(arr: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Reorient a volume ``(X, Y, Z)`` with nibabel so that its axes run to patient Left, Posterior, Superior
    (the closest axis permutation and flips; no resampling)."""
    from nibabel import orientations as ornt

    transform = ornt.ornt_transform(ornt.io_orientation(affine), ornt.axcodes2ornt(("L", "P", "S")))
    return ornt.apply_orientation(arr, transform)


def volume_to_stored(vol: np.ndarray, where: str = "volume") -> tuple[np.ndarray, int, tuple[float, float]]:
    """Voxel values to ``(uint8/uint16 array, bit_depth, window)`` as :func:`load_nifti` documents."""
    if vol.dtype == np.uint8:
        return vol, 8, default_window(8)
    if vol.dtype.kind in "biu":
        vmin, vmax = int(vol.min()), int(vol.max())
        if vmin >= 0 and vmax <= 65535:
            return vol.astype(np.uint16), 16, minmax_window(vol)
        if vmax - vmin <= 65535:
            warnings.warn(f"{where}: integer volume shifted by {-vmin} to fit uint16 (values {vmin}..{vmax})")
            data = (vol.astype(np.int64) - vmin).astype(np.uint16)
            return data, 16, minmax_window(data)
    return float_to_u16(vol.astype(np.float64)), 16, default_window(16)


def load_nifti(
    volume_path: PathLike,
    label_path: PathLike | None = None,
    axis: int = 2,
    every: int = 1,
    only_labeled: bool = False,
    radiological: bool = False,
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
        radiological: axial slices displayed like DICOM (see the module docstring); ``axis`` must be 2. The
            label volume must then have the volume's affine as well as its shape.

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
    if radiological and axis != 2:
        raise DataError("radiological slices are axial: axis must be 2")
    vpath = Path(volume_path)
    vol, affine = _load_nifti(vpath, "volume")
    labels = None
    if label_path is not None:
        labels, label_affine = _load_nifti(label_path, "label volume")
        if labels.shape != vol.shape:
            raise DataError(f"{label_path}: label volume shape {labels.shape} differs from volume shape {vol.shape}")
        if radiological and not np.allclose(label_affine, affine, atol=1e-3):
            raise DataError(f"{label_path}: label volume affine differs from the volume's; cannot reorient both")
    if radiological:
        vol = to_lps(vol, affine).transpose(1, 0, 2)  # (P, L, S): slice k is rows P, columns L
        labels = None if labels is None else to_lps(labels, affine).transpose(1, 0, 2)
    data, depth, window = volume_to_stored(vol, str(vpath))

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
