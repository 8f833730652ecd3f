"""Real classic encoders as anchors: round trips, rate ordering, bit depths and input checks (no mocks)."""

from __future__ import annotations

import numpy as np
import pytest

from fedcodec.anchors import ANCHORS, AnchorResult, available_anchors, get_anchor, strip_j2k_comments
from fedcodec.errors import DataError, FedcodecError

AVAILABLE = available_anchors()


def _angio_like(n: int = 128, bits: int = 8, seed: int = 0) -> np.ndarray:
    """Smooth gradient background, dark curved vessel-like lines and Gaussian noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:n, 0:n] / n
    img = 150.0 + 50.0 * xx - 30.0 * yy + 10.0 * np.sin(6.0 * xx)
    for k in range(4):
        centre = 0.2 * k + 0.15 + 0.12 * np.sin(3.0 * np.pi * xx + k)  # a curve y = f(x)
        width = 0.012 + 0.004 * k
        img -= 90.0 * np.exp(-((yy - centre) ** 2) / (2.0 * width**2))
    img += rng.normal(0.0, 4.0, img.shape)
    if bits == 8:
        return np.clip(img, 0, 255).round().astype(np.uint8)
    return np.clip(img * 16.0, 0, 4095).round().astype(np.uint16)  # 12-bit data in uint16


def _psnr(a: np.ndarray, b: np.ndarray, peak: float) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10.0 * np.log10(peak**2 / mse)


@pytest.fixture(scope="module")
def image8() -> np.ndarray:
    return _angio_like(128, 8)


@pytest.fixture(scope="module")
def sweeps(image8):
    """Every available anchor's default sweep on the 8-bit image, computed once."""
    return {name: [get_anchor(name).encode_decode(image8, q) for q in get_anchor(name).qualities] for name in AVAILABLE}


def test_core_anchors_available():
    for name in ("hevc", "jpeg2000", "jpeg", "webp", "avif"):
        assert name in AVAILABLE, f"{name} missing from {AVAILABLE}"


def test_cli_lists_every_registered_anchor():
    from fedcodec.cli import build_parser

    evaluate = build_parser()._subparsers._group_actions[0].choices["evaluate"]
    text = next(a.help for a in evaluate._actions if a.dest == "anchors")
    listed = text.rsplit(" ", 1)[-1].split(",")
    assert listed == list(ANCHORS), f"fedcodec evaluate --anchors help lists {listed}, the registry has {list(ANCHORS)}"


@pytest.mark.parametrize("name", AVAILABLE)
def test_round_trip_real_bytes(name, image8, sweeps):
    for res in sweeps[name]:
        assert isinstance(res, AnchorResult)
        assert isinstance(res.data, bytes) and len(res.data) > 0
        assert res.decoded.shape == image8.shape
        assert res.decoded.dtype == np.uint8
        assert res.encode_ms > 0 and res.decode_ms > 0
        assert res.bpp == pytest.approx(8 * len(res.data) / image8.size)
        assert _psnr(image8, res.decoded, 255) > 15.0  # a real picture, not noise or a flat frame


@pytest.mark.parametrize("name", AVAILABLE)
def test_rate_falls_and_quality_rises(name, image8, sweeps):
    results = sweeps[name]  # qualities ordered from lowest rate to highest
    sizes = [len(r.data) for r in results]
    assert sizes[0] < sizes[-1], sizes
    assert all(a <= b for a, b in zip(sizes, sizes[1:])), f"rate not monotonic over the sweep: {sizes}"
    strict = sum(a < b for a, b in zip(sizes, sizes[1:]))
    assert strict > (len(sizes) - 1) / 2, f"only {strict} of {len(sizes) - 1} steps change the rate: {sizes}"
    psnrs = [_psnr(image8, r.decoded, 255) for r in results]
    assert psnrs[-1] > psnrs[0] + 3.0, psnrs


def test_hevc_bitstream_is_raw_annex_b_without_sei(image8, sweeps):
    if "hevc" not in AVAILABLE:
        pytest.skip("PyAV not importable")
    low = sweeps["hevc"][0]  # QP 51
    assert get_anchor("hevc").qualities[0] == 51
    assert low.data[:4] == b"\x00\x00\x00\x01" or low.data[:3] == b"\x00\x00\x01"
    assert len(low.data) < 400, len(low.data)  # the x265 info SEI alone is ~2 KB
    # NAL unit types present: VPS (32), SPS (33), PPS (34), an IRAP slice, and no prefix SEI (39)
    nal_types = {(low.data[i + 3] >> 1) & 0x3F for i in range(len(low.data) - 4) if low.data[i : i + 3] == b"\x00\x00\x01"}
    assert {32, 33, 34} <= nal_types and 39 not in nal_types, nal_types


