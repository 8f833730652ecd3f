"""Where the bits go: the rate spent at each latent position of a bitstream, and the policy head's gain map.

A semantic codec should spend its bits on what the diagnosis reads (vessels) rather than on background
anatomy. :func:`bit_allocation` reads a fedcodec bitstream back with the codec that wrote it and returns, per
latent position (one per 16x16 pixel block):

- ``bits``: the ideal code length of the latent symbols there, ``-log2 p`` summed over channels, from the
  same GaussianConditional the rANS coder uses (the real y-string is within a few percent of its sum: rANS
  codes with quantised CDF tables and a discretised scale table);
- ``policy_gain``: the spatial gain of the bit-allocation policy head (1 = neutral, above 1 = finer
  quantisation, i.e. more bits, there). The decoder rebuilds it from the hyper-latent, as at decode time.

:meth:`BitAllocation.region_share` then says which share of the bits lands inside a region (a mask), next to
the share of the area it covers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from fedcodec.bitstream import Header, unpack
from fedcodec.codec import SemanticCodec
from fedcodec.coding import decode_image, full_model_id
from fedcodec.errors import BitstreamError, DataError

#: Pixels per latent position along each axis (g_a downsamples by 16).
LATENT_STRIDE = 16


@dataclass(frozen=True)
class BitAllocation:
    """Per-position rate and policy gain of one bitstream, cropped to the positions that cover the image.

    Attributes:
        header: the bitstream's header.
        bits: ``(ceil(H/16), ceil(W/16))`` float, bits spent on the latent ``y`` at each position.
        policy_gain: same shape, the policy head's spatial gain (positive; 1 = neutral).
        image: ``(H, W)`` the decoded image, in the stored bit depth.
        y_bytes, z_bytes, total_bytes: sizes of the latent string, the hyper-latent string and the whole file;
            for a version-3 stream (one rANS stream for both) ``z_bytes`` is the hyper-latent's code length in
            that stream (:func:`stream_code_length`) and ``y_bytes`` the rest of the stream.
    """

    header: Header
    bits: np.ndarray
    policy_gain: np.ndarray
    image: np.ndarray
    y_bytes: int
    z_bytes: int
    total_bytes: int

    def _blocks(self, pixels: np.ndarray) -> np.ndarray:
        """Sum ``(H, W)`` pixel values over each latent position's 16x16 block (zero beyond the image)."""
        gh, gw = self.bits.shape
        padded = np.zeros((gh * LATENT_STRIDE, gw * LATENT_STRIDE), dtype=np.float64)
        padded[:self.header.height, :self.header.width] = pixels
        return padded.reshape(gh, LATENT_STRIDE, gw, LATENT_STRIDE).sum(axis=(1, 3))

    def block_area(self) -> np.ndarray:
        """Real image pixels in each block (256, fewer at the bottom/right edge where the codec padded)."""
        return self._blocks(np.ones((self.header.height, self.header.width)))

    def block_fraction(self, mask: np.ndarray) -> np.ndarray:
        """The fraction of each latent position's block that ``mask`` (``(H, W)``, nonzero = in) covers."""
        mask, shape = np.asarray(mask), (self.header.height, self.header.width)
        if mask.shape != shape:
            raise DataError(f"mask shape {mask.shape} differs from the image's {shape}")
        return self._blocks(mask > 0) / self.block_area()

    def region_share(self, mask: np.ndarray) -> dict:
        """Share of the bits and of the area inside ``mask`` (``(H, W)``, nonzero = inside).

        Returns ``{"area_share", "bit_share", "density_ratio", "policy_gain_inside", "policy_gain_outside"}``:
        ``density_ratio`` = bit_share / area_share (above 1: the region gets more bits per pixel than the
        rest of the image); the gains are area-weighted means.
        """
        frac = self.block_fraction(mask)
        area = self.block_area()
        weights_in, weights_out = frac * area, (1 - frac) * area   # pixels inside / outside, per block
        area_share = float(weights_in.sum()) / float(area.sum())
        total_bits = float(self.bits.sum())
        bit_share = float((frac * self.bits).sum()) / total_bits if total_bits > 0 else 0.0

        def mean_gain(wts: np.ndarray) -> float | None:
            return float((wts * self.policy_gain).sum() / wts.sum()) if wts.sum() > 0 else None

        return {"area_share": area_share, "bit_share": bit_share,
                "density_ratio": bit_share / area_share if area_share > 0 else None,
                "policy_gain_inside": mean_gain(weights_in), "policy_gain_outside": mean_gain(weights_out)}

    def summary(self) -> dict:
        """Scalars for a report: sizes, estimated vs real latent bits, policy-gain range."""
        return {"width": self.header.width, "height": self.header.height, "quality": self.header.quality + 1,
                "total_bytes": self.total_bytes, "y_bytes": self.y_bytes, "z_bytes": self.z_bytes,
                # container: header, the z length field and the checksum
                "header_bytes": self.total_bytes - self.y_bytes - self.z_bytes,
                "z_share": self.z_bytes / self.total_bytes,
                "bpp": 8 * self.total_bytes / (self.header.width * self.header.height),
                "y_bits_estimated": float(self.bits.sum()), "y_bits_written": 8 * self.y_bytes,
                "policy_gain_min": float(self.policy_gain.min()), "policy_gain_max": float(self.policy_gain.max()),
                "policy_gain_mean": float(self.policy_gain.mean())}


