"""The feature sets: names and order, values against the building blocks, row order, look-ahead, bad input."""

from __future__ import annotations

import datetime as dt

import numpy as np
import polars as pl
import pytest
from _joined import make_joined
from scipy.special import ndtr

from condorbrain.features import (
    CONDOR_FEATURE_UNITS,
    CONDOR_FEATURES,
    INTERACTION_FEATURES,
    MICROSTRUCTURE_FEATURES,
    FeatureConfig,
    ForecasterConfig,
    adx,
    atr,
    black_scholes,
    bollinger,
    bvc_imbalance,
    condor_features,
    forecaster_arrays,
    forecaster_features,
    implied_vol,
    interaction_features,
    iv_rank,
    microstructure_features,
    psar,
    psar_mark,
    rsi,
    sma,
    stoch_k,
    years_to_expiry,
)

# Seed 001 sec. 2.2, copied by hand from the seed's table (group by group).
SEED_001_FEATURES = [
    "open", "high", "low", "close", "volume",  # spot dynamics
    "strike", "delta", "gamma", "vega", "theta",  # option physics
    "iv", "ivr", "spread_ratio",  # volatility
    "rsi", "atr", "adx", "stoch_k",  # technicals
    "bb_lower", "bb_upper", "sma", "psar", "psar_mark",  # bands & trend
    "dist_to_spot", "call_put",  # metadata
]  # fmt: skip

CFG = FeatureConfig(ivr_window=30, rsi_window=5, atr_window=5, adx_window=5, stoch_window=5, bb_window=8,
                    sma_window=8, micro_window=5)  # fmt: skip


def _bars_of(joined: pl.DataFrame, symbol: str) -> pl.DataFrame:
    return (
        joined.filter(pl.col("symbol") == symbol)
        .select("ts", "open", "high", "low", "close", "volume")
        .unique(subset="ts", keep="first")
        .sort("ts")
    )


def test_names_order_and_units() -> None:
    assert list(CONDOR_FEATURES) == SEED_001_FEATURES
    assert len(CONDOR_FEATURES) == 24
    assert set(CONDOR_FEATURE_UNITS) == set(CONDOR_FEATURES)
    out = condor_features(make_joined(40), CFG)
    assert out.columns == SEED_001_FEATURES
    assert out.height == 40 * 6


def test_values_against_building_blocks() -> None:
    joined = make_joined(90, symbols=("SPY", "QQQ"), seed=1)
    out = condor_features(joined, CFG)
    years = years_to_expiry(joined, CFG)
    close = joined["close"].to_numpy()
    strike = joined["strike"].to_numpy()
    call = (joined["right"] == "C").to_numpy()
    bid, ask = joined["bid"].to_numpy(), joined["ask"].to_numpy()
    for k in ("open", "high", "low", "close", "volume", "strike"):
        np.testing.assert_array_equal(out[k].to_numpy(), joined[k].to_numpy())
    np.testing.assert_array_equal(out["call_put"].to_numpy(), call.astype(float))
    np.testing.assert_allclose(out["dist_to_spot"].to_numpy(), strike / close - 1, rtol=1e-14)
    mid = (bid + ask) / 2
    np.testing.assert_allclose(out["spread_ratio"].to_numpy(), (ask - bid) / mid, rtol=1e-14)
    iv = implied_vol(mid, close, strike, years, 0.0, call)
    np.testing.assert_allclose(out["iv"].to_numpy(), iv, rtol=1e-12)
    assert np.isfinite(iv).mean() > 0.95
    g = black_scholes(close, strike, years, 0.0, iv, call)
    for k in ("delta", "gamma", "vega", "theta"):
        np.testing.assert_allclose(out[k].to_numpy(), getattr(g, k), rtol=1e-12, equal_nan=True)
    # Bar-level indicators: computed on each symbol's bar series on its own, broadcast to its contract rows.
    for sym in ("SPY", "QQQ"):
        bars = _bars_of(joined, sym)
        h, lo, c = (bars[k].to_numpy() for k in ("high", "low", "close"))
        lower, _, upper = bollinger(c, 8, 2.0)
        sar = psar(h, lo)
        want = {"rsi": rsi(c, 5), "atr": atr(h, lo, c, 5), "adx": adx(h, lo, c, 5), "stoch_k": stoch_k(h, lo, c, 5),
                "bb_lower": lower, "bb_upper": upper, "sma": sma(c, 8), "psar": sar, "psar_mark": psar_mark(c, sar)}
        # ATM iv per bar, by a loop: the median iv at the strike nearest the close.
        rows = out.with_columns(joined.select("ts", "symbol")).filter(pl.col("symbol") == sym)
        atm = []
        for t in bars["ts"]:
            r = rows.filter(pl.col("ts") == t)
            d = np.abs(np.log(r["strike"].to_numpy() / r["close"].to_numpy()))
            v = r["iv"].to_numpy()
            ok = np.isfinite(v)
            atm.append(np.median(v[ok][d[ok] == d[ok].min()]))
        want["ivr"] = iv_rank(np.array(atm), 30)
        index = {t: i for i, t in enumerate(bars["ts"].to_list())}
        at = np.array([index[t] for t in rows.with_columns(joined.filter(pl.col("symbol") == sym)
                                                           .select("ts"))["ts"].to_list()])  # fmt: skip
        for k, v in want.items():
            np.testing.assert_allclose(rows[k].to_numpy(), v[at], rtol=1e-12, equal_nan=True, err_msg=k)
        assert np.isfinite(rows["ivr"].to_numpy()[at >= 29]).all()


