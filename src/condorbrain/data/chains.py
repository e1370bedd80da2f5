"""Synthetic option chains for real bars (where no real chain exists), priced by Black-Scholes.

For each bar (typically the real S&P 500 daily bars of :func:`~condorbrain.data.load_sp500`) and at the bar's end
time, the chain lists calls and puts on the next weekly and monthly expiries. What is real: the bar's ts and close
(the spot) and, where used, the VIX. What is derived (every row has ``synthetic = True``): strikes, expiries,
implied vols, bid and ask.

Strikes stay listed, as on a real exchange. At each bar the *new listings* of an open expiry (one of the next
``weekly_expiries`` weeklies or ``monthly_expiries`` monthlies strictly after the bar's end time) are the
``2 * strikes_each_side + 1`` strikes of a grid centred on the bar's close (centre and step rounded to multiples of
``strike_round``, step ~ ``strike_step_pct`` of the close). A strike, once listed for an expiry, is quoted at every
later bar of its symbol up to and including the expiry bar (the bar ending exactly at the expiry, if there is one;
priced there at T = 0, i.e. at intrinsic value, with the usual spread), whatever spot does meanwhile. So at bar t the
chain of expiry X holds the union of the centred grids of every bar from X's first listing up to t (the chain widens
as spot moves and never loses a strike), and each contract is quoted on one unbroken run of its symbol's bars, from
its first listing to its expiry. Which strikes are listed at t depends on the closes up to t only. On daily bars a
contract lives at most as many bars as its expiry is listed ahead: about 10 for the default weeklies, about 45 for
the second monthly.

The implied-vol surface (:class:`~condorbrain.data._pricing.SurfaceParams`) hangs off a 30-day ATM level:

* ``iv_source = "vix"``: VIX / 100 from the latest VIX close published at or before the bar's end time (stamped
  16:15 New York, so a daily bar at 16:00 sees the previous day's close), if it is at most ``vix_max_age`` old;
* ``iv_source = "proxy"`` otherwise: ``proxy_premium * sqrt(periods_per_year * v_t)`` with v_t the RiskMetrics
  exponentially weighted variance of the symbol's log close-to-close returns up to and including the bar,
  ``v_t = lambda v_{t-1} + (1 - lambda) r_t**2``, started at ``v_0 = proxy_prior_vol**2 / periods_per_year`` on
  the symbol's first bar. Past data only; nothing is fitted on later data.

Bid and ask come from :class:`~condorbrain.data._pricing.SpreadParams`. Expiries are 16:00 New York on Fridays
(weekly) and third Fridays (monthly), moved to the previous trading day on holidays. Rates are constant assumptions
(``rate``, ``div_yield``), not history.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

import numpy as np
import polars as pl

from condorbrain.data._calendar import SESSION_CLOSE, at_new_york, expiry_dates
from condorbrain.data._pricing import DAYS_PER_YEAR, SpreadParams, SurfaceParams, bid_ask, bs_price, surface_iv
from condorbrain.data.schemas import is_utc_datetime
from condorbrain.data.validate import validate

__all__ = ["ChainConfig", "synth_chains"]

_US_PER_YEAR = DAYS_PER_YEAR * 86_400 * 1_000_000


@dataclass(frozen=True)
class ChainConfig:
    """How the synthetic chains are laid out and priced."""

    strikes_each_side: int = 10
    """Strikes above and below the at-the-money strike (2 n + 1 in all)."""
    strike_step_pct: float = 0.01
    """Distance between strikes as a fraction of spot (rounded to a multiple of ``strike_round``)."""
    strike_round: float = 5.0
    """Strikes and their step are multiples of this, currency units (index points for the S&P 500)."""
    weekly_expiries: int = 2
    """Next weekly (Friday) expiries listed."""
    monthly_expiries: int = 2
    """Next monthly (third-Friday) expiries listed; one that is also a listed weekly appears once."""
    rate: float = 0.02
    """Risk-free rate, continuously compounded per year (a constant assumption)."""
    div_yield: float = 0.018
    """Dividend yield, continuously compounded per year (a constant assumption)."""
    vix_max_age: dt.timedelta = dt.timedelta(days=5)
    """Oldest VIX close still used; older (or none) falls back to the proxy."""
    proxy_lambda: float = 0.94
    """Decay of the exponentially weighted variance (RiskMetrics daily value)."""
    proxy_prior_vol: float = 0.20
    """Annualised vol that starts the weighted variance on a symbol's first bar."""
    proxy_premium: float = 1.1
    """Implied / realised ratio applied to the proxy (a fixed variance-risk-premium assumption, not fitted)."""
    periods_per_year: float = 252.0
    """Bars per year, to annualise the proxy (252 for daily bars)."""
    surface: SurfaceParams = field(default_factory=SurfaceParams)
    """Skew, smile and term structure."""
    spread: SpreadParams = field(default_factory=lambda: SpreadParams(min_spread=0.10, rel_spread=0.03, tick=0.05))
    """Bid / ask model (index-option tick of 0.05 by default)."""

    def __post_init__(self) -> None:
        if self.strikes_each_side < 0 or self.weekly_expiries < 0 or self.monthly_expiries < 0:
            raise ValueError("strikes_each_side, weekly_expiries and monthly_expiries must be >= 0")
        if self.weekly_expiries + self.monthly_expiries == 0:
            raise ValueError("need at least one weekly or monthly expiry")
        if self.strike_step_pct <= 0 or self.strike_round <= 0:
            raise ValueError("strike_step_pct and strike_round must be > 0")
        if not 0.0 < self.proxy_lambda < 1.0:
            raise ValueError(f"proxy_lambda must be in (0, 1), got {self.proxy_lambda}")
        if self.proxy_prior_vol <= 0 or self.proxy_premium <= 0 or self.periods_per_year <= 0:
            raise ValueError("proxy_prior_vol, proxy_premium and periods_per_year must be > 0")


