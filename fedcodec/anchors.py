"""Classic image encoders as anchor codecs for grayscale medical images.

Every anchor runs a real encoder and a real decoder and reports the exact bytes it counts for the rate, so
``8 * len(result.data) / image.size`` is the bits-per-pixel of that point. The anchors are:

=========  ===========================================  ==========================  =============
name       library                                      quality knob (low -> high)  max bit depth
=========  ===========================================  ==========================  =============
hevc       x265 intra through PyAV (``libx265``)        QP 51 ... 22                12 (gray12le)
jpeg2000   OpenJPEG through Pillow (bare ``j2k``)       target bpp 0.02 ... 1.0     16 (I;16)
jpeg       libjpeg-turbo through Pillow                 quality 1 ... 90            8
webp       libwebp through Pillow (``method=6``)        quality 0 ... 90            8
avif       libavif through Pillow (``speed=6``)         quality 0 ... 85            8
jpegxl     libjxl through ``pillow-jxl-plugin``         quality 1 ... 90            16 (optional)
=========  ===========================================  ==========================  =============

Inputs are 2-D ``uint8`` or ``uint16`` arrays; anything else raises :class:`fedcodec.errors.DataError`.
``decoded`` always has the input's shape and dtype.

16-bit inputs and codecs that code fewer bits (``max_bit_depth < 16``): if every pixel already fits the
codec's depth (``image.max() < 2**max_bit_depth``, e.g. 12-bit CT or 10-bit angiography stored in ``uint16``
and coded by HEVC at 12 bits) the values are coded as they are and nothing else is sent. Otherwise the image
is reduced by its own window ``[lo, hi] = [image.min(), image.max()]``: ``v -> round((v - lo) * (2**D - 1) /
(hi - lo))`` and expanded back after decoding (clipped to ``[lo, hi]``). The decoder needs the window, so it
is sent: ``data`` is then the codec's bitstream followed by a 4-byte big-endian ``(lo, hi)`` trailer, and
these 4 bytes are counted in the rate. 8-bit inputs are always coded at 8 bits with no trailer.

``encode_ms`` covers array -> bytes (encoder set-up included, since an anchor codes one image at a time) and
``decode_ms`` covers bytes -> array, both with :func:`time.perf_counter`. They are single measurements; the
benchmark scripts take medians.
"""

from __future__ import annotations

import importlib
import io
import struct
import time
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np

from fedcodec.errors import DataError, FedcodecError

__all__ = [
    "ANCHORS",
    "AnchorCodec",
    "AnchorResult",
    "AvifAnchor",
    "HevcAnchor",
    "Jpeg2000Anchor",
    "JpegAnchor",
    "JpegXLAnchor",
    "WebpAnchor",
    "available_anchors",
    "get_anchor",
    "validate_image",
]

_WINDOW_TRAILER = struct.Struct(">HH")


@dataclass(frozen=True)
class AnchorResult:
    """One coded point of an anchor codec."""

    data: bytes  #: exactly the bytes counted for the rate
    decoded: np.ndarray  #: same shape and dtype as the input image
    encode_ms: float
    decode_ms: float

    @property
    def bpp(self) -> float:
        """Bits per pixel of ``data`` for the decoded image's size."""
        return 8.0 * len(self.data) / self.decoded.size


@runtime_checkable
class AnchorCodec(Protocol):
    """What every anchor provides (see the module docstring)."""

    name: str
    qualities: tuple
    max_bit_depth: int

    def encode_decode(self, image: np.ndarray, quality: Any) -> AnchorResult: ...


# --------------------------------------------------------------------------------------------------------------
# input checks and bit-depth handling


def validate_image(image: Any) -> np.ndarray:
    """Return ``image`` as a C-contiguous 2-D ``uint8``/``uint16`` array, or raise :class:`DataError`."""
    if not isinstance(image, np.ndarray):
        raise DataError(f"anchor input must be a numpy array, got {type(image).__name__}")
    if image.ndim != 2:
        raise DataError(
            f"anchor input must be a 2-D grayscale image, got {image.ndim}-D array of shape {image.shape}"
        )
    if image.size == 0:
        raise DataError(f"anchor input is empty (shape {image.shape})")
    if np.issubdtype(image.dtype, np.floating) or np.issubdtype(image.dtype, np.complexfloating):
        if np.isnan(image).any():
            raise DataError(f"anchor input contains NaN (dtype {image.dtype}); expected uint8 or uint16 pixels")
        raise DataError(f"anchor input has dtype {image.dtype}; expected uint8 or uint16 pixels")
    if image.dtype not in (np.uint8, np.uint16):
        raise DataError(f"anchor input has dtype {image.dtype}; expected uint8 or uint16 pixels")
    return np.ascontiguousarray(image)


