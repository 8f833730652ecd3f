"""The fedcodec bitstream container: a small header around CompressAI's entropy-coded strings.

Layout of format version 3, the one written (little-endian; ``varint`` = unsigned LEB128):

| field | size | meaning |
| --- | --- | --- |
| magic | 2 | ``b"Fc"`` |
| format version | 1 | :data:`FORMAT_VERSION` (3) |
| model id | 4 | first 4 bytes of the codec's identity hash (all parameter groups) |
| flags, quality | 1 | low nibble: bit 0 16-bit image, bit 1 explicit window follows, bit 2 tiled, bit 3 sides as varints; high nibble: quality index (0-15) |
| height, width | 3, or varint each | ``height - 1`` and ``width - 1`` as two 12-bit numbers (low 12 bits first) when both sides are at most 4096; else (flag bit 3) two varints |
| window | 0 or 8 | ``float32 lo, hi`` when flag bit 1 is set (else 0..255 or 0..65535) |
| stream | rest | one rANS stream: the hyper-latent's symbols, then the latent's (:meth:`fedcodec.codec.SemanticCodec.compress`), up to the checksum |
| checksum | 4 | CRC-32 of everything before it |

A tiled container (flag bit 2, written for images larger than one tile so that encoding and decoding need
memory for one tile only) has, after the window, a varint tile size ``T`` (a multiple of 64) and then, for
each ``T x T`` tile in row-major order (the last row and column may be smaller), ``varint length, stream``,
and then the checksum (nothing may follow the last tile).

A 256x256 8-bit image costs 15 container bytes (0.0018 bpp); bpp is always counted on the whole container.
Why so few: at the lowest quality a whole 256x256 file is 80-125 bytes, so every byte is about 1 % of it.
Version 3 carries version 2's content in 7 fewer container bytes (a 2-byte magic, a 4-byte model id: it tells
models apart, it is not a security check, one accidental match in 4 billion; the quality in the flags byte;
both sides in 3 bytes; no reserved side-information field, which was always empty; no length field between
two strings) and one entropy-coded stream instead of two (one coder flush instead of two: about 6 bytes).

Earlier versions are still read (they start ``b"FCd"``, then the version byte): version 2 has a 6-byte model
id, separate flags and quality bytes, varint sides, a varint-prefixed side-information field after the
quality, and then ``varint z length, z string, y string`` (two strings: CompressAI's ``EntropyBottleneck`` and
``GaussianConditional``, each with its own coder; tiles ``varint z length, z string, varint y length, y
string``); version 1 is laid out as version 2 but its entropy coder's tables were chosen in float32 (decoded
the same way they were written); from version 2 on they are chosen from float64 decoder-side values
(portable between thread counts, batches and devices; :meth:`fedcodec.codec.SemanticCodec.gains`).

Decoding checks the image size in the header against :class:`DecodeLimits` before anything is allocated
(a forged 100000x100000 header fails in microseconds), and every length field against the bytes present.
"""

from __future__ import annotations

import math
import os
import struct
import zlib
from dataclasses import dataclass, field

from fedcodec.data.windowing import default_window
from fedcodec.errors import BitstreamError, ModelMismatchError

MAGIC = b"Fc"
FORMAT_VERSION = 3
#: Magic of versions 1 and 2 (``b"FCd"`` and then the version byte).
LEGACY_MAGIC = b"FCd"
#: Versions this fedcodec decodes: 1 (float32 table selection, before portable coding), 2 and 3 (compact header).
READ_VERSIONS = (1, 2, 3)
MODEL_ID_BYTES = 4
LEGACY_MODEL_ID_BYTES = 6
_FLAG_16BIT = 1
_FLAG_WINDOW = 2
_FLAG_TILED = 4
_FLAG_VARINT_SIZE = 8  # version 3 only
_KNOWN_FLAGS = _FLAG_16BIT | _FLAG_WINDOW | _FLAG_TILED
#: Largest quality index (version 3 keeps it in four bits) and largest side written in the 3-byte size field.
MAX_QUALITY, PACKED_SIDE = 15, 4096
#: Tile sizes a container may declare (multiples of the codec's padding multiple, 64).
TILE_MULTIPLE, MIN_TILE, MAX_TILE = 64, 64, 4096


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    try:
        return int(value) if value else default
    except ValueError:
        return default


