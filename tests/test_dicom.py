"""DICOM reading: pydicom's modality/VOI transforms, compressed transfer syntaxes, series order, multi-frame."""

from __future__ import annotations

import numpy as np
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels import apply_modality_lut, apply_voi_lut
from pydicom.sequence import Sequence
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, JPEG2000Lossless, generate_uid

from fedcodec.data import load_data, load_dicom_series, load_samples, normalize, read_dicom, read_image
from fedcodec.errors import DataError


def _ct(pixels: np.ndarray, *, series: str = "1.2.3", position=(0.0, 0.0, 0.0), orientation=(1, 0, 0, 0, 1, 0),
        instance: int = 1, signed: bool = True, **attrs) -> Dataset:
    """A CT-like dataset: 12 bits stored, RescaleIntercept -1024, any extra attributes."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.SeriesInstanceUID, ds.InstanceNumber = "CT", series, instance
    ds.ImagePositionPatient, ds.ImageOrientationPatient = list(position), list(orientation)
    ds.PixelSpacing = [0.5, 0.5]
    frames = pixels if pixels.ndim == 3 else pixels[None]
    ds.Rows, ds.Columns = frames.shape[1:]
    if pixels.ndim == 3:
        ds.NumberOfFrames = frames.shape[0]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, int(signed)
    ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
    for k, v in attrs.items():
        setattr(ds, k, v)
    ds.PixelData = frames.astype("<i2" if signed else "<u2").tobytes()
    return ds


def _pydicom_display(ds: Dataset, arr: np.ndarray) -> np.ndarray:
    """pydicom's own modality + VOI output for ``arr``, scaled to [0, 1] by its possible output range."""
    ramp = np.arange(-2048, 2048) if ds.PixelRepresentation else np.arange(0, 4096)
    full = apply_voi_lut(apply_modality_lut(ramp, ds), ds, prefer_lut=True)  # windows only: see the LUT test
    out = apply_voi_lut(apply_modality_lut(arr, ds), ds, prefer_lut=True)
    return (out - full.min()) / (full.max() - full.min())


@pytest.mark.parametrize("func", ["LINEAR", "LINEAR_EXACT"])
def test_linear_window_matches_pydicom(tmp_path, func):
    rng = np.random.default_rng(0)
    stored = rng.integers(-1024, 2047, (16, 20)).astype(np.int16)
    ds = _ct(stored, WindowCenter=40, WindowWidth=400, VOILUTFunction=func)
    ds.save_as(tmp_path / "ct.dcm", enforce_file_format=True)
    image, depth, window = read_image(tmp_path / "ct.dcm")
    assert depth == 16 and image.dtype == np.uint16
    assert np.array_equal(image.astype(np.int64), stored.astype(np.int64) + 2048)  # stored values kept, shifted
    # CT window W400 L40 in stored units (HU + 1024 + 2048)
    expect = (40 - 0.5 - 399 / 2, 40 - 0.5 + 399 / 2) if func == "LINEAR" else (40 - 200, 40 + 200)
    assert window == pytest.approx((expect[0] + 3072, expect[1] + 3072))
    np.testing.assert_allclose(normalize(image, window), _pydicom_display(ds, stored), atol=1e-6)


def test_sigmoid_and_voi_lut_sequence_use_pydicom_values(tmp_path):
    stored = np.arange(-1000, 1400, 10, dtype=np.int16).reshape(8, 30)
    sig = _ct(stored, WindowCenter=100, WindowWidth=300, VOILUTFunction="SIGMOID")
    sig.save_as(tmp_path / "sig.dcm", enforce_file_format=True)
    img, depth, window = read_image(tmp_path / "sig.dcm")
    assert depth == 16 and window == (0.0, 65535.0)
    np.testing.assert_allclose(img / 65535.0, _pydicom_display(sig, stored), atol=1 / 65535)
    assert 0.05 < img[0, 0] / 65535 < 0.15 or img.min() < 2000  # a sigmoid: dark far below the centre
    assert img.max() > 60000 and np.all(np.diff(img.ravel().astype(int)) >= 0)  # monotone on a ramp

    lut = Dataset()
    lut.add_new(0x00283002, "US", [256, 0, 8])  # LUTDescriptor: 256 entries from stored 0, 8-bit output
    lut.add_new(0x00283006, "US", [int(v) for v in (np.sqrt(np.arange(256) / 255.0) * 255).round()])  # LUTData
    stored_u = np.arange(0, 300, dtype=np.uint16).reshape(10, 30)
    seq = _ct(stored_u, signed=False, RescaleIntercept=0, VOILUTSequence=Sequence([lut]))
    seq.save_as(tmp_path / "lut.dcm", enforce_file_format=True)
    img, depth, window = read_image(tmp_path / "lut.dcm")
    assert window == (0.0, 65535.0)
    expect = np.sqrt(np.clip(stored_u, 0, 255) / 255.0)  # entries past the table clamp to its last value
    np.testing.assert_allclose(img / 65535.0, expect, atol=1 / 255 + 1e-6)  # (pydicom 3.0 alone wraps at 256)


