"""Targets: hand-computed values, NaN past the data (never filled), and where they may and may not look."""

from __future__ import annotations

import datetime as dt

import numpy as np
import polars as pl
import pytest

from condorbrain.features import (
    DEFAULT_HORIZONS,
    forward_log_return,
    forward_max_adverse_excursion,
    forward_max_drawdown,
    forward_realized_vol,
    forward_return,
    target_frame,
)

nan = np.nan
P = np.array([100.0, 110.0, 99.0, 104.0, 91.0])


def test_forward_returns_by_hand() -> None:
    np.testing.assert_allclose(forward_return(P, 1), [0.1, -0.1, 5 / 99, -0.125, nan], rtol=1e-13)
    np.testing.assert_allclose(forward_return(P, 2), [-0.01, 104 / 110 - 1, 91 / 99 - 1, nan, nan], rtol=1e-13)
    np.testing.assert_allclose(forward_log_return(P, 4), [np.log(0.91), nan, nan, nan, nan], rtol=1e-13)
    assert np.isnan(forward_return(P, 5)).all() and np.isnan(forward_return(P, 30)).all()


def test_forward_realized_vol_by_hand() -> None:
    r = np.diff(np.log(P))
    # h = 2 at t: sqrt(r_{t+1}^2 + r_{t+2}^2), r_{t+1} = ln(P_{t+1} / P_t).
    want = [np.sqrt(r[0] ** 2 + r[1] ** 2), np.sqrt(r[1] ** 2 + r[2] ** 2), np.sqrt(r[2] ** 2 + r[3] ** 2), nan, nan]
    np.testing.assert_allclose(forward_realized_vol(P, 2), want, rtol=1e-13)


def test_max_drawdown_by_hand() -> None:
    # h = 3 from t=0: path 100, 110, 99, 104: peak 110 -> trough 99 -> 1 - 99/110 = 0.1.
    # t=1: 110, 99, 104, 91: peak 110 -> 91 -> 1 - 91/110. Then NaN (horizon past the data).
    np.testing.assert_allclose(forward_max_drawdown(P, 3), [0.1, 1 - 91 / 110, nan, nan, nan], rtol=1e-13)
    # A rising path has no drawdown.
    np.testing.assert_array_equal(forward_max_drawdown(np.array([1.0, 2.0, 3.0]), 1), [0.0, 0.0, nan])


def test_max_adverse_excursion_by_hand() -> None:
    # Long from t=0, h=2: lowest of (110, 99) = 99 -> 1 - 99/100 = 0.01; t=1: lowest of (99, 104) -> 1 - 99/110;
    # t=2: lowest of (104, 91) -> 1 - 91/99.
    np.testing.assert_allclose(
        forward_max_adverse_excursion(P, 2), [0.01, 1 - 99 / 110, 1 - 91 / 99, nan, nan], rtol=1e-13
    )
    # Short: highest ahead above entry; t=1 never goes above 110 -> 0.
    np.testing.assert_allclose(
        forward_max_adverse_excursion(P, 2, side=-1), [0.1, 0.0, 104 / 99 - 1, nan, nan], rtol=1e-13
    )


def test_windowed_targets_against_loops_across_chunks() -> None:
    import condorbrain.features.targets as targets_module

    rng = np.random.default_rng(0)
    c = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, 3000)))
    old = targets_module._CHUNK
    targets_module._CHUNK = 257  # force several blocks
    try:
        dd, mae = forward_max_drawdown(c, 30), forward_max_adverse_excursion(c, 30)
    finally:
        targets_module._CHUNK = old
    want_dd, want_mae = np.full(len(c), nan), np.full(len(c), nan)
    for t in range(len(c) - 30):
        w = c[t : t + 31]
        want_dd[t] = max(1 - w[j] / w[: j + 1].max() for j in range(31))
        want_mae[t] = max(0.0, 1 - w[1:].min() / w[0])
    np.testing.assert_allclose(dd, want_dd, rtol=1e-12, equal_nan=True)
    np.testing.assert_allclose(mae, want_mae, rtol=1e-12, equal_nan=True)


