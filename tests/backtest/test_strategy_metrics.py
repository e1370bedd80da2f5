"""Strategy metrics on a hand-made trade log and equity curve, and their edge cases."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest

from condorbrain.backtest.strategy_metrics import max_drawdown, strategy_metrics

TRADES = pl.DataFrame({
    "pnl": [100.0, -50.0, 30.0, -20.0],
    "max_loss": [400.0, 400.0, 200.0, 200.0],
    "days_held": [10.0, 5.0, 0.5, 2.0],
    "exit_reason": ["take_profit", "stop", "take_profit", "dte"],
})
# returns +10%, -10%, +10%
EQUITY = pl.DataFrame({"equity": [100.0, 110.0, 99.0, 108.9]})


def test_metrics_by_hand() -> None:
    m = strategy_metrics(TRADES, EQUITY)
    assert m.trades == 4
    assert m.win_rate == pytest.approx(0.5)
    assert m.avg_pnl == pytest.approx(15.0)
    assert m.total_pnl == pytest.approx(60.0)
    assert m.profit_factor == pytest.approx(130.0 / 70.0)
    assert m.largest_loss == pytest.approx(-50.0)
    # 100/400/10, -50/400/5, 30/200/1 (0.5 days counts as 1), -20/200/2 -> .025, -.025, .15, -.05; mean .025
    assert m.pnl_per_day_on_risk == pytest.approx(0.025)
    assert m.exits_by_reason == {"take_profit": 2, "stop": 1, "dte": 1}
    # r = (.1, -.1, .1): mean 1/30, sample variance ((2/30)^2 * 2 + (4/30)^2) / 2 = 1/75
    assert m.sharpe == pytest.approx((1 / 30) / math.sqrt(1 / 75) * math.sqrt(252))  # 4.5826
    # downside deviation sqrt(0.01 / 3)
    assert m.sortino == pytest.approx((1 / 30) / math.sqrt(0.01 / 3) * math.sqrt(252))  # 9.1652
    assert m.max_drawdown == pytest.approx(0.1)  # 110 -> 99
    assert m.cagr == pytest.approx(1.089 ** (252 / 3) - 1)
    assert m.calmar == pytest.approx(m.cagr / 0.1)
    assert set(m.as_dict()) >= {"sharpe", "sortino", "calmar", "exits_by_reason"}


def test_no_trades_and_flat_equity() -> None:
    empty = TRADES.clear()
    m = strategy_metrics(empty, pl.DataFrame({"equity": [100.0] * 5}))
    assert m.trades == 0 and m.largest_loss == 0.0 and m.exits_by_reason == {}
    assert all(math.isnan(v) for v in (m.win_rate, m.avg_pnl, m.profit_factor, m.sharpe, m.sortino, m.calmar))
    assert m.max_drawdown == 0.0 and m.cagr == 0.0


def test_profit_factor_without_losses_is_inf() -> None:
    wins = TRADES.filter(pl.col("pnl") > 0)
    m = strategy_metrics(wins, EQUITY)
    assert m.profit_factor == math.inf and m.largest_loss == 0.0 and m.win_rate == 1.0


def test_max_drawdown_by_hand() -> None:
    assert max_drawdown(np.array([100.0, 120.0, 90.0, 130.0, 65.0])) == pytest.approx(0.5)  # 130 -> 65
    assert max_drawdown(np.array([1.0, 2.0, 3.0])) == 0.0
    with pytest.raises(ValueError):
        max_drawdown(np.array([1.0, 0.0]))


def test_missing_columns_raise() -> None:
    with pytest.raises(ValueError, match="pnl"):
        strategy_metrics(TRADES.drop("pnl"), EQUITY)
    with pytest.raises(ValueError, match="equity"):
        strategy_metrics(TRADES, EQUITY.rename({"equity": "e"}))
