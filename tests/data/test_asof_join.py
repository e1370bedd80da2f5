"""The as-of join against its brute-force twin, pinned edge cases, look-ahead and bad input."""

from __future__ import annotations

import datetime as dt
import json
import runpy
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from condorbrain.data import MarketConfig, asof_join, asof_join_reference, synth_market

UTC = dt.timezone.utc
T0 = dt.datetime(2024, 3, 1, 14, 30, tzinfo=UTC)


def _utc(us: np.ndarray) -> pl.Series:
    since_epoch = (int(T0.timestamp()) * 1_000_000 + us).astype(np.int64)
    return pl.Series(since_epoch).cast(pl.Datetime("us")).dt.replace_time_zone("UTC")


def _random_market(seed: int, n_bars: int = 40, n_quotes: int = 400) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Two symbols with gapped bars; quotes on a coarse time grid so that ties and quotes exactly at bar ends
    occur often; some contracts expire inside the window, some are first quoted late, some quotes come after
    expiry."""
    rng = np.random.default_rng(seed)
    minute = 60_000_000
    bars = []
    for sym in ("AAA", "BBB"):
        steps = rng.choice([1, 1, 1, 2, 5], size=n_bars)  # gaps of 2 and 5 minutes
        bars.append(pl.DataFrame({"ts": _utc(np.cumsum(steps) * minute), "symbol": sym,
                                  "close": rng.normal(100, 1, n_bars), "volume": rng.integers(1, 100, n_bars) * 1.0}))
    bars = pl.concat(bars).sample(fraction=1.0, shuffle=True, seed=seed)  # the join orders by (symbol, ts)
    horizon = int(bars["ts"].dt.epoch("us").max() - T0.timestamp() * 1_000_000)
    grid = rng.integers(0, horizon // (15 * 1_000_000) + 2, n_quotes) * 15 * 1_000_000  # 15 s grid: ties
    expiry_min = rng.choice([10, 60, 100_000], n_quotes)
    quotes = pl.DataFrame({
        "ts": _utc(grid),
        "underlying": rng.choice(["AAA", "BBB", "CCC"], n_quotes),  # CCC has no bars
        "expiry": _utc(expiry_min * minute),
        "strike": rng.choice([95.0, 100.0, 105.0], n_quotes),
        "right": rng.choice(["C", "P"], n_quotes),
        "bid": np.round(rng.uniform(0, 5, n_quotes), 2),
        "ask": np.round(rng.uniform(5, 10, n_quotes), 2),
        "volume": rng.integers(0, 50, n_quotes) * 1.0,  # clashes with bars.volume -> quote_volume
    })
    return bars, quotes


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("staleness_s", [0, 30, 90, 10_000])
def test_join_equals_brute_force(seed: int, staleness_s: int) -> None:
    bars, quotes = _random_market(seed)
    staleness = dt.timedelta(seconds=staleness_s)
    fast = asof_join(bars, quotes, staleness)
    ref = asof_join_reference(bars, quotes, staleness)
    assert fast.height > 0
    assert fast.schema == ref.schema
    assert fast.equals(ref)
    # the random data really exercise the rules
    used = fast.filter(pl.col("quote_ts").is_not_null())
    assert (used["quote_ts"] <= used["ts"]).all()
    if staleness_s == 30:
        assert used.filter(pl.col("quote_ts") == pl.col("ts")).height > 0  # quotes exactly at the bar end
        assert fast["quote_ts"].null_count() > 0  # stale -> missing


def test_pinned_rules() -> None:
    m = dt.timedelta(minutes=1)
    bars = pl.DataFrame({"ts": [T0 + m, T0 + 2 * m, T0 + 3 * m, T0 + 10 * m], "symbol": "SPY",
                         "close": [1.0, 2.0, 3.0, 4.0]})
    exp = T0 + dt.timedelta(days=1)
    q = pl.DataFrame({
        "ts": [T0 + m, T0 + m, T0 + 2 * m + dt.timedelta(microseconds=1), T0 + 3 * m - dt.timedelta(seconds=30)],
        "underlying": "SPY", "expiry": exp, "strike": 100.0, "right": "C",
        "bid": [1.0, 1.1, 9.9, 1.3], "ask": [2.0, 2.1, 9.9, 2.3],
    })
    out = asof_join(bars, q, dt.timedelta(seconds=30))
    # bar 1: two quotes exactly at its end, the later row wins; bar 2: the quote 1 us after its end is NOT used,
    # and the one at bar 1's end is 60 s old > 30 s -> missing; bar 3: 30 s old == max_staleness -> used;
    # bar 4: 7.5 min old -> missing, row kept.
    assert out["bid"].to_list() == [1.1, None, 1.3, None]
    assert out["quote_ts"].to_list() == [T0 + m, None, T0 + 3 * m - dt.timedelta(seconds=30), None]
    assert out.columns == ["ts", "symbol", "close", "expiry", "strike", "right", "bid", "ask", "quote_ts"]
    # a contract is listed from its first quote on: no row before it
    late = q.with_columns(ts=pl.col("ts") + dt.timedelta(minutes=2))
    assert asof_join(bars, late, dt.timedelta(hours=1))["ts"].to_list() == [T0 + 3 * m, T0 + 10 * m]
    # and not after its expiry
    short = q.with_columns(expiry=pl.lit(T0 + 2 * m).dt.cast_time_unit("us"))
    assert asof_join(bars, short, dt.timedelta(hours=1))["ts"].to_list() == [T0 + m, T0 + 2 * m]


def test_nanosecond_quotes_never_leak_by_truncation() -> None:
    bars = pl.DataFrame({"ts": [T0], "symbol": "SPY"})
    q = pl.DataFrame({"ts": [T0], "underlying": "SPY", "expiry": T0 + dt.timedelta(days=1), "strike": 1.0,
                      "right": "P", "bid": 1.0, "ask": 2.0}).with_columns(pl.col("ts").dt.cast_time_unit("ns"))
    q = pl.concat([q, q.with_columns(ts=pl.col("ts") + pl.duration(nanoseconds=500), bid=pl.lit(7.0))])
    out = asof_join(bars, q, dt.timedelta(seconds=1))
    assert out["bid"].to_list() == [1.0]  # the quote 500 ns after the bar end is not used


def test_no_look_ahead() -> None:
    """Changing, adding (a new contract too) or removing data after t leaves every joined row at or before t as is."""
    bars, quotes = _random_market(3)
    cut = bars["ts"].sort()[len(bars) // 2]
    staleness = dt.timedelta(seconds=90)
    base = asof_join(bars, quotes, staleness).filter(pl.col("ts") <= cut)
    future = quotes.filter(pl.col("ts") > cut)
    changed = pl.concat([
        quotes.filter(pl.col("ts") <= cut),  # past rows keep their relative order (it breaks ts ties)
        future.with_columns(bid=pl.col("bid") + 1.0, ask=pl.col("ask") + 1.0).reverse(),
        future.head(20).with_columns(strike=pl.lit(999.0)),
    ])
    factor = pl.Series(np.random.default_rng(0).uniform(0.5, 2.0, bars.height))
    changed_bars = bars.with_columns(close=pl.when(pl.col("ts") > cut).then(pl.col("close") * factor)
                                     .otherwise(pl.col("close")))
    assert asof_join(changed_bars, changed, staleness).filter(pl.col("ts") <= cut).equals(base)
    assert asof_join(bars.filter(pl.col("ts") <= cut), quotes.filter(pl.col("ts") <= cut), staleness).equals(base)
    assert (base["quote_ts"].drop_nulls() <= cut).all()


def test_no_look_ahead_at_every_cut() -> None:
    bars, quotes = _random_market(5, n_bars=15, n_quotes=150)
    staleness = dt.timedelta(seconds=60)
    full = asof_join(bars, quotes, staleness)
    for cut in bars["ts"].unique().sort():
        past = asof_join(bars.filter(pl.col("ts") <= cut), quotes.filter(pl.col("ts") <= cut), staleness)
        assert past.equals(full.filter(pl.col("ts") <= cut))


def test_synthetic_market_join_row_counts() -> None:
    cfg = MarketConfig(n_sessions=2, seed=7)
    bars, quotes = synth_market(cfg)
    staleness = dt.timedelta(minutes=2)
    out = asof_join(bars, quotes, staleness)
    per_bar = out.group_by("ts").len()["len"]
    assert per_bar.max() == cfg.contracts_per_minute  # every listed contract, once per bar
    assert out.height >= 0.99 * bars.height * cfg.contracts_per_minute
    used = out.filter(pl.col("quote_ts").is_not_null())
    assert ((used["ts"] - used["quote_ts"]) <= staleness).all()
    assert (used["quote_ts"] <= used["ts"]).all()
    assert out.select(pl.exclude("regime", "true_vol", "volume")).columns[:6] == ["ts", "symbol", "open", "high",
                                                                                "low", "close"]


def test_bad_input_is_named() -> None:
    bars, quotes = _random_market(0, n_bars=5, n_quotes=10)
    with pytest.raises(ValueError, match="bars: column 'ts' must be a timezone-aware UTC"):
        asof_join(bars.with_columns(pl.col("ts").dt.replace_time_zone(None)), quotes, dt.timedelta(0))
    with pytest.raises(ValueError, match="quotes: missing column"):
        asof_join(bars, quotes.drop("right"), dt.timedelta(0))
    with pytest.raises(ValueError, match="max_staleness"):
        asof_join(bars, quotes, dt.timedelta(seconds=-1))
    with pytest.raises(ValueError, match="max_staleness"):
        asof_join(bars, quotes, 60)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"quotes: column 'strike' has 1 null value\(s\) \(rows \[2\]\)"):
        asof_join(bars, quotes.with_columns(strike=pl.when(pl.int_range(pl.len()) == 2).then(None)
                                            .otherwise(pl.col("strike"))), dt.timedelta(0))
    with pytest.raises(ValueError, match="duplicate timestamps"):
        asof_join(pl.concat([bars, bars.head(1)]), quotes, dt.timedelta(0))


def test_benchmark_script_runs_small(tmp_path: Path) -> None:
    """benchmarks/data_join.py end to end at one session (the full size is run by hand, not in tests)."""
    bench = runpy.run_path(str(Path(__file__).parents[2] / "benchmarks" / "data_join.py"))
    out = tmp_path / "dj.json"
    assert bench["main"](["--sessions", "1", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["bars"] == 390 and result["joined_rows"] > 0.99 * 390 * result["config"]["contracts_per_minute"]
    assert [s["stage"] for s in result["stages"]] == ["synthesize", "validate", "asof_join"]
