"""BD-rate through the bjontegaard package: known answers, overlap, cleaning and errors."""

from __future__ import annotations

import pytest

from fedcodec.bdrate import BDResult, CurvesDoNotOverlapError, bd_rate, make_monotonic
from fedcodec.errors import DataError, FedcodecError

RATES = [0.05, 0.1, 0.2, 0.4, 0.8]
DICE = [0.60, 0.72, 0.80, 0.85, 0.88]


@pytest.mark.parametrize("method", ["akima", "pchip"])
def test_half_rate_is_minus_50(method):
    res = bd_rate(RATES, DICE, [r / 2 for r in RATES], DICE, method=method)
    assert isinstance(res, BDResult)
    assert res.bd_rate_percent == pytest.approx(-50.0, abs=0.5)
    assert res.method == method
    assert res.points_used == (5, 5)


@pytest.mark.parametrize("method", ["akima", "pchip"])
def test_double_rate_is_plus_100(method):
    res = bd_rate(RATES, DICE, [r * 2 for r in RATES], DICE, method=method)
    assert res.bd_rate_percent == pytest.approx(100.0, abs=0.5)


def test_identical_is_zero():
    res = bd_rate(RATES, DICE, RATES, DICE)
    assert res.bd_rate_percent == pytest.approx(0.0, abs=1e-9)
    assert res.metric_interval == (0.60, 0.88)
    assert res.overlap_fraction == pytest.approx(1.0)


def test_interval_is_the_overlap_and_point_counts_may_differ():
    # test curve: half the anchor's rate along the same log-linear line, covering only part of the Dice range
    test_rates = [0.05, 0.1, 0.2]
    test_dice = [0.72, 0.80, 0.85]
    anchor_at = dict(zip(DICE, RATES))
    res = bd_rate(RATES, DICE, test_rates, test_dice)
    assert res.metric_interval == (pytest.approx(0.72), pytest.approx(0.85))
    assert res.overlap_fraction == pytest.approx((0.85 - 0.72) / (0.88 - 0.60))
    assert res.points_used == (5, 3)
    assert all(anchor_at[d] == pytest.approx(2 * r) for r, d in zip(test_rates, test_dice))
    assert res.bd_rate_percent == pytest.approx(-50.0, abs=0.5)


def test_non_overlapping_curves_raise_with_both_ranges():
    with pytest.raises(CurvesDoNotOverlapError) as info:
        bd_rate(RATES, DICE, [0.1, 0.2, 0.3, 0.4], [0.90, 0.92, 0.93, 0.95])
    msg = str(info.value)
    assert "0.6" in msg and "0.88" in msg and "0.9" in msg and "0.95" in msg
    assert isinstance(info.value, FedcodecError)


def test_touching_curves_do_not_overlap():
    with pytest.raises(CurvesDoNotOverlapError):
        bd_rate(RATES, DICE, [1.0, 2.0, 3.0], [0.88, 0.90, 0.92])


def test_make_monotonic_sorts_and_drops():
    rates = [0.4, 0.05, 0.2, 0.1, 0.8, 0.3]
    dice = [0.85, 0.60, 0.80, 0.72, 0.84, 0.79]  # 0.8 saturates and dips; 0.3 dips below 0.2's Dice
    r, m = make_monotonic(rates, dice)
    assert r == [0.05, 0.1, 0.2, 0.4]
    assert m == [0.60, 0.72, 0.80, 0.85]
    # a rate tie keeps the better point
    assert make_monotonic([0.1, 0.1, 0.2], [0.5, 0.6, 0.7]) == ([0.1, 0.2], [0.6, 0.7])


def test_non_monotonic_input_is_cleaned_and_used():
    noisy_rates = RATES + [1.6, 0.3]
    noisy_dice = DICE + [0.87, 0.78]  # saturated point at 1.6, a dip at 0.3
    res = bd_rate(noisy_rates, noisy_dice, [r / 2 for r in RATES], DICE)
    assert res.points_used == (5, 5)
    assert res.bd_rate_percent == pytest.approx(-50.0, abs=0.5)


def test_too_few_points_after_cleaning():
    with pytest.raises(FedcodecError, match="at least 2 points"):
        bd_rate(RATES, DICE, [0.1, 0.2, 0.3], [0.8, 0.8, 0.7])


def test_bad_values_and_method():
    with pytest.raises(DataError, match="positive"):
        bd_rate([0.0, 0.1, 0.2], [0.5, 0.6, 0.7], RATES, DICE)
    with pytest.raises(DataError, match="finite"):
        bd_rate([0.1, 0.2, float("nan")], [0.5, 0.6, 0.7], RATES, DICE)
    with pytest.raises(DataError, match="3 rates but 2"):
        bd_rate([0.1, 0.2, 0.3], [0.5, 0.6], RATES, DICE)
    with pytest.raises(FedcodecError, match="akima"):
        bd_rate(RATES, DICE, RATES, DICE, method="spline")