def test_hevc_pads_odd_sizes(image8):
    if "hevc" not in AVAILABLE:
        pytest.skip("PyAV not importable")
    crop = np.ascontiguousarray(image8[:45, :70])
    res = get_anchor("hevc").encode_decode(crop, 32)
    assert res.decoded.shape == (45, 70) and res.decoded.dtype == np.uint8
    assert _psnr(crop, res.decoded, 255) > 28.0


def test_jpeg2000_is_bare_codestream_near_target(image8, sweeps):
    if "jpeg2000" not in AVAILABLE:
        pytest.skip("OpenJPEG not available in Pillow")
    codec = get_anchor("jpeg2000")
    for q, res in zip(codec.qualities, sweeps["jpeg2000"]):
        assert res.data[:2] == b"\xff\x4f" and res.data[-2:] == b"\xff\xd9"  # SOC ... EOC, no JP2 boxes
        assert b"\xff\x64" not in res.data[: res.data.index(b"\xff\x90")]  # no COM in the main header
        if q >= 0.25:
            assert res.bpp <= q * 1.02 and res.bpp >= q * 0.8, (q, res.bpp)


def test_strip_j2k_comments_rejects_non_codestream():
    with pytest.raises(FedcodecError):
        strip_j2k_comments(b"\x00\x00\x00\x0cjP  ")


@pytest.mark.parametrize("name", [n for n in ("hevc", "jpeg2000") if n in AVAILABLE])
def test_16bit_native_depth(name):
    image = _angio_like(128, 16)
    codec = get_anchor(name)
    assert codec.max_bit_depth >= 12
    low = codec.encode_decode(image, codec.qualities[0])
    high = codec.encode_decode(image, codec.qualities[-1])
    for res in (low, high):
        assert res.decoded.dtype == np.uint16 and res.decoded.shape == image.shape
    assert len(low.data) < len(high.data)
    assert _psnr(image, high.decoded, 4095) > 36.0
    assert _psnr(image, high.decoded, 4095) > _psnr(image, low.decoded, 4095)
    # the values fit the codec's depth, so nothing but the bitstream is sent
    if name == "hevc":
        assert high.data[:4] == b"\x00\x00\x00\x01"
    else:
        assert high.data[-2:] == b"\xff\xd9"


@pytest.mark.parametrize("name", [n for n in ("jpeg", "webp", "hevc") if n in AVAILABLE])
def test_16bit_full_range_uses_counted_window(name):
    base = _angio_like(64, 8).astype(np.float64)
    image = (base * 200.0 + 1000.0).astype(np.uint16)  # spans more than 12 bits, not starting at 0
    codec = get_anchor(name)
    res = codec.encode_decode(image, codec.qualities[-1])
    assert res.decoded.dtype == np.uint16 and res.decoded.shape == image.shape
    lo, hi = int(image.min()), int(image.max())
    assert res.data[-4:] == lo.to_bytes(2, "big") + hi.to_bytes(2, "big")  # the window is in the counted bytes
    assert res.decoded.min() >= lo and res.decoded.max() <= hi
    assert _psnr(image, res.decoded, hi - lo) > 30.0


@pytest.mark.parametrize(
    "bad, needle",
    [
        (np.zeros((16, 16, 3), np.uint8), "2-D"),
        (np.zeros((16, 16), np.float32), "float32"),
        (np.full((16, 16), np.nan), "NaN"),
        (np.zeros((0, 16), np.uint8), "empty"),
        (np.zeros((16, 16), np.int32), "int32"),
        ([[1, 2], [3, 4]], "numpy array"),
    ],
)
def test_bad_inputs_raise_data_error(bad, needle):
    for name in AVAILABLE:
        with pytest.raises(DataError, match=needle):
            get_anchor(name).encode_decode(bad, get_anchor(name).qualities[0])


def test_bad_quality_and_unknown_names(image8):
    with pytest.raises(FedcodecError, match="hevc"):
        get_anchor("hevc").encode_decode(image8, 60)
    with pytest.raises(FedcodecError, match="target bpp"):
        get_anchor("jpeg2000").encode_decode(image8, -1.0)
    with pytest.raises(FedcodecError) as info:
        get_anchor("bpg")
    for name in AVAILABLE:
        assert name in str(info.value)
