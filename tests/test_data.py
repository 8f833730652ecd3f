"""Tests of fedcodec.data: loaders, windows, writers and the synthetic angiography phantoms."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from fedcodec.data import phantoms
from fedcodec.data import (
    DomainShift,
    Sample,
    denormalize,
    hospital_shift,
    load_dicom_series,
    load_folder,
    load_nifti,
    load_samples,
    make_phantom,
    make_phantoms,
    normalize,
    read_image,
    read_mask,
    write_folder,
)
from fedcodec.errors import DataError, OutputExistsError


# ---------------------------------------------------------------------------------------------- phantoms


def test_phantoms_are_deterministic_and_named():
    a = make_phantoms(3, seed=7, size=96, hospital=0)
    b = make_phantoms(3, seed=7, size=96, hospital=0)
    c = make_phantoms(3, seed=8, size=96, hospital=0)
    assert [s.name for s in a] == ["h0_0000", "h0_0001", "h0_0002"]
    for x, y in zip(a, b):
        assert np.array_equal(x.image, y.image) and np.array_equal(x.mask, y.mask)
    assert not np.array_equal(a[0].image, c[0].image)
    # Sample i depends only on (seed, hospital, i).
    assert np.array_equal(make_phantoms(1, seed=7, size=96)[0].image, a[0].image)


def test_phantom_mask_binary_and_foreground_fraction():
    samples = make_phantoms(12, seed=0, size=256)
    fractions = []
    for s in samples:
        assert s.image.shape == s.mask.shape == (256, 256)
        assert s.image.dtype == np.uint8 and s.mask.dtype == np.uint8
        assert set(np.unique(s.mask)) <= {0, 1}
        fractions.append(s.mask.mean())
        x = normalize(s.image, s.window)
        assert x[s.mask == 1].mean() < x[s.mask == 0].mean() - 0.05  # vessels are dark
    assert all(0.02 < f < 0.16 for f in fractions), fractions
    assert 0.05 < np.mean(fractions) < 0.12, np.mean(fractions)


def test_tube_mask_is_exact_distance_to_centreline():
    rng = np.random.default_rng(1)
    size = 48
    pts = np.column_stack([np.cumsum(rng.uniform(-3, 5, 8)) + 8, np.cumsum(rng.uniform(-2, 6, 8)) + 5,
                           np.linspace(4.0, 1.0, 8)])
    chord, inside = phantoms._render_tubes([pts], size)
    yy, xx = np.mgrid[:size, :size].astype(np.float64)
    want = np.zeros((size, size), bool)
    for (xa, ya, ra), (xb, yb, rb) in zip(pts[:-1], pts[1:]):
        dx, dy = xb - xa, yb - ya
        t = np.clip(((xx - xa) * dx + (yy - ya) * dy) / (dx * dx + dy * dy), 0, 1)
        d = np.hypot(xx - xa - t * dx, yy - ya - t * dy)
        want |= d <= ra + t * (rb - ra) + 1e-4
    # float32 rounding may only flip pixels lying exactly on the tube surface
    assert (inside != want).sum() <= 2
    assert np.all(chord[~want] == 0) and chord.max() <= 8.0 + 1e-3


def test_catheter_is_visible_but_not_in_mask():
    in_mask, contrast = [], []
    for i in range(6):
        image, mask, cath = make_phantom(np.random.default_rng(i), 256, return_catheter=True)
        assert cath.sum() > 100
        in_mask.append((cath & mask).sum() / cath.sum())
        ring = (cath == 0) & (mask == 0)
        contrast.append(image[ring].mean() - image[(cath == 1) & (mask == 0)].mean())
    assert np.mean(in_mask) < 0.3  # only where it happens to cross a vessel
    assert np.mean(contrast) > 5  # darker than the background: a real distractor


def test_hospitals_differ():
    assert hospital_shift(0) == DomainShift()
    table = [hospital_shift(h) for h in range(1, 6)]
    assert len(set(table)) == 5 and DomainShift() not in table
    assert hospital_shift(9) == hospital_shift(9) and hospital_shift(9) != hospital_shift(10)
    with pytest.raises(DataError):
        hospital_shift(-1)

    def stats(h: int) -> tuple[float, float]:
        cs, ns = [], []
        for s in make_phantoms(4, seed=3, size=128, hospital=h):
            x = normalize(s.image, s.window).astype(np.float64)
            cs.append(x[s.mask == 0].mean() - x[s.mask == 1].mean())
            ns.append(np.std(np.diff(x, axis=1)[(s.mask[:, 1:] == 0) & (s.mask[:, :-1] == 0)]))
        return float(np.mean(cs)), float(np.mean(ns))

    c0, n0 = stats(0)
    c1, n1 = stats(1)
    assert c1 < 0.8 * c0, (c0, c1)  # fainter vessels
    assert n1 > 1.3 * n0, (n0, n1)  # noisier
    h4 = make_phantoms(2, seed=0, size=64, hospital=4)
    assert h4[0].image.dtype == np.uint16 and h4[0].bit_depth == 16 and h4[0].window == (0.0, 65535.0)
    assert h4[0].image.max() > 255
    assert not np.array_equal(make_phantoms(1, size=64, hospital=1)[0].image, make_phantoms(1, size=64)[0].image)


# ------------------------------------------------------------------------------------------ windows


def test_normalize_denormalize_roundtrip():
    rng = np.random.default_rng(0)
    img16 = rng.integers(1000, 4000, (20, 30)).astype(np.uint16)
    w = (float(img16.min()), float(img16.max()))
    x = normalize(img16, w)
    assert x.dtype == np.float32 and x.min() == 0.0 and x.max() == 1.0
    assert np.array_equal(denormalize(x, w, 16), img16)
    img8 = rng.integers(0, 256, (5, 7)).astype(np.uint8)
    assert np.array_equal(denormalize(normalize(img8, (0, 255)), (0, 255), 8), img8)
    assert np.array_equal(normalize(np.array([0, 50, 100, 200]), (50, 150)), [0, 0, 0.5, 1])
    assert denormalize(np.array([-1.0, 2.0]), (0, 255), 8).tolist() == [0, 255]
    with pytest.raises(DataError):
        normalize(img8, (5, 5))


# ------------------------------------------------------------------------------------------ files


def _sample16(name: str, shape=(20, 24), seed=0) -> Sample:
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 200, shape).astype(np.uint16)  # small values in a 16-bit image stay 16-bit
    mask = (rng.random(shape) < 0.3).astype(np.uint8)
    return Sample(img, mask, name, 16, (10.0, 150.0))


def test_png16_roundtrip_through_folder(tmp_path):
    samples = [_sample16("b", seed=1), _sample16("a", seed=2), make_phantoms(1, size=32)[0]]
    write_folder(samples, tmp_path / "out")
    back = load_folder(tmp_path / "out")
    assert [s.name for s in back] == ["a", "b", "h0_0000"]
    by_name = {s.name: s for s in samples}
    for s in back:
        ref = by_name[s.name]
        assert s.image.dtype == ref.image.dtype and s.bit_depth == ref.bit_depth
        assert np.array_equal(s.image, ref.image) and np.array_equal(s.mask, ref.mask)
        assert s.window == ref.window
    assert np.unique(np.asarray(Image.open(tmp_path / "out/masks/a.png"))).tolist() == [0, 255]
    assert [s.name for s in load_folder(tmp_path / "out", limit=1)] == ["a"]
    assert len(load_samples(tmp_path / "out", limit=2)) == 2


def test_tiff16_read(tmp_path):
    img = (np.arange(12 * 9, dtype=np.uint16).reshape(12, 9) * 500 + 7)
    Image.fromarray(img).save(tmp_path / "x.tif")
    out, depth, window = read_image(tmp_path / "x.tif")
    assert out.dtype == np.uint16 and depth == 16
    assert np.array_equal(out, img)
    assert window == (7.0, float(img.max()))


def test_rgb_png_becomes_luminance(tmp_path):
    rgb = np.zeros((4, 5, 3), np.uint8)
    rgb[..., 0] = 200
    Image.fromarray(rgb).save(tmp_path / "c.png")
    with pytest.warns(UserWarning, match="luminance"):
        out, depth, _ = read_image(tmp_path / "c.png")
    assert depth == 8 and out.shape == (4, 5) and abs(int(out[0, 0]) - round(0.299 * 200)) <= 1


def _write_dicom(path, pixels: np.ndarray, instance: int, photometric="MONOCHROME1", wc=1000.0, ww=400.0):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "OT"
    ds.InstanceNumber = instance
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.WindowCenter, ds.WindowWidth = wc, ww
    ds.RescaleSlope, ds.RescaleIntercept = 1, 0
    ds.PixelData = pixels.astype("<u2").tobytes()
    ds.save_as(path, enforce_file_format=True)


def test_dicom_monochrome1_inverted_with_window(tmp_path):
    stored = np.arange(8 * 10, dtype=np.uint16).reshape(8, 10) * 50
    _write_dicom(tmp_path / "b.dcm", stored, instance=1)
    _write_dicom(tmp_path / "a.dcm", stored[::-1].copy(), instance=2)
    image, depth, window = read_image(tmp_path / "b.dcm")
    assert depth == 16 and image.dtype == np.uint16
    assert np.array_equal(image, 4095 - stored)  # MONOCHROME1: 2**BitsStored - 1 - v
    # DICOM LINEAR window (as pydicom): [c - 0.5 - (w-1)/2, c - 0.5 + (w-1)/2] = [800, 1199], inverted
    assert window == (4095 - 1199.0, 4095 - 800.0)
    series = load_dicom_series(tmp_path)
    assert [s.name for s in series] == ["b", "a"]  # sorted by InstanceNumber, not by file name
    assert series[0].mask is None and np.array_equal(series[1].image, 4095 - stored[::-1])
    assert [s.name for s in load_samples(tmp_path / "a.dcm")] == ["a"]


def test_nifti_volume_and_labels_sliced(tmp_path):
    import nibabel as nib

    rng = np.random.default_rng(0)
    vol = rng.normal(100.0, 30.0, (12, 10, 5)).astype(np.float32)
    lab = np.zeros((12, 10, 5), np.uint8)
    lab[3:6, 2:8, 1] = 2
    lab[0, 0, 3] = 1
    nib.save(nib.Nifti1Image(vol, np.eye(4)), tmp_path / "vol1.nii.gz")
    nib.save(nib.Nifti1Image(lab, np.eye(4)), tmp_path / "lab.nii.gz")
    samples = load_nifti(tmp_path / "vol1.nii.gz", tmp_path / "lab.nii.gz", axis=2)
    assert [s.name for s in samples] == [f"vol1_z{k:03d}" for k in range(5)]
    lo, hi = float(vol.min()), float(vol.max())
    for k, s in enumerate(samples):
        assert s.image.shape == (12, 10) and s.image.dtype == np.uint16 and s.window == (0.0, 65535.0)
        want = np.rint((vol[:, :, k].astype(np.float64) - lo) / (hi - lo) * 65535)
        assert np.abs(s.image.astype(np.float64) - want).max() <= 1
        assert np.array_equal(s.mask, (lab[:, :, k] != 0).astype(np.uint8))
    labeled = load_samples(tmp_path / "vol1.nii.gz", label_path=tmp_path / "lab.nii.gz", only_labeled=True)
    assert [s.name for s in labeled] == ["vol1_z001", "vol1_z003"]
    along0 = load_nifti(tmp_path / "vol1.nii.gz", axis=0, every=4)
    assert [s.name for s in along0] == ["vol1_x000", "vol1_x004", "vol1_x008"] and along0[0].mask is None
    assert along0[0].image.shape == (10, 5)
    nib.save(nib.Nifti1Image(lab[:, :, :4], np.eye(4)), tmp_path / "bad.nii")
    with pytest.raises(DataError, match=r"\(12, 10, 4\).*\(12, 10, 5\)"):
        load_nifti(tmp_path / "vol1.nii.gz", tmp_path / "bad.nii")


# ------------------------------------------------------------------------------------------ bad input


def _folder(root, names=("a",), masks=True, shape=(8, 8)):
    (root / "images").mkdir(parents=True)
    if masks:
        (root / "masks").mkdir()
    for n in names:
        Image.fromarray(np.full(shape, 100, np.uint8)).save(root / "images" / f"{n}.png")
        if masks:
            Image.fromarray(np.zeros(shape, np.uint8)).save(root / "masks" / f"{n}.png")
    return root


def test_non_image_file(tmp_path):
    (tmp_path / "x.png").write_text("not an image at all\n")
    with pytest.raises(DataError, match="x.png"):
        read_image(tmp_path / "x.png")
    with pytest.raises(DataError, match="does not exist"):
        read_image(tmp_path / "missing.png")


def test_mask_with_other_shape(tmp_path):
    root = _folder(tmp_path / "d")
    Image.fromarray(np.zeros((8, 9), np.uint8)).save(root / "masks" / "a.png")
    with pytest.raises(DataError, match=r"a.png.*\(8, 9\).*\(8, 8\)"):
        load_folder(root)
    with pytest.raises(DataError, match=r"\(8, 9\)"):
        read_mask(root / "masks" / "a.png", (8, 8))


def test_label_ids_become_binary_mask(tmp_path):
    Image.fromarray(np.array([[0, 3], [255, 0]], np.uint8)).save(tmp_path / "m.png")
    assert read_mask(tmp_path / "m.png", (2, 2)).tolist() == [[0, 1], [1, 0]]


def test_nan_float_tiff(tmp_path):
    img = np.ones((6, 6), np.float32)
    img[2, 3] = np.nan
    Image.fromarray(img).save(tmp_path / "nan.tif")
    with pytest.raises(DataError, match="nan.tif.*NaN"):
        read_image(tmp_path / "nan.tif")


def test_empty_and_missing_folders(tmp_path):
    (tmp_path / "e" / "images").mkdir(parents=True)
    with pytest.raises(DataError, match="empty folder"):
        load_folder(tmp_path / "e")
    with pytest.raises(DataError, match="does not exist"):
        load_folder(tmp_path / "nope")
    with pytest.raises(DataError, match="does not exist"):
        load_samples(tmp_path / "nope")
    root = _folder(tmp_path / "m", names=("a", "b"))
    (root / "masks" / "b.png").unlink()
    with pytest.raises(DataError, match="b.png"):
        load_folder(root)
    loose = load_folder(root, require_masks=False)
    assert loose[0].mask is not None and loose[1].mask is None


def test_write_folder_refuses_non_empty_folder(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    samples = make_phantoms(2, size=32)
    with pytest.raises(OutputExistsError, match="not empty"):
        write_folder(samples, out)
    write_folder([_sample16("old")], tmp_path / "o2")
    write_folder(samples, tmp_path / "o2", overwrite=True)
    assert [s.name for s in load_folder(tmp_path / "o2")] == ["h0_0000", "h0_0001"]  # stale "old" removed
    with pytest.raises(DataError, match="share the name"):
        write_folder([samples[0], samples[0]], tmp_path / "o3")


def test_sample_validates_its_arrays():
    with pytest.raises(DataError, match="uint16"):
        Sample(np.zeros((4, 4), np.uint8), None, "x", 16, (0, 1))
    with pytest.raises(DataError, match="mask shape"):
        Sample(np.zeros((4, 4), np.uint8), np.zeros((4, 5), np.uint8), "x", 8, (0, 255))


def test_evenly_spaced_keeps_order_and_both_ends():
    from fedcodec.data import evenly_spaced

    assert evenly_spaced(list(range(10)), 4) == [0, 3, 6, 9]
    assert evenly_spaced(list(range(3)), 8) == [0, 1, 2]
    assert evenly_spaced(list(range(5)), 1) == [0] and evenly_spaced([], 3) == [] and evenly_spaced([1], 0) == []
