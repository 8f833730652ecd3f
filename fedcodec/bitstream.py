"""The fedcodec bitstream container: a small header around CompressAI's entropy-coded strings.

Layout (little-endian; ``varint`` = unsigned LEB128):

| field | size | meaning |
| --- | --- | --- |
| magic | 3 | ``b"FCd"`` |
| format version | 1 | :data:`FORMAT_VERSION` |
| model id | 6 | first 6 bytes of the codec's identity hash (all parameter groups) |
| flags | 1 | bit 0: 16-bit image; bit 1: explicit window follows |
| height, width | varint each | original image size (before padding) |
| window | 0 or 8 | ``float32 lo, hi`` when flag bit 1 is set (else 0..255 or 0..65535) |
| quality | 1 | quality index |
| side info | varint + bytes | reserved for side information; empty for the current codec (the policy map is rebuilt from the hyper-latent) |
| z length | varint | length of the hyper-latent string |
| z string, y string | rest | the y string runs up to the checksum |
| checksum | 4 | CRC-32 of everything before it |

A 256x256 8-bit image costs 22 header bytes (0.0027 bpp); bpp is always counted on the whole container.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

from fedcodec.data.windowing import default_window
from fedcodec.errors import BitstreamError, ModelMismatchError

MAGIC = b"FCd"
FORMAT_VERSION = 1
MODEL_ID_BYTES = 6
_FLAG_16BIT = 1
_FLAG_WINDOW = 2


@dataclass(frozen=True)
class Header:
    """Everything the decoder needs besides the entropy-coded strings."""

    model_id: bytes
    height: int
    width: int
    bit_depth: int
    window: tuple[float, float]
    quality: int
    side_info: bytes = b""


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


def pack(header: Header, z_string: bytes, y_string: bytes) -> bytes:
    """Serialise a header and the two strings into one container."""
    if len(header.model_id) != MODEL_ID_BYTES:
        raise ValueError(f"model id must be {MODEL_ID_BYTES} bytes")
    if header.bit_depth not in (8, 16):
        raise ValueError(f"bit depth must be 8 or 16, got {header.bit_depth}")
    if not 0 <= header.quality < 256:
        raise ValueError(f"quality {header.quality} does not fit in a byte")
    explicit_window = tuple(header.window) != default_window(header.bit_depth)
    flags = (_FLAG_16BIT if header.bit_depth == 16 else 0) | (_FLAG_WINDOW if explicit_window else 0)
    parts = [MAGIC, bytes([FORMAT_VERSION]), header.model_id, bytes([flags]),
             _varint(header.height), _varint(header.width)]
    if explicit_window:
        parts.append(struct.pack("<ff", *header.window))
    parts += [bytes([header.quality]), _varint(len(header.side_info)), header.side_info,
              _varint(len(z_string)), z_string, y_string]
    body = b"".join(parts)
    return body + struct.pack("<I", zlib.crc32(body))


def unpack(data: bytes, expected_model_id: bytes | None = None) -> tuple[Header, bytes, bytes]:
    """Parse a container; returns ``(header, z_string, y_string)``.

    Raises :class:`BitstreamError` for anything that is not an intact fedcodec bitstream of a supported
    version, and :class:`ModelMismatchError` when ``expected_model_id`` is given and differs.
    """
    if not isinstance(data, (bytes, bytearray)):
        raise BitstreamError(f"expected bytes, got {type(data).__name__}")
    data = bytes(data)
    if len(data) < len(MAGIC) or data[:len(MAGIC)] != MAGIC:
        raise BitstreamError("not a fedcodec bitstream (bad magic bytes)")
    if len(data) < len(MAGIC) + 1 + 4:
        raise BitstreamError("bitstream is truncated (shorter than the smallest header)")
    if data[len(MAGIC)] != FORMAT_VERSION:
        raise BitstreamError(f"unsupported bitstream format version {data[len(MAGIC)]} "
                             f"(this fedcodec reads version {FORMAT_VERSION})")
    body, (crc,) = data[:-4], struct.unpack("<I", data[-4:])
    reader = _Reader(body, len(body))
    reader.take(len(MAGIC) + 1, "magic")
    model_id = reader.take(MODEL_ID_BYTES, "model id")
    flags = reader.take(1, "flags")[0]
    height, width = reader.varint("height"), reader.varint("width")
    bit_depth = 16 if flags & _FLAG_16BIT else 8
    window = (struct.unpack("<ff", reader.take(8, "window")) if flags & _FLAG_WINDOW
              else default_window(bit_depth))
    quality = reader.take(1, "quality")[0]
    side_info = reader.take(reader.varint("side info length"), "side info")
    z_string = reader.take(reader.varint("z length"), "z string")
    y_string = body[reader.pos:]
    if zlib.crc32(body) != crc:
        raise BitstreamError("bitstream is corrupt or truncated (checksum mismatch)")
    if flags & ~(_FLAG_16BIT | _FLAG_WINDOW) or height == 0 or width == 0 or not y_string:
        raise BitstreamError("bitstream is corrupt (invalid header fields)")
    if expected_model_id is not None and model_id != expected_model_id:
        raise ModelMismatchError(f"bitstream was made by model {model_id.hex()}, but the given model is "
                                 f"{expected_model_id.hex()}; decode it with the model that encoded it")
    header = Header(model_id, height, width, bit_depth, (float(window[0]), float(window[1])), quality, side_info)
    return header, z_string, y_string
