"""The embedded default (shipped inside the package): loadable, small, and a real rate-task codec."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import assert_decoded_is_forward_output

from fedcodec.coding import decode_image, encode_image
from fedcodec.data import make_phantoms
from fedcodec.evaluate import evaluate_codec, uncompressed_dice
from fedcodec.model_io import DEFAULT_CODEC, DEFAULT_DIR, DEFAULT_TASK, load_codec, load_task, read_codec_file


@pytest.fixture(scope="module")
def default():
    return load_codec(), load_task()


def test_default_files_are_small_and_hold_what_they_record(default):
    assert DEFAULT_CODEC.stat().st_size + DEFAULT_TASK.stat().st_size < 10 * 2**20   # shipped in the package
    codec, _ = default
    meta = read_codec_file(DEFAULT_CODEC)["meta"]
    # the id recorded when the file was written is the id computed now: otherwise every bitstream written with
    # the default, and every federation made for its base, is refused as "made by another model"
    assert (meta["model_id"], meta["base_id"]) == (codec.identity_hash(), codec.identity_hash(["base"])), (
        "the embedded default's identity hash changed since it was saved (identity_hash follows the order of "
        "named_parameters, i.e. the order in which SemanticCodec registers its modules)")
    record = json.loads((DEFAULT_DIR / "pretrain.json").read_text())
    assert record["parameter_counts"] == meta["parameter_counts"] == codec.parameter_counts()


def test_default_is_a_semantic_rate_task_codec(default):
    codec, task = default
    counts = codec.parameter_counts()
    assert (counts["policy"] + counts["adapters"]) / counts["total"] <= 0.03
    assert codec.num_qualities >= 6
    held_out = make_phantoms(3, seed=12345, size=256, hospital=0)
    points = evaluate_codec(codec, task, held_out, qualities=[0, codec.num_qualities // 2, codec.num_qualities - 1])
    bpp = [p["bpp"] for p in points]
    dice = [p["dice"] for p in points]
    assert bpp[0] < bpp[1] < bpp[2]
    assert bpp[0] < 0.1  # the low rates these papers target
    assert dice[2] > dice[0] and dice[2] > 0.6
    assert uncompressed_dice(task, held_out) > 0.8


def test_default_real_bits_match_the_entropy_model(default):
    codec, _ = default
    x = torch.from_numpy(make_phantoms(1, seed=7, size=256)[0].image.astype(np.float32) / 255)[None, None]
    for q in (0, codec.num_qualities - 1):
        with torch.no_grad():
            out = codec(x, q)
        est = float(sum(-torch.log2(lk).sum() for lk in out["likelihoods"].values()))
        enc = codec.compress(x, q)
        real = 8 * len(enc["strings"][0][0])   # one stream: hyper-latent and latent
        assert abs(real - est) < 0.05 * est + 64, (q, real, est)


def test_default_round_trip_512(default):
    codec, _ = default
    image = make_phantoms(1, seed=3, size=512, hospital=4)[0]
    enc = encode_image(codec, image.image, 3, image.window)
    dec, header = decode_image(codec, enc.data)
    assert header.bit_depth == image.bit_depth and header.window == tuple(image.window)
    assert_decoded_is_forward_output(codec, image.image, dec, 3, window=image.window)
