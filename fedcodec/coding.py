"""Image-level encoding and decoding: numpy image <-> fedcodec bitstream.

This is what a site runs: window the stored pixels to [0, 1], pad to the codec's multiple, entropy-code,
and wrap the strings in the container (:mod:`fedcodec.bitstream`); decoding inverts every step and returns
pixels of the original size and bit depth.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from fedcodec.bitstream import MODEL_ID_BYTES, Header, pack, unpack
from fedcodec.codec import SemanticCodec, pad_to_multiple
from fedcodec.data import default_window, denormalize, normalize
from fedcodec.errors import BitstreamError, DataError


def model_id(codec: SemanticCodec) -> bytes:
    """The short model id written into every bitstream (cached per parameter state is not needed: ~1 ms)."""
    return bytes.fromhex(codec.identity_hash())[:MODEL_ID_BYTES]


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


@torch.no_grad()
def encode_image(codec: SemanticCodec, image: np.ndarray, quality: int,
                 window: tuple[float, float] | None = None) -> Encoded:
    """Encode a ``(H, W)`` uint8/uint16 image at ``quality`` (0-based) into a container."""
    bit_depth = _check_image(image)
    if window is None:
        window = default_window(bit_depth)
    if not window[1] > window[0]:
        raise DataError(f"intensity window must have hi > lo, got {window}")
    x, (h, w) = image_to_tensor(image, window)
    enc = codec.compress(x, quality)
    header = Header(model_id(codec), h, w, bit_depth, (float(window[0]), float(window[1])), int(quality))
    data = pack(header, enc["strings"][1][0], enc["strings"][0][0])
    return Encoded(data, 8 * len(data) / (h * w), header)


@torch.no_grad()
def decode_image(codec: SemanticCodec, data: bytes, task_ready: bool = False) -> tuple[np.ndarray, Header]:
    """Decode a container into ``(H, W)`` pixels of the original bit depth.

    ``task_ready=True`` returns the image the task network sees (through the codec's feature head).
    Raises :class:`BitstreamError` (or :class:`ModelMismatchError`) for a bitstream this codec cannot decode.
    """
    header, z_string, y_string = unpack(data, expected_model_id=model_id(codec))
    if header.quality >= codec.num_qualities:
        raise BitstreamError(f"bitstream quality {header.quality} is outside this codec's "
                             f"{codec.num_qualities} qualities")
    m = codec.multiple
    shape = (-(-header.height // m), -(-header.width // m))
    try:
        x_hat = codec.decompress([[y_string], [z_string]], shape, header.quality)["x_hat"]
    except Exception as exc:  # the rANS decoder raises assorted errors on garbage input
        raise BitstreamError(f"bitstream payload is corrupt ({type(exc).__name__}: {exc})") from exc
    if task_ready:
        x_hat = codec.task_input(x_hat)
    x_hat = x_hat[0, 0, :header.height, :header.width].clamp(0, 1).numpy()
    return denormalize(x_hat, header.window, header.bit_depth), header
