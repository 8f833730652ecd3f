"""Hostile bitstreams: bounded headers, an entropy decoder that cannot take the process down, a fuzz run,
and tiles (large images in bounded memory)."""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from fedcodec import rans_guard
from fedcodec.bitstream import DecodeLimits, Header, pack, unpack, unpack_tiles
from fedcodec.coding import decode_image, encode_image, model_id
from fedcodec.errors import BitstreamError

from conftest import make_tiny_codec

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def codec():
    return make_tiny_codec(0)


@pytest.fixture(scope="module")
def image8():
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[:150, :130]
    return np.clip(120 + 60 * np.sin(xx / 9.0) + 30 * np.cos(yy / 7.0) + rng.normal(0, 5, (150, 130)),
                   0, 255).astype(np.uint8)


def recrc(body: bytes) -> bytes:
    return body + struct.pack("<I", zlib.crc32(body))


def test_huge_header_fails_before_any_allocation(codec):
    header = Header(model_id(codec), 100000, 100000, 8, (0.0, 255.0), 0)
    data = pack(header, b"\x01" * 308)
    t0 = time.perf_counter()
    with pytest.raises(BitstreamError, match="100000x100000"):
        decode_image(codec, data)
    assert time.perf_counter() - t0 < 0.5
    # one flipped bit in the height varint (the 2,146,504-row header)
    with pytest.raises(BitstreamError, match="largest side"):
        unpack(pack(Header(b"abcd", 2146504, 64, 8, (0.0, 255.0), 0), b"zy"))
    # untiled images are limited more tightly than tiled ones (an untiled decode holds the whole image)
    with pytest.raises(BitstreamError, match="untiled"):
        unpack(pack(Header(b"abcd", 4096, 4096, 16, (0.0, 65535.0), 0), b"zy"))
    # the limit is configurable
    small = DecodeLimits(max_side=100, max_pixels=5000, max_untiled_pixels=5000)
    with pytest.raises(BitstreamError, match="5,000"):
        unpack(pack(Header(b"abcd", 99, 99, 8, (0.0, 255.0), 0), b"zy"), limits=small)


def test_header_fields_are_validated(codec):
    good = pack(Header(b"abcd", 64, 64, 8, (0.0, 255.0), 0), b"zzyy")
    # version 3 keeps the quality in the flags byte's high nibble: 15 is a valid container, not a valid codec
    quality = bytearray(good[:-4])
    quality[7] |= 0xF0
    assert unpack(recrc(bytes(quality)))[0].quality == 15
    with pytest.raises(BitstreamError, match="quality 15 is outside"):
        decode_image(codec, recrc(bytes(quality[:3]) + model_id(codec) + bytes(quality[7:])))
    # a version-2 header (6-byte id, its own flags byte) with an unknown flag
    legacy = b"FCd\x02" + b"abcdef" + bytes([0x80]) + bytes([64, 64, 0, 0, 2]) + b"zzyy"
    with pytest.raises(BitstreamError, match="flags"):
        unpack(recrc(legacy))
    assert unpack(recrc(legacy[:10] + b"\x00" + legacy[11:]))[0].version == 2
    nan_window = pack(Header(b"abcd", 64, 64, 16, (float("nan"), 1.0), 0), b"zzyy")
    with pytest.raises(BitstreamError, match="window"):
        unpack(nan_window)
    with pytest.raises(BitstreamError, match="empty"):
        unpack(recrc(good[:-8]))   # a header and no stream
    z_too_long = bytearray(legacy[:10] + b"\x00" + legacy[11:])
    z_too_long[15] = 0x7F          # the version-2 z length varint: now longer than what follows
    with pytest.raises(BitstreamError, match="truncated"):
        unpack(recrc(bytes(z_too_long)))


