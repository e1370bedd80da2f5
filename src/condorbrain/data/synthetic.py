"""A synthetic intraday market with known ground truth: 1-minute SPY-like bars and ~100 option quotes a minute.

Model (all randomness from ``numpy.random.default_rng([seed, session_index])``, so the output does not depend on
how sessions are chunked or written):

* Calendar: NYSE trading days from ``start``; every session 09:30-16:00 New York, 390 one-minute bars stamped at
  their END time (09:31 ... 16:00), in UTC. About 252 sessions a year.
* Regimes: low / normal / high (labels 0 / 1 / 2 in column ``regime``), a continuous-time Markov chain sampled per
  minute; a spell in regime k lasts a geometric number of minutes with mean ``regime_mean_sessions[k]`` sessions,
  then moves to one of the other two regimes at random. Spells carry across sessions.
* Volatility: ``sigma_t = regime_vols[k] * exp(x_t - nu**2 / 2) * u(m)`` (annualised), ``x_t`` an AR(1) in log-vol
  with stationary sd ``nu = vol_of_vol`` and half-life ``vol_half_life_minutes``, ``u(m)`` a U-shaped intraday
  profile (higher at the open and close) with mean square 1. Column ``true_vol`` holds sigma_t.
* Returns per minute: ``(drift - sigma_t**2/2) dt + sigma_t sqrt(dt) z + J``, dt = 1 / (252 * 390) years, J a
  compound Poisson jump (rate ``jump_rates[k]`` per year, sizes N(jump_mean, jump_std)). Between sessions an
  overnight gap N(0, overnight_var_ratio * sigma**2 / 252) in log price. High / low extend beyond open / close by
  half-normal excursions. Volume: U-shaped intraday profile x regime factor x log-normal noise, whole shares.
* Options: weekly expiries (Fridays, 16:00 New York; the previous trading day if Friday is a holiday). The nearest
  ``n_expiries`` are listed; when an expiry is first listed its strikes are fixed at ``2 * strikes_each_side + 1``
  multiples of ``strike_step`` centred on that session's open, calls and puts: 2 x 25 x 2 = 100 contracts by
  default. Each contract quotes in each minute with probability ``quote_prob``, at a uniform random instant in
  [bar start, bar end), priced by Black-Scholes (:mod:`condorbrain.data._pricing`) at the spot interpolated between
  the bar's open and close, on the surface of :class:`~condorbrain.data._pricing.SurfaceParams` with 30-day ATM
  level ``iv_premium * sigma_t`` (without the intraday profile); bid / ask from
  :class:`~condorbrain.data._pricing.SpreadParams`, widened by ``regime_spread_widen[k]``. Column ``iv`` is the
  surface vol used, ``synthetic`` is True on every row.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import polars as pl
from scipy.signal import lfilter
from tqdm.auto import tqdm

from condorbrain.data._calendar import MINUTES_PER_SESSION, SESSION_CLOSE, SESSION_OPEN, at_new_york, \
    expiry_dates, next_trading_days
from condorbrain.data._pricing import DAYS_PER_YEAR, SpreadParams, SurfaceParams, bid_ask, bs_price, surface_iv
from condorbrain.data.io import write_parquet

__all__ = ["MarketConfig", "SyntheticMarket", "WrittenMarket", "REGIMES", "synth_market", "iter_synth_sessions",
           "write_synth_market"]

REGIMES = ("low", "normal", "high")
"""Regime labels; column ``regime`` holds the index (0, 1, 2)."""
SESSIONS_PER_YEAR = 252
_US_PER_MINUTE = 60_000_000
_US_PER_YEAR = DAYS_PER_YEAR * 86_400 * 1_000_000


@dataclass(frozen=True)
class MarketConfig:
    """Parameters of the synthetic market (see the module docstring for the model)."""

    n_sessions: int = 252
    """Trading sessions to generate (390 bars each)."""
    start: dt.date = dt.date(2024, 1, 2)
    """First calendar date; the first session is the first NYSE trading day on or after it."""
    seed: int = 0
    """Random seed; session i draws from ``default_rng([seed, i])``."""
    symbol: str = "SPY"
    """Ticker of the underlying."""
    s0: float = 470.0
    """Price at the first open, USD per share."""
    drift: float = 0.07
    """Expected log-return drift, per year."""
    regime_vols: tuple[float, float, float] = (0.09, 0.15, 0.32)
    """Base volatility of the low / normal / high regimes, annualised decimal."""
    regime_mean_sessions: tuple[float, float, float] = (20.0, 15.0, 5.0)
    """Mean spell length of each regime, in sessions."""
    vol_of_vol: float = 0.25
    """Stationary sd of the log-vol AR(1) (dimensionless)."""
    vol_half_life_minutes: float = 390.0
    """Half-life of log-vol shocks, minutes."""
    intraday_vol_u: float = 1.0
    """Depth of the intraday volatility U: vol at the open / close is ``1 + intraday_vol_u`` times midday."""
    jump_rates: tuple[float, float, float] = (1.0, 4.0, 20.0)
    """Jump intensity per regime, jumps per year."""
    jump_mean: float = -0.003
    """Mean log jump size."""
    jump_std: float = 0.008
    """Sd of the log jump size."""
    overnight_var_ratio: float = 0.2
    """Overnight gap variance as a fraction of one session's variance (sigma**2 / 252)."""
    volume_per_minute: float = 80_000.0
    """Mean shares per minute in the normal regime."""
    volume_u: float = 2.0
    """Depth of the volume U: volume at the open / close is ``1 + volume_u`` times midday."""
    regime_volume: tuple[float, float, float] = (0.8, 1.0, 1.8)
    """Volume multiplier per regime."""
    volume_noise: float = 0.35
    """Sd of the log-normal volume noise."""
    n_expiries: int = 2
    """Weekly expiries listed at a time."""
    strikes_each_side: int = 12
    """Strikes above and below the centre strike (2 n + 1 in all)."""
    strike_step: float = 1.0
    """Distance between strikes, USD."""
    quote_prob: float = 0.95
    """Probability that a listed contract quotes in a given minute."""
    rate: float = 0.045
    """Risk-free rate, continuously compounded per year."""
    div_yield: float = 0.013
    """Dividend yield, continuously compounded per year."""
    iv_premium: float = 1.1
    """Implied / true volatility ratio of the ATM level (a variance risk premium)."""
    surface: SurfaceParams = field(default_factory=SurfaceParams)
    """Skew, smile and term structure of the implied-vol surface."""
    spread: SpreadParams = field(default_factory=SpreadParams)
    """Bid / ask spread model."""
    regime_spread_widen: tuple[float, float, float] = (1.0, 1.2, 2.0)
    """Spread multiplier per regime."""

    def __post_init__(self) -> None:
        if self.n_sessions < 1:
            raise ValueError(f"n_sessions must be >= 1, got {self.n_sessions}")
        if self.s0 <= 0 or self.strike_step <= 0:
            raise ValueError("s0 and strike_step must be > 0")
        for name in ("regime_vols", "regime_mean_sessions", "jump_rates", "regime_volume", "regime_spread_widen"):
            v = getattr(self, name)
            if len(v) != 3 or any(x < 0 for x in v):
                raise ValueError(f"{name} needs 3 values >= 0 (low, normal, high), got {v}")
        if min(self.regime_vols) <= 0 or min(self.regime_mean_sessions) <= 0:
            raise ValueError("regime_vols and regime_mean_sessions must be > 0")
        if not 0.0 < self.quote_prob <= 1.0:
            raise ValueError(f"quote_prob must be in (0, 1], got {self.quote_prob}")
        if self.n_expiries < 1 or self.strikes_each_side < 0:
            raise ValueError("need n_expiries >= 1 and strikes_each_side >= 0")
        if self.vol_of_vol < 0 or self.vol_half_life_minutes <= 0 or self.overnight_var_ratio < 0:
            raise ValueError("need vol_of_vol >= 0, vol_half_life_minutes > 0, overnight_var_ratio >= 0")

    @property
    def contracts_per_minute(self) -> int:
        """Listed contracts at any minute: n_expiries x strikes x 2 rights."""
        return self.n_expiries * (2 * self.strikes_each_side + 1) * 2


