"""The pricer for synthetic option quotes: Black-Scholes-Merton prices, an implied-vol surface and a spread model.

This is the minimal pricing the data layer needs to *generate* quotes (chains on real bars, the synthetic intraday
market). It is deliberately private: analysis code should use ``condorbrain.features.black_scholes`` /
``implied_vol``. Data flows data -> features, so this module must not import ``condorbrain.features``.

The generator and the analytics agree: ``tests/features/test_with_data.py`` checks that
``condorbrain.features.black_scholes(...).price`` equals :func:`bs_price` here on a grid. This copy stays (layering).

Conventions: S, K in currency units per share; T in years of 365 days; r, q continuously compounded per year;
sigma annualised decimal (0.20 = 20 vol points).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.special import ndtr  # standard normal CDF; scipy is a dependency of arch

DAYS_PER_YEAR = 365.0
"""T is counted in 365-day years (calendar time), as the standard options libraries do."""


def bs_price(S: ArrayLike, K: ArrayLike, T: ArrayLike, r: ArrayLike, q: ArrayLike, sigma: ArrayLike,
             is_call: ArrayLike) -> NDArray[np.float64]:
    """Black-Scholes-Merton price of a European option, per share of underlying; arrays broadcast.

    .. math:: C = S e^{-qT} N(d_1) - K e^{-rT} N(d_2),\\quad P = K e^{-rT} N(-d_2) - S e^{-qT} N(-d_1),
              d_{1,2} = \\frac{\\ln(S/K) + (r - q \\pm \\sigma^2/2) T}{\\sigma\\sqrt{T}}

    Where ``sigma * sqrt(T)`` is 0 (at expiry, or zero vol) the price is the discounted forward intrinsic value
    ``max(±(S e^{-qT} - K e^{-rT}), 0)``, its limit; no warning is raised. S and K must be > 0.
    """
    S, K, T, r, q, sigma = (np.asarray(a, dtype=np.float64) for a in (S, K, T, r, q, sigma))
    is_call = np.asarray(is_call, dtype=bool)
    T = np.maximum(T, 0.0)
    vol_t = sigma * np.sqrt(T)
    pos = vol_t > 1e-12
    safe = np.where(pos, vol_t, 1.0)
    d1 = (np.log(S / K) + (r - q) * T) / safe + 0.5 * safe
    d2 = d1 - safe
    sign = np.where(is_call, 1.0, -1.0)
    fwd_s = S * np.exp(-q * T)
    disc_k = K * np.exp(-r * T)
    price = sign * (fwd_s * ndtr(sign * d1) - disc_k * ndtr(sign * d2))
    intrinsic = np.maximum(sign * (fwd_s - disc_k), 0.0)
    return np.where(pos, np.maximum(price, 0.0), intrinsic)


@dataclass(frozen=True)
class SurfaceParams:
    """Implied-vol surface around an ATM level: skew and smile in standardised moneyness, plus term structure.

    ``iv(K, T) = atm(T) * (1 + skew * x + smile * x**2)``, ``x = ln(K / F) / (atm(T) * sqrt(T_floor))``, clipped to
    [min_iv, max_iv]; ``atm(T) = long_run + (atm_30d - long_run) * g(T) / g(30/365)`` with
    ``g(T) = (1 - exp(-kappa T)) / (kappa T)`` (a mean-reverting variance term structure).
    """

    skew: float = -0.10
    """Slope of iv / atm per unit of standardised moneyness (negative: puts richer, equity-index style)."""
    smile: float = 0.02
    """Curvature of iv / atm per squared unit of standardised moneyness."""
    long_run: float = 0.20
    """Long-run ATM vol that long expiries revert to, annualised decimal."""
    kappa: float = 4.0
    """Mean-reversion speed of the term structure, per year."""
    min_iv: float = 0.03
    """Floor of the surface, annualised decimal."""
    max_iv: float = 3.0
    """Cap of the surface, annualised decimal."""
    min_t: float = 1.0 / (DAYS_PER_YEAR * 24.0)
    """Floor on T (years, one hour) used in the moneyness scaling so the wings stay finite near expiry."""

    def __post_init__(self) -> None:
        if not 0.0 < self.min_iv < self.max_iv:
            raise ValueError(f"need 0 < min_iv < max_iv, got {self.min_iv}, {self.max_iv}")
        if self.kappa <= 0 or self.long_run <= 0 or self.min_t <= 0:
            raise ValueError("kappa, long_run and min_t must be > 0")


def surface_iv(atm_30d: ArrayLike, S: ArrayLike, K: ArrayLike, T: ArrayLike, r: ArrayLike, q: ArrayLike,
               params: SurfaceParams) -> NDArray[np.float64]:
    """Implied vol (annualised decimal) at strike K and expiry T (years) given the 30-day ATM level; broadcasts."""
    atm_30d, S, K, T, r, q = (np.asarray(a, dtype=np.float64) for a in (atm_30d, S, K, T, r, q))
    t = np.maximum(T, params.min_t)

    def g(x: NDArray[np.float64]) -> NDArray[np.float64]:
        kx = params.kappa * x
        return -np.expm1(-kx) / kx

    atm = params.long_run + (atm_30d - params.long_run) * g(t) / g(np.asarray(30.0 / DAYS_PER_YEAR))
    atm = np.clip(atm, params.min_iv, params.max_iv)
    x = (np.log(K / S) - (r - q) * t) / (atm * np.sqrt(t))
    return np.clip(atm * (1.0 + params.skew * x + params.smile * x * x), params.min_iv, params.max_iv)


@dataclass(frozen=True)
class SpreadParams:
    """Bid/ask model: ``spread = max(min_spread, rel_spread * mid) * widen``, quotes on a tick grid.

    ``bid = floor((mid - spread/2) / tick) * tick`` (at least 0), ``ask = ceil((mid + spread/2) / tick) * tick``
    (at least bid + tick), so bid <= ask always holds.
    """

    min_spread: float = 0.02
    """Narrowest spread, currency units per share."""
    rel_spread: float = 0.03
    """Spread as a fraction of the mid price."""
    tick: float = 0.01
    """Price grid of bids and asks, currency units."""

    def __post_init__(self) -> None:
        if self.min_spread <= 0 or self.rel_spread < 0 or self.tick <= 0:
            raise ValueError("need min_spread > 0, rel_spread >= 0, tick > 0")


def bid_ask(mid: ArrayLike, params: SpreadParams, widen: ArrayLike = 1.0) -> tuple[NDArray[np.float64],
                                                                                  NDArray[np.float64]]:
    """Bid and ask around ``mid`` (currency units); ``widen`` (>= 1, broadcasts) scales the spread, e.g. by regime."""
    mid = np.asarray(mid, dtype=np.float64)
    half = 0.5 * np.maximum(params.min_spread, params.rel_spread * mid) * np.asarray(widen, dtype=np.float64)
    tick = params.tick
    # Round on the integer tick grid (1e-9 guards against 0.30000000000000004-style representation error).
    bid_ticks = np.maximum(np.floor((mid - half) / tick + 1e-9), 0.0)
    ask_ticks = np.maximum(np.ceil((mid + half) / tick - 1e-9), bid_ticks + 1.0)
    return np.round(bid_ticks * tick, 10), np.round(ask_ticks * tick, 10)
