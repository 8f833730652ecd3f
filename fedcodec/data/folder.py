"""The folder convention: ``DIR/images/<name>.<png|tif|tiff|dcm>``, ``DIR/masks/<name>.png`` and an optional
``DIR/windows.json``.

Masks have the image's stem and size (0 = background, any nonzero value = foreground). A PNG cannot store an
intensity window, so the windows of 16-bit images are kept in ``windows.json`` (``{name: [lo, hi]}``).
Volumes written in this layout name their slices ``<volume>_<axis><k:03d>`` (e.g. ``s0011_z042``), so a
patient or volume can be held out by its prefix.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from fedcodec.data.images import IMAGE_SUFFIXES, read_image, read_mask
from fedcodec.data.sample import PathLike, Sample
from fedcodec.data.windowing import Window
from fedcodec.errors import DataError, OutputExistsError

WINDOWS_FILE = "windows.json"
"""Optional sidecar ``DIR/windows.json`` (``{name: [lo, hi]}``) keeping the window of 16-bit images, which a
PNG cannot store. :func:`write_folder` writes it, :func:`load_folder` reads it when present."""


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
