"""The codec: real entropy-coded round trips, parameter groups, the container."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
import torch

from conftest import assert_decoded_is_forward_output, make_tiny_codec
from fedcodec.allocation import stream_code_length
from fedcodec.bitstream import DecodeLimits, Header, pack, unpack
from fedcodec.codec import SemanticCodec, coder_tables, group_of, pad_to_multiple
from fedcodec.coding import decode_image, encode_image, model_id
from fedcodec.data import make_phantoms
from fedcodec.errors import BitstreamError, DataError, ModelMismatchError, UpdateRejectedError


@pytest.fixture(scope="module")
def codec():
    return make_tiny_codec(0)


@pytest.fixture(scope="module")
def phantom():
    return make_phantoms(1, seed=3, size=128, hospital=0)[0]


def test_decoded_equals_quantized_forward(codec, phantom):
    x = torch.from_numpy(phantom.image.astype(np.float32) / 255)[None, None]
    for q in range(codec.num_qualities):
        enc = codec.compress(x, q)
        dec = codec.decompress(enc["strings"], enc["shape"], q)["x_hat"]
        with torch.no_grad():
            fwd = codec(x, q)["x_hat"]
        assert torch.allclose(dec, fwd, atol=1e-4), f"quality {q}: max diff {(dec - fwd).abs().max()}"


def test_bpp_falls_with_quality(codec, phantom):
    sizes = [len(encode_image(codec, phantom.image, q).data) for q in range(codec.num_qualities)]
    assert all(a <= b for a, b in zip(sizes, sizes[1:])), sizes
    assert sizes[0] < sizes[-1]


def test_encode_decode_odd_size_and_16bit(codec):
    rng = np.random.default_rng(0)
    img16 = (rng.random((100, 150)) * 4000 + 1000).astype(np.uint16)
    enc = encode_image(codec, img16, 2, window=(1000.0, 5000.0))
    dec, header = decode_image(codec, enc.data)
    assert dec.shape == (100, 150) and dec.dtype == np.uint16
    assert header.window == (1000.0, 5000.0) and header.bit_depth == 16
    assert enc.bpp == pytest.approx(8 * len(enc.data) / (100 * 150))
    assert dec.min() >= 1000 and dec.max() <= 5000
    assert_decoded_is_forward_output(codec, img16, dec, 2, window=(1000.0, 5000.0))


def test_policy_map_changes_the_bitstream_and_the_decoder_rebuilds_it(phantom):
    codec = make_tiny_codec(0)
    x = torch.from_numpy(phantom.image.astype(np.float32) / 255)[None, None]
    before = encode_image(codec, phantom.image, 1).data
    with torch.no_grad():
        gain_before = codec(x, 1)["gain"]
        codec.policy.out.bias.fill_(0.5)  # a uniform larger gain: finer quantisation
    codec.update(force=True)
    after = encode_image(codec, phantom.image, 1).data
    assert len(after) > len(before)
    # the decoder rebuilds the encoder's (new) gain map from z_hat alone: no side information
    enc = codec.compress(x, 1)
    decoder_gain = codec.decode_latents(enc["strings"], enc["shape"], 1)["gain"]
    with torch.no_grad():
        encoder_gain = codec(x, 1)["gain"]
    assert torch.allclose(decoder_gain.to(encoder_gain.dtype), encoder_gain, rtol=1e-5, atol=1e-6)
    assert (encoder_gain > gain_before * 1.1).all()   # and it is the changed map, not the old one
    dec, _ = decode_image(codec, after)
    assert_decoded_is_forward_output(codec, phantom.image, dec, 1)


def test_groups_and_adaptable_fraction():
    codec = SemanticCodec()  # the default architecture
    counts = codec.parameter_counts()
    fraction = (counts["policy"] + counts["adapters"]) / counts["total"]
    assert 0 < fraction <= 0.03
    assert group_of("policy.inp.weight") == "policy"
    assert group_of("adapters.0.up.weight") == "adapters" and group_of("feature_head.out.bias") == "adapters"
    assert group_of("g_a.0.weight") == "base" and group_of("log_gain") == "base"
    subset = codec.group_state_dict()
    assert subset and all(group_of(k) in ("policy", "adapters") for k in subset)
    assert all(v.is_floating_point() for v in subset.values())


def test_load_group_state_dict_validates(codec):
    good = codec.group_state_dict(["policy"])
    key = next(iter(good))
    bad_nan = {**good, key: torch.full_like(good[key], float("nan"))}
    bad_shape = {**good, key: torch.zeros(3, 3)}
    bad_dtype = {**good, key: good[key].to(torch.int64)}
    missing = {k: v for k, v in good.items() if k != key}
    extra = {**good, "g_a.0.weight": torch.zeros(1)}
    snapshot = codec.identity_hash()
    for bad, word in [(bad_nan, "NaN"), (bad_shape, "shape"), (bad_dtype, "dtype"), (missing, "missing"),
                      (extra, "unexpected")]:
        with pytest.raises(UpdateRejectedError, match=word):
            codec.load_group_state_dict(bad, ["policy"])
    assert codec.identity_hash() == snapshot  # nothing was half-loaded


def test_identity_hash_tracks_groups():
    codec = make_tiny_codec(0)
    base, full = codec.identity_hash(["base"]), codec.identity_hash()
    with torch.no_grad():
        codec.adapters[0].up.weight.add_(0.1)
    assert codec.identity_hash(["base"]) == base
    assert codec.identity_hash() != full


def test_identity_hash_cache_follows_every_kind_of_parameter_change(phantom):
    """The hash and the float64 hyper-synthesis are cached per parameter version: an optimiser step, a loaded
    state or replaced tensors must each give the uncached value, never a stale one."""
    codec = make_tiny_codec(0)
    first = codec.identity_hash()
    assert codec.identity_hash() == first == codec._identity_hash(("base", "policy", "adapters"))
    other = make_tiny_codec(1)
    codec.load_state_dict(other.state_dict())                    # in place (copy_)
    assert codec.identity_hash() == other.identity_hash() != first
    bias = codec.policy.out.bias
    bias.grad = torch.ones_like(bias)
    torch.optim.SGD([bias], lr=0.1).step()                       # an optimiser step
    stepped = codec.identity_hash()
    assert stepped != other.identity_hash() and stepped == codec._identity_hash(("base", "policy", "adapters"))
    bias.data = torch.zeros_like(bias) + 0.5                     # a replaced tensor
    replaced = codec.identity_hash()
    assert replaced == codec._identity_hash(("base", "policy", "adapters")) != stepped
    bias.data.mul_(3.0)            # in place through .data: no version counter moves, update() must follow
    codec.update(force=True)
    assert codec.identity_hash() == codec._identity_hash(("base", "policy", "adapters")) != replaced
    # the encoder's float64 copies follow too: a stream written after the change decodes on a fresh codec
    fresh = make_tiny_codec(1)
    fresh.load_state_dict(codec.state_dict())
    codec.update(force=True)
    fresh.update(force=True)
    image = phantom.image
    encode_image(codec, image, 3)                                # fills the caches
    with torch.no_grad():
        codec.h_s[0].weight.mul_(1.1)
        fresh.h_s[0].weight.mul_(1.1)
    codec.update(force=True)
    fresh.update(force=True)
    data = encode_image(codec, image, 3).data
    assert np.array_equal(decode_image(fresh, data)[0], decode_image(codec, data)[0])
    assert data == encode_image(fresh, image, 3).data


def test_build_indexes_matches_compressai():
    """The one-pass table search picks exactly CompressAI's index, table entries and their neighbours included."""
    from compressai.entropy_models import GaussianConditional as Reference

    codec = make_tiny_codec(0)
    ours = codec.gaussian_conditional
    ref = Reference(ours.scale_table.tolist())
    table = ours.scale_table.double()
    assert table.numel() == 64
    edges = torch.cat([table, torch.nextafter(table, table + 1), torch.nextafter(table, table - 1)])
    for dtype in (torch.float32, torch.float64):
        scales = torch.cat([edges.to(dtype), torch.rand(4096, dtype=dtype) * 80, torch.rand(64, dtype=dtype) * 0.1])
        scales = scales.reshape(1, -1, 1, 1)
        assert torch.equal(ours.build_indexes(scales), ref.build_indexes(scales))


