"""Image-level encoding and decoding: numpy image <-> fedcodec bitstream.

This is what a site runs: window the stored pixels to [0, 1], pad to the codec's multiple, entropy-code,
and wrap the strings in the container (:mod:`fedcodec.bitstream`); decoding inverts every step and returns
pixels of the original size and bit depth.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from fedcodec.bitstream import (
    MAX_TILE,
    MIN_TILE,
    MODEL_ID_BYTES,
    TILE_MULTIPLE,
    DecodeLimits,
    Header,
    pack,
    pack_tiles,
    unpack_tiles,
)
from fedcodec.codec import SemanticCodec, pad_to_multiple
from fedcodec.data import default_window, denormalize, normalize
from fedcodec.errors import BitstreamError, DataError
from fedcodec.rans_guard import guarded_entropy_coders


def model_id(codec: SemanticCodec) -> bytes:
    """The short model id written into every bitstream (cached per parameter state is not needed: ~1 ms)."""
    return bytes.fromhex(codec.identity_hash())[:MODEL_ID_BYTES]


def full_model_id(codec: SemanticCodec) -> bytes:
    """The codec's whole identity hash: what a header's id (4 bytes, 6 in versions 1-2) is compared with."""
    return bytes.fromhex(codec.identity_hash())


def _check_image(image: np.ndarray) -> int:
    if not isinstance(image, np.ndarray):
        raise DataError(f"expected a numpy image, got {type(image).__name__}")
    if image.ndim != 2:
        raise DataError(f"expected a 2-D grayscale image, got shape {image.shape}")
    if image.size == 0:
        raise DataError("the image is empty")
    if image.dtype == np.uint8:
        return 8
    if image.dtype == np.uint16:
        return 16
    raise DataError(f"expected uint8 or uint16 pixels, got {image.dtype}")


def image_to_tensor(image: np.ndarray, window: tuple[float, float]) -> tuple[torch.Tensor, tuple[int, int]]:
    """``(H, W)`` stored pixels -> padded ``(1, 1, H', W')`` float tensor in [0, 1] and the original size."""
    x = torch.from_numpy(normalize(image, window)).float()[None, None]
    return pad_to_multiple(x)


@dataclass(frozen=True)
class Encoded:
    data: bytes
    bpp: float          # from len(data), header included
    header: Header


#: Images with a side longer than this are coded in independent ``TILE x TILE`` tiles (one container), so
#: encoding and decoding hold one tile's feature maps at a time. Multiple of the codec's 64.
TILE = 1024


def _window_of(image: np.ndarray, window: tuple[float, float] | None) -> tuple[float, float]:
    bit_depth = _check_image(image)
    if window is None:
        window = default_window(bit_depth)
    lo, hi = float(window[0]), float(window[1])
    if not (math.isfinite(lo) and math.isfinite(hi) and hi > lo):
        raise DataError(f"intensity window must be finite with hi > lo, got {window}")
    return lo, hi


@torch.no_grad()
def encode_image(codec: SemanticCodec, image: np.ndarray, quality: int,
                 window: tuple[float, float] | None = None, tile: int | None = None) -> Encoded:
    """Encode a ``(H, W)`` uint8/uint16 image at ``quality`` (0-based) into a container.

    Images with a side longer than ``tile`` (default :data:`TILE`; 0 = never tile) are coded as independent
    tiles of that size in one container, so peak memory depends on the tile, not the image.
    """
    bit_depth = _check_image(image)
    window = _window_of(image, window)
    if not 0 <= int(quality) < codec.num_qualities:
        raise DataError(f"quality index must lie in [0, {codec.num_qualities - 1}], got {quality}")
    tile = TILE if tile is None else int(tile)
    h, w = image.shape
    limits = DecodeLimits()
    if tile and max(h, w) > tile:
        if tile % TILE_MULTIPLE or not MIN_TILE <= tile <= MAX_TILE:
            raise DataError(f"tile size must be a multiple of {TILE_MULTIPLE} in {MIN_TILE}..{MAX_TILE}, got {tile}")
        header = Header(model_id(codec), h, w, bit_depth, window, int(quality), tile=tile)
        limits.check(h, w, tile)
        strings = []
        for top, left, th, tw in header.tile_boxes():
            x, _ = image_to_tensor(image[top:top + th, left:left + tw], window)
            enc = codec.compress(x, quality)
            strings.append(enc["strings"][0][0])
            del x, enc
        data = pack_tiles(header, strings)
    else:
        header = Header(model_id(codec), h, w, bit_depth, window, int(quality))
        limits.check(h, w, 0)
        x, _ = image_to_tensor(image, window)
        enc = codec.compress(x, quality)
        data = pack(header, enc["strings"][0][0])
    return Encoded(data, 8 * len(data) / (h * w), header)


def _decode_tile(codec: SemanticCodec, strings: tuple[bytes, ...], height: int, width: int, quality: int,
                 task_ready: bool, where: str, portable: bool = True) -> np.ndarray:
    """One tile's strings (as :func:`fedcodec.bitstream.unpack` gives them) -> ``(height, width)`` float array
    in [0, 1]; every failure is a BitstreamError."""
    m = codec.multiple
    shape = (-(-height // m), -(-width // m))
    try:
        with guarded_entropy_coders(codec):
            x_hat = codec.decompress([[s] for s in strings], shape, quality, portable)["x_hat"]
        if task_ready:
            x_hat = codec.task_input(x_hat)
    except BitstreamError:
        raise
    except Exception as exc:  # shapes or values a forged (but canonical) string can still provoke
        raise BitstreamError(f"bitstream payload is corrupt{where} ({type(exc).__name__}: "
                             f"{str(exc).splitlines()[0][:200] if str(exc) else ''})") from exc
    x_hat = x_hat[0, 0, :height, :width]
    if not torch.isfinite(x_hat).all():
        raise BitstreamError(f"bitstream payload is corrupt (it decodes to NaN or infinite values{where})")
    return x_hat.clamp(0, 1).float().cpu().numpy()


@torch.no_grad()
def decode_image(codec: SemanticCodec, data: bytes, task_ready: bool = False,
                 limits: DecodeLimits | None = None) -> tuple[np.ndarray, Header]:
    """Decode a container into ``(H, W)`` pixels of the original bit depth.

    ``task_ready=True`` returns the image the task network sees (through the codec's feature head).
    The header's image size is checked against ``limits`` (default :class:`fedcodec.bitstream.DecodeLimits`)
    before anything is allocated; the entropy decoder runs isolated (:mod:`fedcodec.rans_guard`), so no
    payload can crash or stall the calling process. Tiled containers are decoded tile by tile.

    Raises :class:`BitstreamError` (or :class:`ModelMismatchError`) for a bitstream this codec cannot decode.
    """
    header, tiles = unpack_tiles(data, expected_model_id=full_model_id(codec), limits=limits)
    if header.quality >= codec.num_qualities:
        raise BitstreamError(f"bitstream quality {header.quality} is outside this codec's "
                             f"{codec.num_qualities} qualities")
    dtype = np.uint8 if header.bit_depth == 8 else np.uint16
    out = np.empty((header.height, header.width), dtype)
    boxes = header.tile_boxes()
    for i, ((top, left, th, tw), strings) in enumerate(zip(boxes, tiles)):
        where = f" in tile {i}" if header.tile else ""
        try:
            x_hat = _decode_tile(codec, strings, th, tw, header.quality, task_ready, where, header.portable)
        except BitstreamError as e:
            if header.portable:
                raise
            # version 1 chose its coding tables in float32: another CPU or thread count can pick other tables
            raise BitstreamError(f"{e} (a container version {header.version} stream: its coding tables were "
                                 "computed in float32 and decode only where the arithmetic matches the encoder's "
                                 "CPU and thread count; re-encode it with this version)") from e
        out[top:top + th, left:left + tw] = denormalize(x_hat, header.window, header.bit_depth)
    return out, header