def _reduce_depth(image: np.ndarray, depth: int) -> tuple[np.ndarray, tuple[int, int] | None]:
    """Map ``image`` to at most ``depth`` bits; return the coded array and the window (None: coded as is)."""
    if image.dtype == np.uint8:
        return image, None
    out_dtype = np.uint8 if depth <= 8 else np.uint16
    if int(image.max()) < (1 << depth):
        return image.astype(out_dtype), None
    lo, hi = int(image.min()), int(image.max())
    top = (1 << depth) - 1
    scale = top / (hi - lo) if hi > lo else 0.0
    scaled = np.rint((image.astype(np.float64) - lo) * scale)
    return scaled.astype(out_dtype), (lo, hi)


def _expand_depth(coded: np.ndarray, window: tuple[int, int] | None, depth: int, dtype: np.dtype) -> np.ndarray:
    """Inverse of :func:`_reduce_depth`, returning ``dtype``."""
    if window is None:
        return coded.astype(dtype, copy=False)
    lo, hi = window
    top = (1 << depth) - 1
    values = np.rint(coded.astype(np.float64) * ((hi - lo) / top) + lo)
    return np.clip(values, lo, hi).astype(dtype)


def _split_trailer(data: bytes, windowed: bool) -> tuple[bytes, tuple[int, int] | None]:
    if not windowed:
        return data, None
    lo, hi = _WINDOW_TRAILER.unpack(data[-_WINDOW_TRAILER.size :])
    return data[: -_WINDOW_TRAILER.size], (lo, hi)


def _ms(t0: float, t1: float) -> float:
    return (t1 - t0) * 1000.0


def _module_available(module: str) -> bool:
    try:
        importlib.import_module(module)
    except Exception:  # noqa: BLE001 - any import failure means "not available"
        return False
    return True


class _Anchor:
    """Shared plumbing; subclasses set the class attributes and implement ``_encode``/``_decode``."""

    name: ClassVar[str] = ""
    qualities: ClassVar[tuple] = ()
    max_bit_depth: ClassVar[int] = 8
    requires: ClassVar[tuple[str, ...]] = ()  #: importable modules the anchor needs

    @classmethod
    def is_available(cls) -> bool:
        return all(_module_available(m) for m in cls.requires)

    def _check_quality(self, quality: Any) -> Any:  # pragma: no cover - overridden
        return quality

    def _encode(self, coded: np.ndarray, quality: Any) -> bytes:  # pragma: no cover - abstract
        raise NotImplementedError

    def _decode(self, data: bytes, shape: tuple[int, int], dtype: np.dtype) -> np.ndarray:  # pragma: no cover
        raise NotImplementedError

    def encode_decode(self, image: np.ndarray, quality: Any) -> AnchorResult:
        image = validate_image(image)
        quality = self._check_quality(quality)

        t0 = time.perf_counter()
        coded, window = _reduce_depth(image, self.max_bit_depth)
        data = self._encode(coded, quality)
        if window is not None:
            data += _WINDOW_TRAILER.pack(*window)
        t1 = time.perf_counter()

        t2 = time.perf_counter()
        stream, window_read = _split_trailer(data, window is not None)
        decoded_coded = self._decode(stream, image.shape, coded.dtype)
        decoded = _expand_depth(decoded_coded, window_read, self.max_bit_depth, image.dtype)
        t3 = time.perf_counter()

        if decoded.shape != image.shape:  # a codec returning another size is a bug, not a user error
            raise FedcodecError(f"{self.name}: decoded shape {decoded.shape} != input shape {image.shape}")
        return AnchorResult(data=bytes(data), decoded=decoded, encode_ms=_ms(t0, t1), decode_ms=_ms(t2, t3))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, max_bit_depth={self.max_bit_depth})"


