"""The seeds' feature sets, built from polars frames.

- `condor_features`: CondorBrain's 24 inputs (seed 001 sec. 2.2), one row per joined (bar, contract) row.
- `microstructure_features` and `interaction_features`: seed 002's extras, one row per joined row.
- `forecaster_features`: the multi-horizon forecaster's inputs (seed 004, "Features extracted"), one row per bar.

Joined rows are the as-of join's output: ts (the bar's end time, tz-aware), symbol, open, high, low, close, volume,
quote_ts, expiry, strike, right ('C' / 'P'), bid, ask, optionally iv (a quoted implied vol, annualised fraction)
and bid_size / ask_size. Bar-level indicators are computed once per bar series (per symbol, in ts order) and then
broadcast to every contract row of that bar. Every value at row t uses bars with ts <= t and the row's own quote
only (the look-ahead tests in tests/features check this by changing the future).

The result frames keep the input's row order and height: row i describes input row i. Nothing is dropped or filled;
a value that cannot be computed (warm-up, no implied vol) is NaN.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import polars as pl
from numpy.typing import NDArray

from condorbrain.features import indicators as ind
from condorbrain.features.microstructure import bvc_imbalance, interaction_terms, quote_microstructure
from condorbrain.features.options import black_scholes, implied_vol

__all__ = [
    "CONDOR_FEATURES",
    "CONDOR_BAR_FEATURES",
    "CONDOR_FEATURE_UNITS",
    "CONDOR_ROW_FEATURES",
    "INTERACTION_FEATURES",
    "MICROSTRUCTURE_FEATURES",
    "FeatureConfig",
    "ForecasterConfig",
    "RowFeatures",
    "bar_bvc_imbalance",
    "atm_candidates",
    "atm_iv",
    "condor_bar_features",
    "condor_features",
    "condor_row_features",
    "forecaster_arrays",
    "forecaster_features",
    "interaction_features",
    "microstructure_features",
    "years_to_expiry",
]

CONDOR_FEATURES: tuple[str, ...] = (
    "open", "high", "low", "close", "volume",
    "strike", "delta", "gamma", "vega", "theta",
    "iv", "ivr", "spread_ratio",
    "rsi", "atr", "adx", "stoch_k",
    "bb_lower", "bb_upper", "sma", "psar", "psar_mark",
    "dist_to_spot", "call_put",
)  # fmt: skip
"""CondorBrain's 24 inputs, in seed 001 sec. 2.2's order (the model's input column order)."""

CONDOR_FEATURE_UNITS: dict[str, str] = {
    "open": "price units (the underlying's bar open)",
    "high": "price units",
    "low": "price units",
    "close": "price units",
    "volume": "shares (the underlying's bar volume)",
    "strike": "price units",
    "delta": "per unit of spot (Black-Scholes, at the row's iv)",
    "gamma": "per unit of spot squared",
    "vega": "price units per vol point (+0.01 sigma)",
    "theta": "price units per calendar day",
    "iv": "annualised fraction (0.20 = 20%)",
    "ivr": "0..100, rank of the bar's ATM iv in its trailing ivr_window bars",
    "spread_ratio": "(ask - bid) / mid, fraction",
    "rsi": "0..100, Wilder, rsi_window bars",
    "atr": "price units, Wilder, atr_window bars",
    "adx": "0..100, Wilder, adx_window bars",
    "stoch_k": "0..100, fast %K over stoch_window bars",
    "bb_lower": "price units, SMA - bb_k population std over bb_window bars",
    "bb_upper": "price units, SMA + bb_k population std",
    "sma": "price units, SMA of close over sma_window bars",
    "psar": "price units, Wilder's Parabolic SAR",
    "psar_mark": "+1 close above the SAR, -1 below",
    "dist_to_spot": "strike / close - 1, fraction (positive above spot)",
    "call_put": "1 for a call, 0 for a put",
}

CONDOR_BAR_FEATURES: tuple[str, ...] = (
    "rsi", "atr", "adx", "stoch_k", "bb_lower", "bb_upper", "sma", "psar", "psar_mark", "ivr",
)  # fmt: skip
"""The members of the 24 computed once per bar (indicators of the symbol's bar series), see `condor_bar_features`."""
CONDOR_ROW_FEATURES: tuple[str, ...] = tuple(k for k in CONDOR_FEATURES if k not in CONDOR_BAR_FEATURES)
"""The members of the 24 that depend on the joined row alone, see `condor_row_features`."""

MICROSTRUCTURE_FEATURES: tuple[str, ...] = ("mid", "microprice", "eff_spread", "imbalance")
INTERACTION_FEATURES: tuple[str, ...] = (
    "moneyness_sqrt_t", "log_m_log_t", "sq_moneyness_t", "log_volume_abs_log_m", "atm_proximity",
)  # fmt: skip

_BAR_COLUMNS = ("symbol", "ts", "open", "high", "low", "close", "volume")
_CONTRACT_COLUMNS = ("expiry", "strike", "right", "bid", "ask")
_SECONDS_PER_YEAR = 365.0 * 86400.0


def _positive_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


@dataclass(frozen=True)
class FeatureConfig:
    """Settings of the per-row feature sets (CondorBrain's 24, microstructure, interactions)."""

    rate: float = 0.0
    """Risk-free rate for the greeks and the iv solver, annualised, continuously compounded (0.05 = 5%)."""
    dividend_yield: float = 0.0
    """Dividend yield of the underlying, annualised, continuously compounded."""
    rsi_window: int = 14
    """RSI window, bars."""
    atr_window: int = 14
    """ATR window, bars."""
    adx_window: int = 14
    """ADX window, bars (first value after 2 * adx_window - 1 bars)."""
    stoch_window: int = 14
    """Stochastic %K look-back, bars."""
    bb_window: int = 20
    """Bollinger window, bars."""
    bb_k: float = 2.0
    """Bollinger width, in population standard deviations."""
    sma_window: int = 20
    """Window of the `sma` feature, bars."""
    psar_step: float = 0.02
    """Parabolic SAR acceleration step (and start)."""
    psar_max_step: float = 0.2
    """Parabolic SAR acceleration cap."""
    ivr_window: int = 1950
    """IV rank look-back, bars of the series (1950 = five 390-minute sessions of 1-minute bars; 252 for a year of
    daily bars)."""
    ivr_min_periods: int | None = None
    """Valid ATM-iv bars needed in the window before ivr is defined; None means ivr_window (a full window)."""
    micro_window: int = 20
    """Bars of log returns whose std scales the bulk-volume-classification imbalance (used without quote sizes)."""
    expiry_time: dt.time = dt.time(16, 0)
    """Time of day options expire, in `expiry_tz`, applied when `expiry` is a date (16:00 New York: the close)."""
    expiry_tz: str = "America/New_York"
    """Time zone of `expiry_time`."""
    chunk_rows: int = 1_000_000
    """Rows per chunk of the per-row maths (iv solver, greeks), bounding temporary memory."""
    dtype: str = "float64"
    """Output dtype of the feature columns: "float64" or "float32" (what the lazy dataset stores)."""

    def __post_init__(self) -> None:
        for name in ("rsi_window", "atr_window", "adx_window", "stoch_window", "bb_window", "sma_window",
                     "ivr_window", "chunk_rows"):  # fmt: skip
            _positive_int(name, getattr(self, name))
        _positive_int("micro_window", self.micro_window)
        if self.micro_window < 2:
            raise ValueError(f"micro_window must be an int >= 2, got {self.micro_window!r}")
        if self.ivr_min_periods is not None:
            _positive_int("ivr_min_periods", self.ivr_min_periods)
            if self.ivr_min_periods > self.ivr_window:
                raise ValueError("ivr_min_periods must be <= ivr_window")
        for name in ("rate", "dividend_yield", "bb_k"):
            if not np.isfinite(getattr(self, name)):
                raise ValueError(f"{name} must be finite, got {getattr(self, name)!r}")
        if self.bb_k < 0:
            raise ValueError(f"bb_k must be >= 0, got {self.bb_k!r}")
        if not (0 < self.psar_step <= self.psar_max_step):
            raise ValueError("psar_step must be > 0 and <= psar_max_step")
        if not isinstance(self.expiry_time, dt.time):
            raise ValueError(f"expiry_time must be a datetime.time, got {self.expiry_time!r}")
        if self.dtype not in ("float64", "float32"):
            raise ValueError(f"dtype must be 'float64' or 'float32', got {self.dtype!r}")


# ----------------------------------------------------------------------------------------------------------------
# Helpers shared by the per-row sets


def _require(df: pl.DataFrame, columns: tuple[str, ...], what: str) -> None:
    if not isinstance(df, pl.DataFrame):
        raise ValueError(f"{what} must be a polars DataFrame, got {type(df).__name__}")
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{what} is missing column(s) {missing}")


def _numeric(df: pl.DataFrame, name: str) -> NDArray[np.float64]:
    s = df[name]
    if not s.dtype.is_numeric():
        raise ValueError(f"column {name!r} must be numeric, got {s.dtype}")
    arr = s.cast(pl.Float64).fill_null(np.nan).to_numpy()
    return np.asarray(arr, dtype=np.float64)


def years_to_expiry(df: pl.DataFrame, config: FeatureConfig | None = None) -> NDArray[np.float64]:
    """Years (of 365 days) from each row's ts to its expiry, float64.

    `ts` must be a tz-aware Datetime. `expiry` a Date (the option expires at config.expiry_time in config.expiry_tz
    that day, DST-aware) or a tz-aware Datetime (used as is).

    Raises:
        ValueError: naming the column, for a missing or naive datetime, null values or an expiry before ts.
    """
    cfg = config or FeatureConfig()
    _require(df, ("ts", "expiry"), "df")
    ts_dtype, ex_dtype = df.schema["ts"], df.schema["expiry"]
    if not isinstance(ts_dtype, pl.Datetime) or ts_dtype.time_zone is None:
        raise ValueError(f"column 'ts' must be a timezone-aware Datetime, got {ts_dtype}")
    if isinstance(ex_dtype, pl.Date):
        offset = f"{cfg.expiry_time.hour * 3600 + cfg.expiry_time.minute * 60 + cfg.expiry_time.second}s"
        expiry = (
            pl.col("expiry").cast(pl.Datetime("us")).dt.offset_by(offset)
            .dt.replace_time_zone(cfg.expiry_tz, ambiguous="earliest", non_existent="null")
            .dt.convert_time_zone("UTC")
        )  # fmt: skip
    elif isinstance(ex_dtype, pl.Datetime) and ex_dtype.time_zone is not None:
        expiry = pl.col("expiry").dt.convert_time_zone("UTC")
    else:
        raise ValueError(f"column 'expiry' must be a Date or a timezone-aware Datetime, got {ex_dtype}")
    seconds = df.select(
        ((expiry - pl.col("ts").dt.convert_time_zone("UTC")).dt.total_microseconds() / 1e6).alias("s")
    )["s"]
    if seconds.null_count():
        raise ValueError(f"columns 'ts' / 'expiry' hold {seconds.null_count()} null value(s)")
    years = seconds.to_numpy().astype(np.float64) / _SECONDS_PER_YEAR
    if (years < 0).any():
        first = int(np.flatnonzero(years < 0)[0])
        raise ValueError(f"column 'expiry' is before 'ts' in {(years < 0).sum()} row(s), first at row {first}")
    return years


@dataclass(frozen=True)
class _Bars:
    """The distinct bars of a joined frame, sorted by (symbol, ts), and each joined row's bar index."""

    frame: pl.DataFrame  # symbol, ts, open, high, low, close, volume; sorted by symbol then ts
    row_bar: NDArray[np.int64]  # (rows,) index into frame for each joined row
    bounds: list[tuple[int, int]] = field(default_factory=list)  # [start, stop) of each symbol's series


def _bars(joined: pl.DataFrame) -> _Bars:
    _require(joined, _BAR_COLUMNS, "joined")
    bars = joined.select(_BAR_COLUMNS).unique(subset=["symbol", "ts"], keep="first").sort(["symbol", "ts"])
    n_distinct = joined.select(_BAR_COLUMNS).unique().height
    if n_distinct != bars.height:
        raise ValueError(
            "joined holds rows of one (symbol, ts) with different open/high/low/close/volume: "
            f"{n_distinct} distinct bars for {bars.height} (symbol, ts) keys"
        )
    for name in ("open", "high", "low", "close", "volume"):
        arr = _numeric(bars, name)
        if not np.isfinite(arr).all():
            raise ValueError(f"column {name!r} must be finite in every bar")
    if (_numeric(bars, "close") <= 0).any():
        raise ValueError("column 'close' must be > 0")
    bars = bars.with_row_index("_bar")
    row_bar = (
        joined.select("symbol", "ts")
        .join(bars.select("symbol", "ts", "_bar"), on=["symbol", "ts"], how="left", maintain_order="left")["_bar"]
        .to_numpy()
        .astype(np.int64)
    )
    counts = bars.group_by("symbol", maintain_order=True).len()["len"].to_list()
    stops = np.cumsum(counts).tolist()
    bounds = list(zip([0, *stops[:-1]], stops))
    return _Bars(frame=bars.drop("_bar"), row_bar=row_bar, bounds=bounds)


def _row_iv(joined: pl.DataFrame, spot: NDArray[np.float64], strike: NDArray[np.float64],
            years: NDArray[np.float64], call: NDArray[np.bool_], cfg: FeatureConfig) -> NDArray[np.float64]:  # fmt: skip
    """Each row's implied vol: the `iv` column where present and > 0, else solved from the mid quote."""
    bid, ask = _numeric(joined, "bid"), _numeric(joined, "ask")
    given = _numeric(joined, "iv") if "iv" in joined.columns else np.full(len(strike), np.nan)
    iv = np.where(np.isfinite(given) & (given > 0), given, np.nan)
    need = np.flatnonzero(np.isnan(iv))
    for lo in range(0, need.size, cfg.chunk_rows):
        i = need[lo : lo + cfg.chunk_rows]
        mid = 0.5 * (bid[i] + ask[i])
        iv[i] = implied_vol(mid, spot[i], strike[i], years[i], cfg.rate, call[i], cfg.dividend_yield)
    return iv


def _call_flags(joined: pl.DataFrame) -> NDArray[np.bool_]:
    right = joined["right"]
    if right.dtype not in (pl.String, pl.Categorical, pl.Enum):
        raise ValueError(f"column 'right' must hold the strings 'C' / 'P', got {right.dtype}")
    right = right.cast(pl.String)
    bad = ~right.is_in(["C", "P"]) | right.is_null()
    if bad.any():
        raise ValueError(f"column 'right' must be 'C' or 'P'; {int(bad.sum())} row(s) are not")
    return (right == "C").to_numpy()


def atm_candidates(bar: NDArray[np.integer], strike: NDArray[np.float64], spot: NDArray[np.float64],
                   iv: NDArray[np.float64]) -> pl.DataFrame:  # fmt: skip
    """Rows that may set their bar's ATM implied vol: per bar, the rows with an iv at the strike nearest spot.

    Args:
        bar: (rows,) integer key of each row's bar (any numbering, e.g. a position in the bars frame).
        strike, spot, iv: (rows,) the row's strike, its bar's close and its iv (annualised fraction, NaN if none).

    Returns:
        A frame ``bar, dist, iv`` (dist = |ln(strike / spot)|). Mergeable: candidates of disjoint groups of rows,
        concatenated, give the same `atm_iv` as the candidates of all rows at once (each bar keeps its rows at the
        smallest distance of its group, a superset of those at the bar's overall smallest distance).
    """
    ok = np.isfinite(iv)
    frame = pl.DataFrame({"bar": bar[ok], "dist": np.abs(np.log(strike[ok] / spot[ok])), "iv": iv[ok]})
    return frame.filter(pl.col("dist") == pl.col("dist").min().over("bar"))


def atm_iv(candidates: pl.DataFrame, n_bars: int) -> NDArray[np.float64]:
    """Each bar's ATM implied vol from `atm_candidates`: the median iv of its rows at the strike nearest spot (all
    expiries, calls and puts), as an (n_bars,) array indexed by the candidates' bar key; NaN for a bar with no iv."""
    atm = (
        candidates.filter(pl.col("dist") == pl.col("dist").min().over("bar"))
        .group_by("bar")
        .agg(pl.col("iv").median())
    )
    out = np.full(n_bars, np.nan)
    out[atm["bar"].to_numpy()] = atm["iv"].to_numpy()
    return out


def _bar_indicators(bars: _Bars, atm_iv: NDArray[np.float64], cfg: FeatureConfig) -> dict[str, NDArray[np.float64]]:
    """The bar-level members of the 24, per symbol series, as arrays over the sorted bars."""
    f = bars.frame
    h, lo, c = (_numeric(f, k) for k in ("high", "low", "close"))
    out = {k: np.full(f.height, np.nan) for k in CONDOR_BAR_FEATURES}
    if (h < lo).any():
        raise ValueError("column 'high' is below 'low' in some bar")
    for a, b in bars.bounds:
        hs, ls, cs = h[a:b], lo[a:b], c[a:b]
        out["rsi"][a:b] = ind.rsi(cs, cfg.rsi_window)
        out["atr"][a:b] = ind.atr(hs, ls, cs, cfg.atr_window)
        out["adx"][a:b] = ind.adx(hs, ls, cs, cfg.adx_window)
        out["stoch_k"][a:b] = ind.stoch_k(hs, ls, cs, cfg.stoch_window)
        low_band, _, up_band = ind.bollinger(cs, cfg.bb_window, cfg.bb_k)
        out["bb_lower"][a:b], out["bb_upper"][a:b] = low_band, up_band
        out["sma"][a:b] = ind.sma(cs, cfg.sma_window)
        sar = ind.psar(hs, ls, cfg.psar_step, cfg.psar_max_step)
        out["psar"][a:b] = sar
        out["psar_mark"][a:b] = ind.psar_mark(cs, sar)
        out["ivr"][a:b] = ind.iv_rank(atm_iv[a:b], cfg.ivr_window, cfg.ivr_min_periods)
    return out


def _frame(columns: dict[str, NDArray[np.floating]], names: tuple[str, ...], dtype: str) -> pl.DataFrame:
    """A frame of `names` (in that order) from numpy columns, cast to `dtype`; columns are popped as they go."""
    pl_dtype = pl.Float32 if dtype == "float32" else pl.Float64
    series = [pl.Series(k, columns.pop(k).astype(dtype, copy=False), dtype=pl_dtype) for k in names]
    return pl.DataFrame(series)


# ----------------------------------------------------------------------------------------------------------------
# The sets


def condor_features(joined: pl.DataFrame, config: FeatureConfig | None = None) -> pl.DataFrame:
    """CondorBrain's 24 features (`CONDOR_FEATURES`, units in `CONDOR_FEATURE_UNITS`) for every joined row.

    - open .. volume: the underlying's bar. strike, call_put (1 call / 0 put), dist_to_spot = strike / close - 1.
    - iv: the row's `iv` column where present and > 0, else solved by `implied_vol` from the mid quote
      (bid + ask) / 2 with spot = the bar's close, T = `years_to_expiry`, config.rate and config.dividend_yield;
      NaN where no vol fits the mid (e.g. a mid below intrinsic).
    - delta, gamma, vega, theta: `black_scholes` at that iv (vega per vol point, theta per calendar day).
    - spread_ratio = (ask - bid) / mid (NaN for a non-positive mid).
    - rsi, atr, adx, stoch_k, bb_lower, bb_upper, sma, psar, psar_mark: indicators of the symbol's bar series.
    - ivr: `iv_rank` of the bar's ATM iv (median iv at the strike nearest spot) over config.ivr_window bars.

    The bar series are the distinct (symbol, ts) bars of `joined`. This is the composition of
    `condor_row_features` (the 14 per-row members), `atm_candidates` / `atm_iv` and `condor_bar_features` (the 10
    bar-level members), which a chunked pipeline (`condorbrain.dataset.build_dataset`) calls piece by piece.

    Returns:
        A frame with the 24 columns in `CONDOR_FEATURES` order, config.dtype, one row per input row in input order;
        NaN during indicator warm-up and where no iv exists. ``.to_numpy()`` gives the (rows, 24) model input.

    Raises:
        ValueError: naming the column, for missing columns, bad types, non-finite bars, high < low, a 'right'
        other than 'C' / 'P', an expiry before ts, or rows of one bar that disagree on the bar's values.
    """
    cfg = config or FeatureConfig()
    _require(joined, _BAR_COLUMNS + _CONTRACT_COLUMNS, "joined")
    bars = _bars(joined)
    rows = condor_row_features(joined, cfg)
    spot = _numeric(joined, "close")
    cands = atm_candidates(bars.row_bar, _numeric(joined, "strike"), spot, rows.iv)
    bar_cols = condor_bar_features(bars.frame, atm_iv(cands, bars.frame.height), cfg)
    out = rows.columns
    out_dtype = np.dtype(cfg.dtype)
    for k, v in bar_cols.items():
        out[k] = v[bars.row_bar].astype(out_dtype)
    return _frame(out, CONDOR_FEATURES, cfg.dtype)


class RowFeatures(NamedTuple):
    """The per-row members of the 24 (`CONDOR_ROW_FEATURES`) and each row's implied vol."""

    columns: dict[str, NDArray[np.floating]]
    """name -> (rows,) array in config.dtype, for each name of `CONDOR_ROW_FEATURES`."""
    iv: NDArray[np.float64]
    """(rows,) the row's iv in float64 (the `iv` column before the cast), input of `atm_candidates`."""


def condor_row_features(joined: pl.DataFrame, config: FeatureConfig | None = None) -> RowFeatures:
    """The 14 members of the 24 that depend on the row alone (its bar's values, its contract, its quote).

    Definitions as in `condor_features`; spot is the row's own ``close``. Each row is computed on its own, so any
    split of the rows into groups gives the same values. Raises ValueError as `condor_features` does for the
    row-level columns.
    """
    cfg = config or FeatureConfig()
    _require(joined, _BAR_COLUMNS + _CONTRACT_COLUMNS, "joined")
    spot = _numeric(joined, "close")
    if not (np.isfinite(spot).all() and (spot > 0).all()):
        raise ValueError("column 'close' must be finite and > 0")
    years = years_to_expiry(joined, cfg)
    strike = _numeric(joined, "strike")
    if not (np.isfinite(strike).all() and (strike > 0).all()):
        raise ValueError("column 'strike' must be finite and > 0")
    call = _call_flags(joined)
    iv = _row_iv(joined, spot, strike, years, call, cfg)

    # Each column goes to the output dtype as soon as it exists, so at most one float64 temporary of the full
    # length lives beside the inputs (10M rows: 80 MB) and the greeks are written chunk by chunk.
    out_dtype = np.dtype(cfg.dtype)
    out: dict[str, NDArray[np.floating]] = {}
    for k in ("open", "high", "low", "close", "volume"):
        out[k] = _numeric(joined, k).astype(out_dtype, copy=False)
    out["strike"] = strike.astype(out_dtype)
    n = joined.height
    greeks = {k: np.empty(n, dtype=out_dtype) for k in ("delta", "gamma", "vega", "theta")}
    for lo in range(0, n, cfg.chunk_rows):
        sl = slice(lo, lo + cfg.chunk_rows)
        g = black_scholes(spot[sl], strike[sl], years[sl], cfg.rate, iv[sl], call[sl], cfg.dividend_yield)
        for k, arr in greeks.items():
            arr[sl] = getattr(g, k)
    out.update(greeks)
    out["iv"] = iv.astype(out_dtype)
    bid, ask = _numeric(joined, "bid"), _numeric(joined, "ask")
    mid = 0.5 * (bid + ask)  # NaN for a missing (stale) quote, and stays NaN below
    out["spread_ratio"] = np.where(mid > 0, (ask - bid) / np.where(mid > 0, mid, 1.0), np.nan).astype(out_dtype)
    del bid, ask, mid
    out["dist_to_spot"] = (strike / spot - 1.0).astype(out_dtype)
    out["call_put"] = call.astype(out_dtype)
    return RowFeatures(out, iv)


def condor_bar_features(bars: pl.DataFrame, atm: NDArray[np.float64] | None = None,
                        config: FeatureConfig | None = None) -> dict[str, NDArray[np.float64]]:  # fmt: skip
    """The 10 bar-level members of the 24 (`CONDOR_BAR_FEATURES`) for a frame of distinct bars.

    Args:
        bars: columns symbol, ts, high, low, close; distinct (symbol, ts), sorted by symbol then ts (each symbol's
            rows one series, oldest first).
        atm: (bars,) each bar's ATM iv (`atm_iv`), the series ranked by ``ivr``; None gives ivr = NaN.
        config: the indicator windows.

    Returns:
        name -> (bars,) float64 array in the frame's row order.
    """
    cfg = config or FeatureConfig()
    _require(bars, ("symbol", "ts", "high", "low", "close"), "bars")
    keys = bars.select("symbol", "ts")
    if keys.select((pl.col("ts").diff().over("symbol") <= pl.duration()).any()).item():
        raise ValueError("bars must hold distinct (symbol, ts), each symbol's rows in ascending ts")
    if keys.select(pl.col("symbol").rle_id().n_unique() != pl.col("symbol").n_unique()).item():
        raise ValueError("bars must be grouped by symbol (each symbol's rows contiguous)")
    for name in ("high", "low", "close"):
        if not np.isfinite(_numeric(bars, name)).all():
            raise ValueError(f"column {name!r} must be finite in every bar")
    counts = bars.group_by("symbol", maintain_order=True).len()["len"].to_list()
    stops = np.cumsum(counts).tolist()
    series = _Bars(frame=bars, row_bar=np.empty(0, np.int64), bounds=list(zip([0, *stops[:-1]], stops)))
    if atm is None:
        atm = np.full(bars.height, np.nan)
    elif atm.shape != (bars.height,):
        raise ValueError(f"atm must have shape ({bars.height},), got {atm.shape}")
    return _bar_indicators(series, atm, cfg)


def microstructure_features(joined: pl.DataFrame, config: FeatureConfig | None = None, *,
                            bar_imbalance: pl.DataFrame | None = None) -> pl.DataFrame:  # fmt: skip
    """Seed 002's microstructure features (`MICROSTRUCTURE_FEATURES`) for every joined row, in input order.

    With `bid_size` and `ask_size` columns: the seed's formulas (see `quote_microstructure`). Without them the
    imbalance is a proxy, the bulk-volume-classification imbalance of the underlying's bar (`bvc_imbalance`,
    config.micro_window bars, NaN during its warm-up), signed +1 for calls and -1 for puts (buying pressure in the
    underlying lifts calls and presses puts), and microprice = mid + imbalance * (ask - bid) / 2,
    eff_spread = (microprice - mid) / mid follow by seed 002's identity.

    The proxy is computed on the distinct bars of `joined`, unless `bar_imbalance` (columns symbol, ts, imbalance:
    `bar_bvc_imbalance` of a longer bar series, e.g. when `joined` is one chunk of a larger join) gives it; a row
    whose (symbol, ts) is not in `bar_imbalance` is an error.

    Units: mid and microprice in price units, eff_spread a fraction of mid, imbalance in -1..1.
    """
    cfg = config or FeatureConfig()
    _require(joined, _BAR_COLUMNS + ("right", "bid", "ask"), "joined")
    bid, ask = _numeric(joined, "bid"), _numeric(joined, "ask")
    if "bid_size" in joined.columns and "ask_size" in joined.columns:
        cols = quote_microstructure(bid, ask, _numeric(joined, "bid_size"), _numeric(joined, "ask_size"))
    else:
        if bar_imbalance is None:
            bars = _bars(joined)
            flow = bar_bvc_imbalance(bars.frame, cfg)[bars.row_bar]
        else:
            _require(bar_imbalance, ("symbol", "ts", "imbalance"), "bar_imbalance")
            found = joined.select("symbol", "ts").join(bar_imbalance.select("symbol", "ts", "imbalance"),
                                                       on=["symbol", "ts"], how="left", maintain_order="left",
                                                       validate="m:1")["imbalance"]  # fmt: skip
            if found.null_count():
                raise ValueError(f"bar_imbalance lacks the bar of {found.null_count()} joined row(s)")
            flow = found.to_numpy().astype(np.float64)
        sign = np.where(_call_flags(joined), 1.0, -1.0)
        cols = quote_microstructure(bid, ask, imbalance=sign * flow)
    return _frame(cols, MICROSTRUCTURE_FEATURES, cfg.dtype)


def bar_bvc_imbalance(bars: pl.DataFrame, config: FeatureConfig | None = None) -> NDArray[np.float64]:
    """`bvc_imbalance` of each symbol's close series (config.micro_window), for a frame of distinct bars sorted by
    symbol then ts (as `condor_bar_features` takes); (bars,) float64 in -1..1, NaN during the warm-up."""
    cfg = config or FeatureConfig()
    _require(bars, ("symbol", "close"), "bars")
    close = _numeric(bars, "close")
    flow = np.full(bars.height, np.nan)
    start = 0
    for count in bars.group_by("symbol", maintain_order=True).len()["len"].to_list():
        flow[start : start + count] = bvc_imbalance(close[start : start + count], cfg.micro_window)
        start += count
    return flow


def interaction_features(joined: pl.DataFrame, config: FeatureConfig | None = None) -> pl.DataFrame:
    """Seed 002's interaction features (`INTERACTION_FEATURES`, see `interaction_terms`) for every joined row.

    S is the bar's close, K the strike, T `years_to_expiry`; the liquidity term uses the contract's own volume when
    the row has a `quote_volume` column (the as-of join's name for the quotes' `volume`; a null there gives NaN),
    else the underlying's bar volume.
    """
    cfg = config or FeatureConfig()
    _require(joined, _BAR_COLUMNS + ("expiry", "strike"), "joined")
    bars = _bars(joined)
    spot = _numeric(bars.frame, "close")[bars.row_bar]
    volume = _numeric(joined, "quote_volume" if "quote_volume" in joined.columns else "volume")
    cols = interaction_terms(spot, _numeric(joined, "strike"), years_to_expiry(joined, cfg), volume)
    return _frame(cols, INTERACTION_FEATURES, cfg.dtype)


# ----------------------------------------------------------------------------------------------------------------
# The forecaster's set (seed 004)


@dataclass(frozen=True)
class ForecasterConfig:
    """Settings of seed 004's forecaster features (one row per bar)."""

    windows: tuple[int, ...] = (5, 10, 20, 60)
    """SMA / EMA windows, bars (seed 004's multi-scale 5, 10, 20, 60)."""
    vol_window: int = 20
    """Rolling volatility window, bars of log returns."""
    momentum_window: int = 10
    """Momentum and rate-of-change look-back, bars."""
    rsi_window: int = 14
    """RSI window, bars."""
    bb_window: int = 20
    """Bollinger window for the band position, bars."""
    bb_k: float = 2.0
    """Bollinger width, population standard deviations."""
    macd: tuple[int, int, int] = (12, 26, 9)
    """MACD fast, slow and signal windows, bars."""
    range_window: int = 60
    """Window of the price position in range, bars."""

    def __post_init__(self) -> None:
        if not self.windows:
            raise ValueError("windows must not be empty")
        for w in self.windows:
            _positive_int("windows", w)
        if len(set(self.windows)) != len(self.windows):
            raise ValueError(f"windows must be distinct, got {self.windows}")
        for name in ("momentum_window", "rsi_window", "bb_window", "range_window"):
            _positive_int(name, getattr(self, name))
        if isinstance(self.vol_window, bool) or not isinstance(self.vol_window, int) or self.vol_window < 2:
            raise ValueError(f"vol_window must be an int >= 2, got {self.vol_window!r}")
        if len(self.macd) != 3 or not self.macd[0] < self.macd[1]:
            raise ValueError(f"macd must be (fast, slow, signal) with fast < slow, got {self.macd!r}")
        for w in self.macd:
            _positive_int("macd", w)
        if not (np.isfinite(self.bb_k) and self.bb_k >= 0):
            raise ValueError(f"bb_k must be finite and >= 0, got {self.bb_k!r}")

    def names(self) -> tuple[str, ...]:
        """The feature columns, in order."""
        return (
            "norm_price", "ret", "log_ret",
            *(f"sma_{w}" for w in self.windows), *(f"ema_{w}" for w in self.windows),
            f"volatility_{self.vol_window}", f"momentum_{self.momentum_window}", f"roc_{self.momentum_window}",
            f"rsi_{self.rsi_window}", "bb_position", "macd", "macd_signal", "macd_hist",
            f"price_position_{self.range_window}",
        )  # fmt: skip


def forecaster_arrays(close: NDArray[np.float64], config: ForecasterConfig | None = None
                      ) -> dict[str, NDArray[np.float64]]:  # fmt: skip
    """Seed 004's features of one close series (ordered oldest -> newest), each an array of its length.

    - norm_price: close / close[0] (dimensionless; the first bar is the only reference, so no look-ahead).
    - ret: close_t / close_{t-1} - 1; log_ret: ln(close_t / close_{t-1}) (fractions; NaN at t = 0).
    - sma_w, ema_w: price units. volatility_n: per-bar std of log returns (`rolling_volatility`, not annualised).
    - momentum_n: price units; roc_n: percent. rsi_n: 0..100.
    - bb_position: (close - lower) / (upper - lower) of the Bollinger bands, 0.5 on the middle (0.5 for a flat
      window). macd, macd_signal, macd_hist: price units. price_position_n: 0..1 within the last n closes.
    """
    cfg = config or ForecasterConfig()
    c = np.asarray(close, dtype=np.float64)
    if c.ndim != 1 or len(c) == 0 or not np.isfinite(c).all() or (c <= 0).any():
        raise ValueError("close must be a non-empty 1-D array of finite values > 0")
    out: dict[str, NDArray[np.float64]] = {"norm_price": c / c[0]}
    ret = np.full(c.shape, np.nan)
    ret[1:] = c[1:] / c[:-1] - 1.0
    log_ret = np.full(c.shape, np.nan)
    log_ret[1:] = np.log(c[1:] / c[:-1])
    out["ret"], out["log_ret"] = ret, log_ret
    for w in cfg.windows:
        out[f"sma_{w}"] = ind.sma(c, w)
    for w in cfg.windows:
        out[f"ema_{w}"] = ind.ema(c, w)
    out[f"volatility_{cfg.vol_window}"] = ind.rolling_volatility(c, cfg.vol_window)
    out[f"momentum_{cfg.momentum_window}"] = ind.momentum(c, cfg.momentum_window)
    out[f"roc_{cfg.momentum_window}"] = ind.roc(c, cfg.momentum_window)
    out[f"rsi_{cfg.rsi_window}"] = ind.rsi(c, cfg.rsi_window)
    lower, _, upper = ind.bollinger(c, cfg.bb_window, cfg.bb_k)
    width = upper - lower
    with np.errstate(invalid="ignore"):  # NaN warm-up
        pos = np.where(width > 0, (c - lower) / np.where(width > 0, width, 1.0), 0.5)
    pos[np.isnan(width)] = np.nan
    out["bb_position"] = pos
    out["macd"], out["macd_signal"], out["macd_hist"] = ind.macd(c, *cfg.macd)
    out[f"price_position_{cfg.range_window}"] = ind.price_position(c, cfg.range_window)
    return out


def forecaster_features(bars: pl.DataFrame, config: ForecasterConfig | None = None, dtype: str = "float64"
                        ) -> pl.DataFrame:  # fmt: skip
    """Seed 004's features for every bar of a frame with columns symbol, ts, close (see `forecaster_arrays`).

    Each symbol's series is taken in ts order; the result has symbol, ts and `config.names()` columns, one row per
    input bar, in the input's row order. Raises ValueError for missing columns or a duplicate (symbol, ts).
    """
    cfg = config or ForecasterConfig()
    _require(bars, ("symbol", "ts", "close"), "bars")
    if dtype not in ("float64", "float32"):
        raise ValueError(f"dtype must be 'float64' or 'float32', got {dtype!r}")
    keyed = bars.select("symbol", "ts", "close").with_row_index("_row")
    ordered = keyed.sort(["symbol", "ts"])
    if ordered.select(pl.struct("symbol", "ts").is_duplicated().any()).item():
        raise ValueError("bars hold a duplicate (symbol, ts)")
    close = _numeric(ordered, "close")
    names = cfg.names()
    cols = {k: np.full(len(close), np.nan) for k in names}
    counts = ordered.group_by("symbol", maintain_order=True).len()["len"].to_list()
    start = 0
    for count in counts:
        for k, v in forecaster_arrays(close[start : start + count], cfg).items():
            cols[k][start : start + count] = v
        start += count
    inverse = np.empty(len(close), dtype=np.int64)
    inverse[ordered["_row"].to_numpy()] = np.arange(len(close))
    feats = _frame({k: v[inverse] for k, v in cols.items()}, names, dtype)
    return pl.concat([bars.select("symbol", "ts"), feats], how="horizontal")
