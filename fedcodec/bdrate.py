"""Bjontegaard delta rate on (rate, metric) curves, e.g. (bpp, Dice) or (bpp, PSNR).

The integral itself comes from the maintained ``bjontegaard`` package (FAU-LMS, 1.3.0): it interpolates
log10(rate) as a function of the metric (Akima or PCHIP) for anchor and test, integrates both over the metric
interval where the two curves overlap, and turns the mean log-rate difference into a percentage. This module
only prepares the points and reports what was integrated:

* :func:`make_monotonic` cleans each curve first, because ``bjontegaard`` (scipy's interpolators) needs the
  metric to be strictly increasing and task metrics such as Dice saturate or wobble at high rate.
* The metric interval integrated over is the overlap ``[max(min_a, min_t), min(max_a, max_t)]`` of the two
  cleaned metric ranges (exactly what ``bjontegaard`` uses); curves that do not overlap raise
  :class:`CurvesDoNotOverlapError` instead of ``bjontegaard``'s NaN plus warning.
* What ``bjontegaard`` 1.3.0 needs, read from its source: as many rates as metrics per curve (anchor and test
  may differ with ``require_matching_points=False``); ``akima`` uses scipy's ``Akima1DInterpolator`` for more
  than 2 points and a linear spline for exactly 2; ``pchip`` uses ``PchipInterpolator`` (2 points or more);
  ``cubic`` is a degree-3 polynomial fit and needs 4 points. Both need a strictly increasing metric. So at least
  2 points per curve remain after cleaning for ``akima``/``pchip`` (4 for ``cubic``); use 4 or more in practice.

A negative BD-rate means the test codec needs fewer bits than the anchor for the same metric.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from fedcodec.errors import DataError, FedcodecError

__all__ = ["BDResult", "CurvesDoNotOverlapError", "bd_rate", "make_monotonic", "MIN_POINTS"]

#: fewest points per curve (after cleaning) each interpolation method can use in ``bjontegaard`` 1.3.0
MIN_POINTS = {"akima": 2, "pchip": 2, "cubic": 4}


class CurvesDoNotOverlapError(FedcodecError):
    """The metric ranges of the anchor and test curves do not overlap, so no BD-rate exists."""


@dataclass(frozen=True)
class BDResult:
    """Result of :func:`bd_rate`."""

    bd_rate_percent: float  #: negative = test needs fewer bits than the anchor at equal metric
    metric_interval: tuple[float, float]  #: overlapping metric interval actually integrated over
    overlap_fraction: float  #: overlap length / anchor metric range (informative)
    method: str  #: "akima" or "pchip" (or "cubic")
    points_used: tuple[int, int]  #: points left after monotonic cleaning: (anchor, test)


def _as_points(rates: Sequence[float], metrics: Sequence[float], what: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        r = np.asarray(rates, dtype=np.float64)
        m = np.asarray(metrics, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{what}: rates and metrics must be numbers ({exc})") from None
    if r.ndim != 1 or m.ndim != 1:
        raise DataError(f"{what}: rates and metrics must be 1-D sequences, got shapes {r.shape} and {m.shape}")
    if r.shape != m.shape:
        raise DataError(f"{what}: {r.size} rates but {m.size} metric values")
    if not (np.all(np.isfinite(r)) and np.all(np.isfinite(m))):
        raise DataError(f"{what}: rates and metrics must be finite (got NaN or infinity)")
    if np.any(r <= 0):
        raise DataError(f"{what}: rates must be positive (BD-rate works on log rate), got {r[r <= 0].tolist()}")
    return r, m


def make_monotonic(rates: Sequence[float], metrics: Sequence[float]) -> tuple[list[float], list[float]]:
    """Sort a rate-metric curve by rate and keep only points that raise the metric.

    The points are sorted by increasing rate (ties: higher metric first); walking from the lowest rate up, a
    point is kept only if its metric is strictly greater than that of the last kept point. This is the
    "drop non-increasing points" clean-up used for saturating task curves (as CompressAI-Vision does before
    its BD computations): a point that costs more bits without improving the metric lies on no convex RD
    frontier and would make log-rate a non-function of the metric. The kept points therefore have strictly
    increasing rate and strictly increasing metric (of several points with the same rate, the best one stays).

    Returns ``(rates, metrics)`` as lists of floats. Raises :class:`fedcodec.errors.DataError` for mismatched
    lengths, non-finite values or non-positive rates.
    """
    r, m = _as_points(rates, metrics, "make_monotonic")
    order = sorted(range(r.size), key=lambda i: (r[i], -m[i]))
    kept_r: list[float] = []
    kept_m: list[float] = []
    for i in order:
        if kept_m and not m[i] > kept_m[-1]:
            continue
        kept_r.append(float(r[i]))
        kept_m.append(float(m[i]))
    return kept_r, kept_m


def bd_rate(
    anchor_rates: Sequence[float],
    anchor_metric: Sequence[float],
    test_rates: Sequence[float],
    test_metric: Sequence[float],
    method: str = "akima",
) -> BDResult:
    """Bjontegaard delta rate of ``test`` against ``anchor`` at equal metric (higher metric = better).

    Both curves are cleaned with :func:`make_monotonic`, then passed to ``bjontegaard.bd_rate`` with
    ``min_overlap=0`` and ``require_matching_points=False``. Raises :class:`CurvesDoNotOverlapError` when the
    cleaned metric ranges do not overlap (touching at one value counts as no overlap), and
    :class:`fedcodec.errors.FedcodecError` for an unknown method or when fewer than ``MIN_POINTS[method]`` points
    remain in a curve after cleaning.
    """
    if method not in MIN_POINTS:
        raise FedcodecError(f"unknown BD interpolation method {method!r}; use one of {', '.join(MIN_POINTS)}")
    ar, am = make_monotonic(anchor_rates, anchor_metric)
    tr, tm = make_monotonic(test_rates, test_metric)
    need = MIN_POINTS[method]
    for label, pts, raw in (("anchor", ar, anchor_rates), ("test", tr, test_rates)):
        if len(pts) < need:
            raise FedcodecError(
                f"BD-rate ({method}) needs at least {need} points with strictly increasing metric per curve; the "
                f"{label} curve has {len(pts)} left of {len(raw)} after sorting by rate and dropping points whose "
                f"metric does not increase"
            )

    lo = max(am[0], tm[0])
    hi = min(am[-1], tm[-1])
    if not hi > lo:
        raise CurvesDoNotOverlapError(
            f"the metric ranges do not overlap: anchor [{am[0]:.6g}, {am[-1]:.6g}], test [{tm[0]:.6g}, {tm[-1]:.6g}]"
            f"; BD-rate needs a common metric interval"
        )

    import bjontegaard  # imported here: it pulls in matplotlib.pyplot

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            value = bjontegaard.bd_rate(
                ar, am, tr, tm, method=method, require_matching_points=False, min_overlap=0
            )
        except ValueError as exc:  # bjontegaard/scipy input complaints
            raise FedcodecError(f"BD-rate ({method}) failed: {exc}") from None
    value = float(value)
    if not math.isfinite(value):
        notes = "; ".join(str(w.message) for w in caught) or "no warning given"
        raise FedcodecError(f"BD-rate ({method}) is not finite ({value}): {notes}")

    anchor_span = am[-1] - am[0]
    return BDResult(
        bd_rate_percent=value,
        metric_interval=(float(lo), float(hi)),
        overlap_fraction=float((hi - lo) / anchor_span),
        method=method,
        points_used=(len(ar), len(tr)),
    )
