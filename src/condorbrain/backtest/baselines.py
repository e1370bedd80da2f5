"""Baseline forecasts that every model result stands beside (issue 5, section 2).

Volatility: trailing realized vol, HAR-RV (Corsi 2009) and GARCH(1,1) from `arch`. Returns: the random walk (zero)
and seed 004's momentum fallback.

Conventions shared by every function here
-----------------------------------------
- ``returns`` is a 1-D float array of one-step log returns aligned with the bars:
  ``returns[t] = ln(close_t / close_{t-1})``, built as ``np.r_[np.nan, np.diff(np.log(close))]``. A leading run of
  NaN (at least the first bar) is allowed; a NaN after the first finite return is an error (a gap would silently
  poison every later value of a recursion).
- A forecast "at t" uses ``returns[0 .. t]`` only, and predicts the target of `condorbrain.features.targets` at t:
  volatility baselines predict ``forward_realized_vol(close, h)[t] = sqrt(sum_{i=1..h} returns[t+i]^2)`` -- a
  fraction over the whole horizon, NOT annualised, NOT demeaned (divide by sqrt(h) for a per-step figure); return
  baselines predict ``forward_log_return(close, h)[t] = sum_{i=1..h} returns[t+i]``, a log return over the horizon.
- ``train_end`` is an exclusive bar index: the fitted baselines (HAR, GARCH) estimate their coefficients on
  ``returns[:train_end]`` (HAR only on rows whose whole target window lies inside it). Their forecasts exist from
  ``t = train_end - 1`` on, the first bar whose past contains the whole training range; before it they are NaN,
  because coefficients fitted on data after t would be look-ahead.
- NaN means "not enough past data" (or, where documented, "no valid forecast"); nothing is filled.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Literal

import numpy as np
from arch import arch_model
from numpy.lib.stride_tricks import sliding_window_view
from numpy.typing import ArrayLike, NDArray
from scipy.signal import lfilter

__all__ = [
    "GARCH_SCALE",
    "MIN_GARCH_OBS",
    "MIN_HAR_ROWS",
    "GarchConvergenceWarning",
    "GarchFit",
    "GarchForecast",
    "HARFit",
    "HARForecast",
    "garch_vol_forecast",
    "har_rv_forecast",
    "momentum_return_forecast",
    "return_baselines",
    "trailing_vol_forecast",
    "vol_baselines",
]

Array = NDArray[np.float64]

GARCH_SCALE = 100.0
"""Returns are multiplied by this before the GARCH fit (log returns -> percent), the scale arch's optimiser is tuned
for; variances are divided by its square afterwards."""

MIN_GARCH_OBS = 100
"""Fewest finite returns a GARCH fit accepts (below that the three parameters are not identified in practice)."""

MIN_HAR_ROWS = 30
"""Fewest regression rows (bars with full regressors and a full target window in the training range) for HAR."""


class GarchConvergenceWarning(UserWarning):
    """One or more GARCH fits did not converge; their forecasts are NaN (details in `GarchForecast.fits`)."""


# ----------------------------------------------------------------------------------------------------------------
# Input checks


def _returns(returns: ArrayLike) -> tuple[Array, int]:
    """The returns as float64 and the index of the first finite one; checks the NaN-prefix convention."""
    r = np.asarray(returns, dtype=np.float64)
    if r.ndim != 1:
        raise ValueError(f"returns must be 1-D, got shape {r.shape}")
    finite = np.isfinite(r)
    if np.isinf(r).any():
        raise ValueError("returns hold +/-inf")
    if not finite.any():
        raise ValueError("returns hold no finite value")
    first = int(np.argmax(finite))
    if not finite[first:].all():
        bad = first + int(np.argmin(finite[first:]))
        raise ValueError(f"returns hold a NaN at index {bad}, after the first finite return (index {first}); "
                         "only a leading run of NaN is allowed")  # fmt: skip
    return r, first


def _positive_int(name: str, v: int) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
        raise ValueError(f"{name} must be a positive int, got {v!r}")
    return int(v)


def _train_end(train_end: int, n: int) -> int:
    if isinstance(train_end, bool) or not isinstance(train_end, (int, np.integer)) or not 1 <= train_end <= n:
        raise ValueError(f"train_end must be an int in [1, {n}] (an exclusive index into returns), got {train_end!r}")
    return int(train_end)


def _trailing_sum(x: Array, window: int) -> Array:
    """out[t] = sum(x[t - window + 1 .. t]); NaN for t < window - 1 and wherever the window holds a NaN."""
    out = np.full(x.shape, np.nan)
    if len(x) >= window:
        out[window - 1 :] = sliding_window_view(x, window).sum(axis=1)
    return out


# ----------------------------------------------------------------------------------------------------------------
# Volatility baselines


def trailing_vol_forecast(returns: ArrayLike, horizon: int, window: int = 22) -> Array:
    """Trailing realized vol scaled to the horizon: ``sqrt(h / w * sum_{i=0..w-1} returns[t-i]^2)``.

    The mean squared return of the last w bars (w one-step returns ending at t) is the per-step variance forecast;
    times h it forecasts ``forward_realized_vol(close, h)[t]^2`` (same units: fraction over the horizon, raw squares,
    not annualised). NaN until w finite returns are available.

    Args:
        returns: one-step log returns, shape (T,), see the module conventions.
        horizon: h, steps (bars).
        window: w, steps (bars); 22 ~ one trading month.

    Returns:
        Forecast vol, shape (T,), fraction over h steps.
    """
    r, _ = _returns(returns)
    h, w = _positive_int("horizon", horizon), _positive_int("window", window)
    return np.sqrt(h / w * _trailing_sum(r**2, w))


@dataclass(frozen=True)
class HARFit:
    """OLS coefficients of HAR-RV, in per-step variance units (fraction^2 per bar).

    avg_{i=1..h} r_{t+i}^2 = intercept + beta_daily RV_d(t) + beta_weekly RV_w(t) + beta_monthly RV_m(t) + error,
    RV_x(t) the mean of r^2 over the last ``lags`` bars ending at t.
    """

    intercept: float
    beta_daily: float
    beta_weekly: float
    beta_monthly: float
    lags: tuple[int, int, int]
    """Bars in the daily, weekly and monthly components."""
    n_obs: int
    """Regression rows used."""
    first_row: int
    """First bar of the regression."""
    last_row: int
    """Last bar of the regression (its target window ends at returns[last_row + h] <= returns[train_end - 1])."""


@dataclass(frozen=True)
class HARForecast:
    """HAR-RV forecasts and the fit that produced them."""

    vol: Array
    """Forecast vol, shape (T,), fraction over h steps; NaN before train_end - 1, before the monthly lag is full, and
    where the fitted variance is negative (counted in `n_negative`)."""
    fit: HARFit
    n_negative: int
    """Rows whose fitted variance was negative: no valid forecast, left NaN (HAR in levels does not bound it)."""


def _har_design(r2: Array, lags: tuple[int, int, int]) -> Array:
    """Regressors (T, 4): 1, RV_d, RV_w, RV_m, each the trailing mean of r^2 over its lag (NaN while not full)."""
    cols = [np.ones(len(r2))] + [_trailing_sum(r2, k) / k for k in lags]
    return np.stack(cols, axis=1)


def har_rv_forecast(
    returns: ArrayLike, horizon: int, train_end: int, *, lags: tuple[int, int, int] = (1, 5, 22)
) -> HARForecast:
    """HAR-RV (Corsi 2009), direct h-step form, fitted by OLS on the training range only, then applied.

    With r2 = returns^2 and RV_k(t) = mean(r2[t-k+1 .. t]) for k in ``lags`` (daily, weekly, monthly), the target
    y(t) = (1/h) sum_{i=1..h} r2[t+i] is regressed on [1, RV_d, RV_w, RV_m] over the bars t with full regressors and
    t + h <= train_end - 1. The forecast at t >= train_end - 1 is sqrt(h * yhat(t)), in the units of
    `forward_realized_vol` (fraction over h steps, not annualised). With daily bars the "daily RV" is the squared
    daily return (no intraday data).

    Args:
        returns: one-step log returns, shape (T,).
        horizon: h, steps (bars).
        train_end: exclusive end of the training range (index into returns).
        lags: daily, weekly and monthly window lengths in bars, increasing.

    Raises:
        ValueError: fewer than `MIN_HAR_ROWS` regression rows in the training range.
    """
    r, first = _returns(returns)
    h, end = _positive_int("horizon", horizon), _train_end(train_end, len(r))
    lg = tuple(_positive_int("lag", k) for k in lags)
    if len(lg) != 3 or not lg[0] < lg[1] < lg[2]:
        raise ValueError(f"lags must be three increasing ints (daily, weekly, monthly), got {lags!r}")
    r2 = r**2
    x = _har_design(r2, lg)  # (T, 4)
    t0 = first + lg[2] - 1  # first bar with a full monthly component
    t1 = end - 1 - h  # last bar whose target window lies inside returns[:train_end]
    if t1 - t0 + 1 < MIN_HAR_ROWS:
        raise ValueError(f"HAR needs >= {MIN_HAR_ROWS} regression rows in the training range, got {max(t1 - t0 + 1, 0)}"
                         f" (first finite return {first}, monthly lag {lg[2]}, horizon {h}, train_end {end})")  # fmt: skip
    y = _trailing_sum(r2, h)[t0 + h : t1 + h + 1] / h  # y(t) = mean(r2[t+1 .. t+h]) for t = t0 .. t1
    coef, *_ = np.linalg.lstsq(x[t0 : t1 + 1], y, rcond=None)
    fit = HARFit(intercept=float(coef[0]), beta_daily=float(coef[1]), beta_weekly=float(coef[2]),
                 beta_monthly=float(coef[3]), lags=(lg[0], lg[1], lg[2]), n_obs=t1 - t0 + 1, first_row=t0,
                 last_row=t1)  # fmt: skip
    var = np.full(len(r), np.nan)
    start = max(end - 1, t0)
    var[start:] = h * (x[start:] @ coef)
    negative = var < 0  # NaN compares False
    var[negative] = np.nan
    return HARForecast(vol=np.sqrt(var), fit=fit, n_negative=int(negative.sum()))


@dataclass(frozen=True)
class GarchFit:
    """One GARCH(1,1) estimation: r_t = mu + e_t, sigma2_t = omega + alpha e_{t-1}^2 + beta sigma2_{t-1}.

    Parameters are in return units (fractions; omega in fraction^2 per step), scaled back from the percent scale the
    optimiser saw. mu is 0 for the "Zero" mean.
    """

    fit_end: int
    """Exclusive end of the estimation sample returns[first_finite : fit_end]."""
    first_row: int
    """First bar this fit forecasts (fit_end - 1)."""
    last_row: int
    """Last bar this fit forecasts (inclusive)."""
    mu: float
    omega: float
    alpha: float
    beta: float
    loglikelihood: float
    """At the percent scale, as arch reports it."""
    converged: bool
    """SciPy's SLSQP exit status was 0."""
    status: int
    """SLSQP exit status (arch's `convergence_flag`)."""
    message: str
    """SLSQP exit message."""


