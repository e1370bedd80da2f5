"""Embedded real data: shapes, date ranges and stamps as arch ships them; the trading calendar against real dates."""

from __future__ import annotations

import datetime as dt

import numpy as np
import polars as pl

from condorbrain.data import load_nasdaq, load_sp500, load_vix, validate_bars
from condorbrain.data._calendar import expiry_dates, trading_days

UTC = dt.timezone.utc


def test_sp500_as_arch_ships_it() -> None:
    from arch.data import sp500

    df = load_sp500()
    raw = sp500.load()
    assert df.height == 5031 == len(raw)
    assert df.columns == ["ts", "symbol", "open", "high", "low", "close", "volume", "adj_close"]
    assert df["ts"].dt.date().to_list() == [d.date() for d in raw.index]
    np.testing.assert_array_equal(df["close"].to_numpy(), raw["Close"].to_numpy())
    np.testing.assert_array_equal(df["volume"].to_numpy(), raw["Volume"].to_numpy().astype(float))
    # stamped at the 16:00 New York close: 21:00 UTC in winter, 20:00 UTC in summer
    assert df["ts"][0] == dt.datetime(1999, 1, 4, 21, 0, tzinfo=UTC)
    summer = df.filter(pl.col("ts").dt.date() == dt.date(2018, 7, 2))["ts"][0]
    assert summer == dt.datetime(2018, 7, 2, 20, 0, tzinfo=UTC)
    assert df["ts"][-1].date() == dt.date(2018, 12, 31)
    assert validate_bars(df, strict=True).ok


def test_nasdaq() -> None:
    df = load_nasdaq()
    assert df.height == 5031 and df["symbol"].unique().to_list() == ["^IXIC"]
    assert df["ts"][0].date() == dt.date(1999, 1, 4) and df["ts"][-1].date() == dt.date(2018, 12, 31)
    assert validate_bars(df, strict=True).ok


def test_vix_as_arch_ships_it() -> None:
    from arch.data import vix

    df = load_vix()
    raw = vix.load()
    assert df.height == 1305 == len(raw)
    assert df["ts"][0] == dt.datetime(2014, 1, 3, 21, 15, tzinfo=UTC)  # 16:15 New York
    assert df["ts"][-1].date() == dt.date(2019, 1, 3)
    assert df["vix"].null_count() == 46 == int(raw["vix"].isna().sum())  # market holidays: kept, as null
    assert df["vix"][0] == 13.76
    np.testing.assert_array_equal(df["vix"].fill_null(float("nan")).to_numpy(), raw["vix"].to_numpy())
    closed = set(df.filter(pl.col("vix").is_null())["ts"].dt.date().to_list())
    assert dt.date(2018, 12, 5) in closed and dt.date(2014, 12, 25) in closed


def test_calendar_reproduces_real_trading_dates() -> None:
    real = load_sp500()["ts"].dt.date().to_list()
    assert trading_days(dt.date(1999, 1, 1), dt.date(2018, 12, 31)) == real
    # the 46 null VIX weekdays are exactly the weekday closures of 2014-2019
    vix = load_vix()
    weekdays = vix["ts"].dt.date().to_list()
    open_days = set(trading_days(weekdays[0], weekdays[-1]))
    assert {d for d in weekdays if d not in open_days} == set(vix.filter(pl.col("vix").is_null())["ts"].dt.date())


def test_expiries_move_off_holidays() -> None:
    weekly = expiry_dates(dt.date(2024, 3, 20), dt.date(2024, 4, 6), "weekly")
    assert weekly == [dt.date(2024, 3, 22), dt.date(2024, 3, 28), dt.date(2024, 4, 5)]  # Good Friday 2024-03-29
    monthly = expiry_dates(dt.date(2024, 1, 1), dt.date(2024, 4, 30), "monthly")
    assert monthly == [dt.date(2024, 1, 19), dt.date(2024, 2, 16), dt.date(2024, 3, 15), dt.date(2024, 4, 19)]
