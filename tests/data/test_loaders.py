"""Loaders and the Parquet writer: round trips, start-stamped bars, timezone handling, errors naming the file."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
import pytest

from condorbrain.data import DataValidationError, SCHEMA_VERSION, load_bars, load_quotes, write_parquet

UTC = dt.timezone.utc
T0 = dt.datetime(2024, 1, 2, 14, 31, tzinfo=UTC)


def _bars(n: int = 5) -> pl.DataFrame:
    close = [470.0 + 0.25 * i for i in range(n)]
    return pl.DataFrame({
        "ts": [T0 + dt.timedelta(minutes=i) for i in range(n)], "symbol": "SPY",
        "open": close, "high": [c + 0.5 for c in close], "low": [c - 0.5 for c in close], "close": close,
        "volume": [1000.0 + i for i in range(n)],
    })


def _quotes() -> pl.DataFrame:
    return pl.DataFrame({
        "ts": [T0, T0, T0 + dt.timedelta(seconds=1.5)], "underlying": "SPY", "expiry": T0 + dt.timedelta(days=3),
        "strike": [470.0, 475.0, 470.0], "right": ["C", "P", "C"], "bid": [2.5, 5.0, 2.6], "ask": [2.6, 5.2, 2.7],
        "iv": [0.15, None, 0.151], "synthetic": [True, True, False],
    })


def test_csv_round_trip(tmp_path: Path) -> None:
    bars, quotes = _bars(), _quotes()
    bars.write_csv(tmp_path / "bars.csv")
    quotes.write_csv(tmp_path / "quotes.csv")
    assert load_bars(tmp_path / "bars.csv").equals(bars)
    assert load_quotes(tmp_path / "quotes.csv").equals(quotes)  # empty iv cell -> null, booleans parsed


def test_parquet_round_trip_and_metadata(tmp_path: Path) -> None:
    bars, quotes = _bars(), _quotes()
    path = write_parquet(bars, tmp_path / "sub" / "bars.parquet", kind="bars")
    assert load_bars(path).equals(bars)
    meta = pq.read_schema(path).metadata
    assert meta[b"condorbrain.kind"] == b"bars"
    assert meta[b"condorbrain.schema_version"] == str(SCHEMA_VERSION).encode()
    write_parquet(quotes, tmp_path / "q" / "part-00000.parquet", kind="quotes")
    later = quotes.with_columns(pl.col("ts") + dt.timedelta(minutes=1))
    write_parquet(later, tmp_path / "q" / "part-00001.parquet", kind="quotes")
    assert load_quotes(tmp_path / "q").equals(pl.concat([quotes, later]))  # a directory of parts, in name order
    assert not list(tmp_path.rglob("*.tmp"))


def test_write_refuses_bad_data(tmp_path: Path) -> None:
    bad = _bars().with_columns(high=pl.lit(1.0))
    with pytest.raises(DataValidationError, match=r"(?s)out\.parquet.*column 'high,low'"):
        write_parquet(bad, tmp_path / "out.parquet", kind="bars")
    assert not (tmp_path / "out.parquet").exists()


def test_start_stamped_bars_are_converted_on_request(tmp_path: Path) -> None:
    bars = _bars()
    start_stamped = bars.with_columns(pl.col("ts") - dt.timedelta(minutes=1))
    start_stamped.write_csv(tmp_path / "s.csv")
    loaded = load_bars(tmp_path / "s.csv", stamped="start", bar_interval=dt.timedelta(minutes=1))
    assert loaded.equals(bars)
    assert load_bars(tmp_path / "s.csv")["ts"][0] == T0 - dt.timedelta(minutes=1)  # end-stamped by default
    with pytest.raises(ValueError, match="bar_interval"):
        load_bars(tmp_path / "s.csv", stamped="start")
    with pytest.raises(ValueError, match="bar_interval"):
        load_bars(tmp_path / "s.csv", bar_interval=dt.timedelta(minutes=1))


def _write_text(path: Path, rows: list[str]) -> Path:
    path.write_text("ts,symbol,open,high,low,close,volume\n" + "\n".join(rows) + "\n")
    return path


def test_naive_timestamps_need_a_zone(tmp_path: Path) -> None:
    # 2024-01-02 is winter (EST, UTC-5); 2024-07-01 is summer (EDT, UTC-4)
    path = _write_text(tmp_path / "naive.csv", ["2024-01-02 09:31:00,SPY,1,2,0.5,1.5,10",
                                                 "2024-07-01 09:31:00,SPY,1,2,0.5,1.6,10"])
    with pytest.raises(DataValidationError, match=r"(?s)naive\.csv.*column 'ts'.*assume_tz"):
        load_bars(path)
    out = load_bars(path, assume_tz="America/New_York")
    assert out["ts"].to_list() == [dt.datetime(2024, 1, 2, 14, 31, tzinfo=UTC),
                                   dt.datetime(2024, 7, 1, 13, 31, tzinfo=UTC)]
    assert out.schema["ts"] == pl.Datetime("us", "UTC")


def test_offsets_and_zones_become_utc(tmp_path: Path) -> None:
    path = _write_text(tmp_path / "offset.csv", ["2024-01-02T09:31:00-05:00,SPY,1,2,0.5,1.5,10",
                                                  "2024-01-02T14:32:00Z,SPY,1,2,0.5,1.6,10"])
    assert load_bars(path)["ts"].to_list() == [T0, T0 + dt.timedelta(minutes=1)]
    ny = _bars().with_columns(pl.col("ts").dt.convert_time_zone("America/New_York"))
    ny.write_parquet(tmp_path / "ny.parquet")
    assert load_bars(tmp_path / "ny.parquet").equals(_bars())  # same instants, now in UTC
    ms = _bars().with_columns(pl.col("ts").dt.cast_time_unit("ms"))
    ms.write_parquet(tmp_path / "ms.parquet")
    assert load_bars(tmp_path / "ms.parquet").equals(_bars())  # ms widened to us


def test_bad_cells_are_named(tmp_path: Path) -> None:
    path = _write_text(tmp_path / "bad.csv", ["2024-01-02T14:31:00Z,SPY,1,2,0.5,1.5,10",
                                               "2024-01-02T14:32:00Z,SPY,1,2,0.5,abc,10",
                                               "not a time,SPY,1,2,0.5,1.5,10"])
    with pytest.raises(DataValidationError) as err:
        load_bars(path)
    msg = str(err.value)
    assert str(path) in msg
    assert "column 'close'" in msg and "(rows 1)" in msg
    assert "column 'ts'" in msg and "(rows 2)" in msg
    raw = load_bars(path, validate=False)  # nothing is guessed or dropped
    assert raw.height == 3 and raw["close"].to_list()[1] == "abc"


def test_unknown_paths(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        load_bars(tmp_path / "nope.csv")
    (tmp_path / "x.txt").write_text("a")
    with pytest.raises(ValueError, match=r"x\.txt: unsupported file type"):
        load_bars(tmp_path / "x.txt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no .parquet files"):
        load_quotes(tmp_path / "empty")
