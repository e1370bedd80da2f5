"""Validation: each bad-input case gets its named problem (check, column, count, first rows); strict mode raises an
error naming the source, the column and the rows; the frame is never changed."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

import polars as pl
import pytest

from condorbrain.data import DataValidationError, validate_bars, validate_quotes

UTC = dt.timezone.utc
T0 = dt.datetime(2024, 1, 2, 14, 31, tzinfo=UTC)
N = 12


def _bars() -> pl.DataFrame:
    close = [100.0 + i for i in range(N)]
    return pl.DataFrame({
        "ts": [T0 + dt.timedelta(minutes=i) for i in range(N)], "symbol": "SPY",
        "open": close, "high": [c + 1 for c in close], "low": [c - 1 for c in close], "close": close,
        "volume": [1000.0] * N,
    })


def _quotes() -> pl.DataFrame:
    # two contracts quoted at the same instants, interleaved: allowed
    ts = [T0 + dt.timedelta(minutes=i // 2) for i in range(N)]
    return pl.DataFrame({
        "ts": ts, "underlying": "SPY", "expiry": T0 + dt.timedelta(days=3),
        "strike": [100.0, 105.0] * (N // 2), "right": ["C", "P"] * (N // 2),
        "bid": [1.0 + 0.1 * i for i in range(N)], "ask": [1.2 + 0.1 * i for i in range(N)],
    })


def _set(col: str, rows: list[int], value: object) -> Callable[[pl.DataFrame], pl.DataFrame]:
    def f(df: pl.DataFrame) -> pl.DataFrame:
        mask = pl.int_range(pl.len()).is_in(rows)
        return df.with_columns(pl.when(mask).then(pl.lit(value)).otherwise(pl.col(col)).alias(col))
    return f


def _swap(i: int, j: int) -> Callable[[pl.DataFrame], pl.DataFrame]:
    def f(df: pl.DataFrame) -> pl.DataFrame:
        order = list(range(df.height))
        order[i], order[j] = order[j], order[i]
        return df[order]
    return f


BAR_CASES = [
    # (id, mutation, check, column, count, rows)
    ("missing", lambda d: d.drop("volume"), "missing_column", "volume", 0, ()),
    ("text", lambda d: d.with_columns(pl.col("close").cast(pl.String)).pipe(_set("close", [3], "x")),
     "wrong_type", "close", 1, (3,)),
    ("naive_ts", lambda d: d.with_columns(pl.col("ts").dt.replace_time_zone(None)), "wrong_type", "ts", N,
     (0, 1, 2, 3, 4)),
    ("other_zone", lambda d: d.with_columns(pl.col("ts").dt.convert_time_zone("America/New_York")),
     "wrong_type", "ts", N, (0, 1, 2, 3, 4)),
    ("null", _set("close", [2], None), "null", "close", 1, (2,)),
    ("nan", _set("volume", [4, 9], float("nan")), "nan", "volume", 2, (4, 9)),
    ("inf", _set("high", [5], float("inf")), "inf", "high", 1, (5,)),
    ("non_positive", lambda d: d.pipe(_set("low", [6], 0.0)).pipe(_set("open", [6], 0.0)), "non_positive", "open",
     1, (6,)),
    ("negative_volume", _set("volume", [1], -5.0), "negative", "volume", 1, (1,)),
    ("high_below_low", _set("high", [7], 50.0), "high_below_low", "high,low", 1, (7,)),
    ("open_above_high", _set("open", [8], 500.0), "outside_range", "open,high,low", 1, (8,)),
    ("unsorted", _swap(5, 6), "unsorted", "ts", 1, (6,)),
    ("duplicate", _set("ts", [3], T0 + dt.timedelta(minutes=2)), "duplicate", "ts", 1, (3,)),
    ("too_few", lambda d: d.head(1), "too_few_rows", None, 1, ()),
    ("no_variance", lambda d: d.with_columns(open=100.0, high=101.0, low=99.0, close=100.0), "no_variance", "close",
     N, (0, 1, 2, 3, 4)),
]

QUOTE_CASES = [
    ("missing", lambda d: d.drop("ask"), "missing_column", "ask", 0, ()),
    ("bid_above_ask", _set("bid", [2, 3, 4, 5, 6, 7, 8], 99.0), "bid_above_ask", "bid,ask", 7, (2, 3, 4, 5, 6)),
    ("negative_bid", _set("bid", [1], -0.5), "negative", "bid", 1, (1,)),
    ("zero_ask", lambda d: d.pipe(_set("ask", [3], 0.0)).pipe(_set("bid", [3], 0.0)), "non_positive", "ask", 1, (3,)),
    ("zero_strike", _set("strike", [0], 0.0), "non_positive", "strike", 1, (0,)),
    ("bad_right", _set("right", [5], "X"), "bad_right", "right", 1, (5,)),
    ("expiry_before_ts", _set("expiry", [9], T0 - dt.timedelta(days=1)), "expiry_before_ts", "expiry,ts", 1, (9,)),
    ("unsorted", _swap(2, 4), "unsorted", "ts", 1, (4,)),
    ("duplicate", _set("ts", [2], T0), "duplicate", "ts", 1, (2,)),
    ("nan_optional", lambda d: d.with_columns(iv=pl.Series([0.2] * 3 + [float("nan")] + [0.2] * (N - 4))), "nan",
     "iv", 1, (3,)),
    ("text_strike", lambda d: d.with_columns(pl.col("strike").cast(pl.String)).pipe(_set("strike", [1], "1OO")),
     "wrong_type", "strike", 1, (1,)),
]


def test_clean_frames_pass() -> None:
    for df, fn in ((_bars(), validate_bars), (_quotes(), validate_quotes)):
        report = fn(df, strict=True)
        assert report.ok and report.problems == ()
        assert "no problems" in str(report)


@pytest.mark.parametrize(("case", "mutate", "check", "column", "count", "rows"), BAR_CASES + QUOTE_CASES,
                         ids=[f"bars-{c[0]}" for c in BAR_CASES] + [f"quotes-{c[0]}" for c in QUOTE_CASES])
def test_each_bad_input_is_named(case: str, mutate: Callable[[pl.DataFrame], pl.DataFrame], check: str,
                                 column: str | None, count: int, rows: tuple[int, ...], request: pytest.FixtureRequest
                                 ) -> None:
    is_bars = request.node.callspec.id.startswith("bars-")
    df = mutate(_bars() if is_bars else _quotes())
    fn = validate_bars if is_bars else validate_quotes
    before = df.clone()

    report = fn(df, source="feed/2024-01-02.csv")
    found = [p for p in report.problems if p.check == check and p.column == column]
    assert len(found) == 1, str(report)
    assert (found[0].count, found[0].rows) == (count, rows)

    with pytest.raises(DataValidationError) as err:
        fn(df, source="feed/2024-01-02.csv", strict=True)
    msg = str(err.value)
    assert "feed/2024-01-02.csv" in msg
    if column:
        assert f"column {column!r}" in msg
    if rows:
        assert "rows " + ", ".join(map(str, rows)) in msg
    assert err.value.report == report
    assert df.equals(before)  # nothing dropped, filled or reordered


def test_report_counts_all_and_lists_first_rows() -> None:
    df = _set("volume", list(range(3, 12)), -1.0)(_bars())
    (p,) = validate_bars(df, max_rows_listed=3).problems
    assert (p.check, p.count, p.rows) == ("negative", 9, (3, 4, 5))
    assert "rows 3, 4, 5, ..." in p.describe()


def test_several_problems_and_extra_columns() -> None:
    df = _bars().with_columns(note=pl.lit("x")).pipe(_set("high", [1], 0.5)).pipe(_set("close", [2], float("inf")))
    checks = {(p.check, p.column) for p in validate_bars(df).problems}
    assert ("high_below_low", "high,low") in checks and ("inf", "close") in checks
    assert not any(p.column == "note" for p in validate_bars(df).problems)  # extra columns pass through


def test_multi_symbol_sortedness_is_per_symbol() -> None:
    a, b = _bars(), _bars().with_columns(symbol=pl.lit("QQQ"))
    interleaved = pl.concat([a, b]).sort("ts", maintain_order=True)
    assert validate_bars(interleaved).ok


def test_not_a_frame() -> None:
    with pytest.raises(TypeError, match="polars DataFrame"):
        validate_bars({"ts": []})  # type: ignore[arg-type]