def _int_quality(name: str, quality: Any, lo: int, hi: int) -> int:
    if isinstance(quality, bool) or not isinstance(quality, (int, np.integer)):
        raise FedcodecError(f"{name}: quality must be an integer in [{lo}, {hi}], got {quality!r}")
    q = int(quality)
    if not lo <= q <= hi:
        raise FedcodecError(f"{name}: quality must be in [{lo}, {hi}], got {q}")
    return q


# --------------------------------------------------------------------------------------------------------------
# HEVC intra (x265 through PyAV)


class HevcAnchor(_Anchor):
    """HEVC intra with x265 through PyAV, grayscale coded as monochrome 4:0:0.

    * ``quality`` is the x265 QP (``qp=QP:keyint=1:info=0:ipratio=1``, preset ``medium``): ``info=0`` drops the
      ~2 KB version SEI and ``ipratio=1`` makes the I-frame use the given QP itself. Lower QP = higher rate.
    * 8-bit input is coded as ``gray`` (Main 4:0:0 8-bit); 16-bit input as ``gray12le`` (12-bit, RExt), with the
      16 -> 12-bit window of the module docstring when the image does not fit 12 bits.
    * x265 (the build in PyAV 18.1) codes a flat mid-grey picture at 12 bits for QP 50 and 51 (measured: every
      pixel decodes to 2048), so at 12 bits the QP is clamped to 49. x265's QP is in 8-bit-equivalent units at
      every depth (measured: 12-bit QP 45 gives the same bytes and error as 8-bit QP 45).
    * x265 needs width and height multiples of its minimum CU size (8): the image is padded by edge replication
      and cropped after decoding; the padding is coded and its bytes counted.
    * ``data`` is the raw Annex-B bitstream (all packets joined, VPS/SPS/PPS included), decoded with FFmpeg's
      ``hevc`` decoder.
    """

    name = "hevc"
    qualities = (51, 47, 42, 37, 32, 27, 22)
    max_bit_depth = 12
    requires = ("av",)
    preset = "medium"
    min_cu = 8
    max_qp_12bit = 49

    def _check_quality(self, quality: Any) -> int:
        return _int_quality(self.name, quality, 0, 51)

    def _encode(self, coded: np.ndarray, quality: int) -> bytes:
        import av

        h, w = coded.shape
        ph, pw = -h % self.min_cu, -w % self.min_cu
        padded = np.pad(coded, ((0, ph), (0, pw)), mode="edge") if (ph or pw) else coded
        if coded.dtype == np.uint8:
            pix_fmt, qp = "gray", quality
        else:
            pix_fmt, qp = "gray12le", min(quality, self.max_qp_12bit)
        enc = av.CodecContext.create("libx265", "w")
        enc.width, enc.height = padded.shape[1], padded.shape[0]
        enc.pix_fmt = pix_fmt
        enc.time_base = Fraction(1, 25)
        enc.options = {
            "x265-params": f"qp={qp}:keyint=1:info=0:ipratio=1:log-level=error",
            "preset": self.preset,
        }
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(padded), format=pix_fmt)
        frame.pts = 0
        packets = list(enc.encode(frame))
        packets += list(enc.encode(None))  # flush: x265 buffers the frame until end of stream
        data = b"".join(bytes(p) for p in packets)
        if not data:
            raise FedcodecError("hevc: x265 produced no bitstream")
        return data

    def _decode(self, data: bytes, shape: tuple[int, int], dtype: np.dtype) -> np.ndarray:
        import av

        dec = av.CodecContext.create("hevc", "r")
        frames = list(dec.decode(av.Packet(data)))
        frames += list(dec.decode(None))
        if len(frames) != 1:
            raise FedcodecError(f"hevc: expected 1 decoded frame, got {len(frames)}")
        out = frames[0].to_ndarray()
        h, w = shape
        return np.ascontiguousarray(out[:h, :w]).astype(dtype, copy=False)


# --------------------------------------------------------------------------------------------------------------
# Pillow-based anchors


class _PillowAnchor(_Anchor):
    requires = ("PIL.Image",)
    pil_format: ClassVar[str] = ""

    def _save_kwargs(self, quality: Any, bits: int) -> dict:  # pragma: no cover - abstract
        raise NotImplementedError

    def _encode(self, coded: np.ndarray, quality: Any) -> bytes:
        from PIL import Image

        bits = 16 if coded.dtype == np.uint16 else 8
        buf = io.BytesIO()
        Image.fromarray(coded).save(buf, self.pil_format, **self._save_kwargs(quality, bits))
        return buf.getvalue()

    def _decode(self, data: bytes, shape: tuple[int, int], dtype: np.dtype) -> np.ndarray:
        from PIL import Image

        with Image.open(io.BytesIO(data)) as im:
            im.load()
            if dtype == np.uint8 and im.mode != "L":
                im = im.convert("L")  # R = G = B for grayscale content, so the luma is the value itself
            arr = np.array(im)
        return arr.astype(dtype, copy=False)


