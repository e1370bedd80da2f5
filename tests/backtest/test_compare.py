"""Strategy baselines: buy-and-hold by hand, three strategies on the same bars and capital, the Sharpe verdict."""

from __future__ import annotations

import dataclasses
import datetime as dt
import math

import numpy as np
import polars as pl
import pytest

from condorbrain.backtest import (
    STRATEGIES,
    BacktestConfig,
    RuleCondor,
    backtest,
    backtest_strategies,
    buy_and_hold,
    compare_strategies,
    strategy_metrics,
    strategy_verdict,
)
from condorbrain.data import load_sp500, load_vix, synth_chains

T0 = dt.datetime(2024, 1, 2, 21, tzinfo=dt.UTC)


def _bars(closes: list[float]) -> pl.DataFrame:
    return pl.DataFrame({"ts": [T0 + dt.timedelta(days=i) for i in range(len(closes))], "close": closes}
                        ).with_columns(pl.col("ts").cast(pl.Datetime("us", "UTC")))


def test_buy_and_hold_by_hand() -> None:
    res = buy_and_hold(_bars([100.0, 110.0, 99.0, 120.0]), BacktestConfig(initial_capital=1_000.0))
    # 1000 buys 10 shares at 100: equity 10 x close; closed at the last bar (P&L 200 realised there)
    eq = res.equity
    np.testing.assert_allclose(eq["equity"].to_numpy(), [1000.0, 1100.0, 990.0, 1200.0])
    np.testing.assert_allclose(eq["realized"].to_numpy(), [0.0, 0.0, 0.0, 200.0])
    np.testing.assert_allclose(eq["unrealized"].to_numpy(), [0.0, 100.0, -10.0, 0.0])
    assert eq["open_positions"].to_list() == [1, 1, 1, 0]
    assert eq["ts"].to_list() == _bars([1.0] * 4)["ts"].to_list()
    (trade,) = res.trades.to_dicts()
    assert trade["shares"] == 10.0 and trade["pnl"] == pytest.approx(200.0) and trade["max_loss"] == 1_000.0
    assert trade["days_held"] == 3.0 and trade["exit_reason"] == "end_of_data" and res.skipped.height == 0
    m = strategy_metrics(res.trades, res.equity)
    assert m.max_drawdown == pytest.approx(0.1)  # 1100 -> 990
    assert m.total_pnl == pytest.approx(200.0) and m.win_rate == 1.0


def test_buy_and_hold_rejects_bad_bars() -> None:
    with pytest.raises(ValueError, match="close"):
        buy_and_hold(_bars([100.0, -1.0]))
    with pytest.raises(ValueError, match="strictly increasing"):
        buy_and_hold(_bars([100.0, 101.0]).reverse())
    with pytest.raises(ValueError, match="no rows"):
        buy_and_hold(_bars([]))


@pytest.fixture(scope="module")
def market() -> tuple[pl.DataFrame, pl.DataFrame]:
    bars = load_sp500().tail(150)
    return bars, synth_chains(bars, vix=load_vix())