def test_garbage_payloads_are_bitstream_errors(codec, image8):
    """Random strings under a valid header (CRC recomputed) never decode and never raise anything else."""
    data = encode_image(codec, image8, 1).data
    header, (stream,) = unpack(data)
    head = data[:len(data) - 4 - len(stream)]
    rng = np.random.default_rng(0)
    for i in range(25):
        # odd draws keep the stream's first half (its state and the hyper-latent's words) and forge the rest
        kept = stream[:len(stream) // 2] if i % 2 else b""
        forged = recrc(head + kept + rng.bytes(int(rng.integers(1, 3 * len(stream)))))
        with pytest.raises(BitstreamError, match="payload is corrupt"):
            decode_image(codec, forged)
    # trailing bytes after a valid stream: the symbols decode, but the stream is not what was encoded
    with pytest.raises(BitstreamError, match="not what the encoder writes"):
        decode_image(codec, recrc(data[:-4] + b"\x00\x01"))
    # a valid stream read at another quality (the header's nibble changed, checksum recomputed): other tables
    other = bytearray(data[:-4])
    other[7] = (other[7] & 0x0F) | (2 << 4)
    with pytest.raises(BitstreamError, match="payload is corrupt"):
        decode_image(codec, recrc(bytes(other)))
    # the stream cut short: a part ends beyond the bytes present
    with pytest.raises(BitstreamError, match="payload is corrupt"):
        decode_image(codec, recrc(head + stream[:-4]))


def test_guarded_decode_is_exact(codec, image8):
    """The isolated decoder returns exactly what CompressAI's in-process decoder returns on valid input."""
    data = encode_image(codec, image8, 2).data
    header, (stream,) = unpack(data)
    shape = (-(-header.height // 64), -(-header.width // 64))
    with torch.no_grad():   # no guard here: CompressAI's decoder in this process
        ref = codec.decompress([[stream]], shape, header.quality)["x_hat"][0, 0, :150, :130].clamp(0, 1)
    dec, _ = decode_image(codec, data)
    expect = np.rint(ref.double().numpy() * 255).astype(np.uint8)
    assert np.array_equal(dec, expect)


#: A string that makes CompressAI's rANS decoder read far past its buffer: with a one-bin table every symbol is
#: a "bypass" symbol, and 0xFF bytes make the bypass length run through the whole string and beyond.
CRASHER = dict(string=b"\xff" * (1 << 20), indexes=[0] * 4, cdfs=[[0, 1 << 16]], cdf_sizes=[2], offsets=[0])


def test_compressai_decoder_really_crashes_on_the_crasher():
    """The reason for the isolation: in-process, this input kills the interpreter (SIGSEGV)."""
    code = ("from compressai import ans; d = ans.RansDecoder(); "
            "d.decode_with_indexes(b'\\xff' * (1 << 20), [0] * 4, [[0, 1 << 16]], [2], [0]); print('survived')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode < 0 and "survived" not in proc.stdout, (proc.returncode, proc.stdout)


def test_a_crashed_decoder_is_an_error_and_is_restarted(codec, image8):
    data = encode_image(codec, image8, 1).data
    before = rans_guard.stats["crashed"]
    with pytest.raises(BitstreamError, match="crashed the isolated entropy decoder: signal SIG"):
        rans_guard.decode_with_indexes(**CRASHER)
    assert rans_guard.stats["crashed"] == before + 1 and rans_guard._HELPER is None
    dec, _ = decode_image(codec, data)     # a fresh helper decodes the next stream
    assert dec.shape == image8.shape
    # a helper that died between calls is replaced before the request
    os.kill(rans_guard._HELPER.proc.pid, signal.SIGKILL)
    time.sleep(0.2)
    dec2, _ = decode_image(codec, data)
    assert np.array_equal(dec, dec2)


def test_a_hanging_decoder_times_out(monkeypatch):
    monkeypatch.setattr(rans_guard, "TIMEOUT_BASE_S", 0.5)
    rans_guard.ensure_started()
    helper = rans_guard._HELPER
    os.kill(helper.proc.pid, signal.SIGSTOP)       # a decoder that never answers
    try:
        t0 = time.perf_counter()
        with pytest.raises(BitstreamError, match="did not finish in time"):
            rans_guard.decode_with_indexes(b"\x00" * 16, [0, 0], [[0, 1 << 16]], [2], [0])
        assert time.perf_counter() - t0 < 5
        assert helper.proc.poll() is not None      # killed
    finally:
        if helper.proc.poll() is None:
            os.kill(helper.proc.pid, signal.SIGKILL)


def test_nan_reconstruction_is_a_bitstream_error(codec, image8, monkeypatch):
    data = encode_image(codec, image8, 1).data
    monkeypatch.setattr(codec, "synthesize", lambda y_hat: torch.full((1, 1, 192, 192), float("nan")))
    with pytest.raises(BitstreamError, match="NaN"):
        decode_image(codec, data)


def test_fuzz_forged_containers_in_subprocess(tmp_path, tiny_codec_path):
    """A few hundred forged containers (CRC recomputed), truncations and header edits, each decoded in a
    fork of a loaded process (scripts/fuzz_bitstreams.py): no crash, no hang, no other exception."""
    out = tmp_path / "fuzz.json"
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "fuzz_bitstreams.py"), "--model",
                           str(tiny_codec_path), "--n", "300", "--seed", "11", "--timeout", "60", "--json", str(out)],
                          capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["crashes"] == 0 and result["hangs"] == 0 and result["other_exceptions"] == 0
    assert sum(result["outcomes"].values()) == 300
    # everything but header edits that keep the stream valid (e.g. another window) is refused
    assert result["outcomes"].get("error", 0) >= 270
    for kind in ("payload", "bitflip", "truncate", "tiles"):
        assert result["by_kind"][kind].get("decoded", 0) == 0, result["by_kind"]


# ---------------------------------------------------------------------------------------------- tiles


def test_tiled_round_trip_16bit(codec):
    rng = np.random.default_rng(5)
    yy, xx = np.mgrid[:300, :200]
    img = np.clip(20000 + 9000 * np.sin(xx / 13.0) * np.cos(yy / 11.0) + rng.normal(0, 300, (300, 200)),
                  0, 65535).astype(np.uint16)
    enc = encode_image(codec, img, 3, window=(5000.0, 35000.0), tile=128)
    header, tiles = unpack_tiles(enc.data)
    assert header.tile == 128 and len(tiles) == 3 * 2 and header.bit_depth == 16
    dec, h2 = decode_image(codec, enc.data)
    assert h2 == header and dec.shape == img.shape and dec.dtype == np.uint16
    # each tile is exactly the decode of that tile coded alone
    for (top, left, th, tw), strings in zip(header.tile_boxes(), tiles):
        alone = encode_image(codec, img[top:top + th, left:left + tw], 3, window=(5000.0, 35000.0), tile=0)
        assert unpack(alone.data)[1] == strings
        assert np.array_equal(decode_image(codec, alone.data)[0], dec[top:top + th, left:left + tw])
    with pytest.raises(BitstreamError, match="tiled"):
        unpack(enc.data)    # untiled-only readers say so


def test_tiled_container_lengths_are_checked(codec):
    img = np.full((130, 70), 100, np.uint8)
    data = encode_image(codec, img, 0, tile=64).data
    header, tiles = unpack_tiles(data)
    assert len(tiles) == 3 * 2
    with pytest.raises(BitstreamError, match="unexpected bytes"):
        unpack_tiles(recrc(data[:-4] + b"\x00"))
    with pytest.raises(BitstreamError, match="truncated"):
        unpack_tiles(recrc(data[:-10]))


def _toy_table(i: int) -> tuple[list, list, list]:
    p = np.array([1 + i, 2, 3, 4], float)
    p /= p.sum()
    f = np.maximum(1, np.round(p * ((1 << 16) - 64))).astype(int)
    cdf = [0] + [int(v) for v in np.cumsum(f)]
    cdf.append(cdf[-1] + 1)
    cdf[-1] = 1 << 16
    return [cdf], [len(cdf)], [0]


def test_guard_keeps_decoding_after_many_tables():
    """The helper forgets its tables when it holds MAX_TABLES; the caller must re-send them afterwards
    (a valid stream with an early table failed once more than 8 table sets had been used in a process)."""
    from compressai import ans

    from fedcodec import rans_guard

    enc = ans.RansEncoder()
    streams = []
    for i in range(rans_guard.MAX_TABLES + 3):
        cdfs, sizes, offs = _toy_table(i)
        sym = [int(v) for v in np.random.default_rng(i).integers(0, 4, 200)]
        streams.append((enc.encode_with_indexes(sym, [0] * len(sym), cdfs, sizes, offs), sym, cdfs, sizes, offs))
    for _ in range(2):
        for s, sym, cdfs, sizes, offs in streams:
            assert rans_guard.decode_with_indexes(s, [0] * len(sym), cdfs, sizes, offs) == sym


def test_guarded_stream_reads_parts_in_turn_and_checks_the_whole():
    """One BufferedRansEncoder stream of two parts with different tables decodes part by part in the helper;
    a stream whose parts are read with other tables, or that is left half read, never passes; the
    helper keeps working after a stream was abandoned, and after its tables were cleared mid-stream."""
    from compressai import ans

    from fedcodec import rans_guard

    rng = np.random.default_rng(0)
    a, b = [int(v) for v in rng.integers(0, 4, 150)], [int(v) for v in rng.integers(-3, 9, 300)]  # b escapes
    enc = ans.BufferedRansEncoder()
    enc.encode_with_indexes(a, [0] * len(a), *_toy_table(0))
    enc.encode_with_indexes(b, [0] * len(b), *_toy_table(1))
    stream = enc.flush()

    def read(string, first_table=0, second_table=1, last=True):
        with rans_guard.GuardedStream(string) as reader:
            got_a = reader.decode([0] * len(a), *_toy_table(first_table))
            return got_a, reader.decode([0] * len(b), *_toy_table(second_table), last=last)

    assert read(stream) == (a, b)
    with pytest.raises(BitstreamError, match="not what the encoder writes"):
        read(stream, second_table=2)
    with pytest.raises(BitstreamError, match="payload is corrupt"):
        read(stream + b"\x00\x00\x00\x00")
    with rans_guard.GuardedStream(stream) as reader:   # abandoned after its first part
        reader.decode([0] * len(a), *_toy_table(0))
    assert read(stream) == (a, b)
    # more table sets than the helper keeps, between the two parts of one stream
    with rans_guard.GuardedStream(stream) as reader:
        assert reader.decode([0] * len(a), *_toy_table(0)) == a
        for i in range(3, 3 + rans_guard.MAX_TABLES + 1):
            cdfs, sizes, offs = _toy_table(i)
            sym = [1, 2, 3, 0] * 50   # (rANS's buffer holds a word per symbol: no tiny strings)
            alone = ans.RansEncoder().encode_with_indexes(sym, [0] * len(sym), cdfs, sizes, offs)
            assert rans_guard.decode_with_indexes(alone, [0] * len(sym), cdfs, sizes, offs) == sym
        assert reader.decode([0] * len(b), *_toy_table(1), last=True) == b
