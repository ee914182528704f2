"""Reading rules: synthetic metric values on both sides of each threshold give opposite readings."""

from __future__ import annotations

import numpy as np
import pytest

from ntkit.lab import readings as R

PAPER = "Zhang et al. 2017 (Fig. 1b)"


@pytest.mark.parametrize(("slope", "holds"), [(-0.5, True), (-0.36, True), (-0.34, False), (-0.66, False),
                                              (-0.64, True), (0.1, False)])
def test_slope_band(slope, holds):
    c = R.slope_band(slope, "the error")
    assert c.holds is holds
    assert ("consistent with" in c.text) is holds and ("unlike" in c.text) is (not holds)
    assert f"{slope:.3f}" in c.text


def test_slope_band_nan_is_inconclusive():
    assert R.slope_band(float("nan"), "x").holds is None


def test_a_rising_last_segment_never_settles():
    rising = [0.0, 0.5, 0.8, 0.9, 1.0]            # +11% over the last segment
    flat = [0.0, 0.5, 0.8, 0.99, 1.0]             # +1%
    falling = [0.0, 0.5, 1.2, 1.1, 1.0]
    c = R.settles(rising, "the weight change")
    assert c.holds is False and "still rising" in c.text and "settled" in c.text and "not settled" in c.text
    c = R.settles(flat, "the weight change")
    assert c.holds is True and "has settled" in c.text
    assert R.settles(falling, "the gap").holds is False
    assert "still falling" in R.settles(falling, "the gap").text
    # right at the tolerance: 4.9% settles, 5.1% does not
    assert R.settles([0, 1, 0.951, 1.0], "x").holds is True
    assert R.settles([0, 1, 0.949, 1.0], "x").holds is False


def test_a_non_monotone_curve_never_reads_as_the_papers_trend():
    xs = [0, 0.2, 0.4, 0.6, 0.8, 1.0]
    up = [50, 120, 180, 260, 300, 400]
    c = R.monotone(xs, up, "the time to fit", paper=PAPER)
    assert c.holds is True and f"the trend of {PAPER}" in c.text
    jump_then_flat_dip = [50, 300, 310, 305, 320, 330]   # one step goes down
    c = R.monotone(xs, jump_then_flat_dip, "the time to fit", paper=PAPER)
    assert c.holds is False and "trend of" not in c.text and c.text.startswith("Unlike")
    plateau = [50, 300, 300, 300, 300, 310]              # rises strictly at 2 of 5 steps
    assert R.monotone(xs, plateau, "the time to fit", paper=PAPER).holds is False
    four_of_five = [50, 300, 300, 310, 320, 330]          # strictly at 4 of 5, never down
    assert R.monotone(xs, four_of_five, "the time to fit", paper=PAPER).holds is True
    assert R.monotone(xs, up[::-1], "x", paper=PAPER).holds is False
    assert R.monotone(xs, up[::-1], "x", increasing=False, paper=PAPER).holds is True


def test_monotone_with_an_unfitted_run_is_inconclusive():
    c = R.monotone([0, 0.5, 1], [10, None, 30], "the time to fit", paper=PAPER)
    assert c.holds is None and "0.5" in c.text and "trend of" not in c.text


def test_rank_correlation_threshold():
    a = [1, 2, 3, 4, 5, 6]
    assert R.rank_correlation(a, [1, 2, 3, 4, 5, 6], "x and y", paper="p").holds is True
    # rho = 0.829 vs 0.771
    assert R.rank_correlation(a, [2, 1, 3, 4, 6, 5], "x and y", paper="p").holds is True
    assert R.rank_correlation(a, [2, 1, 4, 3, 6, 5], "x and y", paper="p").holds is True
    assert R.rank_correlation(a, [3, 1, 2, 4, 6, 5], "x and y", paper="p").holds is False
    assert R.rank_correlation(a, [0, 0, 0, 0, 0, 0], "x and y", paper="p").holds is None
    assert R.spearman(a, [3, 1, 2, 4, 6, 5]) == pytest.approx(0.7714285714, abs=1e-9)


def test_average_ranks_equal_scipy_rankdata():
    from scipy.stats import rankdata

    rng = np.random.default_rng(0)
    cases = ([3.0, 1.0, 2.0], [1, 1, 1], [2, 0, 2, 1, 0, 2], rng.integers(0, 5, 40), rng.normal(size=17),
             [5.0])
    for values in cases:
        np.testing.assert_array_equal(R.average_ranks(values), rankdata(values))


def test_threshold_reached_or_inconclusive():
    assert R.reached(12, 1e-4, 1e-3, 100, "true labels").holds is True
    c = R.reached(None, 0.3, 1e-3, 100, "true labels")
    assert c.holds is None and "no conclusion" in c.text


def test_ordering_of_conditions():
    assert R.slower(200, 100, "random pixels", "true labels", paper=PAPER).holds is True
    c = R.slower(90, 100, "random pixels", "true labels", paper=PAPER)
    assert c.holds is False and c.text.startswith("Unlike")
    assert R.slower(100, 100, "a", "b", paper=PAPER).holds is False
    assert R.slower(None, 100, "a", "b", paper=PAPER).holds is None


def test_falls_larger_below():
    assert R.falls([3, 2, 1], [1, 2, 3], "x").holds is True
    assert R.falls([3, 1, 2], [1, 2, 3], "x").holds is False
    assert R.larger(0.9, 0.1, "a", "b", paper="p").holds is True
    assert R.larger(0.1, 0.9, "a", "b", paper="p").holds is False
    assert R.below(0.05, 0.1, "a", paper="p").holds is True
    assert R.below(0.15, 0.1, "a", paper="p").holds is False


def test_status_from_claims():
    ok = R.Claim("r", True, "fine.")
    bad = R.Claim("r", False, "Unlike the paper, no.")
    unknown = R.Claim("r", None, "Did not reach the threshold.")
    assert R.status([ok, ok])[0] == R.REPRODUCED
    assert R.status([ok, bad]) == (R.NOT_REPRODUCED, "Unlike the paper, no.")
    assert R.status([ok, bad, unknown]) == (R.INCONCLUSIVE, "Did not reach the threshold.")
    assert R.status([ok, R.note("context")])[0] == R.REPRODUCED
    assert R.status([R.Claim("r", False, "x", key=False), ok])[0] == R.REPRODUCED