class Jpeg2000Anchor(_PillowAnchor):
    """JPEG 2000 (OpenJPEG through Pillow), bare J2K codestream, irreversible 9/7 wavelet.

    Pillow is called with ``no_jp2=True`` (Pillow ignores a ``codec`` argument and would wrap the codestream in
    a JP2 container, +85 bytes), and OpenJPEG's COM comment segment (~38 bytes) is removed from the main header.

    ``quality`` is the target rate in bits per pixel; Pillow is called with ``quality_mode='rates'`` and
    ``quality_layers=[input_bits / target_bpp]`` (input_bits = 8 for ``uint8``, 16 for ``uint16``). 16-bit input
    is coded at 16 bits (Pillow mode ``I;16``), so no window is needed. OpenJPEG cannot go below its main header
    plus empty packets (measured: 0.069 bpp at 128x128, below 0.02 bpp at 256x256), so at small sizes the lowest
    targets give the same bytes.
    """

    name = "jpeg2000"
    qualities = (0.02, 0.04, 0.06, 0.1, 0.15, 0.25, 0.5, 1.0)
    max_bit_depth = 16
    pil_format = "JPEG2000"
    requires = ("PIL.Jpeg2KImagePlugin",)

    @classmethod
    def is_available(cls) -> bool:
        if not super().is_available():
            return False
        from PIL import features

        return bool(features.check("jpg_2000"))

    def _check_quality(self, quality: Any) -> float:
        if isinstance(quality, bool) or not isinstance(quality, (int, float, np.integer, np.floating)):
            raise FedcodecError(f"jpeg2000: quality is a target bpp (a positive number), got {quality!r}")
        q = float(quality)
        if not np.isfinite(q) or q <= 0:
            raise FedcodecError(f"jpeg2000: target bpp must be positive and finite, got {quality!r}")
        return q

    def _save_kwargs(self, quality: float, bits: int) -> dict:
        return {
            "quality_mode": "rates",
            "quality_layers": [bits / quality],
            "irreversible": True,
            "no_jp2": True,  # bare codestream; Pillow has no ``codec`` option (it picks jp2 unless told so)
        }

    def _encode(self, coded: np.ndarray, quality: Any) -> bytes:
        return strip_j2k_comments(super()._encode(coded, quality))


def strip_j2k_comments(codestream: bytes) -> bytes:
    """Drop the COM marker segments (OpenJPEG's "Created by OpenJPEG version ..." text) from a J2K main header.

    COM segments carry no decoding information; removing them is the JPEG 2000 analogue of x265's ``info=0``.
    """
    if codestream[:2] != b"\xff\x4f":
        raise FedcodecError("jpeg2000: the encoder did not return a bare J2K codestream (no SOC marker)")
    out = bytearray(codestream[:2])
    i = 2
    while i + 4 <= len(codestream):
        marker = codestream[i : i + 2]
        if marker == b"\xff\x90":  # SOT: end of the main header
            break
        (length,) = struct.unpack(">H", codestream[i + 2 : i + 4])
        if marker != b"\xff\x64":
            out += codestream[i : i + 2 + length]
        i += 2 + length
    out += codestream[i:]
    return bytes(out)


class JpegAnchor(_PillowAnchor):
    """Baseline JPEG (libjpeg-turbo through Pillow), quality 1-95, ``optimize=True`` (optimal Huffman tables), 8 bits.

    Grayscale is coded as a single component (no chroma). The quantisation and Huffman tables in the header put a
    floor under the rate (measured: 0.07 bpp at 256x256, 0.15 bpp at 128x128 for quality 1).

    16-bit input is reduced to 8 bits by the image's window (module docstring) and expanded back; the 4-byte
    window trailer is counted.
    """

    name = "jpeg"
    qualities = (1, 5, 10, 20, 35, 50, 75, 90)
    max_bit_depth = 8
    pil_format = "JPEG"

    def _check_quality(self, quality: Any) -> int:
        return _int_quality(self.name, quality, 1, 95)

    def _save_kwargs(self, quality: int, bits: int) -> dict:
        return {"quality": quality, "optimize": True}