def test_iv_column_is_used_where_present() -> None:
    joined = make_joined(30, with_iv=True, seed=2)
    joined = joined.with_columns(pl.when(pl.int_range(pl.len()) % 5 == 0).then(None).otherwise(pl.col("iv"))
                                 .alias("iv"))  # fmt: skip
    out = condor_features(joined, CFG)
    given = joined["iv"].to_numpy()
    has = np.isfinite(given)
    np.testing.assert_array_equal(out["iv"].to_numpy()[has], given[has])
    # Missing rows are solved from the mid: close to the vol the quotes were made at (they carry a spread).
    assert np.isfinite(out["iv"].to_numpy()[~has]).all()


def test_row_order_is_kept_and_float32() -> None:
    joined = make_joined(40, seed=3)
    perm = np.random.default_rng(0).permutation(joined.height)
    a = condor_features(joined, CFG)
    b = condor_features(joined[perm], CFG)
    np.testing.assert_allclose(b.to_numpy(), a.to_numpy()[perm], rtol=1e-12, equal_nan=True)
    f32 = condor_features(joined, FeatureConfig(**{**CFG.__dict__, "dtype": "float32"}))
    assert all(dt_ == pl.Float32 for dt_ in f32.dtypes)
    assert f32.to_numpy().dtype == np.float32 and f32.to_numpy().shape == (joined.height, 24)


def test_chunking_does_not_change_results() -> None:
    joined = make_joined(30, symbols=("SPY", "QQQ"), seed=12)
    whole = condor_features(joined, CFG).to_numpy()
    chunked = condor_features(joined, FeatureConfig(**{**CFG.__dict__, "chunk_rows": 7})).to_numpy()
    np.testing.assert_allclose(chunked, whole, rtol=1e-14, atol=0, equal_nan=True)


def test_years_to_expiry_uses_the_close_in_new_york() -> None:
    ts = dt.datetime(2024, 3, 8, 20, 0, tzinfo=dt.UTC)
    df = pl.DataFrame({"ts": [ts, ts], "expiry": [dt.date(2024, 3, 8), dt.date(2024, 3, 15)]})
    # 16:00 New York = 21:00 UTC on 8 March (EST) and 20:00 UTC on 15 March (EDT since 10 March).
    np.testing.assert_allclose(years_to_expiry(df), [3600 / (365 * 86400), (7 * 86400) / (365 * 86400)])
    aware = df.with_columns(pl.col("expiry").cast(pl.Datetime("us")).dt.replace_time_zone("UTC"))
    with pytest.raises(ValueError, match="'expiry' is before 'ts'"):
        years_to_expiry(aware)
    with pytest.raises(ValueError, match="'ts' must be a timezone-aware"):
        years_to_expiry(df.with_columns(pl.col("ts").dt.replace_time_zone(None)))


# ---------------------------------------------------------------- look-ahead, per family