def test_compress_writes_compressais_strings_and_follows_table_updates(phantom):
    """The trimmed, cached coder tables give CompressAI's own strings, before and after the tables change."""
    from compressai.entropy_models.entropy_models import EntropyModel

    codec = make_tiny_codec(0)
    gc = codec.gaussian_conditional
    torch.manual_seed(0)
    for new_tables in (False, True):
        if new_tables:   # a coarser scale table: the cache must not serve the old tables
            gc.update_scale_table(torch.exp(torch.linspace(np.log(0.11), np.log(256.0), 40)).tolist(), force=True)
        scales = torch.rand(2, 8, 16, 16, dtype=torch.float64) * 30
        values = torch.randn(2, 8, 16, 16, dtype=torch.float64) * scales
        indexes = gc.build_indexes(scales)
        ours = gc.compress(values, indexes)
        assert ours == EntropyModel.compress(gc, values, indexes)
        assert len(coder_tables(gc)[0]) == len(gc._quantized_cdf)


def test_one_stream_holds_compressais_two_strings_symbols(phantom):
    """compress writes one stream: the hyper-latent's symbols (CompressAI's EntropyBottleneck, same tables) and
    then the latent's; the decoder reads back exactly the symbols CompressAI's two strings held, in about 7
    bytes fewer; the hyper-latent's code length in the stream (stream_code_length) is within the flush of its
    string coded alone."""
    from compressai import ans

    codec = make_tiny_codec(0)
    x = torch.from_numpy(phantom.image.astype(np.float32) / 255)[None, None]
    for q in (0, codec.num_qualities - 1):
        enc = codec.compress(x, q)
        lat = codec.decode_latents(enc["strings"], enc["shape"], q)
        eb = codec.entropy_bottleneck
        z_alone = eb.compress(lat["z_symbols"].float() + codec._z_medians())[0]   # CompressAI, one string
        y_alone = ans.RansEncoder().encode_with_indexes(
            lat["symbols"].reshape(-1).int().tolist(),
            codec.gaussian_conditional.build_indexes(lat["scales"] * lat["gain"]).reshape(-1).int().tolist(),
            *coder_tables(codec.gaussian_conditional))
        legacy = codec.decode_latents([[y_alone], [z_alone]], enc["shape"], q)
        assert all(torch.equal(legacy[k], lat[k]) for k in ("symbols", "z_symbols", "gain"))
        assert len(enc["strings"][0][0]) <= len(z_alone) + len(y_alone) - 4
        z_bits = stream_code_length(eb, lat["z_symbols"])
        assert 8 * len(z_alone) - 96 <= z_bits <= 8 * len(z_alone)