def test_monochrome1_is_inverted_like_before(tmp_path):
    stored = np.arange(0, 4000, 50, dtype=np.uint16).reshape(8, 10)
    ds = _ct(stored, signed=False, RescaleIntercept=0, PhotometricInterpretation="MONOCHROME1",
             WindowCenter=1000, WindowWidth=400)
    ds.save_as(tmp_path / "m1.dcm", enforce_file_format=True)
    image, _, window = read_image(tmp_path / "m1.dcm")
    assert np.array_equal(image, 4095 - stored)
    # inverting the image and the window gives 1 - pydicom's (non-inverting) output
    np.testing.assert_allclose(normalize(image, window), 1 - _pydicom_display(ds, stored), atol=1e-6)


@pytest.mark.parametrize("name", ["MR_small_jpeg_ls_lossless.dcm", "MR_small_jp2klossless.dcm", "MR_small_RLE.dcm"])
def test_compressed_transfer_syntaxes_decode_losslessly(name):
    """pydicom's bundled files: JPEG-LS (pylibjpeg-libjpeg), JPEG 2000 (pylibjpeg-openjpeg), RLE (pydicom)."""
    ref, ref_depth, ref_window = read_image(get_testdata_file("MR_small.dcm"))
    image, depth, window = read_image(get_testdata_file(name))
    assert (depth, window) == (ref_depth, ref_window)
    assert np.array_equal(image, ref) and image.std() > 0


def test_compressed_multiframe_cine(tmp_path):
    rng = np.random.default_rng(1)
    frames = rng.integers(0, 4095, (3, 64, 48)).astype(np.uint16)
    ds = _ct(frames, signed=False, RescaleIntercept=0, WindowCenter=2048, WindowWidth=4096)
    ds.compress(JPEG2000Lossless, frames, encoding_plugin="pylibjpeg")
    ds.save_as(tmp_path / "cine.dcm", enforce_file_format=True)
    d = read_dicom(tmp_path / "cine.dcm")
    assert d.frames.shape == (3, 64, 48) and np.array_equal(d.frames, frames)
    samples = load_samples(tmp_path / "cine.dcm")
    assert [s.name for s in samples] == ["cine_f000", "cine_f001", "cine_f002"]
    assert np.array_equal(samples[2].image, frames[2])
    with pytest.raises(DataError, match="3 frames"):
        read_image(tmp_path / "cine.dcm")


def test_enhanced_multiframe_window_from_functional_groups(tmp_path):
    frames = np.arange(2 * 8 * 8, dtype=np.int16).reshape(2, 8, 8) * 10
    ds = _ct(frames)
    del ds.RescaleSlope, ds.RescaleIntercept
    voi, pvt = Dataset(), Dataset()
    voi.WindowCenter, voi.WindowWidth = 300, 600
    pvt.RescaleSlope, pvt.RescaleIntercept, pvt.RescaleType = 1, -1024, "HU"
    shared = Dataset()
    shared.FrameVOILUTSequence, shared.PixelValueTransformationSequence = Sequence([voi]), Sequence([pvt])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    ds.save_as(tmp_path / "enh.dcm", enforce_file_format=True)
    d = read_dicom(tmp_path / "enh.dcm")
    lo = 300 - 0.5 - 599 / 2 + 1024 + 2048
    assert d.window == pytest.approx((lo, lo + 599))


def test_series_grouped_by_uid_and_sorted_by_position(tmp_path):
    # Two series in one folder; file names, instance numbers and positions all disagree. Series "1.2.5" is
    # sagittal with its normal along -x (row direction y, column direction -z), so only the projection on the
    # normal sorts it: x = 5 comes first although its file name and instance number come last.
    sag = (0, 1, 0, 0, 0, -1)
    plan = [("f1", "1.2.4", (0, 0, 30.0), None, 1), ("f2", "1.2.4", (0, 0, -10.0), None, 3),
            ("f3", "1.2.4", (0, 0, 10.0), None, 2), ("f4", "1.2.5", (5.0, 0, 0), sag, 2),
            ("f0", "1.2.5", (-5.0, 0, 0), sag, 1)]
    for name, uid, pos, ori, inst in plan:
        value = int(pos[0] + pos[2])
        ds = _ct(np.full((4, 4), value, np.int16), series=uid, position=pos, instance=inst,
                 orientation=ori or (1, 0, 0, 0, 1, 0), SeriesNumber=int(uid[-1]))
        ds.save_as(tmp_path / f"{name}.dcm", enforce_file_format=True)
    names = [s.name for s in load_dicom_series(tmp_path)]
    assert names == ["f2", "f3", "f1", "f4", "f0"]
    assert [s.name for s in load_dicom_series(tmp_path, series="1.2.5")] == ["f4", "f0"]
    with pytest.raises(DataError, match="no DICOM series"):
        load_dicom_series(tmp_path, series="9.9")


def test_cli_data_spec_dicom_series_without_masks(tmp_path):
    _ct(np.zeros((4, 4), np.int16)).save_as(tmp_path / "a.dcm", enforce_file_format=True)
    assert len(load_data(tmp_path, require_masks=False)) == 1
    with pytest.raises(DataError, match="has no masks"):
        load_data(tmp_path)


def test_unreadable_dicom_names_the_file(tmp_path):
    (tmp_path / "bad.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"garbage")
    with pytest.raises(DataError, match="bad.dcm"):
        read_image(tmp_path / "bad.dcm")