@torch.no_grad()
def bit_allocation(codec: SemanticCodec, data: bytes) -> BitAllocation:
    """Read ``data`` (a fedcodec bitstream written by ``codec``) back into a :class:`BitAllocation`.

    Raises :class:`BitstreamError` / :class:`ModelMismatchError` like :func:`fedcodec.coding.decode_image`.
    """
    image, header = decode_image(codec, data)       # validates the container, the model id and the payload
    _, strings = unpack(data, expected_model_id=full_model_id(codec))
    m = codec.multiple
    shape = (-(-header.height // m), -(-header.width // m))
    q = torch.tensor([header.quality])
    try:
        lat = codec.decode_latents([[s] for s in strings], shape, q, header.portable)
    except Exception as exc:  # already decoded once above, so this is not expected; keep the error clear
        raise BitstreamError(f"bitstream payload is corrupt ({type(exc).__name__}: {exc})") from exc
    # The likelihood the coder's tables approximate: GaussianConditional at the coded scale, symbols as coded.
    _, likelihood = codec.gaussian_conditional(lat["symbols"], lat["scales"] * lat["gain"], training=False)
    bits = (-torch.log2(likelihood)).sum(dim=1)[0]
    policy = codec.policy(lat["means"].float(), lat["scales"].float(), q)[0, 0]
    gh, gw = -(-header.height // LATENT_STRIDE), -(-header.width // LATENT_STRIDE)
    if len(strings) == 2:   # versions 1-2: a string each
        y_bytes, z_bytes = len(strings[0]), len(strings[1])
    else:                   # one stream: the hyper-latent's part is its code length in the coder's own tables
        z_bytes = min(len(strings[0]), round(stream_code_length(codec.entropy_bottleneck, lat["z_symbols"]) / 8))
        y_bytes = len(strings[0]) - z_bytes
    return BitAllocation(header=header, bits=bits[:gh, :gw].double().numpy(),
                         policy_gain=policy[:gh, :gw].double().numpy(), image=image,
                         y_bytes=y_bytes, z_bytes=z_bytes, total_bytes=len(data))


def stream_code_length(model, symbols: torch.Tensor) -> float:
    """Bits rANS spends on the hyper-latent ``symbols`` ``(1, N, h, w)`` (integers, as coded) with the factorized
    prior's quantised tables: ``-log2`` of each symbol's table frequency over 2**16 (an escaped value: the
    escape symbol and its bypass nibbles). Within a stream of several parts this is the part's share; the
    coder's 8-byte flush and word padding count with the latent. Tested against the part coded alone."""
    from fedcodec.codec import coder_tables

    cdfs, lengths, offsets = coder_tables(model)
    precision = 16
    total = 0.0
    values = symbols.reshape(symbols.shape[1], -1).round().long()
    for c in range(values.shape[0]):
        cdf, size = cdfs[c], lengths[c] - 2          # the last row entry is the escape symbol
        for v in (values[c] - offsets[c]).tolist():
            if 0 <= v < size:
                total += precision - math.log2(cdf[v + 1] - cdf[v])
                continue
            total += precision - math.log2(cdf[size + 1] - cdf[size])
            raw = -2 * v - 1 if v < 0 else 2 * (v - size)
            nibbles = -(-raw.bit_length() // 4)
            total += 4 * (nibbles + nibbles // 15 + 1)
    return total


def plot_allocation(alloc: BitAllocation, path, mask: np.ndarray | None = None, title: str = "") -> None:
    """A PNG with three panels: the decoded image (mask outline if given), bits per 16x16 block, policy gain."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    h, w = alloc.header.height, alloc.header.width
    extent = (0, alloc.bits.shape[1] * LATENT_STRIDE, alloc.bits.shape[0] * LATENT_STRIDE, 0)
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.4))
    axes[0].imshow(alloc.image, cmap="gray")
    axes[0].set_title(f"decoded, quality {alloc.header.quality + 1}, "
                      f"{8 * alloc.total_bytes / (h * w):.4f} bpp")
    panels = [(alloc.bits, "magma", "bits per 16x16 block"),
              (alloc.policy_gain, "coolwarm", "policy gain (1 = neutral)")]
    for ax, (arr, cmap, label) in zip(axes[1:], panels):
        im = ax.imshow(arr, cmap=cmap, extent=extent, interpolation="nearest")
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
        ax.set_title(label)
    if mask is not None:
        for ax in axes:
            ax.contour(np.asarray(mask) > 0, levels=[0.5], colors="cyan", linewidths=0.4)
    for ax in axes:
        ax.set_xlim(0, w)
        ax.set_ylim(h, 0)
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
