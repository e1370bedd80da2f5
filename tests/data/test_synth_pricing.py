"""The private pricer of synthetic quotes: Black-Scholes values, parity, limits, surface and spread model."""

from __future__ import annotations

import numpy as np
import pytest

from condorbrain.data._pricing import SpreadParams, SurfaceParams, bid_ask, bs_price, surface_iv


def test_textbook_values() -> None:
    # Hull, Options Futures and Other Derivatives: S=K=100, T=1, r=5%, sigma=20% -> call 10.4506, put 5.5735
    call, put = bs_price(100.0, 100.0, 1.0, 0.05, 0.0, 0.2, [True, False])
    assert call == pytest.approx(10.450583572185565, abs=1e-10)
    assert put == pytest.approx(5.573526022256971, abs=1e-10)


def test_put_call_parity_with_dividends() -> None:
    rng = np.random.default_rng(0)
    S, K = rng.uniform(50, 150, 200), rng.uniform(50, 150, 200)
    T, r = rng.uniform(0.01, 2, 200), rng.uniform(0, 0.08, 200)
    q, sig = rng.uniform(0, 0.04, 200), rng.uniform(0.05, 1, 200)
    c, p = bs_price(S, K, T, r, q, sig, True), bs_price(S, K, T, r, q, sig, False)
    np.testing.assert_allclose(c - p, S * np.exp(-q * T) - K * np.exp(-r * T), atol=1e-10)


def test_limits_are_finite_and_warning_free() -> None:
    S, K = np.array([100.0, 100.0, 100.0, 100.0]), np.array([90.0, 110.0, 100.0, 1e4])
    at_expiry = bs_price(S, K, 0.0, 0.05, 0.0, 0.2, True)
    np.testing.assert_allclose(at_expiry, [10.0, 0.0, 0.0, 0.0])
    zero_vol = bs_price(S, K, 1.0, 0.0, 0.0, 0.0, False)
    np.testing.assert_allclose(zero_vol, [0.0, 10.0, 0.0, 9900.0])
    tiny = bs_price(S, K, 1e-12, 0.05, 0.0, 1e-6, [True, False, True, False])
    assert np.isfinite(tiny).all() and (tiny >= 0).all()


def test_surface_skew_and_term_structure() -> None:
    p = SurfaceParams()
    K = np.array([80.0, 100.0, 120.0])
    iv = surface_iv(0.2, 100.0, K, 30 / 365, 0.0, 0.0, p)
    assert iv[0] > iv[1] and iv[1] == pytest.approx(0.2, rel=1e-3)  # puts richer; ATM at the 30-day level
    # term structure reverts to long_run: a high 30-day level is lower at 1 year, a low one higher
    assert surface_iv(0.5, 100.0, 100.0, 1.0, 0.0, 0.0, p) < 0.5
    assert surface_iv(0.1, 100.0, 100.0, 1.0, 0.0, 0.0, p) > 0.1
    assert np.isfinite(surface_iv(0.2, 100.0, K, 0.0, 0.0, 0.0, p)).all()
    with pytest.raises(ValueError, match="min_iv"):
        SurfaceParams(min_iv=0.5, max_iv=0.1)


def test_bid_ask_on_tick_grid() -> None:
    mid = np.array([0.0, 0.004, 0.3, 1.234, 57.5])
    bid, ask = bid_ask(mid, SpreadParams(min_spread=0.02, rel_spread=0.03, tick=0.01), widen=np.array([1, 1, 1, 2, 1]))
    assert (bid >= 0).all() and (bid < ask).all() and (bid <= mid).all() and (ask >= mid).all()
    np.testing.assert_allclose(np.round(bid / 0.01), bid / 0.01, atol=1e-9)
    assert bid[4] == pytest.approx(56.63) and ask[4] == pytest.approx(58.37)  # 3% spread of 57.5 = 1.725


def test_agrees_with_the_analytics_pricer() -> None:
    """The generator's private pricer and condorbrain.features.black_scholes price the same quotes alike, so IVs
    recovered by features from synthetic quotes are the ones the generator used (data does not import features;
    only this test compares them)."""
    from condorbrain.features import black_scholes

    rng = np.random.default_rng(1)
    n = 500
    S, K = rng.uniform(50, 150, n), rng.uniform(40, 160, n)
    T = np.r_[0.0, rng.uniform(0, 2, n - 1)]
    r, q, sig, call = rng.uniform(0, 0.08, n), rng.uniform(0, 0.04, n), rng.uniform(0.0, 1.0, n), rng.random(n) < 0.5
    np.testing.assert_allclose(bs_price(S, K, T, r, q, sig, call), black_scholes(S, K, T, r, sig, call, q=q).price,
                               rtol=1e-12, atol=1e-12)