@dataclass(frozen=True)
class DecodeLimits:
    """Largest image a bitstream may declare; checked from the header before anything is allocated.

    Defaults (overridable with the environment variables ``FEDCODEC_MAX_IMAGE_SIDE``,
    ``FEDCODEC_MAX_IMAGE_PIXELS``, ``FEDCODEC_MAX_UNTILED_PIXELS``): sides up to 32768, 2**27 pixels
    (134 M, e.g. 11585x11585; the decoded 16-bit image alone is 256 MiB), and untiled containers up to
    2048x2048 (an untiled decode holds the whole image's feature maps; larger images are written tiled).
    """

    max_side: int = field(default_factory=lambda: _env_int("FEDCODEC_MAX_IMAGE_SIDE", 32768))
    max_pixels: int = field(default_factory=lambda: _env_int("FEDCODEC_MAX_IMAGE_PIXELS", 1 << 27))
    max_untiled_pixels: int = field(default_factory=lambda: _env_int("FEDCODEC_MAX_UNTILED_PIXELS", 2048 * 2048))

    def check(self, height: int, width: int, tile: int = 0) -> None:
        """Raise :class:`BitstreamError` when a header's size is outside these limits."""
        if height > self.max_side or width > self.max_side:
            raise BitstreamError(f"bitstream declares a {width}x{height} image; the largest side this decoder "
                                 f"accepts is {self.max_side} (FEDCODEC_MAX_IMAGE_SIDE)")
        if height * width > self.max_pixels:
            raise BitstreamError(f"bitstream declares a {width}x{height} image ({height * width:,} pixels); this "
                                 f"decoder accepts at most {self.max_pixels:,} (FEDCODEC_MAX_IMAGE_PIXELS)")
        if not tile and height * width > self.max_untiled_pixels:
            raise BitstreamError(f"bitstream declares an untiled {width}x{height} image; untiled images are "
                                 f"limited to {self.max_untiled_pixels:,} pixels (FEDCODEC_MAX_UNTILED_PIXELS)")


