"""Shared fixtures: tiny models and phantom folders, built once per test session (no downloads)."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

warnings.filterwarnings("ignore", category=FutureWarning)

TINY_CODEC = dict(N=16, M=16, num_qualities=4)
TINY_TASK_FEATURES = (4, 8, 8, 16, 16, 4)


def make_tiny_codec(seed: int = 0):
    from fedcodec.codec import SemanticCodec

    torch.manual_seed(seed)
    codec = SemanticCodec(**TINY_CODEC)
    with torch.no_grad():  # an untrained analysis transform gives tiny latents that all round to zero
        codec.g_a[-1].weight.mul_(30)
    codec.update(force=True)
    return codec.eval()


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("tiny")


@pytest.fixture(scope="session")
def tiny_codec_path(tiny_dir) -> Path:
    from fedcodec.model_io import save_codec

    return save_codec(make_tiny_codec(0), tiny_dir / "codec.pt")


@pytest.fixture(scope="session")
def other_codec_path(tiny_dir) -> Path:
    from fedcodec.model_io import save_codec

    return save_codec(make_tiny_codec(1), tiny_dir / "other_codec.pt")


@pytest.fixture(scope="session")
def tiny_task_path(tiny_dir) -> Path:
    from fedcodec.model_io import save_task
    from fedcodec.task_net import build_task_network

    torch.manual_seed(0)
    return save_task(build_task_network(TINY_TASK_FEATURES), tiny_dir / "task.pt")


@pytest.fixture(scope="session")
def phantom_dir(tmp_path_factory) -> Path:
    """Three 128x128 phantoms of a shifted hospital in the folder layout."""
    from fedcodec.data import make_phantoms, write_folder

    out = tmp_path_factory.mktemp("phantoms") / "h1"
    write_folder(make_phantoms(3, seed=5, size=128, hospital=1), out)
    return out


def assert_decoded_is_forward_output(codec, image, decoded, quality: int, window=None) -> None:
    """``decoded`` (stored pixels, as ``decode_image`` or ``fedcodec decode`` return them) is the codec's own
    forward output for ``image`` at ``quality`` (0-based): same size and dtype, and within 1e-4 of it in the
    window's [0, 1] units plus one stored-value step of rounding. A decoder that returns zeros, the input, or
    another quality's reconstruction fails."""
    import numpy as np

    from fedcodec.codec import pad_to_multiple
    from fedcodec.data import default_window, normalize

    bit_depth = 8 if image.dtype == np.uint8 else 16
    window = window or default_window(bit_depth)
    x, (h, w) = pad_to_multiple(torch.from_numpy(normalize(image, window))[None, None])
    with torch.no_grad():
        expected = codec.eval()(x, quality)["x_hat"][0, 0, :h, :w].clamp(0, 1).double().numpy()
    assert decoded.shape == image.shape and decoded.dtype == image.dtype
    got = normalize(decoded, window).astype(np.float64)
    step = 1.0 / (window[1] - window[0])
    diff = np.abs(got - expected)
    assert diff.max() <= 1e-4 + step, f"decoded differs from the forward output by up to {diff.max():.3g}"
    assert expected.std() > 10 * step, "degenerate reference: the forward output is flat"