class SyntheticMarket(NamedTuple):
    """Bars (with ``regime`` and ``true_vol``) and option quotes of the synthetic market."""

    bars: pl.DataFrame
    quotes: pl.DataFrame


@dataclass
class _State:
    """What one session hands to the next."""

    close: float
    regime: int = 1
    remaining: int = 0  # minutes left in the current regime spell (0: draw a new spell)
    log_vol: float = 0.0  # the AR(1) state x_t
    listed: dict[dt.date, np.ndarray] = field(default_factory=dict)  # expiry date -> strike grid


def _u_profile(depth: float) -> np.ndarray:
    """U-shaped intraday profile over the 390 minutes: 1 at midday, ``1 + depth`` at the open and close."""
    z = (np.arange(MINUTES_PER_SESSION) + 0.5) / MINUTES_PER_SESSION * 2.0 - 1.0
    return 1.0 + depth * z * z


def iter_synth_sessions(config: MarketConfig) -> Iterator[SyntheticMarket]:
    """Yield the market one session at a time (bars and quotes of that session), in order."""
    days = next_trading_days(config.start, config.n_sessions)
    weekly = expiry_dates(days[0], days[-1] + dt.timedelta(days=7 * (config.n_expiries + 2)), "weekly")
    state = _State(close=config.s0)
    vol_u = _u_profile(config.intraday_vol_u)
    vol_u /= np.sqrt(np.mean(vol_u**2))
    vol_profile = _u_profile(config.volume_u)
    vol_profile /= vol_profile.mean()
    for i, day in enumerate(days):
        rng = np.random.default_rng([config.seed, i])
        yield _session(config, day, i, rng, state, weekly, vol_u, vol_profile)


