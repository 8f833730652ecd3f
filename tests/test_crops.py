"""Mixed image sizes: random_crop_batch, padded_arrays, the CLI's --data (NIfTI pairs) and task-train."""

from __future__ import annotations

import numpy as np
import pytest

from fedcodec.data import (Sample, load_data, pad_to_min_size, padded_arrays, random_crop_batch, split_pair,
                           write_folder)
from fedcodec.errors import DataError


def _sample(name: str, h: int, w: int, seed: int = 0, depth: int = 8) -> Sample:
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 255 if depth == 8 else 4000, (h, w)).astype(np.uint8 if depth == 8 else np.uint16)
    mask = np.zeros((h, w), np.uint8)
    mask[h // 3: 2 * h // 3, w // 3: 2 * w // 3] = 1
    return Sample(image, mask, name, depth, (0.0, 255.0) if depth == 8 else (0.0, 4000.0))


def test_pad_reflects_image_and_zero_pads_mask():
    image = np.arange(12, dtype=np.float32).reshape(3, 4)
    mask = np.ones((3, 4), np.uint8)
    x, m = pad_to_min_size(image, mask, 7, 4)
    assert x.shape == (7, 4) and m.shape == (7, 4)
    assert np.array_equal(x[2:5], image)  # centred: 2 rows above, 2 below
    assert np.array_equal(x[1], image[1]) and np.array_equal(x[0], image[2])  # mirrored without the edge row
    assert m[:2].sum() == 0 and m[5:].sum() == 0 and m[2:5].all()  # padding never invents foreground
    big, _ = pad_to_min_size(np.zeros((2, 2)), None, 9, 9)  # pads larger than the image still work
    assert big.shape == (9, 9)
    edge, _ = pad_to_min_size(image, None, 3, 6, mode="replicate")
    assert np.array_equal(edge[:, 0], image[:, 0]) and np.array_equal(edge[:, -1], image[:, -1])
    with pytest.raises(DataError, match="pad mode"):
        pad_to_min_size(image, None, 5, 5, mode="wrap")


def test_random_crop_batch_mixes_sizes_and_is_seeded():
    samples = [_sample("small", 40, 300), _sample("big", 256, 256, 1), _sample("tiny", 20, 30, 2),
               _sample("deep", 200, 150, 3, depth=16)]
    x, m = random_crop_batch(samples, np.random.default_rng(5), batch=32, crop=128)
    assert x.shape == (32, 1, 128, 128) and x.dtype == np.float32 and m.shape == x.shape and m.dtype == np.uint8
    assert 0.0 <= x.min() and x.max() <= 1.0 and set(np.unique(m)) <= {0, 1}
    assert m.any() and not m.all()
    x2, m2 = random_crop_batch(samples, np.random.default_rng(5), batch=32, crop=128)
    assert np.array_equal(x, x2) and np.array_equal(m, m2)
    # Every crop of the tiny 20x30 sample holds all of it: its mask pixels (a 7x10 block) are all there.
    only_tiny = random_crop_batch([samples[2]], np.random.default_rng(0), batch=4, crop=64)[1]
    assert all(int(c.sum()) == int(samples[2].mask.sum()) for c in only_tiny)
    with pytest.raises(DataError, match="no mask"):
        random_crop_batch([Sample(np.zeros((8, 8), np.uint8), None, "u", 8, (0.0, 255.0))],
                          np.random.default_rng(0), 1, 8)


def test_padded_arrays_keeps_large_images_and_pads_small_ones():
    images, masks = padded_arrays([_sample("a", 300, 200), _sample("b", 50, 90, 1)], 128)
    assert [i.shape for i in images] == [(300, 200), (128, 128)] and [m.shape for m in masks] == [(300, 200),
                                                                                                 (128, 128)]
    assert masks[1].sum() == _sample("b", 50, 90, 1).mask.sum()


def test_adapt_tensors_from_mixed_sizes():
    from fedcodec.adapt import samples_to_tensors

    # adapt centre-crops every shot to the largest multiple of 64 that fits the smallest (padding below 64)
    x, m = samples_to_tensors([_sample("a", 40, 300), _sample("b", 256, 256, 1), _sample("c", 100, 90, 2)])
    assert tuple(x.shape) == (3, 1, 64, 64) and x.shape == m.shape
    assert all(int(m[i].sum()) > 0 for i in range(3)) and int(m.max()) == 1


def _nifti_pair(tmp_path):
    import nibabel as nib

    vol = np.random.default_rng(0).integers(0, 1000, (30, 20, 5)).astype(np.int16)
    lab = np.zeros(vol.shape, np.uint8)
    lab[5:10, 4:8, 1:4] = 3
    aff = np.diag([-2.0, 2.0, 3.0, 1.0])  # stored as L? no: x decreasing R->L means axis 0 runs to the left
    nib.save(nib.Nifti1Image(vol, aff), tmp_path / "ct+1.nii.gz")  # a '+' inside a file name still loads
    nib.save(nib.Nifti1Image(lab, aff), tmp_path / "seg.nii.gz")
    return vol, lab


def test_cli_data_nifti_pair_radiological(tmp_path):
    vol, lab = _nifti_pair(tmp_path)
    spec = f"{tmp_path / 'ct+1.nii.gz'}+{tmp_path / 'seg.nii.gz'}"
    assert split_pair(spec) == (tmp_path / "ct+1.nii.gz", tmp_path / "seg.nii.gz")
    assert split_pair(tmp_path / "ct+1.nii.gz") == (tmp_path / "ct+1.nii.gz", None)
    samples = load_data(spec)
    assert len(samples) == 5 and [s.name for s in samples][:2] == ["ct+1_z000", "ct+1_z001"]
    # affine diag(-2, 2, 3): axes run L, A, S; radiological = rows P (flip A), columns L (as stored).
    k = 2
    assert samples[k].image.shape == (20, 30)
    assert np.array_equal(samples[k].image.astype(np.int64), vol[:, ::-1, k].T.astype(np.int64) - vol.min())
    assert np.array_equal(samples[k].mask, (lab[:, ::-1, k].T != 0).astype(np.uint8))
    assert samples[0].mask.sum() == 0 and samples[1].mask.sum() == 20
    with pytest.raises(DataError, match=r"has no masks.*\+LABEL"):
        load_data(tmp_path / "ct+1.nii.gz")
    assert len(load_data(tmp_path / "ct+1.nii.gz", require_masks=False, limit=2)) == 2


@pytest.mark.timeout(300)
def test_task_train_cli_mixed_sizes(tmp_path):
    from fedcodec.cli import main

    samples = [_sample("a", 40, 300), _sample("b", 256, 200, 1), _sample("c", 90, 100, 2)]
    write_folder(samples, tmp_path / "data")
    assert main(["-q", "task-train", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "t.pt"),
                 "--steps", "2"]) == 0
    assert (tmp_path / "t.pt").is_file() and (tmp_path / "t.pt.json").is_file()
