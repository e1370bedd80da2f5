"""Prediction targets: what happens after t. Kept apart from the features on purpose.

A target at t looks at the future (prices at t+1 .. t+h) -- that is its job -- and must never be used as an input.
Features (the rest of `condorbrain.features`) use data up to t only. Where the horizon runs past the end of the
series the target is NaN, never filled or truncated to a shorter window.

All functions take a 1-D price series (oldest -> newest, finite, > 0) and return float64 arrays of its length.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import polars as pl
from numpy.lib.stride_tricks import sliding_window_view
from numpy.typing import ArrayLike, NDArray

__all__ = [
    "DEFAULT_HORIZONS",
    "forward_log_return",
    "forward_max_adverse_excursion",
    "forward_max_drawdown",
    "forward_realized_vol",
    "forward_return",
    "target_frame",
]

Array = NDArray[np.float64]
DEFAULT_HORIZONS: tuple[int, ...] = (1, 5, 10, 30)
"""Seed 004's prediction horizons, in steps (bars)."""

_CHUNK = 1 << 16  # rows per block of the windowed targets: bounds the (rows, h + 1) temporaries


def _prices(close: ArrayLike) -> Array:
    c = np.asarray(close, dtype=np.float64)
    if c.ndim != 1:
        raise ValueError(f"close must be 1-D, got shape {c.shape}")
    if not np.isfinite(c).all() or (c <= 0).any():
        raise ValueError("close must be finite and > 0")
    return c


def _horizon(h: int) -> int:
    if isinstance(h, bool) or not isinstance(h, (int, np.integer)) or h < 1:
        raise ValueError(f"horizon must be a positive int, got {h!r}")
    return int(h)


def forward_return(close: ArrayLike, horizon: int) -> Array:
    """Simple forward return close_{t+h} / close_t - 1 (fraction); NaN for the last h rows."""
    c, h = _prices(close), _horizon(horizon)
    out = np.full(c.shape, np.nan)
    if len(c) > h:
        out[:-h] = c[h:] / c[:-h] - 1.0
    return out


def forward_log_return(close: ArrayLike, horizon: int) -> Array:
    """Log forward return ln(close_{t+h} / close_t); NaN for the last h rows."""
    c, h = _prices(close), _horizon(horizon)
    out = np.full(c.shape, np.nan)
    if len(c) > h:
        out[:-h] = np.log(c[h:] / c[:-h])
    return out


def _windows(c: Array, h: int):
    """Blocks of forward windows c[t : t + h + 1] for t = 0 .. len - h - 1, as read-only views."""
    view = sliding_window_view(c, h + 1)  # (len - h, h + 1)
    for lo in range(0, view.shape[0], _CHUNK):
        yield lo, view[lo : lo + _CHUNK]


def forward_realized_vol(close: ArrayLike, horizon: int) -> Array:
    """Realized volatility over the next h steps: sqrt(sum_{i=1..h} r_{t+i}^2), r the one-step log returns.

    A fraction over the horizon (not annualised; divide by sqrt(h) for a per-step figure). NaN for the last h rows.
    """
    c, h = _prices(close), _horizon(horizon)
    out = np.full(c.shape, np.nan)
    if len(c) <= h:
        return out
    r2 = np.diff(np.log(c)) ** 2
    # sum of r2[t .. t+h-1] (= returns t+1 .. t+h) by windows, no running-sum drift.
    out[: len(c) - h] = np.sqrt(sliding_window_view(r2, h).sum(axis=1))
    return out


def forward_max_drawdown(close: ArrayLike, horizon: int) -> Array:
    """Maximum drawdown of the path close_t .. close_{t+h}: max over t <= i <= j <= t+h of 1 - close_j / close_i.

    A fraction in [0, 1) (0.2 = a 20% peak-to-trough fall within the horizon). NaN for the last h rows.
    """
    c, h = _prices(close), _horizon(horizon)
    out = np.full(c.shape, np.nan)
    if len(c) <= h:
        return out
    for lo, w in _windows(c, h):
        peak = np.maximum.accumulate(w, axis=1)
        out[lo : lo + w.shape[0]] = (1.0 - w / peak).max(axis=1)
    return out