def synth_chains(bars: pl.DataFrame, config: ChainConfig | None = None, *,
                 vix: pl.DataFrame | None = None) -> pl.DataFrame:
    """Option quotes (quotes schema + ``iv``, ``synthetic``, ``iv_source``) for every bar, at the bar's end time.

    Args:
        bars: bars schema, validated strictly here; may hold several symbols (the proxy is per symbol).
        config: layout and pricing; defaults suit the daily S&P 500.
        vix: optional frame with ``ts`` (UTC, publication time) and ``vix`` (vol points), e.g.
            :func:`~condorbrain.data.load_vix`; nulls are skipped. It sets the ATM level of every symbol in
            ``bars``, so pass it only for S&P 500-like underlyings.

    Returns:
        Rows ordered by the bars' row order, then expiry, strike, right (C before P). ``iv`` is the surface vol of
        the row (annualised decimal), ``iv_source`` "vix" or "proxy" (how its ATM level was set).
    """
    config = config or ChainConfig()
    validate(bars, "bars", source="bars", strict=True)
    c = config
    atm = _atm_level(bars, c, vix)

    ts_us = bars.get_column("ts").dt.cast_time_unit("us").dt.epoch("us").to_numpy()
    spot = bars.get_column("close").to_numpy()
    exp_us = _expiry_grid(bars, ts_us, c)  # (N, E), -1 where a slot is empty
    bar_i, exp, strike = _listed_contracts(bars, ts_us, spot, exp_us, c)  # one entry per (bar, expiry, strike) quoted
    bar_i, exp, strike = (np.repeat(a, 2) for a in (bar_i, exp, strike))  # a call then a put
    is_call = np.tile(np.array([True, False]), bar_i.shape[0] // 2)

    S = spot[bar_i]
    T = (exp - ts_us[bar_i]) / _US_PER_YEAR
    iv = surface_iv(atm["atm"].to_numpy()[bar_i], S, strike, T, c.rate, c.div_yield, c.surface)
    mid = bs_price(S, strike, T, c.rate, c.div_yield, iv, is_call)
    bid, ask = bid_ask(mid, c.spread)
    idx = pl.Series(bar_i.astype(np.uint32))
    return pl.DataFrame({
        "ts": bars.get_column("ts").gather(idx),
        "underlying": bars.get_column("symbol").gather(idx),
        "expiry": pl.Series(exp).cast(pl.Datetime("us")).dt.replace_time_zone("UTC"),
        "strike": strike,
        "right": pl.Series(["C", "P"]).gather(pl.Series(np.where(is_call, 0, 1).astype(np.uint32))),
        "bid": bid, "ask": ask, "iv": iv,
        "synthetic": pl.Series([True]).new_from_index(0, len(bar_i)),
        "iv_source": atm.get_column("iv_source").gather(idx),
    })


def _listed_contracts(bars: pl.DataFrame, ts_us: np.ndarray, spot: np.ndarray, exp_us: np.ndarray,
                      c: ChainConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every (bar, expiry, strike) the chains quote, as three (R,) arrays ordered by bar row, expiry, strike.

    ``bar_i`` is the bar's row in ``bars`` (int64), ``exp`` the expiry (us since epoch, int64), ``strike`` the
    strike (float64, a multiple of ``strike_round``). The rule is the module docstring's. Vectorised, no loop over
    bars: in positions of each symbol's time order, a contract's first bar is the smallest position at which its
    strike is in the centred grid of its (open) expiry, its last bar the largest position at which the expiry is
    open, or the next one if that bar ends exactly at the expiry; the runs between are expanded by ``int_ranges``.
    Strict validation has checked ts ascending within each symbol, so row order is time order there.
    """
    n, e = exp_us.shape
    k = 2 * c.strikes_each_side + 1
    step = np.maximum(1.0, np.round(spot * c.strike_step_pct / c.strike_round))  # in units of strike_round
    centre = np.round(spot / c.strike_round)
    units = (centre[:, None] + step[:, None] * np.arange(-c.strikes_each_side, c.strikes_each_side + 1)
             ).astype(np.int64)  # (N, K) strikes / strike_round, exact integers
    # position of each bar in its symbol's rows (row order = time order inside a symbol); symbols get disjoint
    # position ranges, so a run of positions never crosses a symbol
    sym = bars.get_column("symbol").rank("dense").to_numpy().astype(np.int64)
    order = np.lexsort((np.arange(n), sym))  # rows grouped by symbol, in time order inside each
    pos = np.empty(n, dtype=np.int64)
    pos[order] = np.arange(n)

    shape = (n, e, k)  # bar, expiry slot, strike of the bar's centred grid
    open_ = np.broadcast_to((exp_us >= 0)[:, :, None], shape).ravel()
    grid = pl.DataFrame({
        "_sym": np.broadcast_to(sym[:, None, None], shape).ravel()[open_],
        "_exp": np.broadcast_to(exp_us[:, :, None], shape).ravel()[open_],
        "_units": np.broadcast_to(units[:, None, :], shape).ravel()[open_],
        "_pos": np.broadcast_to(pos[:, None, None], shape).ravel()[open_],
    })
    # last bar of an expiry: the last one it is open at (ts < expiry), or the next bar of the symbol if that one
    # ends exactly at the expiry (the expiry bar, where its contracts are quoted at T = 0)
    last = grid.group_by("_sym", "_exp").agg(pl.col("_pos").max().alias("_last"))
    nxt = np.minimum(last.get_column("_last").to_numpy() + 1, n - 1)
    at_expiry = (sym[order][nxt] == last.get_column("_sym").to_numpy()) & (
        ts_us[order][nxt] == last.get_column("_exp").to_numpy())
    last = last.with_columns(pl.Series("_last", np.where(at_expiry, nxt, last.get_column("_last").to_numpy())))
    runs = (
        grid.group_by("_sym", "_exp", "_units").agg(pl.col("_pos").min().alias("_first"))  # the strike's listing
        .join(last, on=["_sym", "_exp"])
        .select("_exp", "_units", pl.int_ranges("_first", pl.col("_last") + 1, dtype=pl.Int64).alias("_pos"))
        .explode("_pos")
    )
    runs = runs.select(pl.Series("_bar", order[runs.get_column("_pos").to_numpy()]), "_exp", "_units").sort(
        "_bar", "_exp", "_units")
    return (runs.get_column("_bar").to_numpy(), runs.get_column("_exp").to_numpy(),
            runs.get_column("_units").to_numpy() * c.strike_round)


def _atm_level(bars: pl.DataFrame, c: ChainConfig, vix: pl.DataFrame | None) -> pl.DataFrame:
    """Per bar (in row order): ``atm`` (30-day ATM vol, annualised decimal) and ``iv_source``."""
    prior_var = c.proxy_prior_vol**2 / c.periods_per_year
    frame = bars.select("ts", "symbol", "close").with_row_index("_row").with_columns(
        (pl.col("close").log().diff().over("symbol") ** 2).fill_null(prior_var).alias("_r2")
    ).with_columns(
        (c.proxy_premium * (c.periods_per_year
                            * pl.col("_r2").ewm_mean(alpha=1.0 - c.proxy_lambda, adjust=False).over("symbol")).sqrt()
         ).alias("_proxy")
    )
    if vix is None:
        frame = frame.with_columns(pl.lit(None, dtype=pl.Float64).alias("_vix"))
    else:
        for col in ("ts", "vix"):
            if col not in vix.columns:
                raise ValueError(f"vix: missing column {col!r}")
        if not is_utc_datetime(vix.schema["ts"]):
            raise ValueError(f"vix: column 'ts' must be a timezone-aware UTC datetime, got {vix.schema['ts']}")
        v = (vix.filter(pl.col("vix").is_not_null())
             .select(pl.col("ts").cast(frame.schema["ts"]).alias("_vts"), (pl.col("vix") / 100.0).alias("_vix"))
             .sort("_vts"))
        frame = (frame.sort("ts").join_asof(v, left_on="ts", right_on="_vts", strategy="backward",
                                            tolerance=c.vix_max_age, check_sortedness=False).sort("_row"))
    return frame.select(
        pl.coalesce("_vix", "_proxy").alias("atm"),
        pl.when(pl.col("_vix").is_not_null()).then(pl.lit("vix")).otherwise(pl.lit("proxy")).alias("iv_source"),
    )


def _expiry_grid(bars: pl.DataFrame, ts_us: np.ndarray, c: ChainConfig) -> np.ndarray:
    """(N, weekly + monthly) expiry instants (us since epoch) after each bar, ascending per row; -1 marks a
    duplicate (a monthly that is also a listed weekly), moved to the end of its row."""
    first, last = bars.select(pl.col("ts").min().alias("a"), pl.col("ts").max().alias("b")).row(0)
    start, end = first.date() - dt.timedelta(days=7), last.date() + dt.timedelta(days=31 * (c.monthly_expiries + 2)
                                                                                + 7 * (c.weekly_expiries + 2))
    cols = []
    for kind, count in (("weekly", c.weekly_expiries), ("monthly", c.monthly_expiries)):
        if count == 0:
            continue
        grid = np.array([int(at_new_york(d, SESSION_CLOSE).timestamp()) * 1_000_000
                         for d in expiry_dates(start, end, kind)], dtype=np.int64)
        nxt = np.searchsorted(grid, ts_us, side="right")  # first expiry strictly after the bar
        cols.append(grid[nxt[:, None] + np.arange(count)])
    exp = np.sort(np.concatenate(cols, axis=1), axis=1)
    dup = np.zeros_like(exp, dtype=bool)
    dup[:, 1:] = exp[:, 1:] == exp[:, :-1]
    exp = np.where(dup, np.iinfo(np.int64).max, exp)
    exp = np.sort(exp, axis=1)
    return np.where(exp == np.iinfo(np.int64).max, -1, exp)
