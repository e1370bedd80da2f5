"""Real market data that ships inside installed packages (no network): the ``arch`` package's data sets.

What is real and what is derived:

* :func:`load_sp500` — S&P 500 index (Yahoo ``^GSPC``) daily open, high, low, close, adjusted close and volume,
  1999-01-04 to 2018-12-31, 5031 sessions, exactly as ``arch.data.sp500`` ships them. Real.
* :func:`load_nasdaq` — NASDAQ Composite (``^IXIC``) daily, same dates and columns, from ``arch.data.nasdaq``. Real.
* :func:`load_vix` — Cboe VIX daily close, 2014-01-03 to 2019-01-03, 1305 weekdays, from ``arch.data.vix``. Real;
  the 46 weekdays on which the market was closed (holidays, 2018-12-05) are NaN in arch and null here.
* Derived: ``arch`` gives dates only. Bars are stamped at their END: 16:00 New York time (the cash close) on the
  date, converted to UTC; VIX values at 16:15 New York time, when Cboe publishes the VIX close. So a VIX value is
  never visible to a bar of the same date (16:00 < 16:15). ``symbol`` is added. Nothing else is changed, dropped or
  reordered.
"""

from __future__ import annotations

import datetime as dt

import polars as pl

from condorbrain.data._calendar import NEW_YORK

__all__ = ["load_sp500", "load_nasdaq", "load_vix", "BAR_CLOSE_TIME", "VIX_CLOSE_TIME"]

BAR_CLOSE_TIME = dt.time(16, 0)
"""New York wall-clock time at which the daily bars are stamped (end of the regular session)."""
VIX_CLOSE_TIME = dt.time(16, 15)
"""New York wall-clock time at which the VIX daily close is stamped (Cboe's VIX close)."""


def _stamp(dates: pl.Series, at: dt.time) -> pl.Series:
    local = dates.cast(pl.Date).cast(pl.Datetime("us")) + dt.timedelta(hours=at.hour, minutes=at.minute)
    return local.dt.replace_time_zone(str(NEW_YORK), ambiguous="raise", non_existent="raise").dt.convert_time_zone(
        "UTC")


def _daily_bars(pdf: object, symbol: str) -> pl.DataFrame:
    raw = pl.from_pandas(pdf, include_index=True)  # type: ignore[arg-type]
    return raw.select(
        _stamp(raw.get_column("Date"), BAR_CLOSE_TIME).alias("ts"),
        pl.lit(symbol).alias("symbol"),
        pl.col("Open").cast(pl.Float64).alias("open"),
        pl.col("High").cast(pl.Float64).alias("high"),
        pl.col("Low").cast(pl.Float64).alias("low"),
        pl.col("Close").cast(pl.Float64).alias("close"),
        pl.col("Volume").cast(pl.Float64).alias("volume"),
        pl.col("Adj Close").cast(pl.Float64).alias("adj_close"),
    )


def load_sp500() -> pl.DataFrame:
    """S&P 500 index daily bars 1999-01-04..2018-12-31 (5031 rows) in the bars schema, plus ``adj_close``.

    Prices in index points, volume in shares (as reported by Yahoo), ``ts`` = 16:00 New York on each date, in UTC.
    """
    from arch.data import sp500

    return _daily_bars(sp500.load(), "^GSPC")


def load_nasdaq() -> pl.DataFrame:
    """NASDAQ Composite daily bars 1999-01-04..2018-12-31 (5031 rows), as :func:`load_sp500`."""
    from arch.data import nasdaq

    return _daily_bars(nasdaq.load(), "^IXIC")


def load_vix() -> pl.DataFrame:
    """Cboe VIX daily closes 2014-01-03..2019-01-03 (1305 rows): columns ``ts``, ``symbol`` ("^VIX"), ``vix``.

    ``vix`` is in vol points (annualised percent: 15.0 means 15% = 0.15 as a decimal); null on the 46 dates when
    the market was closed. ``ts`` = 16:15 New York on each date, in UTC.
    """
    from arch.data import vix

    raw = pl.from_pandas(vix.load(), include_index=True, nan_to_null=True)
    return raw.select(
        _stamp(raw.get_column("Date"), VIX_CLOSE_TIME).alias("ts"),
        pl.lit("^VIX").alias("symbol"),
        pl.col("vix").cast(pl.Float64),
    )