def test_three_strategies_on_the_same_period_and_capital(market: tuple[pl.DataFrame, pl.DataFrame]) -> None:
    bars, chain = market
    decisions = bars.select("ts", k_lower=pl.lit(0.95), k_upper=pl.lit(1.04), wing=pl.lit(0.02))
    cfg = BacktestConfig(initial_capital=250_000.0, max_open=2)
    results = backtest_strategies(chain, bars, decisions, cfg)
    assert tuple(results) == STRATEGIES
    table = compare_strategies(results)
    assert table["strategy"].to_list() == list(STRATEGIES)
    assert table["bars"].to_list() == [bars.height] * 3
    assert table["first"].unique().to_list() == [bars["ts"][0]] and table["last"].unique().to_list() == [bars["ts"][-1]]
    assert table["initial_capital"].to_list() == [250_000.0] * 3
    rows = {r["strategy"]: r for r in table.to_dicts()}
    # each condor row is the plain backtest with the same config; buy-and-hold is capital x (last / first - 1)
    for name, decided in (("condorbrain", decisions), ("rule_condor", RuleCondor())):
        m = strategy_metrics(*dataclasses.astuple(backtest(chain, bars, decided, cfg))[:2])
        assert rows[name]["sharpe"] == m.sharpe and rows[name]["total_pnl"] == m.total_pnl and m.trades > 0
    close = bars["close"].to_numpy()
    assert rows["buy_and_hold"]["total_pnl"] == pytest.approx(250_000.0 * (close[-1] / close[0] - 1.0))
    assert rows["buy_and_hold"]["final_equity"] == pytest.approx(250_000.0 * close[-1] / close[0])

    with pytest.raises(ValueError, match="other bars"):
        compare_strategies({**results, "buy_and_hold": buy_and_hold(bars.head(100), cfg)})
    with pytest.raises(ValueError, match="same capital"):
        compare_strategies({**results, "buy_and_hold": buy_and_hold(bars, BacktestConfig())})


def _table(**sharpe: float) -> pl.DataFrame:
    return pl.DataFrame({"strategy": list(sharpe), "sharpe": list(sharpe.values()),
                         "max_drawdown": [0.2, 0.1, 0.3][: len(sharpe)]})


def test_verdict_names_the_baselines_that_beat_the_model() -> None:
    t = _table(condorbrain=0.5, rule_condor=0.8, buy_and_hold=1.2)
    assert strategy_verdict(t) == "-> condorbrain LOSES on sharpe (0.5) to buy_and_hold (1.2), rule_condor (0.8)"
    t = _table(condorbrain=0.5, rule_condor=0.8, buy_and_hold=0.1)
    assert strategy_verdict(t) == "-> condorbrain LOSES on sharpe (0.5) to rule_condor (0.8)"
    assert strategy_verdict(_table(condorbrain=1.5, rule_condor=0.8, buy_and_hold=1.2)) == (
        "-> condorbrain beats every baseline on sharpe (1.5)")
    # a flat curve (no trades) has no Sharpe: it counts as 0, and the line says so
    t = _table(condorbrain=math.nan, rule_condor=-0.1, buy_and_hold=0.3)
    assert strategy_verdict(t) == ("-> condorbrain LOSES on sharpe (0) to buy_and_hold (0.3) "
                                   "[NaN counted as 0: condorbrain]")
    # drawdown: lower is better
    assert strategy_verdict(t, metric="max_drawdown") == (
        "-> condorbrain LOSES on max_drawdown (0.2) to rule_condor (0.1)")


def test_a_ruined_strategy_ranks_last() -> None:
    bars = _bars([100.0, 110.0, 99.0, 120.0])
    cfg = BacktestConfig(initial_capital=1_000.0)
    hold = buy_and_hold(bars, cfg)
    # a made-up condor book that loses more than its capital at bar 2 and keeps trading (as the simulator would)
    broke = dataclasses.replace(hold, equity=hold.equity.with_columns(equity=pl.Series([1000.0, 400.0, -50.0, 10.0])),
                                trades=hold.trades.with_columns(pnl=pl.lit(-990.0)))
    table = compare_strategies({"condorbrain": broke, "buy_and_hold": hold})
    row = table.row(0, named=True)
    assert row["ruined"] == bars["ts"][2] and table.row(1, named=True)["ruined"] is None
    assert row["sharpe"] == row["sortino"] == row["calmar"] == -math.inf
    assert row["max_drawdown"] == 1.0 and row["cagr"] == -1.0
    assert row["total_pnl"] == -990.0 and row["final_equity"] == 10.0 and row["trades"] == 1
    assert strategy_verdict(table).startswith("-> condorbrain LOSES on sharpe (-inf) to buy_and_hold (")
    assert strategy_verdict(table).endswith("[ruined, equity <= 0: condorbrain]")