def test_input_checks(codec):
    with pytest.raises(DataError, match="multiples of 64"):
        codec(torch.zeros(1, 1, 100, 64), 0)
    with pytest.raises(DataError, match="NaN"):
        codec(torch.full((1, 1, 64, 64), float("nan")), 0)
    with pytest.raises(DataError, match="quality"):
        codec(torch.zeros(1, 1, 64, 64), 99)
    with pytest.raises(DataError, match="uint8 or uint16"):
        encode_image(codec, np.zeros((64, 64), np.float32), 0)
    with pytest.raises(DataError, match="2-D"):
        encode_image(codec, np.zeros((2, 64, 64), np.uint8), 0)
    x, size = pad_to_multiple(torch.zeros(1, 1, 70, 130))
    assert x.shape[-2:] == (128, 192) and size == (70, 130)


# ------------------------------------------------------------------ container
def _header(**kw):
    base = dict(model_id=b"abcd", height=300, width=200, bit_depth=8, window=(0.0, 255.0), quality=3)
    return Header(**{**base, **kw})


def test_container_round_trip_and_size():
    data = pack(_header(), b"stream")
    header, strings = unpack(data)
    assert strings == (b"stream",) and header == _header()
    assert len(data) - 6 == 15  # header + checksum of an 8-bit image with sides up to 4096 (format version 3)
    h16 = _header(bit_depth=16, window=(-1024.0, 3071.0))
    assert unpack(pack(h16, b"s"))[0] == h16


