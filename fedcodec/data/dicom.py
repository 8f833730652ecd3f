"""DICOM files and series (pydicom).

Pixel data of any transfer syntax pydicom can decode: uncompressed, RLE and deflated natively; JPEG
(baseline, extended, lossless), JPEG-LS and JPEG 2000 through the pylibjpeg plugins (``pylibjpeg``,
``pylibjpeg-libjpeg``, ``pylibjpeg-openjpeg``, installed with fedcodec). Multi-frame files (cine XA, enhanced
CT/MR) give one 2-D image per frame.

Values: the modality transform (Rescale Slope/Intercept or a Modality LUT) and the VOI transform (Window
Center/Width with LINEAR, LINEAR_EXACT or SIGMOID, or a VOI LUT) are pydicom's
:func:`~pydicom.pixels.apply_modality_lut` and :func:`~pydicom.pixels.apply_voi_lut`. When both are linear
(the usual case: rescale + a LINEAR window), fedcodec keeps the stored pixels and expresses the window in
stored units (so ``normalize(image, window)`` equals pydicom's windowed output scaled to ``[0, 1]``); when either
is not linear (a LUT sequence or SIGMOID), the display values pydicom computes are stored instead, scaled to
``uint16`` with the window ``(0, 65535)``.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedcodec.data.sample import PathLike, Sample
from fedcodec.data.windowing import Window, default_window, float_to_u16, minmax_window
from fedcodec.errors import DataError

# Attributes that enhanced multi-frame files keep in functional group macros instead of the top level.
_FUNCTIONAL_GROUPS = {
    "PixelValueTransformationSequence": ("RescaleSlope", "RescaleIntercept", "RescaleType"),
    "FrameVOILUTSequence": ("WindowCenter", "WindowWidth", "VOILUTFunction"),
    "PlaneOrientationSequence": ("ImageOrientationPatient",),
}


def is_dicom(path: Path) -> bool:
    """True for a ``.dcm`` suffix or a file with the ``DICM`` marker after the 128-byte preamble."""
    path = Path(path)
    if path.suffix.lower() == ".dcm":
        return True
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


@dataclass(frozen=True, eq=False)
class DicomImage:
    """One DICOM file read for fedcodec.

    Attributes:
        frames: ``(N, H, W)`` ``uint8`` or ``uint16`` (one entry per frame).
        bit_depth: 8 or 16.
        window: ``(lo, hi)`` in the units of ``frames``.
        series_uid: SeriesInstanceUID (``""`` when absent).
        series_number: SeriesNumber (``None`` when absent).
        position: ImagePositionPatient projected on the slice normal (mm), ``None`` when unknown.
        instance: InstanceNumber, ``None`` when absent.
    """

    frames: np.ndarray
    bit_depth: int
    window: Window
    series_uid: str = ""
    series_number: int | None = None
    position: float | None = None
    instance: int | None = None


def _int_or_none(v: Any) -> int | None:
    try:
        return None if v is None or v == "" else int(v)
    except (TypeError, ValueError):
        return None


def _lift_functional_groups(ds: Any) -> None:
    """Copy rescale, window and orientation attributes of an enhanced multi-frame file from its shared
    functional groups (else from the first frame's) to the top level, where pydicom's LUT functions look.
    Per-frame values that differ between frames are not supported: the first frame's apply, with a warning."""
    sources = []
    if "SharedFunctionalGroupsSequence" in ds and len(ds.SharedFunctionalGroupsSequence):
        sources.append(("shared", [ds.SharedFunctionalGroupsSequence[0]]))
    if "PerFrameFunctionalGroupsSequence" in ds and len(ds.PerFrameFunctionalGroupsSequence):
        sources.append(("per-frame", list(ds.PerFrameFunctionalGroupsSequence)))
    for seq_name, keywords in _FUNCTIONAL_GROUPS.items():
        if any(k in ds for k in keywords):
            continue
        for kind, groups in sources:
            items = [g.get(seq_name)[0] for g in groups if g.get(seq_name)]
            if not items:
                continue
            for k in keywords:
                if k in items[0]:
                    setattr(ds, k, items[0][k].value)
                    if kind == "per-frame" and any(k in it and it[k].value != items[0][k].value for it in items):
                        warnings.warn(f"per-frame {k} differs between frames; the first frame's is used for all")
            break


def _slice_position(ds: Any) -> float | None:
    """ImagePositionPatient along the normal of ImageOrientationPatient (mm), ``None`` when either is absent."""
    pos = ds.get("ImagePositionPatient")
    if pos is None and "PerFrameFunctionalGroupsSequence" in ds:
        try:
            pos = ds.PerFrameFunctionalGroupsSequence[0].PlanePositionSequence[0].ImagePositionPatient
        except (AttributeError, IndexError, KeyError):
            pos = None
    ori = ds.get("ImageOrientationPatient")
    try:
        p = np.asarray([float(v) for v in pos], dtype=np.float64)
        if ori is None:
            return float(p[2])  # no orientation: assume axial
        o = np.asarray([float(v) for v in ori], dtype=np.float64)
        return float(np.dot(p, np.cross(o[:3], o[3:])))
    except (TypeError, ValueError, IndexError):
        return None


def _voi_kind(ds: Any) -> str:
    """``"lut"`` (VOI LUT Sequence), ``"sigmoid"``, ``"linear"``, ``"linear_exact"`` or ``"none"``."""
    if "VOILUTSequence" in ds and len(ds.VOILUTSequence):
        return "lut"
    if "WindowCenter" not in ds or "WindowWidth" not in ds:
        return "none"
    func = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").strip().upper()
    return {"LINEAR": "linear", "LINEAR_EXACT": "linear_exact", "SIGMOID": "sigmoid"}.get(func, f"unknown:{func}")


def _first(v: Any) -> float:
    from pydicom.multival import MultiValue

    return float(v[0] if isinstance(v, (MultiValue, list, tuple)) else v)


def _stored_range(bits_stored: int, signed: bool) -> tuple[int, int]:
    return (-(2 ** (bits_stored - 1)), 2 ** (bits_stored - 1) - 1) if signed else (0, 2**bits_stored - 1)


def read_dicom(path: PathLike) -> DicomImage:
    """Read a DICOM file as a :class:`DicomImage`.

    Linear modality and VOI transforms (the usual case): stored values are kept, except that signed data is
    shifted by ``2**(BitsStored-1)`` to become unsigned and MONOCHROME1 is inverted (``2**BitsStored - 1 - v``)
    so that high values are bright; the window is the one pydicom's LINEAR / LINEAR_EXACT windowing uses,
    converted to these units through the rescale (LINEAR: ``[c - 0.5 - (w-1)/2, c - 0.5 + (w-1)/2]``). Data
    of at most 8 bits gets ``uint8`` and the window ``(0, 255)``; 16-bit data without a (valid) window gets
    ``(min, max)`` of the file.

    A Modality LUT, a VOI LUT or a SIGMOID window: the values pydicom's ``apply_modality_lut`` +
    ``apply_voi_lut`` give, taken over every possible stored value to fix the output range, inverted for
    MONOCHROME1 and scaled to ``uint16`` 0..65535, window ``(0, 65535)``.

    Raises:
        DataError: not a readable DICOM file, no pixel data, colour data, a transfer syntax no installed
            plugin decodes, or values that do not fit 16 bits.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    path = Path(path)
    try:
        ds = pydicom.dcmread(path, force=True)
    except (InvalidDicomError, OSError, ValueError, EOFError, KeyError, TypeError) as e:
        raise DataError(f"{path}: not a readable DICOM file ({e})") from e
    if "PixelData" not in ds:
        raise DataError(f"{path}: DICOM file has no pixel data (not an image)")
    if int(ds.get("SamplesPerPixel", 1)) != 1:
        raise DataError(
            f"{path}: colour DICOM ({ds.get('PhotometricInterpretation', '?')}, "
            f"{ds.get('SamplesPerPixel')} samples per pixel) is not supported; expected grayscale"
        )
    if "TransferSyntaxUID" not in getattr(ds, "file_meta", {}):
        ds.file_meta = getattr(ds, "file_meta", pydicom.dataset.FileMetaDataset())
        ds.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian  # force-read files without meta
    try:
        arr = np.asarray(ds.pixel_array)
    except Exception as e:  # pydicom raises many types for missing decoders / corrupt data
        ts = ds.file_meta.get("TransferSyntaxUID")
        name = getattr(ts, "name", ts)
        raise DataError(f"{path}: cannot decode DICOM pixel data (transfer syntax {name}): "
                        f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}") from e
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3 or (n_frames > 1 and arr.shape[0] != n_frames):
        raise DataError(f"{path}: unexpected DICOM pixel array shape {arr.shape}")
    if arr.size == 0:
        raise DataError(f"{path}: DICOM image is empty (shape {arr.shape})")
    if not np.issubdtype(arr.dtype, np.integer):
        raise DataError(f"{path}: DICOM pixel data of type {arr.dtype} is not supported (integer data expected)")
    _lift_functional_groups(ds)
    meta = {"series_uid": str(ds.get("SeriesInstanceUID", "") or ""),
            "series_number": _int_or_none(ds.get("SeriesNumber")), "position": _slice_position(ds),
            "instance": _int_or_none(ds.get("InstanceNumber"))}

    bits_alloc = int(ds.get("BitsAllocated", arr.dtype.itemsize * 8))
    bits_stored = min(int(ds.get("BitsStored", bits_alloc) or bits_alloc), 16)
    signed = int(ds.get("PixelRepresentation", 0)) == 1
    smin, smax = _stored_range(bits_stored, signed)
    if arr.min() < smin or arr.max() > smax:
        raise DataError(f"{path}: DICOM values {arr.min()}..{arr.max()} exceed BitsStored {bits_stored} "
                        f"({'signed' if signed else 'unsigned'})")
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2") or "MONOCHROME2").strip().upper()
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise DataError(f"{path}: photometric interpretation {photometric} is not supported; expected MONOCHROME1/2")
    ds.PhotometricInterpretation = photometric
    ds.BitsStored, ds.PixelRepresentation = bits_stored, int(signed)
    invert = photometric == "MONOCHROME1"
    voi = _voi_kind(ds)
    if voi.startswith("unknown:"):
        warnings.warn(f"{path}: unsupported VOI LUT function {voi[8:]!r}; ignoring the window")
        voi = "none"
    nonlinear = voi in ("lut", "sigmoid") or ("ModalityLUTSequence" in ds and len(ds.ModalityLUTSequence))
    if nonlinear:
        return DicomImage(*_display_values(ds, arr, smin, smax, invert, voi), **meta)

    shift = -smin  # 2**(BitsStored-1) for signed data, else 0
    maxval = smax + shift
    values = arr.astype(np.int64) + shift
    if invert:
        values = maxval - values
    if bits_alloc <= 8 and maxval <= 255:
        return DicomImage(values.astype(np.uint8), 8, default_window(8), **meta)
    image = values.astype(np.uint16)
    window = minmax_window(image)
    if voi in ("linear", "linear_exact"):
        c, w = _first(ds.WindowCenter), _first(ds.WindowWidth)
        slope = float(ds.get("RescaleSlope", 1) or 1)
        intercept = float(ds.get("RescaleIntercept", 0) or 0)
        if voi == "linear":  # PS3.3 C.11.2.1.2.1, as pydicom's apply_windowing
            c, w = c - 0.5, w - 1
        if w > 0 and math.isfinite(c) and math.isfinite(w) and slope != 0:
            a = (c - w / 2 - intercept) / slope + shift
            b = (c + w / 2 - intercept) / slope + shift
            lo, hi = min(a, b), max(a, b)
            if invert:
                lo, hi = maxval - hi, maxval - lo
            window = (lo, hi)
        else:
            warnings.warn(f"{path}: ignoring invalid DICOM window (center {ds.WindowCenter}, width "
                          f"{ds.WindowWidth}, rescale slope {slope}); using min..max")
    return DicomImage(image, 16, window, **meta)


def _display_values(ds: Any, arr: np.ndarray, smin: int, smax: int, invert: bool,
                    voi: str) -> tuple[np.ndarray, int, Window]:
    """Apply pydicom's modality and VOI transforms through a table over every stored value; ``uint16`` out."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    ramp = np.arange(smin, smax + 1, dtype=np.int32 if smin < 0 else np.uint16)
    try:
        table = apply_modality_lut(ramp, ds)
        if voi == "lut":
            # A LUT is indexed by integers (pydicom warns on a float array), and values outside the LUT clamp
            # to its ends (PS3.3 C.11.2.1.1). pydicom 3.0 computes the index in the LUT's output type, so an
            # 8-bit LUT wraps inputs >= 256 instead of clamping them: clamp here first.
            desc = [int(v) for v in ds.VOILUTSequence[0].LUTDescriptor]
            first = desc[1] - 65536 if desc[1] > 32767 and smin < 0 else desc[1]  # US or SS first mapped value
            table = np.clip(np.rint(table), first, first + (desc[0] or 65536) - 1).astype(np.int64)
        if voi != "none":
            table = apply_voi_lut(table, ds, index=0, prefer_lut=True)
    except (ValueError, KeyError, AttributeError, IndexError, TypeError) as e:
        raise DataError(f"cannot apply the DICOM modality/VOI transform ({type(e).__name__}: {e})") from e
    table = np.asarray(table, dtype=np.float64)
    if not np.isfinite(table).all():
        raise DataError("the DICOM modality/VOI transform gives non-finite values")
    tmin, tmax = float(table.min()), float(table.max())
    if invert:
        table = tmax + tmin - table
    display = table[arr.astype(np.int64) - smin]
    return float_to_u16(display, tmin, tmax), 16, default_window(16)


def load_dicom_series(path: PathLike, series: str | None = None) -> list[Sample]:
    """Load a DICOM file or a folder of DICOM files as 2-D samples without masks.

    A folder's DICOM files (``.dcm`` or with the ``DICM`` marker; hidden files and ``DICOMDIR`` skipped) are
    grouped by SeriesInstanceUID (series ordered by SeriesNumber, then UID) and, within a series, sorted by
    ImagePositionPatient along the slice normal (ascending), then InstanceNumber, then file name. A
    multi-frame file gives one sample per frame (in file order), named ``<stem>_f<k:03d>``; otherwise the name
    is the file stem.

    Args:
        path: a DICOM file or a folder.
        series: load only the series with this SeriesInstanceUID.

    Returns:
        Samples with ``(H, W)`` ``uint8``/``uint16`` images; values and windows as :func:`read_dicom`.

    Raises:
        DataError: missing path, a folder without DICOM files, an unknown ``series``, or an unreadable file.
    """
    p = Path(path)
    if not p.exists():
        raise DataError(f"{p}: DICOM file or folder does not exist")
    if p.is_dir():
        files = [
            f for f in sorted(p.iterdir())
            if f.is_file() and not f.name.startswith(".") and f.name.upper() != "DICOMDIR" and is_dicom(f)
        ]
        if not files:
            raise DataError(f"{p}: empty folder, no DICOM files (.dcm or DICM marker)")
    else:
        if not is_dicom(p):
            raise DataError(f"{p}: not a DICOM file (no .dcm suffix and no DICM marker)")
        files = [p]
    read = [(f, read_dicom(f)) for f in files]
    if series is not None:
        found = sorted({d.series_uid for _, d in read})
        read = [(f, d) for f, d in read if d.series_uid == series]
        if not read:
            raise DataError(f"{p}: no DICOM series {series!r}; found {found}")

    def key(item: tuple[Path, DicomImage]) -> tuple:
        f, d = item
        sn = d.series_number
        return (sn is None, sn or 0, d.series_uid, d.position is None, d.position or 0.0,
                d.instance is None, d.instance or 0, f.name)

    samples = []
    for f, d in sorted(read, key=key):
        for k, frame in enumerate(d.frames):
            name = f.stem if len(d.frames) == 1 else f"{f.stem}_f{k:03d}"
            samples.append(Sample(np.ascontiguousarray(frame), None, name, d.bit_depth, d.window))
    return samples


def dicom_series_ids(path: PathLike) -> list[str]:
    """The SeriesInstanceUIDs of the DICOM files in a folder (sorted, ``""`` for files without one)."""
    import pydicom

    p = Path(path)
    files = [f for f in sorted(p.iterdir()) if f.is_file() and not f.name.startswith(".") and is_dicom(f)]
    uids = set()
    for f in files:
        try:
            uids.add(str(pydicom.dcmread(f, stop_before_pixels=True, force=True).get("SeriesInstanceUID", "")))
        except Exception as e:  # noqa: BLE001 - any header problem is a data problem
            raise DataError(f"{f}: not a readable DICOM file ({e})") from e
    return sorted(uids)