def _regimes(config: MarketConfig, rng: np.random.Generator, state: _State) -> np.ndarray:
    out = np.empty(MINUTES_PER_SESSION, dtype=np.int8)
    pos = 0
    while pos < MINUTES_PER_SESSION:  # one iteration per regime spell, a handful per year
        if state.remaining == 0:
            mean_minutes = config.regime_mean_sessions[state.regime] * MINUTES_PER_SESSION
            state.remaining = int(rng.geometric(1.0 / mean_minutes))
        take = min(state.remaining, MINUTES_PER_SESSION - pos)
        out[pos:pos + take] = state.regime
        pos += take
        state.remaining -= take
        if state.remaining == 0:
            state.regime = (state.regime + int(rng.integers(1, 3))) % 3
    return out


def _session(config: MarketConfig, day: dt.date, index: int, rng: np.random.Generator, state: _State,
             weekly: list[dt.date], vol_u: np.ndarray, vol_profile: np.ndarray) -> SyntheticMarket:
    m = MINUTES_PER_SESSION
    dt_year = 1.0 / (SESSIONS_PER_YEAR * m)
    regime = _regimes(config, rng, state)

    # log-vol AR(1), carried across sessions: x_t = phi x_{t-1} + sqrt(1 - phi^2) nu eps_t
    phi = 0.5 ** (1.0 / config.vol_half_life_minutes)
    nu = config.vol_of_vol
    shocks = math.sqrt(1.0 - phi * phi) * nu * rng.standard_normal(m)
    x, zf = lfilter([1.0], [1.0, -phi], shocks, zi=[phi * state.log_vol])
    state.log_vol = float(zf[0])
    base_vol = np.asarray(config.regime_vols)[regime] * np.exp(x - 0.5 * nu * nu)
    sigma = base_vol * vol_u

    # overnight gap, then minute returns with jumps
    if index == 0:
        session_open = config.s0
    else:
        gap_sd = math.sqrt(config.overnight_var_ratio / SESSIONS_PER_YEAR) * base_vol[0]
        session_open = state.close * math.exp(gap_sd * rng.standard_normal())
    n_jumps = rng.poisson(np.asarray(config.jump_rates)[regime] * dt_year)
    jumps = n_jumps * config.jump_mean + np.sqrt(n_jumps) * config.jump_std * rng.standard_normal(m)
    ret = (config.drift - 0.5 * sigma**2) * dt_year + sigma * math.sqrt(dt_year) * rng.standard_normal(m) + jumps
    close = session_open * np.exp(np.cumsum(ret))
    open_ = np.concatenate(([session_open], close[:-1]))
    wiggle = 0.5 * sigma * math.sqrt(dt_year)
    high = np.maximum(open_, close) * np.exp(np.abs(rng.standard_normal(m)) * wiggle)
    low = np.minimum(open_, close) * np.exp(-np.abs(rng.standard_normal(m)) * wiggle)
    noise = np.exp(config.volume_noise * rng.standard_normal(m) - 0.5 * config.volume_noise**2)
    volume = np.round(config.volume_per_minute * vol_profile * np.asarray(config.regime_volume)[regime] * noise)
    state.close = float(close[-1])

    open_us = int(at_new_york(day, SESSION_OPEN).timestamp()) * 1_000_000
    bar_start = open_us + np.arange(m, dtype=np.int64) * _US_PER_MINUTE
    bars = pl.DataFrame({
        "ts": _utc(bar_start + _US_PER_MINUTE),
        "symbol": pl.Series([config.symbol]).new_from_index(0, m),
        "open": open_, "high": high, "low": low, "close": close, "volume": volume,
        "regime": pl.Series(regime, dtype=pl.Int8),
        "true_vol": sigma,
    })
    return SyntheticMarket(bars, _quotes(config, day, rng, state, weekly, bar_start, open_, close, base_vol, regime))


