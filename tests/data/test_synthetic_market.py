"""The synthetic intraday market: calendar, gaps, volume shape, regimes, reproducibility, quote sanity."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from condorbrain.data import (
    MarketConfig,
    load_bars,
    load_quotes,
    synth_market,
    validate_bars,
    validate_quotes,
    write_synth_market,
)
from condorbrain.data._pricing import bs_price

CFG = MarketConfig(n_sessions=12, seed=11)


@pytest.fixture(scope="module")
def market() -> tuple[pl.DataFrame, pl.DataFrame]:
    return synth_market(CFG)


def test_sessions_of_390_bars_ending_at_the_close(market: tuple[pl.DataFrame, pl.DataFrame]) -> None:
    bars, _ = market
    local = bars.with_columns(ny=pl.col("ts").dt.convert_time_zone("America/New_York"))
    per_day = local.group_by(pl.col("ny").dt.date()).agg(pl.len(), pl.col("ny").min().alias("first"),
                                                         pl.col("ny").max().alias("last"))
    assert per_day.height == CFG.n_sessions
    assert (per_day["len"] == 390).all()
    assert (per_day["first"].dt.time() == dt.time(9, 31)).all()  # END of the first bar
    assert (per_day["last"].dt.time() == dt.time(16, 0)).all()
    assert dt.date(2024, 1, 15) not in per_day["ny"].to_list()  # MLK day: closed
    assert validate_bars(bars, strict=True).ok


def test_overnight_gaps(market: tuple[pl.DataFrame, pl.DataFrame]) -> None:
    bars, _ = market
    step = bars["ts"].diff().drop_nulls()
    assert (step == dt.timedelta(minutes=1)).sum() == bars.height - CFG.n_sessions
    overnight = step.filter(step > dt.timedelta(minutes=1))
    assert overnight.len() == CFG.n_sessions - 1 and (overnight >= dt.timedelta(hours=17, minutes=30)).all()
    first = np.flatnonzero(np.r_[False, bars["ts"].diff().drop_nulls().to_numpy() > np.timedelta64(60, "s")])
    gaps = bars["open"].to_numpy()[first] / bars["close"].to_numpy()[first - 1] - 1.0
    assert (gaps != 0).all() and np.abs(gaps).max() < 0.05  # the open jumps away from the previous close


def test_u_shaped_volume() -> None:
    bars, _ = synth_market(MarketConfig(n_sessions=20, seed=3))
    minute = np.tile(np.arange(390), 20)
    v = bars["volume"].to_numpy()
    open_, mid, close = v[minute < 30].mean(), v[(minute >= 180) & (minute < 210)].mean(), v[minute >= 360].mean()
    assert open_ > 1.8 * mid and close > 1.8 * mid
    assert (v >= 0).all() and (v == np.round(v)).all()


def test_regimes_labelled_and_ordered_by_volatility() -> None:
    cfg = MarketConfig(n_sessions=40, seed=1, regime_mean_sessions=(3.0, 3.0, 3.0))
    bars, _ = synth_market(cfg)
    assert set(bars["regime"].unique().to_list()) == {0, 1, 2}
    # realised minute vol per regime follows the regime levels (ground truth kept in `regime`, `true_vol`)
    r = np.diff(np.log(bars["close"].to_numpy()))
    same_day = np.diff(bars["ts"].to_numpy()) == np.timedelta64(60, "s")
    reg = bars["regime"].to_numpy()[1:]
    vols = [r[same_day & (reg == k)].std() for k in range(3)]
    assert vols[0] < vols[1] < vols[2]
    tv = bars.group_by("regime").agg(pl.col("true_vol").median()).sort("regime")["true_vol"].to_list()
    assert tv[0] < tv[1] < tv[2]


def test_reproducible_with_seed(market: tuple[pl.DataFrame, pl.DataFrame]) -> None:
    again = synth_market(CFG)
    assert again.bars.equals(market[0]) and again.quotes.equals(market[1])
    other = synth_market(MarketConfig(n_sessions=CFG.n_sessions, seed=CFG.seed + 1))
    assert not other.bars["close"].equals(market[0]["close"])


def test_chunked_write_equals_in_memory(tmp_path: Path) -> None:
    cfg = MarketConfig(n_sessions=5, seed=2)
    bars, quotes = synth_market(cfg)
    written = write_synth_market(tmp_path / "m", cfg, chunk_sessions=2, progress=False)
    assert (written.n_bars, written.n_quotes, written.n_parts) == (bars.height, quotes.height, 3)
    assert load_bars(written.bars_dir).equals(bars)
    assert load_quotes(written.quotes_dir).equals(quotes)
    with pytest.raises(FileExistsError, match="already holds"):
        write_synth_market(tmp_path / "m", cfg, progress=False)


def test_quotes(market: tuple[pl.DataFrame, pl.DataFrame]) -> None:
    bars, quotes = market
    assert validate_quotes(quotes, strict=True).ok
    assert (quotes["bid"] <= quotes["ask"]).all()
    assert (quotes["expiry"] > quotes["ts"]).all()
    assert quotes["synthetic"].all()
    per_minute = quotes.height / bars.height
    assert 0.93 * CFG.contracts_per_minute < per_minute < 0.97 * CFG.contracts_per_minute  # ~95 of 100
    contracts = quotes.group_by(pl.col("ts").dt.truncate("1m")).agg(
        pl.struct("expiry", "strike", "right").n_unique().alias("n"))
    assert contracts["n"].max() == CFG.contracts_per_minute
    # every quote lies within its session's bars: in [bar start, bar end)
    starts = bars["ts"] - dt.timedelta(minutes=1)
    assert quotes.join_asof(pl.DataFrame({"ts": starts, "bar_end": bars["ts"]}), on="ts").select(
        (pl.col("ts") < pl.col("bar_end")).all()).item()
    # the mid implied by the recorded iv lies within the quote
    q = quotes.sample(2000, seed=0).sort("ts")
    T = (q["expiry"] - q["ts"]).dt.total_microseconds().to_numpy() / (365 * 86400e6)
    spot = q.join_asof(bars.select(pl.col("ts") - dt.timedelta(minutes=1), "open", "close"), on="ts")
    lo = np.minimum(spot["open"].to_numpy(), spot["close"].to_numpy())
    hi = np.maximum(spot["open"].to_numpy(), spot["close"].to_numpy())
    K, iv, call = q["strike"].to_numpy(), q["iv"].to_numpy(), (q["right"] == "C").to_numpy()
    m_lo = bs_price(lo, K, T, CFG.rate, CFG.div_yield, iv, call)
    m_hi = bs_price(hi, K, T, CFG.rate, CFG.div_yield, iv, call)
    mids_low, mids_high = np.minimum(m_lo, m_hi), np.maximum(m_lo, m_hi)
    assert (q["bid"].to_numpy() <= mids_high + 1e-9).all() and (q["ask"].to_numpy() >= mids_low - 1e-9).all()


def test_config_is_validated() -> None:
    with pytest.raises(ValueError, match="quote_prob"):
        MarketConfig(quote_prob=0.0)
    with pytest.raises(ValueError, match="regime_vols"):
        MarketConfig(regime_vols=(0.1, 0.2))  # type: ignore[arg-type]
