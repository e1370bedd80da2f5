"""Synthetic chains on the real S&P 500 bars: layout, IV sources, and no look-ahead in the IV surface."""

from __future__ import annotations

import datetime as dt

import numpy as np
import polars as pl
import pytest

from condorbrain.data import ChainConfig, load_sp500, load_vix, synth_chains, validate_quotes
from condorbrain.data.chains import _atm_level

UTC = dt.timezone.utc


@pytest.fixture(scope="module")
def sp500() -> pl.DataFrame:
    return load_sp500()


@pytest.fixture(scope="module")
def vix() -> pl.DataFrame:
    return load_vix()


def test_layout_and_sanity(sp500: pl.DataFrame, vix: pl.DataFrame) -> None:
    bars = sp500.filter(pl.col("ts").dt.year() == 2016)
    cfg = ChainConfig()
    q = synth_chains(bars, cfg, vix=vix)
    assert validate_quotes(q, strict=True).ok
    assert (q["bid"] <= q["ask"]).all() and (q["expiry"] > q["ts"]).all() and q["synthetic"].all()
    assert (q["strike"] % cfg.strike_round == 0).all()
    per_bar = q.group_by("ts").agg(pl.len(), pl.col("expiry").n_unique().alias("n_exp"), pl.col("strike").n_unique())
    assert per_bar.height == bars.height
    assert per_bar["strike"].unique().to_list() == [2 * cfg.strikes_each_side + 1]
    assert set(per_bar["n_exp"].unique().to_list()) <= {3, 4}  # 2 weekly + 2 monthly, one may coincide
    assert (per_bar["len"] == per_bar["n_exp"] * per_bar["strike"] * 2).all()
    # strikes are centred on the bar's close
    atm = q.join(bars.select("ts", "close"), on="ts").group_by("ts").agg(
        ((pl.col("strike") - pl.col("close")).abs().min() <= cfg.strike_round / 2).alias("ok"))
    assert atm["ok"].all()
    # ordered by bar, expiry, strike, right
    assert q.equals(q.sort("ts", "expiry", "strike", pl.col("right"), maintain_order=True))


def test_iv_source_and_level(sp500: pl.DataFrame, vix: pl.DataFrame) -> None:
    bars = sp500.filter(pl.col("ts").dt.year().is_in([2013, 2014]))
    level = pl.concat([bars.select("ts"), _atm_level(bars, ChainConfig(), vix)], how="horizontal")
    by_day = {d: row for d, row in zip(level["ts"].dt.date(), level.iter_rows(named=True), strict=True)}
    # VIX of 2014-01-03 is published at 16:15, after that day's 16:00 bar: the bar uses the proxy
    assert by_day[dt.date(2014, 1, 3)]["iv_source"] == "proxy"
    assert by_day[dt.date(2014, 1, 6)]["iv_source"] == "vix"
    assert by_day[dt.date(2014, 1, 6)]["atm"] == pytest.approx(0.1376)  # VIX close of 2014-01-03
    assert by_day[dt.date(2014, 1, 21)]["atm"] == pytest.approx(  # the day after MLK (VIX null): Friday's value
        vix.filter(pl.col("ts").dt.date() == dt.date(2014, 1, 17))["vix"].item() / 100)
    assert (level.filter(pl.col("ts").dt.year() == 2013)["iv_source"] == "proxy").all()
    # without VIX everything is the proxy
    assert (_atm_level(bars, ChainConfig(), None)["iv_source"] == "proxy").all()


def test_proxy_is_the_documented_ewma() -> None:
    close = np.array([100.0, 101.0, 99.0, 99.5, 103.0, 102.0])
    t0 = dt.datetime(2020, 1, 2, 21, tzinfo=UTC)
    bars = pl.DataFrame({"ts": [t0 + dt.timedelta(days=i) for i in range(6)], "symbol": "X", "open": close,
                         "high": close + 1, "low": close - 1, "close": close, "volume": 1.0})
    cfg = ChainConfig()
    v = cfg.proxy_prior_vol**2 / cfg.periods_per_year
    expected = [cfg.proxy_premium * np.sqrt(cfg.periods_per_year * v)]
    for r in np.diff(np.log(close)):  # v_t = lambda v_{t-1} + (1 - lambda) r_t^2
        v = cfg.proxy_lambda * v + (1 - cfg.proxy_lambda) * r * r
        expected.append(cfg.proxy_premium * np.sqrt(cfg.periods_per_year * v))
    np.testing.assert_allclose(_atm_level(bars, cfg, None)["atm"].to_numpy(), expected, rtol=1e-12)


def test_no_look_ahead(sp500: pl.DataFrame, vix: pl.DataFrame) -> None:
    """Changing bars and VIX values after t leaves every chain row at or before t unchanged (both IV sources)."""
    bars = sp500.filter(pl.col("ts").dt.year().is_in([2013, 2014]))
    cut = bars["ts"][bars.height // 2 + 30]  # in 2014: VIX-covered, and the proxy before
    base = synth_chains(bars, vix=vix).filter(pl.col("ts") <= cut)
    factor = pl.Series(np.random.default_rng(0).uniform(0.7, 1.4, bars.height))
    future = pl.col("ts") > cut
    bars2 = bars.with_columns([pl.when(future).then(pl.col(c) * factor).otherwise(pl.col(c)).alias(c)
                               for c in ("open", "high", "low", "close")])
    vix2 = vix.with_columns(vix=pl.when(pl.col("ts") > cut).then(pl.col("vix") * 3).otherwise(pl.col("vix")))
    after = synth_chains(bars2, vix=vix2).filter(pl.col("ts") <= cut)
    assert after.equals(base)
    assert {"vix", "proxy"} <= set(base["iv_source"].unique().to_list())
    # and the past alone gives the same rows
    assert synth_chains(bars.filter(~future), vix=vix.filter(pl.col("ts") <= cut)).equals(base)


def test_several_symbols_have_their_own_proxy(sp500: pl.DataFrame) -> None:
    a = sp500.head(50)
    b = a.with_columns(symbol=pl.lit("COPY"), open=pl.col("open") * 2, high=pl.col("high") * 2,
                       low=pl.col("low") * 2, close=pl.col("close") * 2)
    both = synth_chains(pl.concat([a, b]).sort("ts", maintain_order=True))
    one = synth_chains(a)
    got = both.filter(pl.col("underlying") == "^GSPC")
    assert got.select("ts", "expiry", "iv").equals(one.select("ts", "expiry", "iv"))


def test_bad_input_named() -> None:
    with pytest.raises(ValueError, match="proxy_lambda"):
        ChainConfig(proxy_lambda=1.0)
    bars = load_sp500().head(5).with_columns(close=pl.lit(-1.0))
    with pytest.raises(ValueError, match="column 'close'"):
        synth_chains(bars)