def _change_after(joined: pl.DataFrame, t: dt.datetime, seed: int) -> pl.DataFrame:
    """Rows with ts > t get different bars (a factor per ts, so each bar stays one bar) and different quotes."""
    rng = np.random.default_rng(seed)
    after = (joined["ts"] > t).to_numpy()
    minutes = joined["ts"].dt.minute().to_numpy().astype(float)
    bar_factor = np.where(after, 1 + 0.03 * np.sin(3.0 * minutes + seed), 1.0)
    quote_factor = np.where(after, rng.uniform(0.5, 1.5, joined.height), 1.0)
    return joined.with_columns(
        *(pl.Series(k, joined[k].to_numpy() * bar_factor) for k in ("open", "high", "low", "close")),
        pl.Series("volume", joined["volume"].to_numpy() * np.where(after, 3.0, 1.0)),
        *(pl.Series(k, joined[k].to_numpy() * quote_factor) for k in ("bid", "ask")),
    )


FAMILIES = {
    "condor": lambda j: condor_features(j, CFG),
    "microstructure": lambda j: microstructure_features(j, CFG),
    "microstructure_sizes": lambda j: microstructure_features(j, CFG),
    "interaction": lambda j: interaction_features(j, CFG),
}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_no_look_ahead(family: str) -> None:
    joined = make_joined(70, symbols=("SPY", "QQQ"), seed=4, with_sizes=family.endswith("sizes"))
    f = FAMILIES[family]
    full = f(joined).to_numpy()
    ts = joined["ts"].unique().sort()
    for cut in (ts[0], ts[20], ts[45], ts[-2]):
        keep = (joined["ts"] <= cut).to_numpy()
        changed = f(_change_after(joined, cut, seed=5)).to_numpy()
        np.testing.assert_allclose(changed[keep], full[keep], rtol=1e-12, atol=0, equal_nan=True)
        # and the future did change something (the test has teeth)
        assert not np.allclose(changed[~keep], full[~keep], equal_nan=True)
        # streaming equals batch: the rows up to the cut alone give the same features
        prefix = f(joined.filter(pl.col("ts") <= cut)).to_numpy()
        np.testing.assert_allclose(prefix, full[keep], rtol=1e-12, atol=0, equal_nan=True)


def test_forecaster_no_look_ahead() -> None:
    joined = make_joined(150, symbols=("SPY", "QQQ"), seed=6)
    bars = joined.select("symbol", "ts", "close").unique(maintain_order=True)
    full = forecaster_features(bars).drop("symbol", "ts").to_numpy()
    ts = bars["ts"].unique().sort()
    for cut in (ts[3], ts[70], ts[-2]):
        keep = (bars["ts"] <= cut).to_numpy()
        future = np.where(~keep, 1 + 0.05 * np.sin(np.arange(bars.height)), 1.0)
        changed = forecaster_features(bars.with_columns(pl.col("close") * future)).drop("symbol", "ts").to_numpy()
        np.testing.assert_allclose(changed[keep], full[keep], rtol=1e-14, atol=0, equal_nan=True)
        assert not np.allclose(changed[~keep], full[~keep], equal_nan=True)
        prefix = forecaster_features(bars.filter(keep)).drop("symbol", "ts").to_numpy()
        np.testing.assert_allclose(prefix, full[keep], rtol=1e-14, atol=0, equal_nan=True)


# ---------------------------------------------------------------- seed 002 extras, seed 004 set


def test_microstructure_with_sizes_is_the_seed_formula() -> None:
    joined = make_joined(20, with_sizes=True, seed=7)
    out = microstructure_features(joined, CFG)
    b, a = joined["bid"].to_numpy(), joined["ask"].to_numpy()
    bs, as_ = joined["bid_size"].to_numpy(), joined["ask_size"].to_numpy()
    micro = (b * as_ + a * bs) / (bs + as_)
    mid = (b + a) / 2
    np.testing.assert_allclose(out["microprice"].to_numpy(), micro, rtol=1e-13)
    np.testing.assert_allclose(out["eff_spread"].to_numpy(), (micro - mid) / mid, rtol=1e-9, atol=1e-15)
    np.testing.assert_allclose(out["imbalance"].to_numpy(), (bs - as_) / (bs + as_), rtol=1e-13)
    assert out.columns == list(MICROSTRUCTURE_FEATURES)