@pytest.mark.parametrize("height,width", [(1, 1), (4096, 4096), (4096, 1), (4097, 16), (16, 5000), (70000, 3)])
def test_container_sides_and_qualities(height, width):
    """Sides up to 4096 go in the 3-byte field, longer ones in varints; every quality 0-15 survives."""
    for quality in (0, 7, 15):
        h = _header(height=height, width=width, quality=quality)
        back = unpack(pack(h, b"s"), limits=DecodeLimits(max_side=1 << 20, max_pixels=1 << 40,
                                                                max_untiled_pixels=1 << 40))[0]
        assert back == h
    data = pack(_header(height=height, width=width), b"s")
    assert bool(data[7] & 0x08) == (max(height, width) > 4096)   # the varint-sides flag
    if max(height, width) <= 4096:
        assert len(data) == 1 + 15


def test_container_refuses_what_it_cannot_hold():
    with pytest.raises(ValueError, match="quality 16"):
        pack(_header(quality=16), b"s")
    with pytest.raises(ValueError, match="side-information"):
        pack(_header(side_info=b"x"), b"s")
    with pytest.raises(ValueError, match="model id"):
        pack(_header(model_id=b"abcdef"), b"s")   # a version-2 length
    with pytest.raises(ValueError, match="non-empty"):
        pack(_header(), b"")


def test_container_errors():
    data = pack(_header(), b"zzyyyy")
    with pytest.raises(BitstreamError, match="magic"):
        unpack(b"\x89PNG\r\n\x1a\n" + data)
    with pytest.raises(BitstreamError, match="truncated|checksum"):
        unpack(data[:-3])
    with pytest.raises(BitstreamError, match="truncated"):
        unpack(data[:12])
    corrupt = bytearray(data)
    corrupt[-6] ^= 0xFF
    with pytest.raises(BitstreamError, match="checksum"):
        unpack(bytes(corrupt))
    version = bytearray(data)
    version[2] = 9
    with pytest.raises(BitstreamError, match="version 9"):
        unpack(bytes(version))
    # a version-3 body behind the version-1/2 magic (or the reverse) is no stream fedcodec wrote
    with pytest.raises(BitstreamError, match="version 3"):
        unpack(b"FCd" + data[2:])
    with pytest.raises(ModelMismatchError, match="model"):
        unpack(data, expected_model_id=b"zzzzzz")
    assert unpack(data, expected_model_id=b"abcd" + bytes(28))[0].model_id == b"abcd"  # compared on 4 bytes


def test_bitstream_from_another_model(codec, phantom):
    other = make_tiny_codec(1)
    data = encode_image(other, phantom.image, 1).data
    assert model_id(other) != model_id(codec)
    with pytest.raises(ModelMismatchError):
        decode_image(codec, data)


def test_hyper_latent_gains_round_trip_and_cut_side_information(phantom):
    from conftest import TINY_CODEC

    torch.manual_seed(0)
    codec = SemanticCodec(**TINY_CODEC, z_gain=True)
    with torch.no_grad():
        codec.g_a[-1].weight.mul_(30)
        codec.h_a[-1].weight.mul_(1000)    # hyper-latents far outside the untrained prior: costly escape codes
        codec.log_z_gain[0].fill_(np.log(0.01))  # quality 0: the hyper-latent at 1 % of its precision
    codec.update(force=True)
    codec.eval()
    x = torch.from_numpy(phantom.image.astype(np.float32) / 255)[None, None]
    z_bytes = {}
    for q in (0, codec.num_qualities - 1):
        enc = codec.compress(x, q)
        dec = codec.decompress(enc["strings"], enc["shape"], q)["x_hat"]
        with torch.no_grad():
            fwd = codec(x, q)["x_hat"]
        assert torch.allclose(dec, fwd, atol=1e-4), f"quality {q}: max diff {(dec - fwd).abs().max()}"
        z_bytes[q] = stream_code_length(codec.entropy_bottleneck,
                                        codec.decode_latents(enc["strings"], enc["shape"], q)["z_symbols"]) / 8
    assert z_bytes[0] < z_bytes[codec.num_qualities - 1], z_bytes
    assert "log_z_gain" in codec.state_dict() and codec.config["z_gain"] is True
    assert group_of("log_z_gain") == "base"
    assert "log_z_gain" not in make_tiny_codec(0).state_dict()   # off by default: older codec files load unchanged