@dataclass(frozen=True)
class GarchForecast:
    """GARCH(1,1) vol forecasts and every fit that produced them."""

    vol: Array
    """Forecast vol, shape (T,), fraction over h steps; NaN before train_end - 1 and on the rows of a fit that did not
    converge."""
    fits: tuple[GarchFit, ...]
    mean: Literal["Zero", "Constant"]

    @property
    def n_failed(self) -> int:
        """Fits that did not converge."""
        return sum(not f.converged for f in self.fits)


def _garch_fit(y: Array, mean: Literal["Zero", "Constant"], maxiter: int) -> tuple[Array, float, float, int, str]:
    """Fit GARCH(1,1) to percent returns y; returns (params [mu, omega, alpha, beta], backcast, loglik, status, msg).

    The backcast (sigma2 before the first observation) is computed here with arch's own rule and handed to `fit`,
    so that the recursion in `_garch_sum_variance` starts from exactly the value the estimation used.
    """
    model = arch_model(y, mean=mean, vol="GARCH", p=1, q=1, dist="normal", rescale=False)
    resid0 = y - y.mean() if mean == "Constant" else y  # residuals at arch's starting values (sample mean)
    backcast = float(model.volatility.backcast(resid0))
    # arch's ConvergenceWarning is replaced by the exit status we record and report (show_warning=False); the
    # catch_warnings block scopes the filter arch installs for it. rescale=False: we scaled by GARCH_SCALE ourselves,
    # so no DataScaleWarning can arise.
    with warnings.catch_warnings():
        res = model.fit(disp="off", show_warning=False, backcast=backcast, options={"maxiter": maxiter})
    p = res.params
    mu = float(p["mu"]) if mean == "Constant" else 0.0
    params = np.array([mu, float(p["omega"]), float(p["alpha[1]"]), float(p["beta[1]"])])
    opt = res.optimization_result
    return params, backcast, float(res.loglikelihood), int(res.convergence_flag), str(opt.message)