def test_microstructure_proxy_without_sizes() -> None:
    joined = make_joined(40, seed=8)
    out = microstructure_features(joined, CFG)
    c = _bars_of(joined, "SPY")["close"].to_numpy()
    r = np.diff(np.log(c))
    # bulk volume classification by hand: z = r_t / population std of the last 5 returns.
    flow = np.full(len(c), np.nan)
    for t in range(5, len(c)):
        w = r[t - 5 : t]
        flow[t] = 2 * ndtr(r[t - 1] / w.std()) - 1
    np.testing.assert_allclose(bvc_imbalance(c, 5), flow, rtol=1e-12, equal_nan=True)
    sign = np.where((joined["right"] == "C").to_numpy(), 1.0, -1.0)
    minute = ((joined["ts"] - joined["ts"].min()).dt.total_minutes()).to_numpy()  # the bar's index
    np.testing.assert_allclose(out["imbalance"].to_numpy(), sign * flow[minute], rtol=1e-12, equal_nan=True)
    b, a = joined["bid"].to_numpy(), joined["ask"].to_numpy()
    imb = out["imbalance"].to_numpy()
    np.testing.assert_allclose(out["microprice"].to_numpy(), (a + b) / 2 + imb * (a - b) / 2, rtol=1e-13,
                               equal_nan=True)  # fmt: skip


def test_interaction_terms_match_the_seed() -> None:
    joined = make_joined(10, seed=9)
    out = interaction_features(joined, CFG)
    m = joined["close"].to_numpy() / joined["strike"].to_numpy()
    T = years_to_expiry(joined)
    v = joined["volume"].to_numpy()
    want = {
        "moneyness_sqrt_t": m * np.sqrt(T),
        "log_m_log_t": np.log(m) * np.log(T),
        "sq_moneyness_t": (m - 1) ** 2 * T,
        "log_volume_abs_log_m": np.log1p(v) * np.abs(np.log(m)),
        "atm_proximity": np.exp(-np.log(m) ** 2) * np.sqrt(T),
    }
    assert out.columns == list(INTERACTION_FEATURES)
    for k, w in want.items():
        np.testing.assert_allclose(out[k].to_numpy(), w, rtol=1e-13, err_msg=k)
    # The contract's own volume (the join's `quote_volume`) replaces the bar's when present.
    with_opt = joined.with_columns(pl.Series("quote_volume", np.arange(joined.height, dtype=float)))
    got = interaction_features(with_opt, CFG)["log_volume_abs_log_m"].to_numpy()
    np.testing.assert_allclose(got, np.log1p(np.arange(joined.height)) * np.abs(np.log(m)), rtol=1e-13)


def test_forecaster_set() -> None:
    joined = make_joined(100, symbols=("SPY", "QQQ"), seed=10)
    bars = joined.select("symbol", "ts", "close").unique(maintain_order=True)
    cfg = ForecasterConfig()
    out = forecaster_features(bars, cfg)
    assert out.columns == ["symbol", "ts", *cfg.names()]
    assert {"sma_5", "sma_60", "ema_20", "rsi_14", "macd", "macd_signal", "macd_hist", "bb_position",
            "price_position_60", "volatility_20", "momentum_10", "roc_10", "ret", "log_ret"} <= set(out.columns)
    spy = out.filter(pl.col("symbol") == "SPY")
    c = bars.filter(pl.col("symbol") == "SPY")["close"].to_numpy()
    ref = forecaster_arrays(c, cfg)
    for k in cfg.names():
        np.testing.assert_array_equal(spy[k].to_numpy(), ref[k])
    np.testing.assert_allclose(ref["norm_price"], c / c[0])
    np.testing.assert_allclose(ref["log_ret"][1:], np.diff(np.log(c)))
    lower, _, upper = bollinger(c, 20, 2.0)
    np.testing.assert_allclose(ref["bb_position"], (c - lower) / (upper - lower), equal_nan=True)


# ---------------------------------------------------------------- bad input


