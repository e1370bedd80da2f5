"""Baselines: units against the targets, hand-made values, HAR's OLS by a plain twin, GARCH against arch and on
simulated GARCH data, failure reporting, and look-ahead (truncating / changing the series after t)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from arch import arch_model

from condorbrain.backtest.baselines import (
    GARCH_SCALE,
    GarchConvergenceWarning,
    garch_vol_forecast,
    har_rv_forecast,
    momentum_return_forecast,
    return_baselines,
    trailing_vol_forecast,
    vol_baselines,
)
from condorbrain.features.targets import forward_log_return, forward_realized_vol


def _returns_of(close: np.ndarray) -> np.ndarray:
    """The module's convention: returns[t] = ln(close_t / close_{t-1}), NaN at the first bar."""
    return np.r_[np.nan, np.diff(np.log(close))]


def _close_of(returns: np.ndarray) -> np.ndarray:
    return 100.0 * np.exp(np.nancumsum(returns))


def _simulate_garch(n: int, omega: float, alpha: float, beta: float, seed: int) -> np.ndarray:
    """n returns of a zero-mean normal GARCH(1,1) started at its unconditional variance, with a leading NaN."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal(n)
    r = np.empty(n)
    s2 = omega / (1.0 - alpha - beta)
    for t in range(n):
        r[t] = math.sqrt(s2) * z[t]
        s2 = omega + alpha * r[t] ** 2 + beta * s2
    return np.r_[np.nan, r]


def _chi_mean_over_sqrt_k(k: int) -> float:
    """E[sqrt(chi2_k / k)] = sqrt(2 / k) Gamma((k + 1) / 2) / Gamma(k / 2)."""
    return math.sqrt(2.0 / k) * math.exp(math.lgamma((k + 1) / 2) - math.lgamma(k / 2))


# ----------------------------------------------------------------------------------------------------------------
# Units: the baselines forecast `forward_realized_vol`


def test_trailing_vol_hand_values():
    r = np.array([np.nan, 0.01, -0.02, 0.03, 0.0, -0.01])
    out = trailing_vol_forecast(r, horizon=2, window=3)
    # t=3: sqrt(2/3 * (1e-4 + 4e-4 + 9e-4)); t=4: (4e-4 + 9e-4 + 0); t=5: (9e-4 + 0 + 1e-4)
    expected = [np.nan, np.nan, np.nan, math.sqrt(2 / 3 * 14e-4), math.sqrt(2 / 3 * 13e-4), math.sqrt(2 / 3 * 10e-4)]
    np.testing.assert_allclose(out, expected, rtol=1e-12)


def test_constant_vol_baselines_agree_with_the_target_in_expectation():
    sigma, h, w, n = 0.01, 5, 22, 20_000
    rng = np.random.default_rng(0)
    r = np.r_[np.nan, sigma * rng.standard_normal(n)]
    target = forward_realized_vol(_close_of(r), h)
    trailing = trailing_vol_forecast(r, h, w)
    rows = np.isfinite(target) & np.isfinite(trailing)
    # Variances: both estimate h sigma^2 exactly in expectation (sampling error ~1% here).
    assert np.mean(trailing[rows] ** 2) == pytest.approx(h * sigma**2, rel=0.03)
    assert np.mean(target[rows] ** 2) == pytest.approx(h * sigma**2, rel=0.03)
    # Vols: both are sigma sqrt(h) times a chi mean; they differ only by Jensen's gap of 5 vs 22 squares.
    ratio = np.mean(target[rows]) / np.mean(trailing[rows])
    assert ratio == pytest.approx(_chi_mean_over_sqrt_k(h) / _chi_mean_over_sqrt_k(w), rel=0.01)
    # The fitted baselines forecast the same variance (their noise is the training sample's: ~5% for GARCH here).
    har = har_rv_forecast(r, h, train_end=5_000).vol
    assert np.nanmean(har**2) == pytest.approx(h * sigma**2, rel=0.05)
    garch = garch_vol_forecast(r[:3_001], h, train_end=1_000).vol
    assert np.nanmean(garch**2) == pytest.approx(h * sigma**2, rel=0.1)


def test_momentum_and_random_walk_are_in_forward_log_return_units():
    close = np.array([100.0, 101.0, 103.0, 102.0, 105.0, 104.0, 108.0])
    r = _returns_of(close)
    mom = momentum_return_forecast(r, horizon=2, window=3)
    # (h / n) ln(close_t / close_{t-n}) with h = 2, n = 3, by hand from the closes:
    expected = [np.nan, np.nan, np.nan, 2 / 3 * math.log(102 / 100), 2 / 3 * math.log(105 / 101),
                2 / 3 * math.log(104 / 103), 2 / 3 * math.log(108 / 102)]  # fmt: skip
    np.testing.assert_allclose(mom, expected, rtol=1e-12)
    base = return_baselines(r, 2, momentum_window=3)
    assert list(base) == ["random_walk", "momentum_3"]
    np.testing.assert_array_equal(base["random_walk"], np.zeros(len(close)))
    np.testing.assert_array_equal(base["momentum_3"], mom)
    # A steady 1%-per-bar trend: the fallback forecasts exactly the forward log return.
    trend = 100.0 * np.exp(0.01 * np.arange(30))
    f = momentum_return_forecast(_returns_of(trend), 5, 10)
    np.testing.assert_allclose(f[10:-5], forward_log_return(trend, 5)[10:-5], rtol=1e-9)


# ----------------------------------------------------------------------------------------------------------------
# HAR-RV


def test_har_matches_a_plain_loop_ols_on_the_training_range():
    r = _simulate_garch(600, 2e-6, 0.08, 0.9, seed=3)
    h, train_end, lags = 5, 400, (1, 5, 22)
    out = har_rv_forecast(r, h, train_end, lags=lags)
    # Twin: build the regression row by row with explicit slices.
    x_rows, y_rows = [], []
    for t in range(1 + 22 - 1, train_end - h):  # first finite return at 1; target ends at t + h <= train_end - 1
        x_rows.append([1.0, r[t] ** 2, np.mean(r[t - 4 : t + 1] ** 2), np.mean(r[t - 21 : t + 1] ** 2)])
        y_rows.append(np.mean(r[t + 1 : t + h + 1] ** 2))
    coef = np.linalg.lstsq(np.array(x_rows), np.array(y_rows), rcond=None)[0]
    fit = out.fit
    np.testing.assert_allclose([fit.intercept, fit.beta_daily, fit.beta_weekly, fit.beta_monthly], coef, rtol=1e-8)
    assert (fit.n_obs, fit.first_row, fit.last_row) == (len(y_rows), 22, train_end - h - 1)
    t = 450
    x_t = [1.0, r[t] ** 2, np.mean(r[t - 4 : t + 1] ** 2), np.mean(r[t - 21 : t + 1] ** 2)]
    assert out.vol[t] == pytest.approx(math.sqrt(h * np.dot(coef, x_t)), rel=1e-8)
    assert np.isnan(out.vol[: train_end - 1]).all() and np.isfinite(out.vol[train_end - 1 :]).all()
    assert out.n_negative == 0


def test_har_negative_fitted_variance_is_nan_and_counted():
    # Vol grows geometrically through the training range, so OLS fits a negative intercept (slope > 1); once vol
    # collapses to ~0 after train_end the fitted variance is that negative intercept: no forecast, counted.
    rng = np.random.default_rng(1)
    scale = np.r_[np.geomspace(0.002, 0.05, 200), np.full(100, 1e-6)]
    r = np.r_[np.nan, scale * rng.standard_normal(300)]
    out = har_rv_forecast(r, 5, 200)
    assert out.fit.intercept < 0
    assert out.n_negative > 0
    assert out.n_negative == int(np.isnan(out.vol[199:]).sum())


# ----------------------------------------------------------------------------------------------------------------
# GARCH(1,1)


def test_garch_recovers_simulated_parameters():
    omega, alpha, beta = 2e-6, 0.08, 0.90
    r = _simulate_garch(4_000, omega, alpha, beta, seed=11)
    out = garch_vol_forecast(r, 1, train_end=len(r))
    (fit,) = out.fits
    assert fit.converged and fit.status == 0 and out.n_failed == 0
    assert fit.alpha == pytest.approx(alpha, abs=0.04)
    assert fit.beta == pytest.approx(beta, abs=0.05)
    assert fit.alpha + fit.beta == pytest.approx(alpha + beta, abs=0.02)
    assert fit.omega / (1 - fit.alpha - fit.beta) == pytest.approx(omega / (1 - alpha - beta), rel=0.25)


def test_garch_forecast_equals_arch_analytic_forecast():
    r = _simulate_garch(500, 2e-6, 0.08, 0.9, seed=2)
    h, train_end = 10, 400
    out = garch_vol_forecast(r, h, train_end)
    # arch on the same sample, same scale and backcast: the same optimum, and its own h-step forecast at the last
    # in-sample bar equals ours at t = train_end - 1.
    y = r[1:train_end] * GARCH_SCALE
    model = arch_model(y, mean="Zero", vol="GARCH", p=1, q=1, rescale=False)
    res = model.fit(disp="off", backcast=model.volatility.backcast(y))
    fit = out.fits[0]
    np.testing.assert_allclose([fit.omega * GARCH_SCALE**2, fit.alpha, fit.beta], res.params.to_numpy(), rtol=1e-10)
    arch_var = res.forecast(horizon=h, start=len(y) - 1, reindex=False).variance.to_numpy()[0].sum()
    assert out.vol[train_end - 1] ** 2 * GARCH_SCALE**2 == pytest.approx(arch_var, rel=1e-10)
    assert np.isnan(out.vol[: train_end - 1]).all() and np.isfinite(out.vol[train_end - 1 :]).all()


def test_garch_constant_mean_adds_the_mean_back():
    r = _simulate_garch(400, 2e-6, 0.08, 0.9, seed=4) + 0.002
    zero = garch_vol_forecast(r, 5, 300, mean="Zero")
    const = garch_vol_forecast(r, 5, 300, mean="Constant")
    assert const.fits[0].converged and const.mean == "Constant"
    assert const.fits[0].mu == pytest.approx(0.002, abs=0.0015)
    assert zero.fits[0].mu == 0.0
    # Both forecast raw squared returns: the same level to within the estimation noise.
    np.testing.assert_allclose(np.nanmean(const.vol), np.nanmean(zero.vol), rtol=0.1)


def test_garch_refit_schedule_uses_expanding_past_windows():
    r = _simulate_garch(300, 2e-6, 0.08, 0.9, seed=6)  # 301 bars
    out = garch_vol_forecast(r, 3, train_end=200, refit_every=40)
    assert [f.fit_end for f in out.fits] == [200, 240, 280]
    assert [(f.first_row, f.last_row) for f in out.fits] == [(199, 238), (239, 278), (279, 300)]
    assert all(f.fit_end - 1 <= f.first_row for f in out.fits)  # a fit never sees a bar after its first forecast
    assert len({(f.alpha, f.beta) for f in out.fits}) == 3


def test_garch_failures_are_reported_and_left_nan():
    r = _simulate_garch(300, 2e-6, 0.08, 0.9, seed=7)
    with pytest.warns(GarchConvergenceWarning, match="1 of 1 GARCH fits did not converge"):
        out = garch_vol_forecast(r, 5, 200, maxiter=1)
    assert out.n_failed == 1 and not out.fits[0].converged and out.fits[0].status != 0
    assert out.fits[0].message
    assert np.isnan(out.vol).all()


# ----------------------------------------------------------------------------------------------------------------
# Look-ahead: a forecast at t depends on returns[..t] only


def _all_forecasts(r: np.ndarray, train_end: int) -> dict[str, np.ndarray]:
    out = vol_baselines(r, 5, train_end, window=22, refit_every=25)
    out |= return_baselines(r, 5, momentum_window=10)
    return out


def test_truncating_after_t_leaves_every_forecast_up_to_t_unchanged():
    r = _simulate_garch(330, 2e-6, 0.08, 0.9, seed=8)
    train_end = 220
    full = _all_forecasts(r, train_end)
    for t in (train_end - 1, train_end + 24, train_end + 25, 300, len(r) - 1):
        cut = _all_forecasts(r[: t + 1], train_end)
        for name, f in full.items():
            np.testing.assert_array_equal(cut[name], f[: t + 1], err_msg=f"{name} at t={t}")


def test_changing_returns_after_t_leaves_forecasts_up_to_t_unchanged():
    r = _simulate_garch(330, 2e-6, 0.08, 0.9, seed=9)
    train_end, t = 220, 260
    changed = r.copy()
    changed[t + 1 :] = 5.0 * changed[t + 1 :][::-1]  # a different, much wilder future
    a, b = _all_forecasts(r, train_end), _all_forecasts(changed, train_end)
    for name in a:
        np.testing.assert_array_equal(a[name][: t + 1], b[name][: t + 1], err_msg=name)
        if name != "random_walk":
            assert not np.array_equal(a[name][t + 1 :], b[name][t + 1 :]), name


def test_training_range_only_fixes_the_coefficients():
    # Changing returns at or after train_end changes no fitted coefficient of the first fit.
    r = _simulate_garch(330, 2e-6, 0.08, 0.9, seed=10)
    changed = r.copy()
    changed[250:] *= 3.0
    ha, hb = har_rv_forecast(r, 5, 250), har_rv_forecast(changed, 5, 250)
    assert ha.fit == hb.fit
    ga, gb = garch_vol_forecast(r, 5, 250), garch_vol_forecast(changed, 5, 250)
    assert ga.fits[0] == gb.fits[0]


# ----------------------------------------------------------------------------------------------------------------
# API


def test_vol_baselines_keys_and_components():
    r = _simulate_garch(260, 2e-6, 0.08, 0.9, seed=12)
    out = vol_baselines(r, 5, 200, window=10)
    assert list(out) == ["trailing_rv_10", "har_rv", "garch_1_1"]
    np.testing.assert_array_equal(out["trailing_rv_10"], trailing_vol_forecast(r, 5, 10))
    np.testing.assert_array_equal(out["har_rv"], har_rv_forecast(r, 5, 200).vol)
    np.testing.assert_array_equal(out["garch_1_1"], garch_vol_forecast(r, 5, 200).vol)
    assert all(v.shape == r.shape and v.dtype == np.float64 for v in out.values())


@pytest.mark.parametrize(
    ("returns", "kwargs", "match"),
    [
        (np.r_[np.nan, 0.01, np.nan, 0.02], {}, "NaN at index 2"),
        (np.r_[np.nan, 0.01, np.inf], {}, "inf"),
        (np.full(5, np.nan), {}, "no finite"),
        (np.zeros((2, 3)), {}, "1-D"),
    ],
)
def test_bad_returns_are_rejected(returns, kwargs, match):
    with pytest.raises(ValueError, match=match):
        trailing_vol_forecast(returns, 1, 2, **kwargs)


def test_bad_arguments_are_rejected():
    r = _simulate_garch(150, 2e-6, 0.08, 0.9, seed=13)
    with pytest.raises(ValueError, match="train_end"):
        har_rv_forecast(r, 5, 0)
    with pytest.raises(ValueError, match="regression rows"):
        har_rv_forecast(r, 5, 40)
    with pytest.raises(ValueError, match="GARCH needs"):
        garch_vol_forecast(r, 5, 50)
    with pytest.raises(ValueError, match="mean"):
        garch_vol_forecast(r, 5, 120, mean="AR")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="refit_every"):
        garch_vol_forecast(r, 5, 120, refit_every=0)
    with pytest.raises(ValueError, match="horizon"):
        trailing_vol_forecast(r, 0)
    with pytest.raises(ValueError, match="lags"):
        har_rv_forecast(r, 5, 140, lags=(5, 1, 22))
