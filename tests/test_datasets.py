"""`fedcodec datasets`: conversion and archive handling on small fake archives built here (no network)."""

from __future__ import annotations

import io
import json
import lzma
import tarfile
from pathlib import Path

import numpy as np
import pytest

from fedcodec.data import datasets, load_folder, normalize
from fedcodec.errors import DataError, OutputExistsError

TOP = "totalsegmentator-2.18.0/"
CLASS_MAP = """class_map = {
    "total": {1: "spleen", 51: "heart", 52: "aorta", 65: "iliac_artery_left"},
    "total_mr": {1: "spleen", 23: "aorta"},
}
"""


def _nii(path: Path, arr: np.ndarray, affine: np.ndarray) -> None:
    import nibabel as nib

    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(arr, affine), path)


def _dicom_slice(path: Path, hu: np.ndarray, z: float, instance: int) -> None:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = CTImageStorage, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.SeriesInstanceUID, ds.InstanceNumber = "CT", "1.2.826.1", instance
    ds.ImagePositionPatient, ds.ImageOrientationPatient = [-10.0, -20.0, z], [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing = [1.0, 1.0]
    ds.Rows, ds.Columns = hu.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
    ds.PixelData = (hu + 1024).astype("<u2").tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def _fake_totalsegmentator(tmp: Path) -> Path:
    """A source archive with the layout of totalsegmentator 2.18.0 and tiny volumes in which every artery
    voxel is 300 HU (everything else 0), so a mask that lines up with its image is exactly image > 200 HU."""
    root = tmp / "src" / TOP
    ref = root / "tests" / "reference_files"
    (root / "totalsegmentator").mkdir(parents=True)
    (root / "totalsegmentator" / "map_to_binary.py").write_text(CLASS_MAP)
    (root / "LICENSE").write_text("Apache License 2.0 (fake)\n")
    (root / "PKG-INFO").write_text("Name: TotalSegmentator\nVersion: 2.18.0\n")
    # Chest CTA crop + an artery file + a pulmonary crop of the same CT shifted by 2 slices.
    aff = np.diag([-1.5, -1.5, 1.5, 1.0])
    hu = np.zeros((12, 10, 8), np.int16)
    hu[3:5, 2:4, :] = 300
    hu[7:9, 6:8, 4:] = 300
    models = ref / "aorta_report" / "test_result" / "models"
    _nii(models / "ct_cropped.nii.gz", hu, aff)
    aorta = np.zeros(hu.shape, np.uint8)
    aorta[3:5, 2:4, :] = 1
    _nii(models / "aorta.nii.gz", aorta, aff)
    _nii(models / "vertebrae_T12.nii.gz", np.zeros(hu.shape, np.uint8), aff)  # not an artery: ignored
    pa = aff.copy()
    pa[2, 3] = 2 * 1.5
    pulm = np.zeros((12, 10, 6), np.uint8)
    pulm[7:9, 6:8, 2:] = 1  # grid shifted by 2 slices: slices 4..7 of the CTA
    _nii(ref / "pulmonary_report" / "models" / "pulmonary_artery.nii.gz", pulm, pa)
    _nii(ref / "pulmonary_report" / "models" / "ct_cropped.nii.gz", hu[:, :, 2:], pa)
    # Abdominal CT (RAS) with a 'total' label map: aorta (52) and iliac (65) count, spleen (1) does not.
    ras = np.diag([3.0, 3.0, 3.0, 1.0])
    ct = np.zeros((9, 7, 6), np.int16)
    seg = np.zeros(ct.shape, np.uint8)
    ct[2:4, 2:4, :], seg[2:4, 2:4, :] = 300, 52
    ct[6, 5, 1:3], seg[6, 5, 1:3] = 300, 65
    seg[0:2, 0:2, :] = 1
    _nii(ref / "example_ct.nii.gz", ct, ras)
    _nii(ref / "example_seg_fast_force_split.nii.gz", seg, ras)
    _nii(ref / "example_ct_sm.nii.gz", ct[:, :, 2:], ras)  # the duplicate: must not be used
    mr = np.full((8, 6, 3), 50, np.int16)
    mseg = np.zeros(mr.shape, np.uint8)
    mr[1:3, 1:3, :], mseg[1:3, 1:3, :] = 400, 23
    _nii(ref / "example_mr_sm.nii.gz", mr, np.diag([-3.0, -3.0, 3.0, 1.0]))
    _nii(ref / "example_seg_mr.nii.gz", mseg, np.diag([-3.0, -3.0, 3.0, 1.0]))
    # DICOM series (rows, cols) = (6, 5), 3 slices written in shuffled order; label NIfTI in LAS whose slice k
    # is np.flipud(slice.T), as in the real package.
    vols = []
    for k in range(3):
        s = np.zeros((6, 5), np.int16)
        s[1 + k, 1:3] = 300
        vols.append(s)
    for k, inst in ((2, 1), (0, 3), (1, 2)):
        _dicom_slice(ref / "example_ct_dicom" / f"CT.{inst}", vols[k], z=-50.0 + 2.0 * k, instance=inst)
    las = np.array([[-1.0, 0, 0, 10.0], [0, 1.0, 0, 20.0 - 5.0], [0, 0, 2.0, -50.0], [0, 0, 0, 1]])
    lab = np.stack([np.flipud(v).T.copy() for v in vols], axis=-1)  # inverse of flipud(seg[:, :, k].T)
    _nii(ref / "example_seg_dicom.nii.gz", np.where(lab > 0, 52, 0).astype(np.uint8), las)
    archive = tmp / "totalsegmentator-2.18.0.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp / "src" / TOP.rstrip("/"), arcname=TOP.rstrip("/"))
    return archive


@pytest.fixture
def unpinned(monkeypatch):
    """The fake archives cannot have the real archive's SHA-256."""
    for name, spec in datasets.DATASETS.items():
        monkeypatch.setitem(datasets.DATASETS, name, datasets.DatasetSpec(**{**spec.__dict__, "sha256": None}))


def _check_aligned(folder: Path) -> list:
    samples = load_folder(folder)
    for s in samples:
        bright = normalize(s.image, s.window) > (200 - datasets.CT_WINDOW_HU[0]) / 800
        if s.name.startswith(("ts-chestcta", "ts-abdct", "ts-dicomct")):
            assert np.array_equal(s.mask.astype(bool), bright), s.name
    return samples


def test_fetch_totalsegmentator_from_archive(tmp_path, unpinned):
    archive = _fake_totalsegmentator(tmp_path)
    folder = datasets.fetch("totalsegmentator", cache=tmp_path / "cache", archive=archive)
    manifest = json.loads((folder / "manifest.json").read_text())
    vols = {v["name"]: v for v in manifest["volumes"]}
    assert {k: v["slices"] for k, v in vols.items()} == {"ts-chestcta": 8, "ts-abdct": 6, "ts-abdmr": 3,
                                                         "ts-dicomct": 3}
    assert vols["ts-chestcta"]["label_classes"] == ["aorta", "pulmonary_artery"]
    assert vols["ts-abdct"]["label_classes"] == ["aorta", "iliac_artery_left"]  # spleen is not foreground
    assert manifest["split"] == {"train": ["ts-chestcta", "ts-abdct", "ts-abdmr"], "heldout": ["ts-dicomct"],
                                 "train_slices": 17, "heldout_slices": 3}
    assert manifest["licence"] == "Apache-2.0" and (folder / "LICENSE").read_text().startswith("Apache")
    assert manifest["source"]["version"] == "2.18.0" and len(manifest["source"]["sha256"]) == 64
    train = _check_aligned(folder / "train")
    held = _check_aligned(folder / "heldout")
    assert len(train) == 17 and [s.name for s in held] == ["ts-dicomct_z000", "ts-dicomct_z001", "ts-dicomct_z002"]
    # DICOM slices in ascending z whatever the file and instance order: the bright row moves down by one.
    assert [int(np.argmax(s.mask.any(axis=1))) for s in held] == [1, 2, 3]
    # The pulmonary artery (shifted crop) lands on CTA slices 4..7 only; the aorta is on every slice.
    cta = [s for s in train if s.name.startswith("ts-chestcta")]
    assert [int(s.mask.sum()) for s in cta] == [4, 4, 4, 4, 8, 8, 8, 8]
    # Radiological display: the chest CT's axes run L (negative x), P, S; rows are P, columns L.
    assert cta[0].image.shape == (10, 12)
    mr = [s for s in train if s.name.startswith("ts-abdmr")]
    assert all(s.mask.sum() == 4 for s in mr) and mr[0].window[1] > mr[0].window[0]
    with pytest.raises(OutputExistsError, match="already fetched"):
        datasets.fetch("totalsegmentator", cache=tmp_path / "cache", archive=archive)
    folder = datasets.fetch("totalsegmentator", cache=tmp_path / "cache", archive=archive, overwrite=True,
                            heldout=())
    assert not (folder / "heldout").exists() and len(load_folder(folder / "train")) == 20
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["totalsegmentator"]  # nothing left over


def test_failed_fetch_leaves_nothing(tmp_path, unpinned, monkeypatch):
    archive = _fake_totalsegmentator(tmp_path)
    with pytest.raises(DataError, match="not volumes"):
        datasets.fetch("totalsegmentator", cache=tmp_path / "c", archive=archive, heldout=("nope",))
    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(archive.read_bytes()[:2000])
    with pytest.raises(DataError, match="damaged|unreadable"):
        datasets.fetch("totalsegmentator", cache=tmp_path / "c", archive=bad)
    assert list((tmp_path / "c").iterdir()) == []
    monkeypatch.undo()  # the real pin: a foreign archive is refused before anything is written
    with pytest.raises(DataError, match="SHA-256"):
        datasets.fetch("totalsegmentator", cache=tmp_path / "c", archive=archive)
    assert list((tmp_path / "c").iterdir()) == []


def _fake_deb(tmp: Path) -> Path:
    data_dir = tmp / "deb"
    base = data_dir / datasets._ITK_DATA
    aff = np.array([[-2.0, 0, 0, 0], [0, 0, 3.0, 0], [0, 2.0, 0, 0], [0, 0, 0, 1]])  # axes L, S, A as the real file
    img = np.zeros((16, 12, 5), np.int16)
    img[4:10, 3:9, 1:4] = 200
    mask = np.where(img > 0, 5, 0).astype(np.uint8)
    _nii(base / "KmeansTest_T1UCharRaw.nii.gz", img, aff)
    _nii(base / "KmeansTest_T1RawSkullStrip.nii.gz", mask, aff)
    (data_dir / "usr/share/doc/insighttoolkit5-examples/copyright").write_text("License: Apache-2.0\n")

    def txz(add) -> bytes:
        raw = io.BytesIO()
        with tarfile.open(fileobj=raw, mode="w") as tar:
            add(tar)
        return lzma.compress(raw.getvalue())

    def control(tar):
        text = b"Package: insighttoolkit5-examples\nVersion: 9.9-fake\n"
        info = tarfile.TarInfo("./control")
        info.size = len(text)
        tar.addfile(info, io.BytesIO(text))

    members = {"debian-binary": b"2.0\n", "control.tar.xz": txz(control),
               "data.tar.xz": txz(lambda tar: tar.add(data_dir / "usr", arcname="./usr"))}
    out = io.BytesIO()
    out.write(b"!<arch>\n")
    for name, blob in members.items():
        out.write(f"{name:<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(blob):<10}`\n".encode())
        out.write(blob + (b"\n" if len(blob) % 2 else b""))
    path = tmp / "insighttoolkit5-examples_9.9-fake_all.deb"
    path.write_bytes(out.getvalue())
    return path


def test_fetch_itk_brain_from_deb(tmp_path, unpinned):
    folder = datasets.fetch("itk-brain-mr", cache=tmp_path / "cache", archive=_fake_deb(tmp_path))
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["source"]["version"] == "9.9-fake" and manifest["split"]["heldout"] == []
    samples = load_folder(folder / "train")
    assert len(samples) == 5 and samples[0].bit_depth == 8
    assert all(np.array_equal(s.mask.astype(bool), s.image > 0) for s in samples)
    assert samples[0].image.shape == (12, 16)  # coronal: rows S (head up), columns L
    assert [v["slices_with_foreground"] for v in manifest["volumes"]] == [3]
    listed = {d["name"]: d for d in datasets.list_datasets(tmp_path / "cache")}
    assert listed["itk-brain-mr"]["slices"] == {"itk-t1": 5} and listed["totalsegmentator"]["path"] is None


def test_download_uses_the_registry_clients(tmp_path, monkeypatch):
    calls = []

    def fake_run(cmd, cwd, **kw):
        calls.append(cmd)
        (Path(cwd) / "totalsegmentator-2.18.0.tar.gz").write_bytes(b"x")

        class R:
            returncode, stdout, stderr = 0, "", ""
        return R()

    monkeypatch.setattr(datasets.subprocess, "run", fake_run)
    path = datasets.download(datasets.DATASETS["totalsegmentator"], tmp_path)
    assert path.name == "totalsegmentator-2.18.0.tar.gz"
    assert calls[0][1:] == ["-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
                            "totalsegmentator==2.18.0", "-d", str(tmp_path)]
    assert datasets.download(datasets.DATASETS["totalsegmentator"], tmp_path) == path and len(calls) == 1  # cached
    monkeypatch.setenv(datasets.ENV_VAR, str(tmp_path / "env"))
    assert datasets.cache_root() == tmp_path / "env" and datasets.cache_root(tmp_path / "x") == tmp_path / "x"
