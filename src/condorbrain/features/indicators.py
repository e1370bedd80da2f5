"""Technical indicators on 1-D numpy arrays, by their standard definitions (Wilder's where he defined them).

Every function takes float arrays of one length N (ordered oldest -> newest) and returns float64 arrays of length
N, NaN during the warm-up; the value at t uses inputs at indices <= t only (no look-ahead). Inputs must be finite
(a NaN would silently poison every later value of a recursive indicator), except `iv_rank`, whose input is an
implied-vol series where NaN marks a bar with no fit.

Implementation notes:
- Windowed statistics use ``sliding_window_view`` (each window summed on its own: no running-sum drift over
  millions of rows) or scipy's O(N) min / max filters.
- The recursive smoothers (EMA, Wilder's) are first-order linear recursions y_t = a x_t + (1 - a) y_{t-1}; they run
  through ``scipy.signal.lfilter``, which evaluates exactly that recursion in compiled code (the same arithmetic
  as a Python loop, O(N), no approximation), seeded with the SMA of the first n values.
- Parabolic SAR is path dependent (its trend flips feed back into the next value) and cannot be written as a
  linear filter; it is a plain Python loop over plain floats, run once per bar series (~1 us per bar).
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from numpy.typing import ArrayLike, NDArray
from scipy.ndimage import maximum_filter1d, minimum_filter1d
from scipy.signal import lfilter

__all__ = [
    "adx",
    "atr",
    "bollinger",
    "ema",
    "iv_rank",
    "macd",
    "momentum",
    "price_position",
    "psar",
    "psar_mark",
    "roc",
    "rolling_std",
    "rolling_volatility",
    "rsi",
    "sma",
    "stoch_k",
    "true_range",
    "wilder_smooth",
]

Array = NDArray[np.float64]


def _series(name: str, x: ArrayLike, *, allow_nan: bool = False) -> Array:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    bad = np.isinf(arr) if allow_nan else ~np.isfinite(arr)
    if bad.any():
        raise ValueError(f"{name} must be finite, found a non-finite value at index {int(np.flatnonzero(bad)[0])}")
    return arr


def _window(name: str, n: int) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"{name} must be a positive int, got {n!r}")
    return int(n)


def _same_length(**arrays: Array) -> None:
    lengths = {k: len(v) for k, v in arrays.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"inputs must have one length, got {lengths}")


def _rolling(x: Array, n: int, func: str, **kwargs: object) -> Array:
    """Trailing-window reduction: out[t] = func(x[t-n+1 : t+1]) for t >= n-1, NaN before."""
    out = np.full(x.shape, np.nan)
    if len(x) >= n:
        out[n - 1 :] = getattr(sliding_window_view(x, n), func)(axis=1, **kwargs)
    return out


def _rolling_min(x: Array, n: int) -> Array:
    out = np.full(x.shape, np.nan)
    if len(x) >= n:
        # origin shifts the centred filter so that the window is x[t-n+1 .. t] (trailing).
        out[n - 1 :] = minimum_filter1d(x, n, origin=(n - 1) // 2, mode="nearest")[n - 1 :]
    return out


def _rolling_max(x: Array, n: int) -> Array:
    out = np.full(x.shape, np.nan)
    if len(x) >= n:
        out[n - 1 :] = maximum_filter1d(x, n, origin=(n - 1) // 2, mode="nearest")[n - 1 :]
    return out


def _seeded_recursion(x: Array, n: int, alpha: float, start: int = 0) -> Array:
    """y_t = alpha x_t + (1 - alpha) y_{t-1}, seeded y_{start+n-1} = mean(x[start : start+n]); NaN before.

    `x[:start]` is ignored (lets a smoother begin after another indicator's warm-up).
    """
    out = np.full(x.shape, np.nan)
    first = start + n - 1
    if len(x) <= first:
        return out
    seed = x[start : start + n].mean()
    out[first] = seed
    if len(x) > first + 1:
        # lfilter: the recursion in C (see module notes); zi carries the seed: y_t = a x_t + (1-a) y_{t-1}.
        y, _ = lfilter([alpha], [1.0, -(1.0 - alpha)], x[first + 1 :], zi=[(1.0 - alpha) * seed])
        out[first + 1 :] = y
    return out


def sma(x: ArrayLike, n: int) -> Array:
    """Simple moving average of the last n values (units of x); first value at index n-1."""
    x_ = _series("x", x)
    return _rolling(x_, _window("n", n), "mean")


def ema(x: ArrayLike, n: int) -> Array:
    """Exponential moving average, alpha = 2 / (n + 1) (units of x).

    Seeded with the SMA of the first n values at index n-1 (TA-Lib's and most charting packages' convention), so the
    first value is at index n-1 and NaN before; then y_t = alpha x_t + (1 - alpha) y_{t-1}.
    """
    x_ = _series("x", x)
    n_ = _window("n", n)
    return _seeded_recursion(x_, n_, 2.0 / (n_ + 1.0))


def wilder_smooth(x: ArrayLike, n: int) -> Array:
    """Wilder's smoothing (an EMA with alpha = 1 / n), seeded with the SMA of the first n values at index n-1."""
    x_ = _series("x", x)
    n_ = _window("n", n)
    return _seeded_recursion(x_, n_, 1.0 / n_)


def rsi(close: ArrayLike, n: int = 14) -> Array:
    """Wilder's Relative Strength Index, 0..100.

    Changes d_t = close_t - close_{t-1} (t >= 1); average gain / loss are Wilder-smoothed (seed: mean of d_1..d_n),
    RSI = 100 * avg_gain / (avg_gain + avg_loss) (= 100 - 100 / (1 + RS)). First value at index n. A flat window
    (both averages 0) gives 50 (neutral; TA-Lib returns 0 there).
    """
    c = _series("close", close)
    n_ = _window("n", n)
    out = np.full(c.shape, np.nan)
    if len(c) <= n_:
        return out
    d = np.diff(c)
    gain = _seeded_recursion(np.maximum(d, 0.0), n_, 1.0 / n_)
    loss = _seeded_recursion(np.maximum(-d, 0.0), n_, 1.0 / n_)
    total = gain + loss
    with np.errstate(invalid="ignore"):  # NaN warm-up only; a zero total is replaced just below
        value = np.where(total > 0, 100.0 * gain / np.where(total > 0, total, 1.0), 50.0)
    value[np.isnan(total)] = np.nan
    out[1:] = value
    return out


def true_range(high: ArrayLike, low: ArrayLike, close: ArrayLike) -> Array:
    """Wilder's true range, price units: max(h - l, |h - c_{t-1}|, |l - c_{t-1}|); TR_0 = h_0 - l_0."""
    h, lo, c = _series("high", high), _series("low", low), _series("close", close)
    _same_length(high=h, low=lo, close=c)
    tr = h - lo
    if len(c) > 1:
        prev = c[:-1]
        tr[1:] = np.maximum.reduce([h[1:] - lo[1:], np.abs(h[1:] - prev), np.abs(lo[1:] - prev)])
    return tr


def atr(high: ArrayLike, low: ArrayLike, close: ArrayLike, n: int = 14) -> Array:
    """Wilder's Average True Range, price units.

    Wilder-smoothed true range over TR_1..TR_n as the seed (TR_0 has no previous close), so the first value is at
    index n (TA-Lib's alignment): ATR_n = mean(TR_1..TR_n), ATR_t = (ATR_{t-1} (n-1) + TR_t) / n.
    """
    n_ = _window("n", n)
    tr = true_range(high, low, close)
    out = np.full(tr.shape, np.nan)
    if len(tr) > n_:
        out[1:] = _seeded_recursion(tr[1:], n_, 1.0 / n_)
    return out


def adx(high: ArrayLike, low: ArrayLike, close: ArrayLike, n: int = 14) -> Array:
    """Wilder's Average Directional Index, 0..100.

    up_t = h_t - h_{t-1}, down_t = l_{t-1} - l_t; +DM_t = up_t if up_t > down_t and up_t > 0 else 0; -DM likewise.
    TR, +DM, -DM are Wilder-smoothed over t = 1..n as the seed (first at index n); +DI = 100 +DM_s / TR_s,
    -DI = 100 -DM_s / TR_s; DX = 100 |+DI - -DI| / (+DI + -DI) (0 when both DI are 0); ADX is the Wilder smoothing
    of DX seeded with the mean of its first n values, so the first ADX is at index 2n - 1 (as TA-Lib's lookback).
    """
    h, lo, c = _series("high", high), _series("low", low), _series("close", close)
    _same_length(high=h, low=lo, close=c)
    n_ = _window("n", n)
    out = np.full(h.shape, np.nan)
    if len(h) < 2 * n_:
        return out
    up = h[1:] - h[:-1]
    down = lo[:-1] - lo[1:]
    plus_dm = np.where((up > down) & (up > 0), up, 0.0)
    minus_dm = np.where((down > up) & (down > 0), down, 0.0)
    tr = true_range(h, lo, c)[1:]
    a = 1.0 / n_
    tr_s = _seeded_recursion(tr, n_, a)[n_ - 1 :]  # index k here = bar n + k
    p_s = _seeded_recursion(plus_dm, n_, a)[n_ - 1 :]
    m_s = _seeded_recursion(minus_dm, n_, a)[n_ - 1 :]
    with np.errstate(invalid="ignore", divide="ignore"):  # a zero true range is handled by the where below
        pdi = np.where(tr_s > 0, 100.0 * p_s / tr_s, 0.0)
        mdi = np.where(tr_s > 0, 100.0 * m_s / tr_s, 0.0)
    di_sum = pdi + mdi
    dx = np.where(di_sum > 0, 100.0 * np.abs(pdi - mdi) / np.where(di_sum > 0, di_sum, 1.0), 0.0)
    out[n_:] = _seeded_recursion(dx, n_, a)
    return out


def stoch_k(high: ArrayLike, low: ArrayLike, close: ArrayLike, n: int = 14) -> Array:
    """Fast stochastic %K, 0..100: 100 (c_t - min(low, n)) / (max(high, n) - min(low, n)) over the last n bars.

    First value at index n-1. A zero range (flat window) gives 50.
    """
    h, lo, c = _series("high", high), _series("low", low), _series("close", close)
    _same_length(high=h, low=lo, close=c)
    n_ = _window("n", n)
    hh, ll = _rolling_max(h, n_), _rolling_min(lo, n_)
    rng = hh - ll
    with np.errstate(invalid="ignore"):  # NaN warm-up
        safe = np.where(rng > 0, rng, 1.0)
        out = np.where(rng > 0, 100.0 * (c - ll) / safe, 50.0)
    out[np.isnan(rng)] = np.nan
    return out


def rolling_std(x: ArrayLike, n: int, ddof: int = 0) -> Array:
    """Standard deviation of the last n values (units of x), `ddof` as numpy (0: population); first at n-1."""
    x_ = _series("x", x)
    n_ = _window("n", n)
    if ddof not in (0, 1) or n_ <= ddof:
        raise ValueError(f"ddof must be 0 or 1 and below n, got ddof={ddof!r}, n={n_}")
    return _rolling(x_, n_, "std", ddof=ddof)


def bollinger(close: ArrayLike, n: int = 20, k: float = 2.0) -> tuple[Array, Array, Array]:
    """Bollinger bands (lower, middle, upper), price units: SMA_n -+ k * population std (ddof=0, as TA-Lib).

    First values at index n-1.
    """
    c = _series("close", close)
    n_ = _window("n", n)
    if not (np.isfinite(k) and k >= 0):
        raise ValueError(f"k must be a finite number >= 0, got {k!r}")
    mid = _rolling(c, n_, "mean")
    sd = _rolling(c, n_, "std", ddof=0)
    return mid - k * sd, mid, mid + k * sd


def macd(close: ArrayLike, fast: int = 12, slow: int = 26, signal: int = 9) -> tuple[Array, Array, Array]:
    """MACD (line, signal, histogram), price units.

    line = EMA_fast(close) - EMA_slow(close), each EMA seeded with its own SMA (see `ema`), first at index slow-1;
    signal = EMA_signal(line) seeded with the SMA of the first `signal` line values, first at slow + signal - 2;
    hist = line - signal. (TA-Lib instead seeds the fast EMA at the slow EMA's start; the values converge.)
    """
    c = _series("close", close)
    f_, s_, g_ = _window("fast", fast), _window("slow", slow), _window("signal", signal)
    if f_ >= s_:
        raise ValueError(f"fast must be < slow, got fast={f_}, slow={s_}")
    line = _seeded_recursion(c, f_, 2.0 / (f_ + 1.0)) - _seeded_recursion(c, s_, 2.0 / (s_ + 1.0))
    sig = np.full(c.shape, np.nan)
    if len(c) >= s_:
        sig = _seeded_recursion(np.where(np.isnan(line), 0.0, line), g_, 2.0 / (g_ + 1.0), start=s_ - 1)
    return line, sig, line - sig


def psar(high: ArrayLike, low: ArrayLike, step: float = 0.02, max_step: float = 0.2) -> Array:
    """Wilder's Parabolic SAR (stop and reverse), price units; first value at index 1.

    Start (TA-Lib's rule): short if the first bar pair's down move l_0 - l_1 exceeds its up move h_1 - h_0 and is
    > 0, else long; SAR_1 = l_0 (long) or h_0 (short), extreme point EP = h_1 (long) or l_1 (short), AF = step.
    Each bar t: if the bar penetrates the SAR (long: l_t <= SAR_t; short: h_t >= SAR_t) the trend reverses:
    SAR_t = EP, clamped outside the bars t-1 and t, EP = the new trend's extreme of bar t, AF = step. Otherwise, if
    bar t makes a new extreme, EP moves there and AF += step (capped at max_step). Then
    SAR_{t+1} = SAR_t + AF (EP - SAR_t), kept below the lows (long) / above the highs (short) of bars t and t-1.
    The value at t uses bars up to t only.

    A plain Python loop over floats: the recursion is path dependent (a reversal resets EP and AF), so neither
    lfilter nor a cumulative trick applies; at ~1 us per bar (1M bars in ~0.7 s on the 2-core machine) it runs
    once per bar series, never per option row.
    """
    h, lo = _series("high", high), _series("low", low)
    _same_length(high=h, low=lo)
    if not (0 < step <= max_step):
        raise ValueError(f"step must be > 0 and <= max_step, got step={step!r}, max_step={max_step!r}")
    n = len(h)
    out = np.full(n, np.nan)
    if n < 2:
        return out
    hs, ls = h.tolist(), lo.tolist()
    res = [float("nan")] * n
    down0 = ls[0] - ls[1]
    up0 = hs[1] - hs[0]
    long = not (down0 > up0 and down0 > 0)
    if long:
        sar, ep = ls[0], hs[1]
    else:
        sar, ep = hs[0], ls[1]
    af = step
    for t in range(1, n):
        ht, lt = hs[t], ls[t]
        hp, lp = hs[t - 1], ls[t - 1]
        if long:
            if lt <= sar:  # reversal to short
                long = False
                sar = max(ep, hp, ht)
                res[t] = sar
                ep, af = lt, step
                sar = max(sar + af * (ep - sar), hp, ht)
            else:
                res[t] = sar
                if ht > ep:
                    ep, af = ht, min(af + step, max_step)
                sar = min(sar + af * (ep - sar), lp, lt)
        else:
            if ht >= sar:  # reversal to long
                long = True
                sar = min(ep, lp, lt)
                res[t] = sar
                ep, af = ht, step
                sar = min(sar + af * (ep - sar), lp, lt)
            else:
                res[t] = sar
                if lt < ep:
                    ep, af = lt, min(af + step, max_step)
                sar = max(sar + af * (ep - sar), hp, ht)
    out[:] = res
    return out


def psar_mark(close: ArrayLike, sar: ArrayLike) -> Array:
    """Side of price relative to the Parabolic SAR: +1.0 if close > SAR (uptrend), -1.0 if below or equal; NaN where
    the SAR is NaN (warm-up)."""
    c = _series("close", close)
    s = _series("sar", sar, allow_nan=True)
    _same_length(close=c, sar=s)
    out = np.where(c > s, 1.0, -1.0)
    out[np.isnan(s)] = np.nan
    return out


def rolling_volatility(close: ArrayLike, n: int = 20, periods_per_year: float | None = None) -> Array:
    """Sample std (ddof=1) of the last n log returns ln(c_t / c_{t-1}); first value at index n.

    Per bar (a fraction, 0.01 = 1%) unless `periods_per_year` is given (e.g. 252 for daily bars, 252 * 390 for
    1-minute bars), in which case it is annualised by sqrt(periods_per_year).
    """
    c = _series("close", close)
    n_ = _window("n", n)
    if n_ < 2:
        raise ValueError(f"n must be >= 2 for a sample std, got {n_}")
    if (c <= 0).any():
        raise ValueError("close must be > 0 for log returns")
    if periods_per_year is not None and not (np.isfinite(periods_per_year) and periods_per_year > 0):
        raise ValueError(f"periods_per_year must be > 0, got {periods_per_year!r}")
    out = np.full(c.shape, np.nan)
    if len(c) > n_:
        out[1:] = _rolling(np.diff(np.log(c)), n_, "std", ddof=1)
    if periods_per_year is not None:
        out *= np.sqrt(periods_per_year)
    return out


def momentum(x: ArrayLike, n: int = 10) -> Array:
    """Momentum x_t - x_{t-n} (units of x); first value at index n."""
    x_ = _series("x", x)
    n_ = _window("n", n)
    out = np.full(x_.shape, np.nan)
    out[n_:] = x_[n_:] - x_[:-n_]
    return out


def roc(x: ArrayLike, n: int = 10) -> Array:
    """Rate of change in percent, 100 (x_t / x_{t-n} - 1); first value at index n. x must be > 0."""
    x_ = _series("x", x)
    n_ = _window("n", n)
    if (x_ <= 0).any():
        raise ValueError("x must be > 0 for a rate of change")
    out = np.full(x_.shape, np.nan)
    out[n_:] = 100.0 * (x_[n_:] / x_[:-n_] - 1.0)
    return out


def price_position(x: ArrayLike, n: int) -> Array:
    """Position of x_t in the range of its last n values (x_t included), 0 at the low .. 1 at the high.

    First value at index n-1; a flat window gives 0.5.
    """
    x_ = _series("x", x)
    n_ = _window("n", n)
    hi, lo = _rolling_max(x_, n_), _rolling_min(x_, n_)
    rng = hi - lo
    with np.errstate(invalid="ignore"):
        out = np.where(rng > 0, (x_ - lo) / np.where(rng > 0, rng, 1.0), 0.5)
    out[np.isnan(rng)] = np.nan
    return out


def iv_rank(iv: ArrayLike, n: int, min_periods: int | None = None) -> Array:
    """IV rank, 0..100: 100 (iv_t - min) / (max - min) over the last n values (iv_t included).

    NaN values (bars with no implied vol) are skipped in the min / max; the rank is NaN where iv_t is NaN or
    fewer than `min_periods` (default n) of the last n values are valid. A flat window gives 50.
    """
    v = _series("iv", iv, allow_nan=True)
    n_ = _window("n", n)
    mp = n_ if min_periods is None else _window("min_periods", min_periods)
    if mp > n_:
        raise ValueError(f"min_periods must be <= n, got min_periods={mp}, n={n_}")
    out = np.full(v.shape, np.nan)
    if len(v) == 0:
        return out
    valid = ~np.isnan(v)
    # Trailing min / max over up to n values, partial windows at the start (padding with +-inf never wins).
    pad_lo = np.concatenate([np.full(n_ - 1, np.inf), np.where(valid, v, np.inf)])
    pad_hi = np.concatenate([np.full(n_ - 1, -np.inf), np.where(valid, v, -np.inf)])
    lo = minimum_filter1d(pad_lo, n_, origin=(n_ - 1) // 2, mode="nearest")[n_ - 1 :]
    hi = maximum_filter1d(pad_hi, n_, origin=(n_ - 1) // 2, mode="nearest")[n_ - 1 :]
    cum = np.concatenate([[0], np.cumsum(valid, dtype=np.int64)])
    counts = cum[1:] - cum[np.maximum(np.arange(1, len(v) + 1) - n_, 0)]  # valid values among the last n
    ok = valid & (counts >= mp)
    rng = np.where(ok, hi - lo, 1.0)
    out[ok] = np.where(rng[ok] > 0, 100.0 * (v[ok] - lo[ok]) / np.where(rng[ok] > 0, rng[ok], 1.0), 50.0)
    return out
