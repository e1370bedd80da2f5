"""Synthetic chains on the real S&P 500 bars: layout, IV sources, and no look-ahead in the IV surface."""

from __future__ import annotations

import datetime as dt

import numpy as np
import polars as pl
import pytest

from condorbrain.data import ChainConfig, load_sp500, load_vix, synth_chains, validate_quotes
from condorbrain.data.chains import _atm_level, _expiry_grid

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
    assert (q["bid"] <= q["ask"]).all() and (q["expiry"] >= q["ts"]).all() and q["synthetic"].all()
    assert (q["strike"] % cfg.strike_round == 0).all()
    # every bar has a chain: 2 weekly + 2 monthly open expiries (one may coincide), plus on an expiry's own bar the
    # contracts expiring there
    per_bar = q.group_by("ts").agg(pl.len(), pl.col("expiry").n_unique().alias("n_exp"))
    assert per_bar.height == bars.height
    open_exp = q.filter(pl.col("expiry") > pl.col("ts")).group_by("ts").agg(pl.col("expiry").n_unique())
    assert set(open_exp["expiry"].unique().to_list()) <= {3, 4}
    # each (bar, expiry) quotes a call and a put on each strike, at least the 2 n + 1 strikes of the bar's grid
    per_exp = q.group_by("ts", "expiry").agg(pl.len(), pl.col("strike").n_unique())
    assert (per_exp["len"] == 2 * per_exp["strike"]).all()
    assert per_exp["strike"].min() >= 2 * cfg.strikes_each_side + 1
    assert per_exp["strike"].max() > 2 * cfg.strikes_each_side + 1  # strikes listed at earlier spots stay
    # the strikes nearest the bar's close are quoted for every open expiry
    atm = q.filter(pl.col("expiry") > pl.col("ts")).join(bars.select("ts", "close"), on="ts").group_by(
        "ts", "expiry").agg(((pl.col("strike") - pl.col("close")).abs().min() <= cfg.strike_round / 2).alias("ok"))
    assert atm["ok"].all()
    # ordered by bar, expiry, strike, right
    assert q.equals(q.sort("ts", "expiry", "strike", pl.col("right"), maintain_order=True))


def _reference_listing(bars: pl.DataFrame, cfg: ChainConfig) -> set[tuple[str, dt.datetime, dt.datetime, float]]:
    """The listing rule by plain loops over bars: (symbol, ts, expiry, strike) of every quoted (bar, contract).

    Per symbol in time order: the bar's centred grid is added to each open expiry's set of strikes; every expiry
    with expiry >= the bar's ts quotes all the strikes it has collected so far.
    """
    ts_us = bars["ts"].dt.cast_time_unit("us").dt.epoch("us").to_numpy()
    open_exp = _expiry_grid(bars, ts_us, cfg)  # the expiry calendar is not what is checked here
    out = set()
    for sym in bars["symbol"].unique().to_list():
        listed: dict[int, set[float]] = {}
        for i in np.flatnonzero((bars["symbol"] == sym).to_numpy()):
            close = bars["close"][int(i)]
            centre = round(close / cfg.strike_round) * cfg.strike_round
            step = max(cfg.strike_round, round(close * cfg.strike_step_pct / cfg.strike_round) * cfg.strike_round)
            grid = {centre + step * j for j in range(-cfg.strikes_each_side, cfg.strikes_each_side + 1)}
            for x in open_exp[i]:
                if x >= 0:
                    listed.setdefault(int(x), set()).update(grid)
            for x, strikes in listed.items():
                if x >= ts_us[i]:
                    expiry = dt.datetime(1970, 1, 1, tzinfo=UTC) + dt.timedelta(microseconds=x)
                    out |= {(sym, bars["ts"][int(i)], expiry, k) for k in strikes}
    return out


def test_listed_strikes_stay_quoted_until_expiry(sp500: pl.DataFrame) -> None:
    """Against the loop reference, on the autumn of 2008 (spot moves a lot) and a second, interleaved symbol."""
    a = sp500.filter((pl.col("ts").dt.year() == 2008) & (pl.col("ts").dt.month() >= 9)).head(70)
    b = a.with_columns(symbol=pl.lit("ZZZ"), close=pl.col("close").reverse(), open=pl.col("open").reverse(),
                       high=pl.col("high").reverse(), low=pl.col("low").reverse())
    bars = pl.concat([a, b]).sort("ts", maintain_order=True)
    cfg = ChainConfig(strikes_each_side=3, weekly_expiries=2, monthly_expiries=1)
    q = synth_chains(bars, cfg)
    assert validate_quotes(q, strict=True).ok
    calls, puts = (q.filter(pl.col("right") == r).select("underlying", "ts", "expiry", "strike") for r in "CP")
    assert calls.equals(puts)
    got = set(calls.iter_rows())
    assert len(got) == calls.height
    assert got == _reference_listing(bars, cfg)
    assert calls.group_by("underlying", "ts", "expiry").len()["len"].max() > 2 * 3 + 1  # the chains did widen

    # each contract: an unbroken run of its symbol's bars, from its first quote to the last bar at or before expiry
    pos = bars.select("symbol", "ts").with_columns(pl.int_range(pl.len()).over("symbol").alias("pos"))
    runs = (calls.join(pos, left_on=["underlying", "ts"], right_on=["symbol", "ts"])
            .group_by("underlying", "expiry", "strike")
            .agg(pl.len(), pl.col("pos").min().alias("lo"), pl.col("pos").max().alias("hi"), pl.col("ts").max()))
    assert (runs["hi"] - runs["lo"] + 1 == runs["len"]).all()
    for sym, expiry, ts in runs.select("underlying", "expiry", "ts").iter_rows():
        sym_ts = bars.filter(pl.col("symbol") == sym)["ts"]
        assert ts == sym_ts.filter(sym_ts <= expiry).max()  # quoted up to expiry (or the symbol's last bar)
    # on its expiry bar a contract is priced at T = 0: its intrinsic value lies within bid .. ask
    at_exp = q.filter(pl.col("expiry") == pl.col("ts")).join(bars.select("symbol", "ts", "close"),
                                                             left_on=["underlying", "ts"], right_on=["symbol", "ts"])
    assert at_exp.height > 0
    intrinsic = np.maximum(np.where(at_exp["right"] == "C", 1.0, -1.0) * (at_exp["close"] - at_exp["strike"]), 0.0)
    assert ((at_exp["bid"] <= intrinsic + 1e-9) & (intrinsic <= at_exp["ask"] + 1e-9)).all()


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