def _quotes(config: MarketConfig, day: dt.date, rng: np.random.Generator, state: _State, weekly: list[dt.date],
            bar_start: np.ndarray, open_: np.ndarray, close: np.ndarray, base_vol: np.ndarray,
            regime: np.ndarray) -> pl.DataFrame:
    live = [e for e in weekly if e >= day][: config.n_expiries]
    state.listed = {e: g for e, g in state.listed.items() if e in live}
    for e in live:  # a newly listed expiry gets strikes centred on this session's open
        if e not in state.listed:
            centre = round(open_[0] / config.strike_step) * config.strike_step
            state.listed[e] = centre + config.strike_step * np.arange(-config.strikes_each_side,
                                                                      config.strikes_each_side + 1)
    exp_us = np.concatenate([np.full(2 * len(state.listed[e]), int(at_new_york(e, SESSION_CLOSE).timestamp())
                                     * 1_000_000, dtype=np.int64) for e in live])
    strike = np.concatenate([np.repeat(state.listed[e], 2) for e in live])
    is_call = np.tile([True, False], len(strike) // 2)

    m, c = len(bar_start), len(strike)
    quoted = rng.random((m, c)) < config.quote_prob
    offset = rng.integers(0, _US_PER_MINUTE, size=(m, c))
    mi, ci = np.nonzero(quoted)  # row-major: minute, then contract
    off = offset[mi, ci]
    ts = bar_start[mi] + off
    order = np.lexsort((ci, ts))  # a feed in time order
    mi, ci, ts, off = mi[order], ci[order], ts[order], off[order]

    spot = open_[mi] + (off / _US_PER_MINUTE) * (close[mi] - open_[mi])
    T = (exp_us[ci] - ts) / _US_PER_YEAR
    iv = surface_iv(config.iv_premium * base_vol[mi], spot, strike[ci], T, config.rate, config.div_yield,
                    config.surface)
    mid = bs_price(spot, strike[ci], T, config.rate, config.div_yield, iv, is_call[ci])
    bid, ask = bid_ask(mid, config.spread, np.asarray(config.regime_spread_widen)[regime[mi]])
    n = len(ts)
    return pl.DataFrame({
        "ts": _utc(ts),
        "underlying": pl.Series([config.symbol]).new_from_index(0, n),
        "expiry": _utc(exp_us[ci]),
        "strike": strike[ci],
        "right": pl.Series(["C", "P"]).gather(pl.Series(np.where(is_call[ci], 0, 1).astype(np.uint32))),
        "bid": bid, "ask": ask, "iv": iv,
        "synthetic": pl.Series([True]).new_from_index(0, n),
    })


def _utc(us: np.ndarray) -> pl.Series:
    return pl.Series(us.astype(np.int64)).cast(pl.Datetime("us")).dt.replace_time_zone("UTC")


def synth_market(config: MarketConfig | None = None, *, progress: bool = False) -> SyntheticMarket:
    """Generate the whole market in memory: ``390 * n_sessions`` bars and ~``quote_prob * 100`` quotes a minute."""
    config = config or MarketConfig()
    bars, quotes = [], []
    for b, q in tqdm(iter_synth_sessions(config), total=config.n_sessions, disable=not progress,
                     desc="synthetic market", unit="session"):
        bars.append(b)
        quotes.append(q)
    return SyntheticMarket(pl.concat(bars, rechunk=True), pl.concat(quotes, rechunk=True))


@dataclass(frozen=True)
class WrittenMarket:
    """Where :func:`write_synth_market` put the market, and how much it wrote."""

    bars_dir: Path
    """Directory of the bars parts (``part-NNNNN.parquet``)."""
    quotes_dir: Path
    """Directory of the quotes parts."""
    n_bars: int
    """Bar rows written."""
    n_quotes: int
    """Quote rows written."""
    n_parts: int
    """Parquet parts per table."""


def write_synth_market(out_dir: str | Path, config: MarketConfig | None = None, *, chunk_sessions: int = 21,
                       progress: bool = True, validate: bool = True) -> WrittenMarket:
    """Generate the market and write it in chunks of ``chunk_sessions`` sessions, with a progress bar.

    Writes ``out_dir/bars/part-NNNNN.parquet`` and ``out_dir/quotes/part-NNNNN.parquet``; read them back with
    :func:`~condorbrain.data.load_bars` / :func:`~condorbrain.data.load_quotes` on the directories. Only one chunk
    is held in memory. Each chunk is validated strictly before it is written unless ``validate=False``. The data
    equal :func:`synth_market` for the same config, whatever the chunk size. Existing parts in the two directories
    are an error (a reader would mix them with the new ones).
    """
    config = config or MarketConfig()
    if chunk_sessions < 1:
        raise ValueError(f"chunk_sessions must be >= 1, got {chunk_sessions}")
    out = Path(out_dir)
    dirs = (out / "bars", out / "quotes")
    for d in dirs:
        if d.exists() and any(d.glob("*.parquet")):
            raise FileExistsError(f"{d}: already holds .parquet parts; choose an empty directory")
    n_bars = n_quotes = part = 0
    bars: list[pl.DataFrame] = []
    quotes: list[pl.DataFrame] = []

    def flush() -> None:
        nonlocal part
        name = f"part-{part:05d}.parquet"
        write_parquet(pl.concat(bars), dirs[0] / name, kind="bars", validate=validate)
        write_parquet(pl.concat(quotes), dirs[1] / name, kind="quotes", validate=validate)
        bars.clear()
        quotes.clear()
        part += 1

    for b, q in tqdm(iter_synth_sessions(config), total=config.n_sessions, disable=not progress,
                     desc="synthetic market", unit="session"):
        bars.append(b)
        quotes.append(q)
        n_bars += b.height
        n_quotes += q.height
        if len(bars) == chunk_sessions:
            flush()
    if bars:
        flush()
    return WrittenMarket(dirs[0], dirs[1], n_bars, n_quotes, part)