class WebpAnchor(_PillowAnchor):
    """Lossy WebP (libwebp through Pillow, ``method=6``), quality 0-100, 8 bits (coded as YUV 4:2:0).

    16-bit input is reduced to 8 bits by the image's window (module docstring) and expanded back; the 4-byte
    window trailer is counted.
    """

    name = "webp"
    qualities = (0, 5, 10, 25, 50, 75, 90)
    max_bit_depth = 8
    pil_format = "WEBP"

    @classmethod
    def is_available(cls) -> bool:
        if not super().is_available():
            return False
        from PIL import features

        return bool(features.check("webp"))

    def _check_quality(self, quality: Any) -> int:
        return _int_quality(self.name, quality, 0, 100)

    def _save_kwargs(self, quality: int, bits: int) -> dict:
        return {"quality": quality, "method": 6, "lossless": False}


class AvifAnchor(_PillowAnchor):
    """AVIF (libavif through Pillow >= 11.3, built in), quality 0-100, ``speed=6``, 8 bits.

    Pillow writes a grayscale image as monochrome 4:0:0. The bytes are the whole ``.avif`` file (a few hundred
    bytes of container included). 16-bit input is reduced to 8 bits by the image's window (module docstring) and
    expanded back; the 4-byte window trailer is counted.
    """

    name = "avif"
    qualities = (0, 10, 25, 40, 55, 70, 85)
    max_bit_depth = 8
    pil_format = "AVIF"

    @classmethod
    def is_available(cls) -> bool:
        if not super().is_available():
            return False
        from PIL import features

        return bool(features.check("avif"))

    def _check_quality(self, quality: Any) -> int:
        return _int_quality(self.name, quality, 0, 100)

    def _save_kwargs(self, quality: int, bits: int) -> dict:
        return {"quality": quality, "speed": 6}


class JpegXLAnchor(_PillowAnchor):
    """JPEG XL (libjxl through the optional ``pillow-jxl-plugin``), quality 1-100, ``effort=7``, bare codestream.

    Available only when ``pillow_jxl`` imports. The plugin writes and reads Pillow mode ``I;16``, so 16-bit input
    is coded at 16 bits as it is (no window); 8-bit input at 8 bits.
    """

    name = "jpegxl"
    qualities = (1, 5, 10, 25, 50, 75, 90)
    max_bit_depth = 16
    pil_format = "JXL"
    requires = ("PIL.Image", "pillow_jxl")

    def _check_quality(self, quality: Any) -> int:
        return _int_quality(self.name, quality, 1, 100)

    def _save_kwargs(self, quality: int, bits: int) -> dict:
        return {"quality": quality, "effort": 7, "use_container": False}

    def _encode(self, coded: np.ndarray, quality: Any) -> bytes:
        import pillow_jxl  # noqa: F401 - registers the JXL plugin with Pillow

        return super()._encode(coded, quality)

    def _decode(self, data: bytes, shape: tuple[int, int], dtype: np.dtype) -> np.ndarray:
        import pillow_jxl  # noqa: F401

        return super()._decode(data, shape, dtype)


# --------------------------------------------------------------------------------------------------------------
# registry

ANCHORS: dict[str, type] = {
    cls.name: cls for cls in (HevcAnchor, Jpeg2000Anchor, JpegAnchor, WebpAnchor, AvifAnchor, JpegXLAnchor)
}


def available_anchors() -> list[str]:
    """Names of the anchors whose libraries import here, in registry order."""
    return [name for name, cls in ANCHORS.items() if cls.is_available()]


def get_anchor(name: str) -> AnchorCodec:
    """Return an instance of the anchor ``name``; :class:`FedcodecError` for an unknown or unusable one."""
    available = available_anchors()
    if name not in ANCHORS:
        raise FedcodecError(f"unknown anchor codec {name!r}; available: {', '.join(available) or 'none'}")
    if name not in available:
        needs = ", ".join(ANCHORS[name].requires)
        raise FedcodecError(
            f"anchor codec {name!r} is not usable here (needs {needs}); available: {', '.join(available) or 'none'}"
        )
    return ANCHORS[name]()
