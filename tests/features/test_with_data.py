"""The feature sets on the data layer's own output: the synthetic market through the as-of join.

Checks that the two layers agree (the data layer's private quote pricer equals `black_scholes`), that stale quotes
(nulls from the join) become NaN features rather than errors, and the whole pipeline's look-ahead: features of the
rows up to t are the same whether the market continues after t or not.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import polars as pl
import pytest

from condorbrain.features import FeatureConfig, black_scholes, condor_features, microstructure_features

data = pytest.importorskip("condorbrain.data")
pricing = pytest.importorskip("condorbrain.data._pricing")

CFG = FeatureConfig(rate=0.045, dividend_yield=0.013, ivr_window=60)


@pytest.fixture(scope="module")
def market():
    return data.synth_market(data.MarketConfig(n_sessions=1, seed=3, strikes_each_side=4))


def test_quote_pricer_equals_black_scholes() -> None:
    # The data layer keeps its own copy of the price formula (layering: data never imports features); they must agree.
    rng = np.random.default_rng(0)
    n = 5000
    S = rng.uniform(50, 500, n)
    K = S * np.exp(rng.uniform(-0.4, 0.4, n))
    T = np.where(rng.random(n) < 0.05, 0.0, rng.uniform(0, 2, n))
    r, q = rng.uniform(0, 0.06, n), rng.uniform(0, 0.03, n)
    sigma = np.where(rng.random(n) < 0.05, 0.0, rng.uniform(0.05, 1.0, n))
    call = rng.random(n) < 0.5
    np.testing.assert_allclose(
        black_scholes(S, K, T, r, sigma, call, q).price, pricing.bs_price(S, K, T, r, q, sigma, call),
        rtol=1e-12, atol=1e-12,
    )  # fmt: skip


def test_joined_synthetic_market(market) -> None:
    joined = data.asof_join(market.bars, market.quotes, dt.timedelta(seconds=60))
    stale = joined["quote_ts"].is_null().to_numpy()
    assert 0 < stale.mean() < 0.5  # quote_prob < 1 leaves some contracts unquoted at a bar
    out = condor_features(joined, CFG)
    assert out.height == joined.height
    for k in ("iv", "delta", "gamma", "vega", "theta", "spread_ratio"):
        assert np.isnan(out[k].to_numpy()[stale]).all(), k
    fresh = out.filter(~pl.Series(stale))
    assert np.isfinite(fresh["delta"].to_numpy()).all()
    # The quoted iv column is used where present; solving from the (tick-rounded) mid instead lands close to it.
    solved = condor_features(joined.drop("iv"), CFG)["iv"].to_numpy()[~stale]
    given = fresh["iv"].to_numpy()
    ok = np.isfinite(solved) & (fresh["vega"].to_numpy() > 0.05)
    assert ok.mean() > 0.5
    assert np.median(np.abs(solved[ok] - given[ok])) < 0.01
    assert np.isfinite(microstructure_features(joined, CFG)["imbalance"].to_numpy()[~stale][-100:]).all()


def test_pipeline_has_no_look_ahead(market) -> None:
    stale = dt.timedelta(minutes=2)
    full = data.asof_join(market.bars, market.quotes, stale)
    feats = condor_features(full, CFG).with_columns(full.select("ts", "expiry", "strike", "right"))
    cut = market.bars["ts"].sort()[200]
    part = data.asof_join(market.bars.filter(pl.col("ts") <= cut), market.quotes.filter(pl.col("ts") <= cut), stale)
    got = condor_features(part, CFG).with_columns(part.select("ts", "expiry", "strike", "right"))
    key = ["ts", "expiry", "strike", "right"]
    want = feats.filter(pl.col("ts") <= cut).sort(key)
    got = got.sort(key)
    assert got.height == want.height
    np.testing.assert_allclose(got.drop(key).to_numpy(), want.drop(key).to_numpy(), rtol=1e-12, equal_nan=True)