def _garch_sum_variance(y: Array, params: Array, backcast: float, horizon: int) -> Array:
    """Forecast at each t of sum_{k=1..h} E_t[y_{t+k}^2] for percent returns y, shape (len(y),).

    sigma2[0] = omega + (alpha + beta) * backcast (arch's initialisation); sigma2[t+1] = omega + alpha e_t^2 + beta
    sigma2[t] is the one-step forecast made at t; then f_{k+1} = omega + (alpha + beta) f_k, and E[y^2] = f + mu^2.
    The recursion runs through `lfilter` (exactly y[n] = x[n] + beta y[n-1], sequential, so a prefix of the data
    gives a prefix of the output bit for bit).
    """
    mu, omega, alpha, beta = params
    e2 = (y - mu) ** 2
    s0 = omega + (alpha + beta) * backcast
    one_step, _ = lfilter([1.0], [1.0, -beta], omega + alpha * e2, zi=[beta * s0])  # sigma2[t + 1], t = 0 .. n-1
    total, f = one_step.copy(), one_step
    for _ in range(horizon - 1):
        f = omega + (alpha + beta) * f
        total += f
    return total + horizon * mu**2


def garch_vol_forecast(
    returns: ArrayLike,
    horizon: int,
    train_end: int,
    *,
    refit_every: int | None = None,
    mean: Literal["Zero", "Constant"] = "Zero",
    maxiter: int = 200,
) -> GarchForecast:
    """GARCH(1,1) (arch, normal errors) h-step vol forecasts, estimated on past data only.

    Fitting: returns are multiplied by `GARCH_SCALE` (percent) for arch's optimiser. With ``refit_every=None`` one
    fit on returns[:train_end] forecasts every t >= train_end - 1. With ``refit_every=k`` the model is refitted on an
    expanding window: fit j uses returns[:train_end + j k] and forecasts the k bars t in [train_end + j k - 1,
    train_end + (j + 1) k - 1) -- every fit sees only bars <= the first bar it forecasts.

    Forecast at t: the variance recursion filtered through returns[..t] with the fit's parameters, then the analytic
    multi-step forecast summed over the horizon, sum_{k=1..h} E_t[r_{t+k}^2] (plus h mu^2 for the Constant mean,
    since the target sums raw, not demeaned, squares), divided by GARCH_SCALE^2, square-rooted: the units of
    `forward_realized_vol` (fraction over h steps, not annualised).

    Mean: "Zero" (the default) matches the target, which sums raw squared returns, and daily means are too small to
    estimate usefully; "Constant" estimates mu and adds it back as above.

    Failures: a fit whose SLSQP exit status is non-zero is recorded in `GarchForecast.fits` (status and message), its
    rows are left NaN, and one `GarchConvergenceWarning` lists the failed fits.

    Args:
        returns: one-step log returns, shape (T,).
        horizon: h, steps (bars).
        train_end: exclusive end of the first estimation sample.
        refit_every: k, bars between refits; None fits once.
        mean: arch mean model, "Zero" or "Constant".
        maxiter: SLSQP iteration limit per fit.

    Raises:
        ValueError: fewer than `MIN_GARCH_OBS` finite returns in returns[:train_end].
    """
    r, first = _returns(returns)
    h, end = _positive_int("horizon", horizon), _train_end(train_end, len(r))
    if mean not in ("Zero", "Constant"):
        raise ValueError(f"mean must be 'Zero' or 'Constant', got {mean!r}")
    if refit_every is not None:
        refit_every = _positive_int("refit_every", refit_every)
    if end - first < MIN_GARCH_OBS:
        raise ValueError(f"GARCH needs >= {MIN_GARCH_OBS} finite returns before train_end, got {end - first}")
    n = len(r)
    step = n if refit_every is None else refit_every
    y = r[first:] * GARCH_SCALE
    vol = np.full(n, np.nan)
    fits = []
    for fit_end in range(end, n + 1, step):
        lo, hi = fit_end - 1, min(fit_end - 1 + step, n)  # forecast rows [lo, hi)
        params, backcast, loglik, status, message = _garch_fit(y[: fit_end - first], mean, maxiter)
        scale2 = GARCH_SCALE**2
        fits.append(GarchFit(fit_end=fit_end, first_row=lo, last_row=hi - 1, mu=float(params[0]) / GARCH_SCALE,
                             omega=float(params[1]) / scale2, alpha=float(params[2]), beta=float(params[3]),
                             loglikelihood=loglik, converged=status == 0, status=status, message=message))  # fmt: skip
        if status == 0:
            total = _garch_sum_variance(y[: hi - first], params, backcast, h)  # uses returns up to hi - 1 only
            vol[lo:hi] = np.sqrt(total[lo - first :] / scale2)
    out = GarchForecast(vol=vol, fits=tuple(fits), mean=mean)
    if out.n_failed:
        failed = "; ".join(f"fit_end={f.fit_end} (status {f.status}: {f.message})" for f in fits if not f.converged)
        warnings.warn(f"{out.n_failed} of {len(fits)} GARCH fits did not converge, their rows are NaN: {failed}",
                      GarchConvergenceWarning, stacklevel=2)  # fmt: skip
    return out


