"""Where the bits go: per-block rate and policy gain read back from real bitstreams."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import make_tiny_codec
from fedcodec.allocation import LATENT_STRIDE, bit_allocation
from fedcodec.cli import main
from fedcodec.coding import encode_image, image_to_tensor
from fedcodec.data import make_phantoms
from fedcodec.errors import DataError, ModelMismatchError
from fedcodec.model_io import load_codec


@pytest.fixture(scope="module")
def codec():
    return make_tiny_codec(0)


@pytest.fixture(scope="module")
def sample():
    s = make_phantoms(1, seed=11, size=128, hospital=1)[0]
    # A size that is no multiple of the codec's 64 or of the 16-pixel blocks: edge blocks are partly padding.
    return s.image[:100, :120].copy(), s.mask[:100, :120].copy()


def test_estimated_bits_match_the_written_latent_string():
    codec = load_codec(None)   # the embedded default: a trained model with realistic string lengths
    image = make_phantoms(1, seed=21, size=256, hospital=0)[0].image
    for q in (2, codec.num_qualities - 1):
        alloc = bit_allocation(codec, encode_image(codec, image, q).data)
        written = 8 * alloc.y_bytes
        assert alloc.bits.shape == (256 // LATENT_STRIDE, 256 // LATENT_STRIDE) and (alloc.bits >= 0).all()
        # rANS codes with quantised CDFs from a discretised scale table: a few percent either way
        assert abs(alloc.bits.sum() - written) <= 0.08 * written + 64, (q, alloc.bits.sum(), written)


def test_policy_gain_is_the_encoders(sample):
    codec = make_tiny_codec(0)
    with torch.no_grad():                                # a policy head that is not neutral (zero-init is)
        torch.manual_seed(3)
        codec.policy.out.weight.normal_(0, 0.3)
    image, _ = sample
    q = codec.num_qualities - 1
    alloc = bit_allocation(codec, encode_image(codec, image, q).data)
    x, _ = image_to_tensor(image, (0.0, 255.0))
    with torch.no_grad():
        gain = codec(x, q)["gain"]                        # channel gain x spatial policy gain, encoder side
    spatial = (gain / torch.exp(codec.log_gain[q])[None, :, None, None])[0, 0]
    gh, gw = alloc.policy_gain.shape
    assert (gh, gw) == (-(-100 // LATENT_STRIDE), -(-120 // LATENT_STRIDE))
    assert alloc.policy_gain.std() > 0.05
    np.testing.assert_allclose(alloc.policy_gain, spatial[:gh, :gw].detach().numpy(), rtol=1e-5)


def test_region_share_counts_real_pixels(codec, sample):
    image, mask = sample
    alloc = bit_allocation(codec, encode_image(codec, image, 1).data)
    assert alloc.block_area()[-1, -1] == (100 - 6 * 16) * (120 - 7 * 16)   # the bottom-right block: 4 x 8
    everything = alloc.region_share(np.ones_like(mask))
    assert everything["area_share"] == pytest.approx(1.0) and everything["bit_share"] == pytest.approx(1.0)
    nothing = alloc.region_share(np.zeros_like(mask))
    assert nothing["area_share"] == 0 and nothing["bit_share"] == 0 and nothing["density_ratio"] is None
    left = np.zeros_like(mask)
    left[:, :64] = 1                                     # exactly the first 4 block columns
    share = alloc.region_share(left)
    assert share["area_share"] == pytest.approx(64 / 120)
    assert share["bit_share"] == pytest.approx(alloc.bits[:, :4].sum() / alloc.bits.sum())
    vessels = alloc.region_share(mask)
    assert vessels["area_share"] == pytest.approx(mask.mean(), abs=1e-9)
    with pytest.raises(DataError, match="mask shape"):
        alloc.region_share(mask[:50])


def test_another_model_is_refused(codec, sample):
    data = encode_image(codec, sample[0], 1).data
    with pytest.raises(ModelMismatchError):
        bit_allocation(make_tiny_codec(1), data)


def test_cli_inspect(tmp_path, capsys, tiny_codec_path, sample):
    image, mask = sample
    Image.fromarray(image).save(tmp_path / "scan.png")
    Image.fromarray(mask * 255).save(tmp_path / "mask.png")
    assert main(["-q", "encode", "--model", str(tiny_codec_path), "--quality", "3", str(tmp_path / "scan.png"),
                 str(tmp_path / "scan.fcd")]) == 0
    argv = ["-q", "inspect", "--model", str(tiny_codec_path), "--mask", str(tmp_path / "mask.png"),
            str(tmp_path / "scan.fcd"), str(tmp_path / "bits.png")]
    assert main(argv) == 0
    out = capsys.readouterr().out
    report = json.loads((tmp_path / "bits.json").read_text())
    assert report["total_bytes"] == (tmp_path / "scan.fcd").stat().st_size and report["quality"] == 3
    from fedcodec.bitstream import unpack

    _, (stream,) = unpack((tmp_path / "scan.fcd").read_bytes())
    assert report["z_bytes"] + report["y_bytes"] == len(stream) and 0 < report["z_bytes"] < len(stream)
    assert report["header_bytes"] == report["total_bytes"] - len(stream) == 15
    assert f"header {report['header_bytes']} B, hyper-latent {report['z_bytes']} B" in out
    assert report["region"]["area_share"] == pytest.approx(mask.mean(), abs=1e-9)
    assert "of the latent bits" in out and (tmp_path / "bits.png").stat().st_size > 5000
    before = (tmp_path / "bits.json").read_bytes()
    assert main(argv) == 2                               # no silent overwrite
    assert "exists" in capsys.readouterr().err and (tmp_path / "bits.json").read_bytes() == before
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(tmp_path / "small_mask.png")
    assert main(["-q", "inspect", "--model", str(tiny_codec_path), "--mask", str(tmp_path / "small_mask.png"),
                 str(tmp_path / "scan.fcd"), str(tmp_path / "b2.png")]) == 2
    assert "differs from image shape" in capsys.readouterr().err and not (tmp_path / "b2.png").exists()