def forward_max_adverse_excursion(close: ArrayLike, horizon: int, side: int = 1) -> Array:
    """Maximum adverse excursion of a position opened at close_t and held h steps, as a fraction of close_t.

    Long (side=+1): max(0, 1 - min(close_{t+1..t+h}) / close_t); short (side=-1): max(0, max(close_{t+1..t+h}) /
    close_t - 1). NaN for the last h rows.
    """
    c, h = _prices(close), _horizon(horizon)
    if side not in (1, -1):
        raise ValueError(f"side must be +1 (long) or -1 (short), got {side!r}")
    out = np.full(c.shape, np.nan)
    if len(c) <= h:
        return out
    for lo, w in _windows(c, h):
        entry, path = w[:, 0], w[:, 1:]
        if side == 1:
            mae = 1.0 - path.min(axis=1) / entry
        else:
            mae = path.max(axis=1) / entry - 1.0
        out[lo : lo + w.shape[0]] = np.maximum(mae, 0.0)
    return out


def target_frame(bars: pl.DataFrame, horizons: Sequence[int] = DEFAULT_HORIZONS) -> pl.DataFrame:
    """All target families for every bar of a frame with columns symbol, ts, close, per symbol in ts order.

    Columns: symbol, ts, then for each h: ret_{h} (simple forward return), rv_{h} (`forward_realized_vol`),
    maxdd_{h} (`forward_max_drawdown`), mae_long_{h} and mae_short_{h} (`forward_max_adverse_excursion`).
    One row per input bar in the input's order; NaN where the horizon runs past the symbol's last bar.
    """
    if not isinstance(bars, pl.DataFrame):
        raise ValueError(f"bars must be a polars DataFrame, got {type(bars).__name__}")
    missing = [k for k in ("symbol", "ts", "close") if k not in bars.columns]
    if missing:
        raise ValueError(f"bars is missing column(s) {missing}")
    hs = [_horizon(h) for h in horizons]
    if not hs or len(set(hs)) != len(hs):
        raise ValueError(f"horizons must be distinct positive ints, got {list(horizons)!r}")
    keyed = bars.select("symbol", "ts", "close").with_row_index("_row").sort(["symbol", "ts"])
    if keyed.select(pl.struct("symbol", "ts").is_duplicated().any()).item():
        raise ValueError("bars hold a duplicate (symbol, ts)")
    close = keyed["close"].cast(pl.Float64).to_numpy()
    names = [f"{kind}_{h}" for h in hs for kind in ("ret", "rv", "maxdd", "mae_long", "mae_short")]
    cols = {k: np.full(len(close), np.nan) for k in names}
    start = 0
    for count in keyed.group_by("symbol", maintain_order=True).len()["len"].to_list():
        c = close[start : start + count]
        for h in hs:
            sl = slice(start, start + count)
            cols[f"ret_{h}"][sl] = forward_return(c, h)
            cols[f"rv_{h}"][sl] = forward_realized_vol(c, h)
            cols[f"maxdd_{h}"][sl] = forward_max_drawdown(c, h)
            cols[f"mae_long_{h}"][sl] = forward_max_adverse_excursion(c, h, 1)
            cols[f"mae_short_{h}"][sl] = forward_max_adverse_excursion(c, h, -1)
        start += count
    inverse = np.empty(len(close), dtype=np.int64)
    inverse[keyed["_row"].to_numpy()] = np.arange(len(close))
    return pl.concat([bars.select("symbol", "ts"), pl.DataFrame({k: v[inverse] for k, v in cols.items()})],
                     how="horizontal")  # fmt: skip