def test_bad_input_names_the_problem() -> None:
    joined = make_joined(10, seed=11)
    with pytest.raises(ValueError, match=r"missing column\(s\) \['bid'\]"):
        condor_features(joined.drop("bid"))
    with pytest.raises(ValueError, match="'right' must be 'C' or 'P'"):
        condor_features(joined.with_columns(pl.lit("X").alias("right")))
    with pytest.raises(ValueError, match="'expiry' is before 'ts'"):
        condor_features(joined.with_columns(pl.lit(dt.date(2020, 1, 1)).alias("expiry")))
    with pytest.raises(ValueError, match="different open/high/low/close/volume"):
        condor_features(joined.with_columns(pl.col("close") + pl.int_range(pl.len()) * 1e-3))
    with pytest.raises(ValueError, match="'strike' must be finite and > 0"):
        condor_features(joined.with_columns(pl.lit(-1.0).alias("strike")))
    with pytest.raises(ValueError, match="'high' is below 'low'"):
        condor_features(joined.with_columns(pl.col("low").alias("high"), pl.col("high").alias("low")))
    with pytest.raises(ValueError, match="polars DataFrame"):
        condor_features(joined.to_dict())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="duplicate"):
        bars = joined.select("symbol", "ts", "close")
        forecaster_features(bars)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"rsi_window": 0}, "^rsi_window"),
        ({"ivr_window": 5, "ivr_min_periods": 6}, "^ivr_min_periods"),
        ({"rate": float("nan")}, "^rate"),
        ({"psar_step": 0.5}, "^psar_step"),
        ({"dtype": "float16"}, "^dtype"),
        ({"micro_window": 1}, "^micro_window"),
    ],
)
def test_config_validation(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        FeatureConfig(**kwargs)


def test_forecaster_config_validation() -> None:
    with pytest.raises(ValueError, match="^windows"):
        ForecasterConfig(windows=(5, 5))
    with pytest.raises(ValueError, match="^macd"):
        ForecasterConfig(macd=(26, 12, 9))


def test_staged_pieces_compose_to_condor_features_on_any_split_of_rows() -> None:
    """condor_row_features on groups of rows + merged atm_candidates + condor_bar_features on the bars give exactly
    condor_features on all rows (what the chunked dataset build relies on)."""
    from condorbrain.features import (
        CONDOR_BAR_FEATURES,
        CONDOR_ROW_FEATURES,
        atm_candidates,
        atm_iv,
        bar_bvc_imbalance,
        condor_bar_features,
        condor_row_features,
    )

    joined = make_joined(n_bars=90, symbols=("SPY", "QQQ"))
    want = condor_features(joined, CFG)
    bars = joined.select("symbol", "ts", "high", "low", "close").unique(["symbol", "ts"]).sort("symbol", "ts")
    bar_of_row = joined.join(bars.with_row_index("_b"), on=["symbol", "ts"], how="left",
                             maintain_order="left")["_b"].to_numpy().astype(np.int64)
    groups = np.array_split(np.random.default_rng(3).permutation(joined.height), 4)  # any split of the rows
    got = {k: np.full(joined.height, np.nan) for k in CONDOR_FEATURES}
    cands = []
    for g in groups:
        part = joined[np.sort(g)]
        rows = condor_row_features(part, CFG)
        for k in CONDOR_ROW_FEATURES:
            got[k][np.sort(g)] = rows.columns[k]
        cands.append(atm_candidates(bar_of_row[np.sort(g)], part["strike"].to_numpy(), part["close"].to_numpy(),
                                    rows.iv))
    bar_cols = condor_bar_features(bars, atm_iv(pl.concat(cands), bars.height), CFG)
    for k in CONDOR_BAR_FEATURES:
        got[k] = bar_cols[k][bar_of_row]
    for k in CONDOR_FEATURES:
        np.testing.assert_array_equal(got[k], want[k].to_numpy(), err_msg=k)

    # the microstructure proxy from a bar table equals the one computed on the join itself
    imb = bars.select("symbol", "ts").with_columns(pl.Series("imbalance", bar_bvc_imbalance(bars, CFG)))
    assert microstructure_features(joined, CFG, bar_imbalance=imb).equals(microstructure_features(joined, CFG))
    with pytest.raises(ValueError, match="lacks the bar"):
        microstructure_features(joined, CFG, bar_imbalance=imb.head(10))
    with pytest.raises(ValueError, match="ascending ts"):
        condor_bar_features(bars.reverse(), None, CFG)
    with pytest.raises(ValueError, match="shape"):
        condor_bar_features(bars, np.zeros(3), CFG)
