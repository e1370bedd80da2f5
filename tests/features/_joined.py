"""A small joined frame of bars x contracts for the feature tests, built from a seeded random walk and Black-Scholes
quotes (no dependency on condorbrain.data, whose join is tested on its own; test_with_data.py covers the two
together). A plain module rather than a conftest.py, so that its name cannot clash with another folder's conftest."""

from __future__ import annotations

import datetime as dt

import numpy as np
import polars as pl
from condorbrain.features import black_scholes


def make_joined(n_bars: int = 120, seed: int = 0, symbols: tuple[str, ...] = ("SPY",), with_iv: bool = False,
                with_sizes: bool = False) -> pl.DataFrame:  # fmt: skip
    """Joined rows: each 1-minute bar of each symbol x 6 contracts (2 expiries x {C, P} x strikes near spot)."""
    rng = np.random.default_rng(seed)
    t0 = dt.datetime(2024, 3, 4, 14, 31, tzinfo=dt.UTC)
    frames = []
    for k, sym in enumerate(symbols):
        close = 470.0 * np.exp(np.cumsum(rng.normal(0, 0.0008, n_bars))) * (1 + 0.1 * k)
        open_ = np.concatenate([[close[0]], close[:-1]]) * (1 + rng.normal(0, 0.0002, n_bars))
        high = np.maximum(open_, close) * (1 + rng.uniform(0, 0.0006, n_bars))
        low = np.minimum(open_, close) * (1 - rng.uniform(0, 0.0006, n_bars))
        volume = rng.integers(10_000, 90_000, n_bars).astype(np.float64)
        ts = [t0 + dt.timedelta(minutes=i) for i in range(n_bars)]
        base = np.round(close[0])
        contracts = [(dt.date(2024, 3, 8), base - 5, "C"), (dt.date(2024, 3, 8), base + 5, "P"),
                     (dt.date(2024, 3, 8), base, "C"), (dt.date(2024, 3, 15), base, "P"),
                     (dt.date(2024, 3, 15), base + 10, "C"), (dt.date(2024, 3, 15), base - 10, "P")]  # fmt: skip
        for expiry, strike, right in contracts:
            years = np.array([(dt.datetime(expiry.year, expiry.month, expiry.day, 21, tzinfo=dt.UTC) - t)
                              .total_seconds() for t in ts]) / (365 * 86400)  # fmt: skip
            vol = 0.15 + 0.02 * rng.standard_normal(n_bars).cumsum() * 0.05
            vol = np.clip(vol, 0.05, 0.6)
            fair = black_scholes(close, strike, years, 0.0, vol, right == "C").price
            half = np.maximum(0.01, 0.01 * fair)
            data = {
                "ts": ts, "symbol": sym, "open": open_, "high": high, "low": low, "close": close,
                "volume": volume, "quote_ts": [t - dt.timedelta(seconds=5) for t in ts],
                "expiry": expiry, "strike": float(strike), "right": right,
                "bid": np.maximum(fair - half, 0.0), "ask": fair + half,
            }  # fmt: skip
            if with_iv:
                data["iv"] = vol
            if with_sizes:
                data["bid_size"] = rng.integers(1, 200, n_bars).astype(np.float64)
                data["ask_size"] = rng.integers(1, 200, n_bars).astype(np.float64)
            frames.append(pl.DataFrame(data).with_columns(pl.col("ts").dt.cast_time_unit("us"),
                                                          pl.col("quote_ts").dt.cast_time_unit("us")))
    # Interleave rows as a join might return them: by ts, then contract.
    return pl.concat(frames).sort(["ts", "symbol"], maintain_order=True)
