"""One entry point for every kind of input: :func:`load_samples` (Python) and :func:`load_data` (the CLI's
``--data``).

Accepted inputs:

* a folder in the folder convention (``DIR/images``, ``DIR/masks``): :func:`~fedcodec.data.load_folder`;
* a DICOM file or a folder holding a DICOM series: :func:`~fedcodec.data.load_dicom_series` (no masks);
* a NIfTI volume ``.nii`` / ``.nii.gz``: :func:`~fedcodec.data.load_nifti`;
* a pair ``IMAGE+LABEL`` (``vol.nii.gz+seg.nii.gz``): a NIfTI volume with its label volume, sliced as
  radiological axial images (any nonzero label is foreground);
* a single PNG/TIFF file (no mask).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fedcodec.data.dicom import is_dicom, load_dicom_series
from fedcodec.data.folder import load_folder
from fedcodec.data.images import IMAGE_SUFFIXES, read_image
from fedcodec.data.nifti import load_nifti
from fedcodec.data.sample import PathLike, Sample
from fedcodec.errors import DataError

PAIR_SEPARATOR = "+"


def _is_nifti(p: Path | str) -> bool:
    return str(p).lower().endswith((".nii", ".nii.gz"))


def split_pair(spec: PathLike) -> tuple[Path, Path | None]:
    """``"vol.nii.gz+seg.nii.gz"`` -> ``(vol, seg)``; any other spec -> ``(Path(spec), None)``.

    A spec is split only when it does not exist as a path itself and the last ``+`` separates two NIfTI
    file names, so a file name containing ``+`` still loads as itself.
    """
    text = str(spec)
    if Path(text).exists() or PAIR_SEPARATOR not in text:
        return Path(text), None
    image, _, label = text.rpartition(PAIR_SEPARATOR)
    if _is_nifti(image) and _is_nifti(label):
        return Path(image), Path(label)
    return Path(text), None


def load_samples(path: PathLike, **kw: Any) -> list[Sample]:
    """Load samples from any supported source, chosen by the kind of ``path``.

    * a folder with an ``images`` subfolder -> :func:`load_folder` (``limit``, ``require_masks``);
    * ``.nii`` / ``.nii.gz`` file -> :func:`load_nifti` (``label_path``, ``axis``, ``every``, ``only_labeled``,
      ``radiological``); ``"vol.nii.gz+seg.nii.gz"`` is the volume with ``label_path`` = the second file;
    * a DICOM file or a folder of DICOM files -> :func:`load_dicom_series` (``series``);
    * a single PNG/TIFF file -> one sample without mask (no options).

    Raises:
        DataError: a missing path, an unrecognised path, or an option the chosen loader does not take.
    """
    p, label = split_pair(path)
    if label is not None:
        if "label_path" in kw:
            raise DataError(f"{path}: a label volume is given twice (in the path and as label_path)")
        kw = {**kw, "label_path": label}
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
        if any(f.is_file() and not f.name.startswith(".") and is_dicom(f) for f in p.iterdir()):
            check({"series"}, "a DICOM series")
            return load_dicom_series(p, **kw)
        raise DataError(f"{p}: not a data folder (no 'images' subfolder) and holds no DICOM files")
    if _is_nifti(p):
        check({"label_path", "axis", "every", "only_labeled", "radiological"}, "a NIfTI volume")
        return load_nifti(p, **kw)
    if is_dicom(p):
        check({"series"}, "a DICOM file")
        return load_dicom_series(p, **kw)
    if p.suffix.lower() in IMAGE_SUFFIXES:
        check(set(), "a single image")
        image, depth, window = read_image(p)
        return [Sample(image, None, p.stem, depth, window)]
    raise DataError(f"{p}: unrecognised input (expected a data folder, DICOM, NIfTI, PNG or TIFF)")


def load_data(spec: PathLike, *, require_masks: bool = True, limit: int | None = None) -> list[Sample]:
    """What the CLI's ``--data`` reads: a folder in the folder convention, a DICOM series folder (or file), a
    NIfTI volume, or a NIfTI ``IMAGE+LABEL`` pair (radiological axial slices).

    Args:
        spec: the ``--data`` value.
        require_masks: every sample must be annotated (training, adaptation, evaluation); the error says how
            to give masks for inputs that cannot carry them (a DICOM series, a NIfTI volume without labels).
        limit: keep the first ``limit`` samples (in name order for folders, slice order for volumes).

    Raises:
        DataError: anything :func:`load_samples` rejects, samples without masks when ``require_masks``, or a
            ``limit`` below 1.
    """
    if limit is not None and limit < 1:
        raise DataError(f"limit must be a positive number of images, got {limit}")
    p, label = split_pair(spec)
    if p.is_dir() and (p / "images").is_dir():
        return load_folder(p, limit=limit, require_masks=require_masks)
    if _is_nifti(p):
        samples = load_samples(p, label_path=label, radiological=True) if label is not None else load_samples(p)
    else:
        samples = load_samples(spec)
    if require_masks and any(s.mask is None for s in samples):
        kind = "NIfTI volume" if _is_nifti(p) else "DICOM series" if (p.is_dir() or is_dicom(p)) else "image"
        hint = (f"give its label volume as --data {p}+LABEL.nii.gz" if _is_nifti(p)
                else "convert it to the folder convention (DIR/images, DIR/masks) with masks, or use a NIfTI "
                     "IMAGE+LABEL pair")
        raise DataError(f"{spec}: this {kind} has no masks, which this command needs; {hint}")
    return samples[:limit] if limit is not None else samples