@dataclass(frozen=True)
class Header:
    """Everything the decoder needs besides the entropy-coded strings."""

    model_id: bytes
    height: int
    width: int
    bit_depth: int
    window: tuple[float, float]
    quality: int
    side_info: bytes = b""  # versions 1-2 only (a reserved field, always empty); version 3 has none
    tile: int = 0       # 0 = one untiled image, else the tile side (tiles coded independently)
    version: int = FORMAT_VERSION  # container version read (writing always uses FORMAT_VERSION)

    @property
    def portable(self) -> bool:
        """Whether the tables were chosen from float64 decoder-side values (version >= 2)."""
        return self.version >= 2

    @property
    def tile_grid(self) -> tuple[int, int]:
        """Rows and columns of tiles (1, 1 for an untiled image)."""
        if not self.tile:
            return 1, 1
        return -(-self.height // self.tile), -(-self.width // self.tile)

    def tile_boxes(self) -> list[tuple[int, int, int, int]]:
        """``(top, left, height, width)`` of every tile in coding order."""
        if not self.tile:
            return [(0, 0, self.height, self.width)]
        t = self.tile
        return [(r, c, min(t, self.height - r), min(t, self.width - c))
                for r in range(0, self.height, t) for c in range(0, self.width, t)]


def _varint(n: int) -> bytes:
    if n < 0:
        raise ValueError("varint must be non-negative")
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


class _Reader:
    def __init__(self, data: bytes, end: int) -> None:
        self.data, self.pos, self.end = data, 0, end

    def take(self, n: int, what: str) -> bytes:
        if self.pos + n > self.end:
            raise BitstreamError(f"bitstream is truncated (while reading {what})")
        chunk = self.data[self.pos:self.pos + n]
        self.pos += n
        return chunk

    def varint(self, what: str) -> int:
        value = shift = 0
        while True:
            byte = self.take(1, what)[0]
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return value
            shift += 7
            if shift > 35:
                raise BitstreamError(f"bitstream is corrupt (bad length field for {what})")


def pack(header: Header, stream: bytes) -> bytes:
    """Serialise a header and the two strings into one (untiled) container."""
    if header.tile:
        raise ValueError("a tiled header needs pack_tiles")
    return _pack(header, [stream])


def pack_tiles(header: Header, tiles: list[bytes]) -> bytes:
    """Serialise a tiled header and one entropy-coded stream per tile (see :meth:`Header.tile_boxes`)."""
    if not header.tile:
        raise ValueError("pack_tiles needs a header with a tile size")
    if header.tile % TILE_MULTIPLE or not MIN_TILE <= header.tile <= MAX_TILE:
        raise ValueError(f"tile size must be a multiple of {TILE_MULTIPLE} in {MIN_TILE}..{MAX_TILE}")
    if len(tiles) != len(header.tile_boxes()):
        raise ValueError(f"{len(tiles)} tiles given, the header's grid has {len(header.tile_boxes())}")
    return _pack(header, tiles)


def _pack(header: Header, tiles: list[bytes]) -> bytes:
    if not all(isinstance(t, (bytes, bytearray)) and t for t in tiles):
        raise ValueError("every tile needs a non-empty entropy-coded stream (bytes)")
    if len(header.model_id) != MODEL_ID_BYTES:
        raise ValueError(f"model id must be {MODEL_ID_BYTES} bytes")
    if header.bit_depth not in (8, 16):
        raise ValueError(f"bit depth must be 8 or 16, got {header.bit_depth}")
    if not 0 <= header.quality <= MAX_QUALITY:
        raise ValueError(f"quality {header.quality} does not fit the container (0..{MAX_QUALITY})")
    if header.side_info:
        raise ValueError(f"format version {FORMAT_VERSION} has no side-information field")
    if header.height < 1 or header.width < 1:
        raise ValueError(f"image size must be positive, got {header.width}x{header.height}")
    explicit_window = tuple(header.window) != default_window(header.bit_depth)
    packed_size = header.height <= PACKED_SIDE and header.width <= PACKED_SIDE
    flags = ((_FLAG_16BIT if header.bit_depth == 16 else 0) | (_FLAG_WINDOW if explicit_window else 0)
             | (_FLAG_TILED if header.tile else 0) | (0 if packed_size else _FLAG_VARINT_SIZE))
    parts = [MAGIC, bytes([FORMAT_VERSION]), header.model_id, bytes([flags | header.quality << 4])]
    if packed_size:
        parts.append(((header.height - 1) | (header.width - 1) << 12).to_bytes(3, "little"))
    else:
        parts += [_varint(header.height), _varint(header.width)]
    if explicit_window:
        parts.append(struct.pack("<ff", *header.window))
    if header.tile:
        parts.append(_varint(header.tile))
        for stream in tiles:
            parts += [_varint(len(stream)), bytes(stream)]
    else:
        parts.append(bytes(tiles[0]))
    body = b"".join(parts)
    return body + struct.pack("<I", zlib.crc32(body))


def _same_model(stream_id: bytes, expected: bytes) -> bool:
    """Whether a header's model id (4 bytes, or 6 in versions 1-2) names the model ``expected`` (any prefix of
    its identity hash of at least 4 bytes, e.g. the full hash): compared on the shorter of the two."""
    n = min(len(stream_id), len(expected))
    return n >= MODEL_ID_BYTES and stream_id[:n] == expected[:n]


def unpack(data: bytes, expected_model_id: bytes | None = None,
           limits: DecodeLimits | None = None) -> tuple[Header, tuple[bytes, ...]]:
    """Parse an untiled container; returns ``(header, strings)``, ``strings`` in the order
    :meth:`fedcodec.codec.SemanticCodec.decompress` takes them: ``(stream,)`` (version 3) or ``(y_string,
    z_string)`` (versions 1-2).

    Raises :class:`BitstreamError` for anything that is not an intact fedcodec bitstream of a supported
    version (or that declares an image beyond ``limits``, or is tiled: use :func:`unpack_tiles`), and
    :class:`ModelMismatchError` when ``expected_model_id`` is given and differs.
    """
    header, tiles = unpack_tiles(data, expected_model_id, limits)
    if header.tile:
        raise BitstreamError(f"bitstream is tiled ({len(tiles)} tiles of {header.tile}x{header.tile}); this "
                             "operation reads untiled bitstreams only")
    return header, tiles[0]


def unpack_tiles(data: bytes, expected_model_id: bytes | None = None,
                 limits: DecodeLimits | None = None) -> tuple[Header, list[tuple[bytes, ...]]]:
    """Parse any container; returns the header and the strings of each tile (one tile if untiled), as
    :func:`unpack` returns them.

    Checks, in this order and before anything sized by the header is allocated: magic, version, checksum,
    every field and length against the bytes present, the image size against ``limits`` (default
    :class:`DecodeLimits`), the tile size and count, and the model id.
    """
    limits = limits or DecodeLimits()
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise BitstreamError(f"expected bytes, got {type(data).__name__}")
    data = bytes(data)
    if data[:len(LEGACY_MAGIC)] == LEGACY_MAGIC:
        version_at = len(LEGACY_MAGIC)
    elif data[:len(MAGIC)] == MAGIC:
        version_at = len(MAGIC)
    else:
        raise BitstreamError("not a fedcodec bitstream (bad magic bytes)")
    if len(data) < version_at + 1 + 4:
        raise BitstreamError("bitstream is truncated (shorter than the smallest header)")
    version = data[version_at]
    # Each magic goes with its own versions: a legacy magic with version 3 (or the reverse) is no stream we wrote.
    if version not in READ_VERSIONS or (version >= 3) != (version_at == len(MAGIC)):
        raise BitstreamError(f"unsupported bitstream format version {version} "
                             f"(this fedcodec reads versions {', '.join(map(str, READ_VERSIONS))})")
    body, (crc,) = data[:-4], struct.unpack("<I", data[-4:])
    if zlib.crc32(body) != crc:
        raise BitstreamError("bitstream is corrupt or truncated (checksum mismatch)")
    reader = _Reader(body, len(body))
    reader.take(version_at + 1, "magic")
    legacy = version < 3
    model_id = reader.take(LEGACY_MODEL_ID_BYTES if legacy else MODEL_ID_BYTES, "model id")
    flags = reader.take(1, "flags")[0]
    known = _KNOWN_FLAGS
    if not legacy:
        flags, quality = flags & 0x0F, flags >> 4
        known |= _FLAG_VARINT_SIZE
    if flags & ~known:
        raise BitstreamError(f"bitstream is corrupt (unknown header flags 0x{flags:02x})")
    if legacy or flags & _FLAG_VARINT_SIZE:
        height, width = reader.varint("height"), reader.varint("width")
    else:
        sides = int.from_bytes(reader.take(3, "image size"), "little")
        height, width = (sides & 0xFFF) + 1, (sides >> 12) + 1
    if height == 0 or width == 0:
        raise BitstreamError(f"bitstream is corrupt (image size {width}x{height})")
    tiled = bool(flags & _FLAG_TILED)
    limits.check(height, width, tile=1 if tiled else 0)
    bit_depth = 16 if flags & _FLAG_16BIT else 8
    window = (struct.unpack("<ff", reader.take(8, "window")) if flags & _FLAG_WINDOW
              else default_window(bit_depth))
    lo, hi = float(window[0]), float(window[1])
    if not (math.isfinite(lo) and math.isfinite(hi) and hi > lo):
        raise BitstreamError(f"bitstream is corrupt (intensity window {lo}..{hi})")
    side_info = b""
    if legacy:
        quality = reader.take(1, "quality")[0]
        side_info = reader.take(reader.varint("side info length"), "side info")
    tile = 0
    tiles: list[tuple[bytes, ...]] = []
    if tiled:
        tile = reader.varint("tile size")
        if tile % TILE_MULTIPLE or not MIN_TILE <= tile <= MAX_TILE:
            raise BitstreamError(f"bitstream is corrupt (tile size {tile}; expected a multiple of {TILE_MULTIPLE} "
                                 f"in {MIN_TILE}..{MAX_TILE})")
        header = Header(model_id, height, width, bit_depth, (lo, hi), quality, side_info, tile, version)
        rows, cols = header.tile_grid
        if rows * cols < 2:
            raise BitstreamError("bitstream is corrupt (a tiled image with a single tile)")
        for i in range(rows * cols):
            if legacy:
                z_string = reader.take(reader.varint(f"z length of tile {i}"), f"z string of tile {i}")
                strings = (reader.take(reader.varint(f"y length of tile {i}"), f"y string of tile {i}"), z_string)
            else:
                strings = (reader.take(reader.varint(f"length of tile {i}"), f"stream of tile {i}"),)
            if not all(strings):
                raise BitstreamError(f"bitstream is corrupt (empty string in tile {i})")
            tiles.append(strings)
        if reader.pos != len(body):
            raise BitstreamError(f"bitstream is corrupt ({len(body) - reader.pos} unexpected bytes after the last tile)")
    else:
        header = Header(model_id, height, width, bit_depth, (lo, hi), quality, side_info, version=version)
        if legacy:
            z_string = reader.take(reader.varint("z length"), "z string")
            strings = (body[reader.pos:], z_string)
        else:
            strings = (body[reader.pos:],)
        if not all(strings):
            raise BitstreamError("bitstream is corrupt (empty entropy-coded string)")
        tiles.append(strings)
    if expected_model_id is not None and not _same_model(model_id, bytes(expected_model_id)):
        raise ModelMismatchError(f"bitstream was made by model {model_id.hex()}, but the given model is "
                                 f"{bytes(expected_model_id).hex()}; decode it with the model that encoded it")
    return header, tiles