def vol_baselines(
    returns: ArrayLike,
    horizon: int,
    train_end: int,
    *,
    window: int = 22,
    har_lags: tuple[int, int, int] = (1, 5, 22),
    refit_every: int | None = None,
    garch_mean: Literal["Zero", "Constant"] = "Zero",
) -> dict[str, Array]:
    """Every volatility baseline, each shape (T,), in `forward_realized_vol` units (fraction over h steps).

    Keys: ``trailing_rv_{window}`` (`trailing_vol_forecast`; defined from bar first + window - 1 on, independent of
    train_end), ``har_rv`` (`har_rv_forecast`) and ``garch_1_1`` (`garch_vol_forecast`; non-converged fits warn with
    `GarchConvergenceWarning`). Call those functions directly for the fitted coefficients.
    """
    return {
        f"trailing_rv_{window}": trailing_vol_forecast(returns, horizon, window),
        "har_rv": har_rv_forecast(returns, horizon, train_end, lags=har_lags).vol,
        "garch_1_1": garch_vol_forecast(returns, horizon, train_end, refit_every=refit_every, mean=garch_mean).vol,
    }


# ----------------------------------------------------------------------------------------------------------------
# Return baselines


def momentum_return_forecast(returns: ArrayLike, horizon: int, window: int = 10) -> Array:
    """Seed 004's momentum fallback: the trailing n-bar log return extrapolated linearly to the horizon.

    Seed 004 asks for "a simple momentum-based fallback" to the forecaster and lists its momentum / rate-of-change
    inputs (look-back 10 in `condorbrain.features.sets`); it gives no formula. Ours, exactly: the forecast at t of
    the h-step log return is ``(h / n) * ln(close_t / close_{t-n}) = (h / n) * sum_{i=0..n-1} returns[t-i]`` -- the
    recent average drift per bar carried forward h bars. Units: log return over h steps (the units of
    `forward_log_return`). NaN until n finite returns are available.

    Args:
        returns: one-step log returns, shape (T,).
        horizon: h, steps (bars).
        window: n, momentum look-back in bars.
    """
    r, _ = _returns(returns)
    h, n = _positive_int("horizon", horizon), _positive_int("window", window)
    return h / n * _trailing_sum(r, n)


def return_baselines(returns: ArrayLike, horizon: int, *, momentum_window: int = 10) -> dict[str, Array]:
    """Every return baseline, each shape (T,), a log return over h steps (units of `forward_log_return`).

    Keys: ``random_walk`` (zero everywhere: the log price is a martingale; needs no past data) and
    ``momentum_{momentum_window}`` (`momentum_return_forecast`).
    """
    r, _ = _returns(returns)
    _positive_int("horizon", horizon)
    return {
        "random_walk": np.zeros(len(r)),
        f"momentum_{momentum_window}": momentum_return_forecast(r, horizon, momentum_window),
    }