TARGETS = {
    "return": lambda c, h: forward_return(c, h),
    "log_return": lambda c, h: forward_log_return(c, h),
    "realized_vol": lambda c, h: forward_realized_vol(c, h),
    "max_drawdown": lambda c, h: forward_max_drawdown(c, h),
    "mae_long": lambda c, h: forward_max_adverse_excursion(c, h, 1),
    "mae_short": lambda c, h: forward_max_adverse_excursion(c, h, -1),
}


@pytest.mark.parametrize("name", sorted(TARGETS))
@pytest.mark.parametrize("h", DEFAULT_HORIZONS)
def test_target_reach(name: str, h: int) -> None:
    """A target at t may use t .. t+h (that is its job) and nothing later; the last h rows are NaN, not filled."""
    f = TARGETS[name]
    rng = np.random.default_rng(h)
    c = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, 200)))
    full = f(c, h)
    assert np.isnan(full[-h:]).all() and np.isfinite(full[:-h]).all()
    t = 100
    # Changing rows after t + h leaves targets up to t unchanged ...
    later = c.copy()
    later[t + h + 1 :] *= 1.3
    np.testing.assert_array_equal(f(later, h)[: t + 1], full[: t + 1])
    # ... while changing the row at t + h changes the target at t (it does look ahead, as a target must).
    at = c.copy()
    at[t + h] *= 1.5 if name == "mae_short" else 0.7  # a new extreme on the adverse side
    assert f(at, h)[t] != full[t]


def test_target_frame_per_symbol_in_input_order() -> None:
    rng = np.random.default_rng(1)
    t0 = dt.datetime(2024, 1, 2, 14, 31, tzinfo=dt.UTC)
    rows = []
    for sym, n in (("SPY", 50), ("QQQ", 40)):
        c = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, n)))
        rows += [(sym, t0 + dt.timedelta(minutes=i), float(c[i])) for i in range(n)]
    bars = pl.DataFrame(rows, schema=["symbol", "ts", "close"], orient="row")
    shuffled = bars[np.random.default_rng(2).permutation(bars.height)]
    out = target_frame(shuffled, horizons=(1, 5))
    assert out.columns[:2] == ["symbol", "ts"] and out.height == bars.height
    assert out.select("symbol", "ts").equals(shuffled.select("symbol", "ts"))
    for sym in ("SPY", "QQQ"):
        mine = out.with_columns(shuffled["close"]).filter(pl.col("symbol") == sym).sort("ts")
        c = mine["close"].to_numpy()
        np.testing.assert_array_equal(mine["ret_5"].to_numpy(), forward_return(c, 5))
        np.testing.assert_array_equal(mine["maxdd_1"].to_numpy(), forward_max_drawdown(c, 1))
        np.testing.assert_array_equal(mine["mae_short_5"].to_numpy(), forward_max_adverse_excursion(c, 5, -1))
        assert np.isnan(mine["rv_5"].to_numpy()[-5:]).all()  # never crosses into the next symbol


def test_bad_input() -> None:
    with pytest.raises(ValueError, match="^horizon"):
        forward_return(P, 0)
    with pytest.raises(ValueError, match="^close"):
        forward_return(np.array([1.0, -1.0]), 1)
    with pytest.raises(ValueError, match="^side"):
        forward_max_adverse_excursion(P, 1, side=0)
    with pytest.raises(ValueError, match="^horizons"):
        target_frame(pl.DataFrame({"symbol": ["a"], "ts": [1], "close": [1.0]}), horizons=(1, 1))
    with pytest.raises(ValueError, match="missing"):
        target_frame(pl.DataFrame({"symbol": ["a"], "close": [1.0]}))
