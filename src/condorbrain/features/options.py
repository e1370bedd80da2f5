"""Options maths on numpy arrays: Black-Scholes(-Merton) prices and greeks, an implied-volatility solver, and seed
002's greeks proxies.

Conventions (those of the standard options libraries: QuantLib's ``BlackCalculator`` scaled as the trading screens
quote it, py_vollib's ``analytical`` greeks):

- ``S`` spot and ``K`` strike in price units (e.g. USD); ``T`` time to expiry in years of 365 calendar days;
  ``r`` the risk-free rate and ``q`` the dividend yield, both annualised and continuously compounded (0.05 = 5%);
  ``sigma`` the annualised volatility as a fraction (0.20 = 20%).
- ``price``: the option's value in price units.
- ``delta``: dV/dS, per 1 unit of spot (a call's delta is in [0, e^{-qT}]).
- ``gamma``: d2V/dS2, per unit of spot per unit of spot.
- ``vega``: dV/dsigma per *vol point*, i.e. the change in value for +0.01 of sigma (dV/dsigma / 100).
- ``theta``: dV/dt per *calendar day*, i.e. -dV/dT / 365 (negative for a long option that loses time value).
- ``rho``: dV/dr per *1% of r*, i.e. the change in value for +0.01 of r (dV/dr / 100).

Every function broadcasts its arguments (numpy rules) and returns float64 arrays of the broadcast shape.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.special import erfcx, ndtr

__all__ = ["Greeks", "GreeksProxy", "black_scholes", "greeks_proxy", "implied_vol"]

_SQRT_2PI = float(np.sqrt(2.0 * np.pi))
_SQRT_PI_2 = float(np.sqrt(np.pi / 2.0))
_SQRT2 = float(np.sqrt(2.0))
_LOG_SQRT_2PI = float(np.log(np.sqrt(2.0 * np.pi)))
# Below this total volatility sigma * sqrt(T) the d1 / d2 quotients (and, in the torch twin, their derivatives
# x / tot^2) would overflow; the option is then priced at its limit (sigma * sqrt(T) -> 0), which agrees with the
# formula to far beyond double precision (|d| is then either > 50, saturated, or |ln(F/K)| < 1e-148).
_TINY_TOTAL_VOL = 1e-150
# |d| beyond this saturates ndtr to exactly 0 or 1 and pdf to 0 in float64; clipping there keeps d * d finite.
_D_CLIP = 50.0

Array = NDArray[np.float64]


@dataclass(frozen=True)
class Greeks:
    """Black-Scholes value and greeks, each a float64 array of the broadcast input shape (units in the module doc).

    price: option value, price units. delta: per unit of spot. gamma: per unit of spot squared.
    vega: per vol point (+0.01 sigma). theta: per calendar day (365-day years). rho: per 1% of r (+0.01 r).
    """

    price: Array
    delta: Array
    gamma: Array
    vega: Array
    theta: Array
    rho: Array


def _as_float(name: str, value: ArrayLike) -> Array:
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be numeric, got {value!r}") from exc
    return arr


def _check(name: str, arr: Array, *, positive: bool = False, nonnegative: bool = False) -> None:
    """Raise ValueError naming `name` for +-inf or out-of-domain values; NaN is allowed (a missing row)."""
    if np.isinf(arr).any():
        raise ValueError(f"{name} must be finite (NaN marks a missing row), got an infinite value")
    if positive and (arr <= 0).any():  # NaN compares False: allowed
        raise ValueError(f"{name} must be > 0, got min {np.nanmin(arr)!r}")
    if nonnegative and (arr < 0).any():
        raise ValueError(f"{name} must be >= 0, got min {np.nanmin(arr)!r}")


def _as_bool(name: str, value: ArrayLike) -> NDArray[np.bool_]:
    arr = np.asarray(value)
    if arr.dtype == np.bool_:
        return arr
    if np.issubdtype(arr.dtype, np.integer) and np.isin(arr, (0, 1)).all():
        return arr.astype(np.bool_)
    raise ValueError(f"{name} must be boolean (True for a call, False for a put), got dtype {arr.dtype}")


def _d1_d2(x: Array, tot: Array) -> tuple[Array, Array, NDArray[np.bool_]]:
    """d1 = x / tot + tot / 2 and d2 = d1 - tot for x = log(F / K) and tot = sigma * sqrt(T).

    Where tot is ~0 (T == 0 or sigma == 0) the limits are returned: +-inf by the sign of x, 0 at the money.
    NaN in x or tot propagates. Returns (d1, d2, degenerate mask); both d are clipped to +-_D_CLIP.
    """
    degenerate = tot < _TINY_TOTAL_VOL  # NaN -> False: NaN flows through the regular branch
    safe_tot = np.where(degenerate, 1.0, tot)
    d1 = x / safe_tot + 0.5 * safe_tot
    d2 = d1 - safe_tot
    limit = np.where(x > 0, np.inf, np.where(x < 0, -np.inf, 0.0))
    d1 = np.clip(np.where(degenerate, limit, d1), -_D_CLIP, _D_CLIP)
    d2 = np.clip(np.where(degenerate, limit, d2), -_D_CLIP, _D_CLIP)
    return d1, d2, degenerate


def black_scholes(
    S: ArrayLike, K: ArrayLike, T: ArrayLike, r: ArrayLike, sigma: ArrayLike, is_call: ArrayLike, q: ArrayLike = 0.0
) -> Greeks:
    """European option value and greeks under Black-Scholes-Merton with a continuous dividend yield.

    With F = S e^{(r-q)T}, d1 = [ln(F/K) + sigma^2 T / 2] / (sigma sqrt T), d2 = d1 - sigma sqrt T:
    call = S e^{-qT} N(d1) - K e^{-rT} N(d2);  put = K e^{-rT} N(-d2) - S e^{-qT} N(-d1).

    Args:
        S: spot, > 0, price units. K: strike, > 0, price units. T: years to expiry (365-day years), >= 0.
        r: risk-free rate, annualised, continuous (0.05 = 5%). sigma: volatility, annualised fraction, >= 0.
        is_call: bool array, True for a call, False for a put. q: dividend yield, annualised, continuous.
        All broadcast together. NaN in any numeric input marks a missing row and gives NaN outputs for that row.

    Returns:
        `Greeks` (float64 arrays): price, delta, gamma, vega (per vol point), theta (per calendar day),
        rho (per 1% of r).

    Edges (finite and warning-free): when sigma * sqrt(T) == 0 (T == 0 at expiry, or sigma == 0) the limit is
    returned: the discounted forward intrinsic value max(+-(S e^{-qT} - K e^{-rT}), 0), delta e^{-qT} 1[F > K] for a
    call (0.5 e^{-qT} exactly at F == K), gamma 0 (the limit is a point mass at F == K; 0 elsewhere), vega the limit
    S e^{-qT} sqrt(T) phi(0) / 100 at F == K and 0 elsewhere, theta the carry terms only, rho its limit. Deep
    in/out of the money, N(d) saturates at 0 / 1 without overflow.

    Raises:
        ValueError: naming the argument, for +-inf, S <= 0, K <= 0, T < 0, sigma < 0 or a non-boolean is_call.
    """
    S_, K_, T_, r_, sig, q_ = (
        _as_float(n, v) for n, v in (("S", S), ("K", K), ("T", T), ("r", r), ("sigma", sigma), ("q", q))
    )
    call = _as_bool("is_call", is_call)
    _check("S", S_, positive=True)
    _check("K", K_, positive=True)
    _check("T", T_, nonnegative=True)
    _check("r", r_)
    _check("sigma", sig, nonnegative=True)
    _check("q", q_)
    S_, K_, T_, r_, sig, q_, call = np.broadcast_arrays(S_, K_, T_, r_, sig, q_, call)

    sqrt_t = np.sqrt(T_)
    tot = sig * sqrt_t  # total volatility sigma sqrt(T), dimensionless
    x = np.log(S_ / K_) + (r_ - q_) * T_  # log-moneyness ln(F / K)
    d1, d2, degenerate = _d1_d2(x, tot)
    df_q = np.exp(-q_ * T_)  # dividend discount factor
    df_r = np.exp(-r_ * T_)  # rate discount factor
    sign = np.where(call, 1.0, -1.0)
    n1 = ndtr(sign * d1)  # N(d1) for a call, N(-d1) for a put
    n2 = ndtr(sign * d2)
    pdf1 = np.exp(-0.5 * d1 * d1) / _SQRT_2PI  # phi(d1); exactly 0 at the +-inf limits

    price = sign * (S_ * df_q * n1 - K_ * df_r * n2)
    # The subtraction can leave a -1e-17-sized residue for a worthless option; a value is never negative.
    price = np.maximum(price, 0.0)
    delta = sign * df_q * n1
    safe_denom = np.where(degenerate, 1.0, S_ * tot)
    gamma = np.where(degenerate, 0.0, df_q * pdf1 / safe_denom)
    vega = S_ * df_q * pdf1 * sqrt_t / 100.0
    safe_sqrt_t = np.where(degenerate, 1.0, sqrt_t)
    decay = np.where(degenerate, 0.0, S_ * df_q * pdf1 * sig / (2.0 * safe_sqrt_t))  # the pdf term of theta
    theta_year = -decay + sign * (q_ * S_ * df_q * n1 - r_ * K_ * df_r * n2)
    theta = theta_year / 365.0
    rho = sign * K_ * T_ * df_r * n2 / 100.0
    f64 = np.float64
    return Greeks(*(np.asarray(v, dtype=f64) for v in (price, delta, gamma, vega, theta, rho)))


def _log_otm_value(a: Array, s: Array) -> tuple[Array, Array]:
    """log b and d(log b)/ds for the normalised out-of-the-money Black value b(-a, s), a = |ln(F/K)| >= 0, s > 0.

    b(x, s) = e^{x/2} N(x/s + s/2) - e^{-x/2} N(x/s - s/2) is the undiscounted OTM price divided by sqrt(F K).
    Where d1 = -a/s + s/2 <= 0 both N terms are tiny and their difference cancels, so b is written with the
    scaled complementary error function (e^{-x/2} phi(d2) = e^{x/2} phi(d1), N(d) = phi(d) sqrt(pi/2) erfcx(-d/sqrt2)):
    b = e^{-a/2} phi(d1) sqrt(pi/2) [erfcx(-d1/sqrt2) - erfcx(-d2/sqrt2)], computed in log space (never underflows).
    db/ds = e^{-a/2} phi(d1) in both branches (the normalised vega).
    """
    d1 = -a / s + 0.5 * s
    d2 = d1 - s
    log_pdf1 = -0.5 * np.minimum(d1 * d1, 1e300) - _LOG_SQRT_2PI
    tail = d1 <= 0
    # Tail branch (deep OTM / small s): differences of erfcx, arguments >= 0 so no overflow.
    d1t = np.where(tail, d1, 0.0)
    d2t = np.where(tail, d2, -1.0)
    mills = _SQRT_PI_2 * (erfcx(-d1t / _SQRT2) - erfcx(-d2t / _SQRT2))
    # Central branch: N(d1) >= 1/2 so the direct difference is well conditioned.
    direct = np.exp(-0.5 * a) * ndtr(np.where(tail, 0.0, d1)) - np.exp(0.5 * a) * ndtr(np.where(tail, -1.0, d2))
    # A difference that rounded to <= 0 gives NaN (the solver then bisects); each branch sees a safe 1.0 elsewhere.
    mills = np.where(tail, np.where(mills > 0, mills, np.nan), 1.0)
    direct = np.where(tail, 1.0, np.where(direct > 0, direct, np.nan))
    vega = np.exp(-0.5 * a + log_pdf1)  # db/ds
    log_b = np.where(tail, -0.5 * a + log_pdf1 + np.log(mills), np.log(direct))
    dlog_b = np.where(tail, 1.0 / mills, vega / direct)  # d(log b)/ds = vega / b
    return log_b, dlog_b


def implied_vol(
    price: ArrayLike,
    S: ArrayLike,
    K: ArrayLike,
    T: ArrayLike,
    r: ArrayLike,
    is_call: ArrayLike,
    q: ArrayLike = 0.0,
    *,
    tol: float = 1e-12,
    max_iter: int = 100,
) -> Array:
    """Black-Scholes implied volatility (annualised fraction), vectorised; NaN where no volatility fits.

    Method: the price is moved to the out-of-the-money side by put-call parity and normalised,
    beta = (price / e^{-rT} - forward intrinsic) / sqrt(F K), which must lie in (0, e^{-|ln(F/K)|/2}) (the
    no-arbitrage bounds: above intrinsic, below the discounted forward / strike). The total volatility
    s = sigma sqrt(T) solving log b(s) = log beta is found by Newton's method on the log price (well scaled deep out
    of the money), safeguarded by a bisection bracket that every step keeps; all rows iterate together (no loop over
    rows), each stopping when |log b - log beta| <= tol or the bracket is below 1e-15 s. Newton starts from
    Corrado & Miller's (1996) closed-form approximation (about 3 to 5 steps to full precision on ordinary quotes),
    or from the inflection point s = sqrt(2 |ln(F/K)|) (Jaeckel's choice) where that approximation is undefined.

    Args:
        price: observed option price, price units. S, K: spot and strike (price units). T: years (365-day).
        r, q: rate and dividend yield, annualised, continuous. is_call: True for calls. All broadcast.
        tol: tolerance on the log price. max_iter: iteration cap (bisection alone needs < 80).

    Returns:
        float64 array of the broadcast shape: sigma, annualised. NaN for a row with any NaN / inf / non-positive
        S, K, T, a negative price, or a price outside the no-arbitrage bounds; 0.0 where the price equals the
        intrinsic value exactly. Never raises for a bad row.

    Raises:
        ValueError: only for arguments that cannot be read as numbers / booleans, or a bad tol / max_iter.
    """
    if not (tol > 0):
        raise ValueError(f"tol must be > 0, got {tol!r}")
    if not (isinstance(max_iter, int) and max_iter > 0):
        raise ValueError(f"max_iter must be a positive int, got {max_iter!r}")
    P, S_, K_, T_, r_, q_ = (
        _as_float(n, v) for n, v in (("price", price), ("S", S), ("K", K), ("T", T), ("r", r), ("q", q))
    )
    call = _as_bool("is_call", is_call)
    P, S_, K_, T_, r_, q_, call = np.broadcast_arrays(P, S_, K_, T_, r_, q_, call)
    shape = P.shape
    P, S_, K_, T_, r_, q_, call = (a.ravel() for a in (P, S_, K_, T_, r_, q_, call))
    out = np.full(P.shape, np.nan)

    finite = np.isfinite(P) & np.isfinite(S_) & np.isfinite(K_) & np.isfinite(T_) & np.isfinite(r_) & np.isfinite(q_)
    ok = finite & (S_ > 0) & (K_ > 0) & (T_ > 0) & (P >= 0)
    idx = np.flatnonzero(ok)
    if idx.size == 0:
        return out.reshape(shape)
    P, S_, K_, T_, r_, q_, call = (a[idx] for a in (P, S_, K_, T_, r_, q_, call))
    x = np.log(S_ / K_) + (r_ - q_) * T_  # ln(F / K)
    a = np.abs(x)
    log_fk = 0.5 * (np.log(S_) + np.log(K_) + (r_ - q_) * T_)  # ln sqrt(F K)
    F = S_ * np.exp((r_ - q_) * T_)
    undiscounted = P * np.exp(r_ * T_)
    intrinsic = np.maximum(np.where(call, F - K_, K_ - F), 0.0)
    otm = undiscounted - intrinsic  # the OTM option's undiscounted value (time value)
    with np.errstate(divide="ignore"):  # otm == 0 -> log 0 = -inf, handled just below
        log_beta = np.log(np.maximum(otm, 0.0)) - log_fk
    # log of the upper bound e^{-a/2}, less a few ulps: a price within rounding of the bound has no finite vol.
    upper = -0.5 * a - 1e-14
    at_intrinsic = otm == 0
    valid = (otm > 0) & (log_beta < upper)
    sol = np.full(P.shape, np.nan)
    sol[at_intrinsic] = 0.0

    v = np.flatnonzero(valid)
    a_v, lb_v = a[v], log_beta[v]
    # Bracket [lo, hi]: b(0) = 0 < beta; grow hi until b(hi) >= beta (doubling, vectorised; at most ~25 rounds).
    lo = np.zeros(v.size)
    hi = np.ones(v.size)
    for _ in range(64):
        below = _log_otm_value(a_v, hi)[0] < lb_v
        if not below.any():
            break
        hi = np.where(below, hi * 2.0, hi)
        lo = np.where(below, hi / 2.0, lo)
    beta = np.exp(lb_v)
    # Start: Corrado-Miller's closed-form approximation (in the normalised OTM-call orientation, F/sqrt(FK) =
    # e^{-a/2}, K/sqrt(FK) = e^{a/2}); where it is undefined, the inflection point sqrt(2a) (Jaeckel's choice).
    half_a = np.minimum(0.5 * a_v, 300.0)  # only caps absurd moneyness (F/K beyond e^600), keeping exp finite
    f_n, k_n = np.exp(-half_a), np.exp(half_a)
    centre = beta - 0.5 * (f_n - k_n)
    disc = np.maximum(centre * centre - (f_n - k_n) ** 2 / np.pi, 0.0)
    s = _SQRT_2PI / (f_n + k_n) * (centre + np.sqrt(disc))
    s = np.where(np.isfinite(s) & (s > 0), s, np.sqrt(2.0 * a_v))
    s = np.where((s > lo) & (s < hi), s, 0.5 * (lo + hi))
    active = np.ones(v.size, dtype=bool)
    for _ in range(max_iter):
        ia = np.flatnonzero(active)
        if ia.size == 0:
            break
        sa, la, ha = s[ia], lo[ia], hi[ia]
        log_b, dlog_b = _log_otm_value(a_v[ia], sa)
        f = log_b - lb_v[ia]
        bad = ~np.isfinite(f)
        la = np.where(f < 0, sa, la)
        ha = np.where(f > 0, sa, ha)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):  # rejected just below if not finite
            step = sa - f / dlog_b
        inside = np.isfinite(step) & (step > la) & (step < ha) & ~bad
        s_new = np.where(inside, step, 0.5 * (la + ha))
        done = (np.abs(f) <= tol) | (ha - la <= 1e-15 * sa)
        s[ia] = np.where(done, sa, s_new)
        lo[ia], hi[ia] = la, ha
        active[ia] = ~done
    s[active] = np.nan  # no convergence within max_iter (only for non-finite objectives at absurd moneyness)
    sol[v] = s
    out[idx] = sol / np.sqrt(T_)
    return out.reshape(shape)


@dataclass(frozen=True)
class GreeksProxy:
    """Seed 002's closed-form greeks proxies (zero rates and dividends), float64 arrays of the broadcast shape.

    delta: Phi(m) for a call, Phi(m) - 1 for a put, m = ln(S/K) / (sigma sqrt T); per unit of spot.
    gamma: phi(m) / (S sigma sqrt T); per unit of spot squared.
    vega: S phi(d1) sqrt(T) with d1 = m + sigma sqrt(T) / 2; per unit of sigma (NOT per vol point: the seed's form).
    theta: -gamma / (2 T); the seed's heuristic decay score, in (spot units * years)^-1 -- not a $/day theta.
    """

    delta: Array
    gamma: Array
    vega: Array
    theta: Array


def greeks_proxy(S: ArrayLike, K: ArrayLike, T: ArrayLike, sigma: ArrayLike, is_call: ArrayLike = True) -> GreeksProxy:
    """Seed 002's greeks proxies, exactly as the seed writes them (see `GreeksProxy` for formulas and units).

    Cheap stand-ins for models that want greek-like shapes without rates; `black_scholes` gives the real greeks.
    Edges as in `black_scholes`: sigma sqrt(T) == 0 gives delta 1[S > K] (0.5 at S == K) for a call, gamma 0,
    vega its limit, and theta 0 at T == 0 (NaN-free; the seed's -gamma/(2T) is 0/0 there).

    Raises:
        ValueError: naming the argument, for +-inf, S <= 0, K <= 0, T < 0, sigma < 0 or a non-boolean is_call.
    """
    S_, K_, T_, sig = (_as_float(n, v) for n, v in (("S", S), ("K", K), ("T", T), ("sigma", sigma)))
    call = _as_bool("is_call", is_call)
    _check("S", S_, positive=True)
    _check("K", K_, positive=True)
    _check("T", T_, nonnegative=True)
    _check("sigma", sig, nonnegative=True)
    S_, K_, T_, sig, call = np.broadcast_arrays(S_, K_, T_, sig, call)
    sqrt_t = np.sqrt(T_)
    tot = sig * sqrt_t
    x = np.log(S_ / K_)
    # m = x / tot is d1 - tot/2; reuse the limit handling of d1 with x and tot, then undo the +tot/2 shift.
    d1, _, degenerate = _d1_d2(x, tot)
    safe_tot = np.where(degenerate, 1.0, tot)
    m = np.where(degenerate, d1, np.clip(x / safe_tot, -_D_CLIP, _D_CLIP))
    delta = ndtr(m) - np.where(call, 0.0, 1.0)
    pdf_m = np.exp(-0.5 * m * m) / _SQRT_2PI
    gamma = np.where(degenerate, 0.0, pdf_m / (S_ * safe_tot))
    vega = S_ * np.exp(-0.5 * d1 * d1) / _SQRT_2PI * sqrt_t
    safe_t = np.where(T_ > 0, T_, 1.0)
    theta = np.where(T_ > 0, -gamma / (2.0 * safe_t), 0.0)
    return GreeksProxy(*(np.asarray(v, dtype=np.float64) for v in (delta, gamma, vega, theta)))
