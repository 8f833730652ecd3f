"""Synthetic X-ray coronary-angiography phantoms with exact vessel masks and per-hospital domain shifts.

The output must stay bit-identical across refactors: the test suite, the embedded default's records and the
benchmarks rely on ``make_phantoms(n, seed, size, hospital)`` giving the same arrays.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from fedcodec.data.sample import Sample
from fedcodec.data.windowing import default_window
from fedcodec.errors import DataError


@dataclass(frozen=True)
class DomainShift:
    """How one hospital's images differ from the source (pretraining) domain.

    Attributes:
        contrast: multiplier of vessel (and catheter) attenuation; < 1 = fainter vessels.
        noise: multiplier of the Poisson-Gaussian noise level; 0 = noiseless.
        blur: Gaussian blur sigma in pixels (at the output size), applied before the detector noise.
        gamma: display gamma, ``x -> x ** gamma`` on the ``[0, 1]`` image (< 1 brightens).
        offset: brightness offset added after gamma, in ``[-0.2, 0.2]``.
        scale: detector resolution; the image is resampled to ``size * scale``, gets its noise there and is
            resampled back to ``size`` (< 1 = lower resolution, blockier noise).
        bit_depth: 8 (``uint8``, window ``(0, 255)``) or 16 (``uint16``, same content scaled to
            0..65535, window ``(0, 65535)``).
    """

    contrast: float = 1.0
    noise: float = 1.0
    blur: float = 0.0
    gamma: float = 1.0
    offset: float = 0.0
    scale: float = 1.0
    bit_depth: int = 8

    def __post_init__(self) -> None:
        if not (self.contrast >= 0 and self.noise >= 0 and self.blur >= 0 and self.gamma > 0):
            raise DataError(f"invalid DomainShift {self}: contrast, noise, blur must be >= 0 and gamma > 0")
        if not -0.2 <= self.offset <= 0.2:
            raise DataError(f"invalid DomainShift {self}: offset must be in [-0.2, 0.2]")
        if not 0.1 <= self.scale <= 4.0:
            raise DataError(f"invalid DomainShift {self}: scale must be in [0.1, 4]")
        if self.bit_depth not in (8, 16):
            raise DataError(f"invalid DomainShift {self}: bit_depth must be 8 or 16")


_HOSPITALS: dict[int, DomainShift] = {
    0: DomainShift(),  # source domain used for pretraining
    1: DomainShift(contrast=0.5, noise=1.8, offset=0.05),  # low-dose: faint vessels, noisy
    2: DomainShift(blur=1.2, scale=0.5, noise=0.8),  # older system: blurry, half resolution
    3: DomainShift(gamma=0.6, offset=0.1, contrast=0.8),  # bright display gamma, washed out
    4: DomainShift(bit_depth=16, gamma=1.4, offset=-0.08, noise=0.6),  # 16-bit flat-panel detector, darker
    5: DomainShift(noise=3.0, contrast=0.9, blur=0.5),  # strong noise (fluoroscopy-like)
}


def hospital_shift(hospital: int) -> DomainShift:
    """The domain shift of a hospital id.

    0 is the source domain (``DomainShift()``); 1..5 are a fixed table (1 low-contrast + noisy, 2 blurry
    low-resolution, 3 bright gamma, 4 16-bit detector, 5 strong noise); ids > 5 are drawn from a random
    generator seeded with the id, so they are the same on every run.
    """
    if isinstance(hospital, bool) or not isinstance(hospital, (int, np.integer)) or hospital < 0:
        raise DataError(f"hospital id must be a non-negative integer, got {hospital!r}")
    hospital = int(hospital)
    if hospital in _HOSPITALS:
        return _HOSPITALS[hospital]
    rng = np.random.default_rng([hospital, 0x5EED])
    return DomainShift(
        contrast=round(float(rng.uniform(0.45, 1.3)), 3),
        noise=round(float(rng.uniform(0.4, 3.0)), 3),
        blur=round(float(rng.choice([0.0, 0.0, rng.uniform(0.3, 2.0)])), 3),
        gamma=round(float(np.exp(rng.uniform(-0.5, 0.4))), 3),
        offset=round(float(rng.uniform(-0.15, 0.15)), 3),
        scale=float(rng.choice([1.0, 1.0, 0.75, 0.5])),
        bit_depth=int(rng.choice([8, 8, 16])),
    )


def _walk(
    rng: np.random.Generator,
    start: tuple[float, float],
    theta: float,
    length: float,
    step: float,
    curvature: float,
    size: int,
) -> np.ndarray:
    """A smooth random centreline: ``(n, 2)`` float points ``(x, y)``, ``step`` apart, cut where it leaves the
    image by more than ``0.06 * size + 2`` pixels.

    The direction changes by a curvature that itself follows a damped random walk (``curvature`` = its
    stationary std in radians per pixel), so the path bends smoothly.
    """
    n = max(2, int(length / step) + 1)
    kappa = np.empty(n - 1)
    k = rng.normal(0.0, curvature)
    shocks = rng.normal(0.0, curvature * 0.45, n - 1)
    for i in range(n - 1):
        k = 0.9 * k + shocks[i]
        kappa[i] = k
    angles = theta + np.cumsum(kappa) * step
    pts = np.empty((n, 2))
    pts[0] = start
    pts[1:, 0] = start[0] + np.cumsum(np.cos(angles)) * step
    pts[1:, 1] = start[1] + np.cumsum(np.sin(angles)) * step
    margin = 0.06 * size + 2.0
    outside = (pts < -margin).any(axis=1) | (pts > size - 1 + margin).any(axis=1)
    if outside.any():
        pts = pts[: max(2, int(np.argmax(outside)) + 1)]
    return pts


def _vessel_tree(rng: np.random.Generator, size: int, s: float) -> list[np.ndarray]:
    """Centrelines of one tree as ``(n, 3)`` arrays of ``(x, y, radius)`` (pixels at ``size``).

    Root at (or just outside) an image edge pointing inwards, radius 4-6 px (times ``s = size / 256``)
    tapering along each branch; each branch end bifurcates into a continuation and a side branch (Murray's law
    radii) for 2-4 generations; the last generation tapers to a radius of 1 px.
    """
    edge = int(rng.integers(4))
    along = rng.uniform(0.15, 0.85) * size
    inset = rng.uniform(-0.04, 0.03) * size  # the thick root starts at or just outside the border
    start, inward = [
        ((along, inset), math.pi / 2),
        ((size - 1 - inset, along), math.pi),
        ((along, size - 1 - inset), -math.pi / 2),
        ((inset, along), 0.0),
    ][edge]
    generations = int(rng.integers(2, 5))
    r_min = 1.0 * s
    branches: list[np.ndarray] = []

    def grow(pos: tuple[float, float], theta: float, radius: float, length: float, gen: int) -> None:
        pts = _walk(rng, pos, theta, length, 2.0 * s, 0.02 / s, size)
        leaf = gen >= generations or radius <= r_min * 1.2
        r_end = r_min if leaf else max(r_min, radius * rng.uniform(0.8, 0.92))  # leaves taper to ~1 px
        radii = np.linspace(radius, r_end, len(pts))
        branches.append(np.column_stack([pts, radii]))
        end = pts[-1]
        if leaf or not (0 <= end[0] <= size - 1 and 0 <= end[1] <= size - 1):
            return
        d = pts[-1] - pts[-2]
        heading = math.atan2(d[1], d[0])
        side = 1.0 if rng.random() < 0.5 else -1.0
        r_main = max(r_min, r_end * rng.uniform(0.8, 0.92))
        r_side = max(r_min, (max(r_end**3 - r_main**3, 0.0)) ** (1 / 3))
        grow(tuple(end), heading + side * rng.uniform(0.05, 0.3), r_main, length * rng.uniform(0.75, 1.0), gen + 1)
        grow(tuple(end), heading - side * rng.uniform(0.5, 1.1), r_side, length * rng.uniform(0.55, 0.85), gen + 1)

    grow(start, inward + rng.uniform(-0.5, 0.5), rng.uniform(4.0, 6.0) * s, rng.uniform(0.28, 0.42) * size, 1)
    return branches


def _catheter(rng: np.random.Generator, size: int, s: float) -> np.ndarray:
    """Catheter centreline ``(n, 3)`` of ``(x, y, radius)``: enters from the border, long, nearly straight,
    constant radius 2-3 px (times ``s``)."""
    edge = int(rng.integers(4))
    along = rng.uniform(0.2, 0.8) * size
    start, inward = [
        ((along, -4.0), math.pi / 2),
        ((size + 3.0, along), math.pi),
        ((along, size + 3.0), -math.pi / 2),
        ((-4.0, along), 0.0),
    ][edge]
    pts = _walk(rng, start, inward + rng.uniform(-0.6, 0.6), rng.uniform(0.5, 0.85) * size, 2.5 * s, 0.004 / s,
                size)
    return np.column_stack([pts, np.full(len(pts), rng.uniform(2.0, 3.0) * s)])


def _tube_area(centrelines: list[np.ndarray], size: int) -> float:
    """Approximate in-image area in pixels of tubes around centrelines (``2 r`` times length, overlaps
    counted twice); cheap enough to steer the vessel density before rendering."""
    area = 0.0
    for c in centrelines:
        mid = (c[1:] + c[:-1]) / 2
        keep = ((mid[:, :2] >= 0) & (mid[:, :2] <= size - 1)).all(axis=1)
        seglen = np.hypot(*(c[1:, :2] - c[:-1, :2]).T)
        area += float((2 * mid[keep, 2] * seglen[keep]).sum())
    return area


def _render_tubes(centrelines: list[np.ndarray], size: int) -> tuple[np.ndarray, np.ndarray]:
    """Rasterise tubes around piecewise-linear centrelines on a ``(size, size)`` pixel grid.

    Each consecutive point pair is a segment whose radius varies linearly along it. For pixel centre ``p``
    (pixel ``(i, j)`` is at ``x = j, y = i``) and segment ``a -> b``: ``t`` = the clamped projection of ``p``
    on the segment, ``d`` = distance from ``p`` to ``a + t (b - a)``, ``r = r_a + t (r_b - r_a)``.

    Returns:
        ``(chord, inside)``: ``chord`` ``(size, size)`` float32, the largest ``2 sqrt(r^2 - d^2)`` over all
        segments (the path length of a ray through a tube of that cross-section, 0 outside); ``inside``
        ``(size, size)`` bool, pixels with ``d <= r`` for some segment.
    """
    chord = np.zeros(size * size, np.float32)
    inside = np.zeros(size * size, bool)
    segs = [np.column_stack([c[:-1], c[1:]]) for c in centrelines if len(c) >= 2]
    if not segs:
        return chord.reshape(size, size), inside.reshape(size, size)
    seg = np.concatenate(segs)  # (S, 6): xa, ya, ra, xb, yb, rb
    xa, ya, ra, xb, yb, rb = seg.T
    # Half-width of the pixel box around each segment's midpoint that contains the whole tube piece.
    half = np.ceil(np.hypot(xb - xa, yb - ya) / 2 + np.maximum(ra, rb) + 1).astype(int)
    for h in np.unique(half):  # few groups: boxes of equal size are processed together
        g = half == h
        off = np.arange(-h, h + 1, dtype=np.float32)
        cx = np.rint((xa[g] + xb[g]) / 2).astype(int)
        cy = np.rint((ya[g] + yb[g]) / 2).astype(int)
        px = (cx[:, None, None] + off[None, None, :]).astype(np.float32)  # (G, 1, K)
        py = (cy[:, None, None] + off[None, :, None]).astype(np.float32)  # (G, K, 1)
        ax, ay = xa[g].astype(np.float32)[:, None, None], ya[g].astype(np.float32)[:, None, None]
        dx, dy = (xb[g] - xa[g]).astype(np.float32)[:, None, None], (yb[g] - ya[g]).astype(np.float32)[:, None, None]
        len2 = np.maximum(dx * dx + dy * dy, 1e-12)
        t = np.clip(((px - ax) * dx + (py - ay) * dy) / len2, 0.0, 1.0)  # (G, K, K)
        d2 = (px - ax - t * dx) ** 2 + (py - ay - t * dy) ** 2
        r = ra[g].astype(np.float32)[:, None, None] + t * (rb[g] - ra[g]).astype(np.float32)[:, None, None]
        c2 = r * r - d2
        hit = c2 >= 0
        valid = hit & (px >= 0) & (px < size) & (py >= 0) & (py < size)
        flat = (np.broadcast_to(py, valid.shape)[valid].astype(np.int64) * size
                + np.broadcast_to(px, valid.shape)[valid].astype(np.int64))
        inside[flat] = True
        np.maximum.at(chord, flat, 2.0 * np.sqrt(c2[valid]))
    return chord.reshape(size, size), inside.reshape(size, size)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Smooth anatomy as an attenuation map ``(size, size)`` float32 >= 0 (larger = darker): low-frequency
    blobs, a dark heart shadow (soft ellipse), 3-5 soft rib-like bands and a mild vignette.

    Everything here is smooth, so it is computed on a grid of ``size // 4`` and resampled (bicubic).
    """
    n = max(16, size // 4)
    u = ((np.arange(n) + 0.5) / n).astype(np.float32)  # normalised coordinates in (0, 1)
    att = np.full((n, n), 0.2, np.float32)
    for _ in range(6):  # separable Gaussian blobs
        cx, cy = rng.uniform(-0.1, 1.1, 2)
        sig = rng.uniform(0.1, 0.35)
        att += rng.uniform(-0.08, 0.1) * np.outer(np.exp(-((u - cy) ** 2) / (2 * sig**2)),
                                                  np.exp(-((u - cx) ** 2) / (2 * sig**2)))
    X, Y = np.meshgrid(u, u)
    # Heart shadow.
    hx, hy = rng.uniform(0.35, 0.65), rng.uniform(0.45, 0.75)
    a, b, phi = rng.uniform(0.25, 0.42), rng.uniform(0.2, 0.35), rng.uniform(0, math.pi)
    cu, su = math.cos(phi), math.sin(phi)
    ex, ey = (X - hx) * cu + (Y - hy) * su, -(X - hx) * su + (Y - hy) * cu
    rho = np.sqrt((ex / a) ** 2 + (ey / b) ** 2)
    att += rng.uniform(0.18, 0.3) / (1.0 + np.exp((rho - 1.0) / 0.08))
    # Rib-like bands: gently curved, flat-topped stripes.
    phi = rng.uniform(-0.5, 0.5) + math.pi / 7
    cu, su = math.cos(phi), math.sin(phi)
    along, across = X * cu + Y * su, -X * su + Y * cu
    bend = rng.uniform(-0.4, 0.4)
    first, gap = rng.uniform(-0.2, 0.1), rng.uniform(0.16, 0.24)
    for k in range(int(rng.integers(3, 6))):
        d = across - (first + k * gap) - bend * (along - 0.5) ** 2
        att += rng.uniform(0.04, 0.08) * np.exp(-((d / rng.uniform(0.035, 0.05)) ** 4))
    # Vignette of the image intensifier.
    att += 0.25 * ((X - 0.5) ** 2 + (Y - 0.5) ** 2)
    return _resample(att, (size, size)) if n != size else att


def _resample(img: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Resize a float image ``(h, w)`` to ``shape`` (bicubic upsampling, antialiased downsampling)."""
    from PIL import Image

    out = Image.fromarray(img.astype(np.float32)).resize((shape[1], shape[0]), Image.Resampling.BICUBIC)
    return np.asarray(out, dtype=np.float32)


def make_phantom(
    rng: np.random.Generator,
    size: int = 256,
    shift: DomainShift = DomainShift(),
    return_catheter: bool = False,
) -> tuple[np.ndarray, np.ndarray] | tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One synthetic X-ray coronary angiogram with its exact vessel mask.

    Geometry (at ``size``, lengths scaled by ``size / 256``): 1-3 vessel trees, each grown from a root near an
    edge with smoothly curving branches, radius 4-6 px tapering to about 1 px, 2-4 generations of
    bifurcations; a catheter (long smooth tube of constant radius 2-3 px entering from the border, with a
    radio-opaque wall) that is NOT in the mask; smooth background anatomy (:func:`_background`).

    Appearance: transmission ``exp(-(background + k * contrast * chord))`` with ``chord`` the ray length
    through each tube (soft vessel edges, darker where thicker); then blur, resampling to ``size * scale``,
    Poisson-Gaussian noise in its heteroscedastic Gaussian form (variance ``x / photons + read**2`` with
    ``photons = 1800 / noise**2`` at full brightness and ``read = 0.004 * noise``), resampling back, gamma,
    offset and quantisation. About 5-12% of the pixels are vessel (mean about 8%).

    Returns:
        ``(image, mask)``: image ``(size, size)`` ``uint8`` (or ``uint16`` scaled to 0..65535 when
        ``shift.bit_depth == 16``), vessels dark on a bright background; mask ``(size, size)`` ``uint8`` in
        ``{0, 1}``: exactly the pixels within the local vessel radius of a vessel centreline. With
        ``return_catheter=True`` a third ``(size, size)`` ``uint8`` ``{0, 1}`` array marks the catheter tube.
    """
    if size < 16:
        raise DataError(f"phantom size must be at least 16, got {size}")
    s = size / 256.0
    # 1-3 trees, added until their estimated area (2 r x length) reaches a drawn target of 6-10% of the image;
    # a tree that would take the total past 13% is regrown (at most 4 tries).
    target = rng.uniform(0.06, 0.10) * size * size
    trees: list[np.ndarray] = []
    area = 0.0
    for _ in range(3):
        for _ in range(4):
            tree = _vessel_tree(rng, size, s)
            tree_area = _tube_area(tree, size)
            if area + tree_area <= 0.13 * size * size:
                break
        trees.extend(tree)
        area += tree_area
        if area >= target:
            break
    vessel_chord, vessel_mask = _render_tubes(trees, size)
    cath = _catheter(rng, size, s)
    outer, cath_mask = _render_tubes([cath], size)
    inner = cath.copy()
    inner[:, 2] *= 0.6
    lumen, _ = _render_tubes([inner], size)
    cath_chord = outer - 0.5 * lumen  # wall denser than the contrast-filled lumen: "tram-track" edges

    k = np.float32(0.05 / s * shift.contrast)  # attenuation per pixel of path length
    att = _background(rng, size) + k * (vessel_chord + np.float32(1.2) * cath_chord)
    x = np.exp(-att)  # transmission in (0, 1), about 0.35..0.85 on the background
    if shift.blur > 0:
        from scipy.ndimage import gaussian_filter

        x = gaussian_filter(x, shift.blur, mode="nearest")
    low = max(8, int(round(size * shift.scale)))
    if low != size:
        x = _resample(x, (low, low))
    if shift.noise > 0:
        # Poisson-Gaussian noise in its usual heteroscedastic Gaussian form: variance x / photons + read**2.
        photons, read = 1800.0 / shift.noise**2, 0.004 * shift.noise
        sd = np.sqrt(np.clip(x, 0, None) / photons + read**2)
        x = x + sd * rng.standard_normal(x.shape, dtype=np.float32)
    if low != size:
        x = _resample(x, (size, size))
    x = np.clip(x, 0.0, 1.0)
    if shift.gamma != 1.0:
        x **= np.float32(shift.gamma)
    x = np.clip(x + np.float32(shift.offset), 0.0, 1.0)
    if shift.bit_depth == 16:
        image = np.rint(x * 65535.0).astype(np.uint16)
    else:
        image = np.rint(x * 255.0).astype(np.uint8)
    mask = vessel_mask.astype(np.uint8)
    if return_catheter:
        return image, mask, cath_mask.astype(np.uint8)
    return image, mask


def make_phantoms(n: int, seed: int = 0, size: int = 256, hospital: int = 0) -> list[Sample]:
    """``n`` phantoms of one hospital, named ``f"h{hospital}_{i:04d}"``.

    Phantom ``i`` uses ``np.random.default_rng([seed, hospital, i])``, so the output depends only on
    ``(seed, hospital, i)``: the same arguments give identical arrays, ``make_phantoms(5)[:3]`` equals
    ``make_phantoms(3)``, and different hospitals get different anatomy as well as a different
    :func:`hospital_shift`.

    Returns:
        Samples with ``(size, size)`` images (``uint8``, window ``(0, 255)``, or ``uint16``, window
        ``(0, 65535)``) and ``uint8`` ``{0, 1}`` masks.
    """
    if n < 0 or seed < 0:
        raise DataError(f"number of phantoms and seed must be >= 0, got n={n}, seed={seed}")
    shift = hospital_shift(hospital)
    window = default_window(shift.bit_depth)
    out = []
    for i in range(n):
        image, mask = make_phantom(np.random.default_rng([seed, hospital, i]), size, shift)
        out.append(Sample(image, mask, f"h{hospital}_{i:04d}", shift.bit_depth, window))
    return out
