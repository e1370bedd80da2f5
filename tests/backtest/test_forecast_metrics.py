"""Forecast metrics against hand-computed values; QLIKE's minimum; NaN pairs dropped and counted; the table."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest

from condorbrain.backtest.forecast_metrics import (
    brier_score,
    compare_forecasts,
    directional_accuracy,
    information_coefficient,
    mae,
    mse,
    qlike,
    reliability_curve,
)

NAN = float("nan")


def test_mse_and_mae_by_hand():
    f = [1.0, 2.0, 3.0, NAN, 5.0]
    y = [1.5, 1.0, 3.0, 4.0, NAN]
    # used pairs: (1, 1.5), (2, 1), (3, 3): errors -0.5, 1, 0
    s = mse(f, y)
    assert (s.value, s.n, s.n_dropped) == (pytest.approx((0.25 + 1.0 + 0.0) / 3), 3, 2)
    s = mae(f, y)
    assert (s.value, s.n, s.n_dropped) == (pytest.approx(1.5 / 3), 3, 2)


def test_all_nan_gives_nan_and_counts():
    s = mse([NAN, 1.0], [2.0, NAN])
    assert math.isnan(s.value) and (s.n, s.n_dropped) == (0, 2)


def test_qlike_by_hand():
    h = np.array([1.0, 2.0, 4.0])
    s2 = np.array([2.0, 2.0, 1.0])
    # ratio s2 / h = 2, 1, 0.25: losses 2 - ln 2 - 1, 0, 0.25 - ln 0.25 - 1
    expected = ((1 - math.log(2)) + 0.0 + (0.25 + math.log(4) - 1)) / 3
    s = qlike(h, s2)
    assert s.value == pytest.approx(expected, rel=1e-12) and s.n == 3 and s.n_dropped == 0
    assert qlike([3.0], [3.0]).value == 0.0


def test_qlike_is_minimised_at_the_truth():
    # A fixed proxy: the loss over a grid of forecasts is smallest at h = s2.
    grid = np.linspace(0.5, 8.0, 751)
    losses = [qlike([g], [2.0]).value for g in grid]
    assert grid[int(np.argmin(losses))] == pytest.approx(2.0, abs=0.01)
    # A noisy proxy (robustness): the mean loss over draws s2 is smallest at h = mean(s2) (d/dh: -E[s2]/h^2 + 1/h).
    rng = np.random.default_rng(0)
    s2 = 2.0 * rng.chisquare(5, size=2_000) / 5
    losses = [qlike(np.full_like(s2, g), s2).value for g in grid]
    assert grid[int(np.argmin(losses))] == pytest.approx(s2.mean(), abs=0.01)


def test_qlike_zeros_are_left_out_and_counted_negatives_rejected():
    s = qlike([1.0, 0.0, 2.0, NAN, 1.0], [1.0, 1.0, 0.0, 1.0, 2.0])
    # scored: (1, 1) -> 0 and (1, 2) -> 2 - ln 2 - 1; zeros: rows 1 and 2; NaN: row 3
    assert (s.value, s.n, s.n_zero, s.n_dropped) == (pytest.approx((1 - math.log(2)) / 2), 2, 2, 1)
    with pytest.raises(ValueError, match="negative"):
        qlike([1.0, -1.0], [1.0, 1.0])
    with pytest.raises(ValueError, match="negative"):
        qlike([1.0, 1.0], [1.0, -1.0])


def test_directional_accuracy_ties_and_nans():
    f = [0.5, -0.2, 0.1, 0.0, 0.3, NAN, -0.4]
    y = [0.1, 0.3, 0.2, 0.5, 0.0, 1.0, -0.1]
    # scored: (0.5, 0.1) hit, (-0.2, 0.3) miss, (0.1, 0.2) hit, (-0.4, -0.1) hit; ties: f = 0 and y = 0; 1 NaN
    s = directional_accuracy(f, y)
    assert (s.value, s.n, s.n_ties, s.n_dropped) == (pytest.approx(3 / 4), 4, 2, 1)
    rw = directional_accuracy(np.zeros(4), [1.0, -1.0, 2.0, 0.5])
    assert math.isnan(rw.value) and (rw.n, rw.n_ties) == (0, 4)


def test_information_coefficient_by_hand():
    f = [1.0, 2.0, 3.0, 4.0, 5.0]
    y = [2.0, 1.0, 4.0, 3.0, 5.0]
    # no ties: rho = 1 - 6 sum d^2 / (n (n^2 - 1)), d = (-1, 1, -1, 1, 0): 1 - 6 * 4 / 120 = 0.8
    assert information_coefficient(f, y).value == pytest.approx(0.8, rel=1e-12)
    # ties: ranks of y = [1, 2, 2, 3] -> [1, 2.5, 2.5, 4]; Pearson of [1, 2, 3, 4] with that:
    ry = np.array([1.0, 2.5, 2.5, 4.0])
    rx = np.arange(1.0, 5.0)
    expected = np.corrcoef(rx, ry)[0, 1]  # = 4.5 / sqrt(5 * 4.5) ~= 0.9487
    assert expected == pytest.approx(4.5 / math.sqrt(5 * 4.5))
    s = information_coefficient([1.0, 2.0, 3.0, 4.0, NAN], [1.0, 2.0, 2.0, 3.0, 7.0])
    assert s.value == pytest.approx(expected, rel=1e-12) and (s.n, s.n_dropped) == (4, 1)
    assert information_coefficient([5.0, 4.0, 1.0], [1.0, 2.0, 3.0]).value == pytest.approx(-1.0)


def test_information_coefficient_undefined_cases_are_nan():
    assert math.isnan(information_coefficient(np.zeros(5), np.arange(5.0)).value)  # constant forecast
    assert math.isnan(information_coefficient([1.0], [2.0]).value)


def test_brier_score_by_hand():
    p = [0.9, 0.2, 0.6, NAN, 1.0]
    y = [1.0, 0.0, 0.0, 1.0, 1.0]
    # (0.1^2 + 0.2^2 + 0.6^2 + 0) / 4 = (0.01 + 0.04 + 0.36) / 4
    s = brier_score(p, y)
    assert (s.value, s.n, s.n_dropped) == (pytest.approx(0.41 / 4), 4, 1)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        brier_score([1.2], [1.0])
    with pytest.raises(ValueError, match="0 or 1"):
        brier_score([0.5], [0.5])


def test_reliability_curve_by_hand():
    p = [0.05, 0.15, 0.12, 0.55, 0.95, 1.0, NAN, 0.5]
    y = [0.0, 1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 0.0]
    c = reliability_curve(p, y, n_bins=4)  # bins [0, .25), [.25, .5), [.5, .75), [.75, 1]
    np.testing.assert_allclose(c.bin_edges, [0.0, 0.25, 0.5, 0.75, 1.0])
    np.testing.assert_array_equal(c.count, [3, 0, 2, 2])
    np.testing.assert_allclose(c.mean_predicted, [(0.05 + 0.15 + 0.12) / 3, NAN, 0.525, 0.975])
    np.testing.assert_allclose(c.observed_frequency, [1 / 3, NAN, 0.5, 0.5])
    assert c.n_dropped == 1 and c.count.sum() == 7


def test_reliability_curve_of_calibrated_probabilities():
    rng = np.random.default_rng(1)
    p = rng.uniform(size=50_000)
    y = (rng.uniform(size=p.size) < p).astype(float)
    c = reliability_curve(p, y, n_bins=10)
    np.testing.assert_allclose(c.observed_frequency, c.mean_predicted, atol=0.02)


def test_shape_and_inf_are_rejected():
    with pytest.raises(ValueError, match="one length"):
        mse([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="inf"):
        mae([np.inf], [1.0])


def test_compare_forecasts_scores_everyone_on_the_same_rows():
    y = np.array([0.01, -0.02, 0.03, NAN, 0.02, -0.01])
    fc = {
        "random_walk": np.zeros(6),
        "good": np.array([0.015, -0.03, 0.02, 0.01, NAN, -0.02]),
        "bad": np.array([-0.01, 0.02, -0.03, 0.0, 0.01, 0.01]),
    }
    t = compare_forecasts(y, fc, kind="return")
    assert t["forecast"].to_list() == ["random_walk", "good", "bad"]
    assert t.columns == ["forecast", "n", "n_dropped", "mse", "mae", "directional_accuracy", "n_ties", "ic"]
    # common rows: 0, 1, 2, 5 (row 3: truth NaN, row 4: "good" NaN) -> n = 4, n_dropped = 2 for every forecast
    assert t["n"].to_list() == [4, 4, 4] and t["n_dropped"].to_list() == [2, 2, 2]
    rows = [0, 1, 2, 5]
    for name, f in fc.items():
        row = t.filter(pl.col("forecast") == name).row(0, named=True)
        assert row["mse"] == pytest.approx(np.mean((f[rows] - y[rows]) ** 2))
        assert row["mae"] == pytest.approx(np.mean(np.abs(f[rows] - y[rows])))
    good = t.filter(pl.col("forecast") == "good").row(0, named=True)
    assert good["directional_accuracy"] == 1.0 and good["ic"] == pytest.approx(1.0)
    rw = t.filter(pl.col("forecast") == "random_walk").row(0, named=True)
    assert rw["n_ties"] == 4 and math.isnan(rw["directional_accuracy"]) and math.isnan(rw["ic"])


def test_compare_forecasts_volatility_and_probability():
    vol = np.array([0.02, 0.01, 0.03, 0.015])
    t = compare_forecasts(vol, {"f": np.array([0.01, 0.01, 0.03, NAN])}, kind="volatility")
    assert t.columns == ["forecast", "n", "n_dropped", "mse_vol", "mae_vol", "mse_var", "qlike", "n_zero", "ic"]
    row = t.row(0, named=True)
    assert (row["n"], row["n_dropped"]) == (3, 1)
    assert row["mse_vol"] == pytest.approx(0.01**2 / 3)
    assert row["mse_var"] == pytest.approx((0.02**2 - 0.01**2) ** 2 / 3)
    assert row["qlike"] == pytest.approx((4.0 - math.log(4.0) - 1.0) / 3)  # only row 0 is off: s2 / h = 4
    assert row["n_zero"] == 0
    z = compare_forecasts(np.array([0.02, 0.0, 0.01]), {"f": np.full(3, 0.01)}, kind="volatility").row(0, named=True)
    assert (z["n"], z["n_zero"]) == (3, 1)  # the zero realised vol counts in MSE / MAE, not in QLIKE
    assert z["qlike"] == pytest.approx((4.0 - math.log(4.0) - 1.0) / 2)
    p = compare_forecasts(np.array([1.0, 0.0]), {"a": np.array([0.8, 0.4])}, kind="probability")
    assert p.columns == ["forecast", "n", "n_dropped", "brier"] and p["brier"][0] == pytest.approx((0.04 + 0.16) / 2)
    with pytest.raises(ValueError, match="kind"):
        compare_forecasts(vol, {"f": vol}, kind="price")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="shape"):
        compare_forecasts(vol, {"f": vol[:2]}, kind="volatility")
