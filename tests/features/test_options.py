"""Black-Scholes, implied vol and greeks proxies against textbook values, put-call parity, finite differences."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from scipy.stats import norm

from condorbrain.features import black_scholes, greeks_proxy, implied_vol


def _grid(n: int = 4000, seed: int = 0) -> dict[str, np.ndarray]:
    """Random but ordinary contracts: moneyness 0.6..1.6, 1 week..3 years, vol 5%..150%, rates/dividends."""
    rng = np.random.default_rng(seed)
    S = rng.uniform(20, 600, n)
    return {
        "S": S,
        "K": S * np.exp(rng.uniform(-0.5, 0.5, n)),
        "T": np.exp(rng.uniform(np.log(7 / 365), np.log(3.0), n)),
        "r": rng.uniform(-0.01, 0.08, n),
        "sigma": np.exp(rng.uniform(np.log(0.05), np.log(1.5), n)),
        "q": rng.uniform(0.0, 0.05, n),
        "is_call": rng.random(n) < 0.5,
    }


# ---------------------------------------------------------------- textbook values


def test_hull_price_examples() -> None:
    # Hull, Options, Futures and Other Derivatives (8th ed.), Example 15.6: S=42, K=40, r=10%, sigma=20%, T=0.5
    # -> call 4.76, put 0.81 (printed to the cent).
    assert black_scholes(42, 40, 0.5, 0.10, 0.20, True).price == pytest.approx(4.76, abs=0.005)
    assert black_scholes(42, 40, 0.5, 0.10, 0.20, False).price == pytest.approx(0.81, abs=0.005)
    # Hull Example 17.1 (index with dividend yield): S=930, K=900, r=8%, q=3%, sigma=20%, T=2/12 -> call 51.83.
    assert black_scholes(930, 900, 2 / 12, 0.08, 0.20, True, q=0.03).price == pytest.approx(51.83, abs=0.005)


def test_hull_greeks_example() -> None:
    # Hull's running greeks example (Ch. 19): S=49, K=50, r=5%, sigma=20%, T=20 weeks = 0.3846 years, a call:
    # price 2.40, delta 0.522, gamma 0.066, theta -4.31 per year (= -0.0118 per calendar day), vega 12.1 per unit
    # of sigma (= 0.121 per vol point), rho 8.91 per unit of r (= 0.0891 per 1%).
    g = black_scholes(49, 50, 0.3846, 0.05, 0.20, True)
    assert float(g.price) == pytest.approx(2.40, abs=0.005)
    assert float(g.delta) == pytest.approx(0.522, abs=0.0005)
    assert float(g.gamma) == pytest.approx(0.066, abs=0.0005)
    assert float(g.theta) * 365 == pytest.approx(-4.31, abs=0.005)
    assert float(g.vega) == pytest.approx(0.121, abs=0.0005)
    assert float(g.rho) == pytest.approx(0.0891, abs=0.00005)


def test_closed_form_against_scipy_norm() -> None:
    # An independent evaluation of the textbook formulas with scipy.stats.norm (not the module's code path).
    p = _grid(200, seed=3)
    S, K, T, r, s, q, c = (p[k] for k in ("S", "K", "T", "r", "sigma", "q", "is_call"))
    d1 = (np.log(S / K) + (r - q + 0.5 * s**2) * T) / (s * np.sqrt(T))
    d2 = d1 - s * np.sqrt(T)
    call = S * np.exp(-q * T) * norm.cdf(d1) - K * np.exp(-r * T) * norm.cdf(d2)
    put = K * np.exp(-r * T) * norm.cdf(-d2) - S * np.exp(-q * T) * norm.cdf(-d1)
    g = black_scholes(S, K, T, r, s, c, q)
    np.testing.assert_allclose(g.price, np.where(c, call, put), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(g.gamma, np.exp(-q * T) * norm.pdf(d1) / (S * s * np.sqrt(T)), rtol=1e-10)


# ---------------------------------------------------------------- identities and derivatives


def test_put_call_parity() -> None:
    p = _grid()
    S, K, T, r, s, q = (p[k] for k in ("S", "K", "T", "r", "sigma", "q"))
    call, put = black_scholes(S, K, T, r, s, True, q), black_scholes(S, K, T, r, s, False, q)
    forward_gap = S * np.exp(-q * T) - K * np.exp(-r * T)
    np.testing.assert_allclose(call.price - put.price, forward_gap, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(call.delta - put.delta, np.exp(-q * T), atol=1e-12)
    np.testing.assert_allclose(call.gamma, put.gamma, rtol=1e-12)
    np.testing.assert_allclose(call.vega, put.vega, rtol=1e-12)
    # d(C - P)/dr per 1% = K T e^{-rT} / 100 ; d(C - P)/dt per day = (r K e^{-rT} - q S e^{-qT}) / 365
    np.testing.assert_allclose(call.rho - put.rho, K * T * np.exp(-r * T) / 100, rtol=1e-10)
    np.testing.assert_allclose(
        call.theta - put.theta, (q * S * np.exp(-q * T) - r * K * np.exp(-r * T)) / 365, rtol=1e-8, atol=1e-12
    )


@pytest.mark.parametrize("greek", ["delta", "gamma", "vega", "theta", "rho"])
def test_greeks_match_finite_differences(greek: str) -> None:
    p = _grid(2000, seed=1)
    S, K, T, r, s, q, c = (p[k] for k in ("S", "K", "T", "r", "sigma", "q", "is_call"))

    def price(**kw: np.ndarray) -> np.ndarray:
        args = {"S": S, "K": K, "T": T, "r": r, "sigma": s, "q": q} | kw
        return black_scholes(args["S"], args["K"], args["T"], args["r"], args["sigma"], c, args["q"]).price

    g = getattr(black_scholes(S, K, T, r, s, c, q), greek)
    if greek == "delta":
        h = 1e-5 * S
        fd = (price(S=S + h) - price(S=S - h)) / (2 * h)
    elif greek == "gamma":  # central difference of the analytic delta (itself checked against price differences)
        h = 1e-5 * S
        fd = (black_scholes(S + h, K, T, r, s, c, q).delta - black_scholes(S - h, K, T, r, s, c, q).delta) / (2 * h)
    elif greek == "vega":  # per vol point
        h = 1e-5
        fd = (price(sigma=s + h) - price(sigma=s - h)) / (2 * h) / 100
    elif greek == "theta":  # per calendar day: -dV/dT / 365
        h = 1e-6
        fd = -(price(T=T + h) - price(T=T - h)) / (2 * h) / 365
    else:  # rho per 1%
        h = 1e-6
        fd = (price(r=r + h) - price(r=r - h)) / (2 * h) / 100
    scale = np.abs(g) + 1e-6 * np.abs(price()) + 1e-9 * S
    np.testing.assert_array_less(np.abs(g - fd) / scale, 1e-4)


# ---------------------------------------------------------------- edges


def test_edges_finite_and_warning_free() -> None:
    S = np.array([100.0] * 9)
    K = np.array([50.0, 100.0, 200.0, 100.0, 1e-3, 1e6, 100.0, 90.0, 110.0])
    T = np.array([0.0, 0.0, 0.0, 1e-12, 1.0, 1.0, 1.0, 1e-300, 2.0])
    sig = np.array([0.2, 0.2, 0.2, 0.2, 0.2, 0.2, 0.0, 1e-300, 1e-200])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for call in (True, False):
            g = black_scholes(S, K, T, 0.03, sig, call, 0.01)
            for name in ("price", "delta", "gamma", "vega", "theta", "rho"):
                assert np.isfinite(getattr(g, name)).all(), name
            assert (g.price >= 0).all()
    # At expiry: intrinsic value, 0/1 delta (1/2 exactly at the money), no gamma or vega.
    g = black_scholes(100.0, np.array([50.0, 100.0, 200.0]), 0.0, 0.03, 0.2, True)
    np.testing.assert_array_equal(g.price, [50.0, 0.0, 0.0])
    np.testing.assert_array_equal(g.delta, [1.0, 0.5, 0.0])
    np.testing.assert_array_equal(g.gamma, [0.0, 0.0, 0.0])
    np.testing.assert_array_equal(g.vega, [0.0, 0.0, 0.0])
    p = black_scholes(100.0, np.array([50.0, 200.0]), 0.0, 0.03, 0.2, False)
    np.testing.assert_array_equal(p.price, [0.0, 100.0])
    np.testing.assert_array_equal(p.delta, [0.0, -1.0])
    # Zero vol before expiry: the discounted forward intrinsic value, and the carry-only theta.
    T1, r, q = 1.0, 0.05, 0.01
    z = black_scholes(100.0, 90.0, T1, r, 0.0, True, q)
    assert float(z.price) == pytest.approx(100 * np.exp(-q) - 90 * np.exp(-r), rel=1e-14)
    assert float(z.theta) == pytest.approx((q * 100 * np.exp(-q) - r * 90 * np.exp(-r)) / 365, rel=1e-12)
    # Approaching expiry and zero vol continuously: the limit agrees with a tiny positive T / sigma.
    near = black_scholes(100.0, np.array([95.0, 105.0]), 1e-10, 0.03, 0.2, True)
    at = black_scholes(100.0, np.array([95.0, 105.0]), 0.0, 0.03, 0.2, True)
    np.testing.assert_allclose(near.price, at.price, atol=1e-8)
    np.testing.assert_allclose(near.delta, at.delta, atol=1e-12)
    # Deep OTM: tiny but non-negative; deep ITM delta saturates.
    deep = black_scholes(100.0, np.array([1e-3, 1e6]), 0.5, 0.0, 0.3, True)
    assert deep.delta[0] == pytest.approx(1.0) and deep.delta[1] == 0.0 and deep.price[1] >= 0


def test_nan_marks_a_missing_row() -> None:
    g = black_scholes(np.array([100.0, np.nan, 100.0]), 100.0, 0.5, 0.0, np.array([0.2, 0.2, np.nan]), True)
    assert np.isfinite(g.price[0])
    for name in ("price", "delta", "gamma", "vega", "theta", "rho"):
        assert np.isnan(getattr(g, name)[1:]).all(), name


def test_broadcasting_shapes() -> None:
    g = black_scholes(np.full((3, 1), 100.0), np.array([90.0, 100.0, 110.0, 120.0]), 0.25, 0.02, 0.2, True)
    assert g.price.shape == (3, 4) and g.rho.shape == (3, 4)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"S": -1.0}, "S"),
        ({"S": 0.0}, "S"),
        ({"K": 0.0}, "K"),
        ({"T": -0.1}, "T"),
        ({"sigma": -0.2}, "sigma"),
        ({"r": np.inf}, "r"),
        ({"q": -np.inf}, "q"),
        ({"S": np.inf}, "S"),
        ({"is_call": np.array([0.5])}, "is_call"),
        ({"is_call": "C"}, "is_call"),
    ],
)
def test_bad_input_names_the_argument(kwargs: dict, name: str) -> None:
    args = {"S": 100.0, "K": 100.0, "T": 0.5, "r": 0.01, "sigma": 0.2, "is_call": True} | kwargs
    with pytest.raises(ValueError, match=rf"^{name} "):
        black_scholes(**args)


# ---------------------------------------------------------------- implied vol


def test_implied_vol_round_trip() -> None:
    p = _grid(20000, seed=2)
    S, K, T, r, s, q, c = (p[k] for k in ("S", "K", "T", "r", "sigma", "q", "is_call"))
    price = black_scholes(S, K, T, r, s, c, q).price
    iv = implied_vol(price, S, K, T, r, c, q)
    # Every price within the bounds is matched: reprice at the solved vol.
    ok = np.isfinite(iv)
    np.testing.assert_allclose(black_scholes(S, K, T, r, iv, c, q).price[ok], price[ok], rtol=1e-11, atol=1e-12)
    # Where the option's time value is visible in the price (the vol is identifiable), the vol itself comes back.
    other = black_scholes(S, K, T, r, s, ~c, q).price
    F = S * np.exp((r - q) * T)
    time_value = np.where((K >= F) == c, price, other)  # the OTM member of the pair
    identifiable = time_value > 1e-6 * S
    assert identifiable.mean() > 0.6
    assert ok[identifiable].all()
    np.testing.assert_allclose(iv[identifiable], s[identifiable], rtol=1e-8)


def test_implied_vol_extreme_but_valid() -> None:
    # Deep OTM (price 1e-40 of spot), short and very long expiries, vols from 1% to 500%.
    S, K = 100.0, np.array([300.0, 30.0, 100.0, 100.0, 101.0, 100.0])
    T = np.array([0.05, 0.05, 1 / (365 * 24 * 60), 30.0, 0.01, 1.0])
    sig = np.array([0.25, 0.25, 0.15, 0.4, 0.01, 5.0])
    c = np.array([True, False, True, False, True, True])
    price = black_scholes(S, K, T, 0.01, sig, c).price
    assert price[0] < 1e-30 and price[1] < 1e-30
    np.testing.assert_allclose(implied_vol(price, S, K, T, 0.01, c), sig, rtol=1e-7)


def test_implied_vol_nan_outside_bounds_never_raises() -> None:
    S, K, T, r, q = 100.0, 90.0, 0.5, 0.03, 0.01
    lower = S * np.exp(-q * T) - K * np.exp(-r * T)  # call's discounted intrinsic
    upper = S * np.exp(-q * T)  # call's upper bound
    prices = np.array([lower - 1e-6, upper, upper + 1.0, -1.0, np.nan, np.inf, 5.0, 12.0])  # lower ~ 10.84
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        iv = implied_vol(prices, S, K, T, r, True, q)
    assert np.isnan(iv[:6]).all()
    assert np.isfinite(iv[7]) and iv[7] > 0
    # Below intrinsic (5 < ~10.84) is NaN too.
    assert np.isnan(iv[6])
    # Bad rows in the other arguments: NaN, not an exception.
    bad = implied_vol(1.0, np.array([100.0, -1.0, 100.0, 100.0, np.nan]), np.array([100.0, 100, 0.0, 100, 100]),
                      np.array([0.5, 0.5, 0.5, -1.0, 0.5]), 0.0, True)  # fmt: skip
    assert np.isfinite(bad[0]) and np.isnan(bad[1:]).all()


def test_implied_vol_absurd_inputs_are_warning_free() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        iv = implied_vol(np.array([100.0, 1e-300, 1e-200, 0.0]), 100.0, np.array([1e-20, 1e30, 1e3, 100.0]), 1.0, 0.0,
                         True)  # fmt: skip
    # Deep ITM with no visible time value: sigma = 0 fits exactly; far OTM tiny prices still get a finite vol.
    assert iv[0] == 0.0 and np.isfinite(iv[1:3]).all() and iv[3] == 0.0
    reprice = black_scholes(100.0, 1e3, 1.0, 0.0, iv[2], True).price
    assert reprice == pytest.approx(1e-200, rel=1e-6)


def test_implied_vol_at_intrinsic_is_zero() -> None:
    # A put priced exactly at its discounted intrinsic value K e^{-rT} - S e^{-qT}: sigma = 0 fits.
    S, K, T, r = 100.0, 120.0, 0.5, 0.0
    assert implied_vol(K - S, S, K, T, r, False)[()] == 0.0


def test_implied_vol_errors() -> None:
    with pytest.raises(ValueError, match="^tol"):
        implied_vol(1.0, 100.0, 100.0, 1.0, 0.0, True, tol=0.0)
    with pytest.raises(ValueError, match="^is_call"):
        implied_vol(1.0, 100.0, 100.0, 1.0, 0.0, np.array([2.0]))


# ---------------------------------------------------------------- greeks proxies (seed 002)


def test_greeks_proxy_formulas() -> None:
    # Seed 002's formulas written out directly.
    S, K, T, s = 100.0, np.array([90.0, 100.0, 115.0]), 0.25, 0.3
    m = np.log(S / K) / (s * np.sqrt(T))
    d1 = m + 0.5 * s * np.sqrt(T)
    g = greeks_proxy(S, K, T, s, True)
    np.testing.assert_allclose(g.delta, norm.cdf(m), rtol=1e-13)
    np.testing.assert_allclose(g.gamma, norm.pdf(m) / (S * s * np.sqrt(T)), rtol=1e-13)
    np.testing.assert_allclose(g.vega, S * norm.pdf(d1) * np.sqrt(T), rtol=1e-13)
    np.testing.assert_allclose(g.theta, -g.gamma / (2 * T), rtol=1e-13)
    np.testing.assert_allclose(greeks_proxy(S, K, T, s, False).delta, norm.cdf(m) - 1, rtol=1e-13)
    # The proxy drops the sigma^2 T / 2 term of d1 (phi(m) instead of phi(d1)), so at a short expiry and moderate
    # vol its gamma stays within ~10% of Black-Scholes' (r = q = 0).
    bs = black_scholes(S, K, T, 0.0, s, True)
    assert np.all(np.abs(np.log(g.gamma / bs.gamma)) < 0.1)


def test_greeks_proxy_edges() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        g = greeks_proxy(100.0, np.array([90.0, 100.0, 110.0]), 0.0, 0.2, True)
    np.testing.assert_array_equal(g.delta, [1.0, 0.5, 0.0])
    np.testing.assert_array_equal(g.theta, [0.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="^T "):
        greeks_proxy(100.0, 100.0, -1.0, 0.2)
