"""Strategies side by side (issue 5, section 2): a policy's condors, the rule-based condor and buy-and-hold of the
underlying, backtested on the same bars with the same :class:`~.simulator.BacktestConfig` and scored with
:func:`~.strategy_metrics.strategy_metrics`.

- :func:`buy_and_hold`: the underlying bought at the first bar's close with the whole ``initial_capital``
  (fractional shares, no costs, no dividends: the bars' ``close`` is a price series) and held to the last bar.
- :func:`backtest_strategies`: the three backtests over one period.
- :func:`compare_strategies`: one row per strategy, the metric columns; refuses results from different bars or
  different capital. A strategy whose equity is <= 0 at some bar is *ruined*: the simulator opens no position
  after that (the ones open are managed to their exits, so the equity can end below 0); ``ruined`` holds the first
  such bar, its Sharpe, Sortino and Calmar are -inf (it ranks last), CAGR -1 and max drawdown 1 (all the capital
  lost); its trade metrics, total P&L and final equity are those of all its trades.
- :func:`strategy_verdict`: one line, Sharpe first; the model is reported as LOSING to every baseline that beats it.
  :func:`rank_verdict` is the line for any metric (``condorbrain.main_job.verdict`` uses it for forecasts).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

import numpy as np
import polars as pl

from condorbrain.backtest.simulator import EQUITY_SCHEMA, SKIPPED_SCHEMA, BacktestConfig, BacktestResult, RuleCondor
from condorbrain.backtest.simulator import backtest as run_backtest
from condorbrain.backtest.strategy_metrics import strategy_metrics

__all__ = ["HOLD_TRADE_SCHEMA", "METRIC_COLUMNS", "STRATEGIES", "backtest_strategies", "buy_and_hold",
           "compare_strategies", "rank_verdict", "strategy_verdict"]

STRATEGIES = ("condorbrain", "rule_condor", "buy_and_hold")
"""Names of the compared strategies: the policy first, then the baselines."""

METRIC_COLUMNS = ("trades", "win_rate", "avg_pnl", "total_pnl", "profit_factor", "largest_loss",
                  "pnl_per_day_on_risk", "sharpe", "sortino", "calmar", "max_drawdown", "cagr")
"""Columns of :func:`compare_strategies` after ``strategy``, ``first``, ``last``, ``bars``, ``initial_capital``,
``final_equity``, ``ruined`` (the :class:`~.strategy_metrics.StrategyMetrics` fields, currency or fractions as
documented there)."""

HOLD_TRADE_SCHEMA: dict[str, pl.DataType] = {
    "entry_ts": pl.Datetime("us", "UTC"), "exit_ts": pl.Datetime("us", "UTC"), "entry_spot": pl.Float64(),
    "exit_spot": pl.Float64(), "shares": pl.Float64(), "pnl": pl.Float64(), "max_loss": pl.Float64(),
    "days_held": pl.Float64(), "exit_reason": pl.String(),
}
"""Buy-and-hold's trade log: one row, ``shares = initial_capital / first close``, ``pnl = shares x (last close -
first close)``, ``max_loss = initial_capital`` (the whole stake is at risk), exit reason ``end_of_data``."""


def buy_and_hold(bars: pl.DataFrame, config: BacktestConfig | None = None) -> BacktestResult:
    """Buy the underlying at the first bar's close with ``config.initial_capital`` and hold it to the last bar.

    Args:
        bars: ``ts`` (UTC, strictly increasing) and ``close`` (> 0), as :func:`~.simulator.backtest` reads them.
        config: only ``initial_capital`` is used (the same capital as the condor strategies).

    Returns:
        A :class:`~.simulator.BacktestResult`: ``equity`` per bar = ``initial_capital x close_t / close_0`` in
        :data:`~.simulator.EQUITY_SCHEMA` (``unrealized`` = equity - capital while held; at the last bar the position
        is closed: ``realized`` = its P&L, ``open_positions`` 0), ``trades`` one row (:data:`HOLD_TRADE_SCHEMA`),
        ``skipped`` empty.
    """
    cfg = config or BacktestConfig()
    for col in ("ts", "close"):
        if col not in bars.columns:
            raise ValueError(f"bars: missing column {col!r}")
    if bars.height == 0:
        raise ValueError("bars: no rows")
    ts = bars.get_column("ts").dt.cast_time_unit("us")
    close = bars.get_column("close").cast(pl.Float64).to_numpy()
    if not (np.isfinite(close).all() and (close > 0).all()):
        raise ValueError("bars: 'close' must be finite and > 0")
    if not ts.is_sorted() or ts.n_unique() != ts.len():
        raise ValueError("bars: 'ts' must be strictly increasing")
    capital = cfg.initial_capital
    shares = capital / close[0]
    equity = shares * close  # (N,) currency
    pnl = float(equity[-1] - capital)
    held = np.ones(len(close), dtype=np.int64)
    held[-1] = 0  # closed at the last bar, as the simulator closes what is still open there
    realized = np.where(held == 1, 0.0, pnl)
    curve = pl.DataFrame({"ts": ts, "equity": equity, "realized": realized, "unrealized": equity - capital - realized,
                          "open_positions": held}, schema=EQUITY_SCHEMA)
    days = (ts[-1] - ts[0]).total_seconds() / 86_400.0
    trades = pl.DataFrame([{"entry_ts": ts[0], "exit_ts": ts[-1], "entry_spot": float(close[0]),
                            "exit_spot": float(close[-1]), "shares": shares, "pnl": pnl, "max_loss": capital,
                            "days_held": days, "exit_reason": "end_of_data"}], schema=HOLD_TRADE_SCHEMA)
    return BacktestResult(trades=trades, equity=curve, skipped=pl.DataFrame(schema=SKIPPED_SCHEMA), config=cfg)


def backtest_strategies(chain: pl.DataFrame, bars: pl.DataFrame, decisions: pl.DataFrame,
                        config: BacktestConfig | None = None, rule: RuleCondor | None = None
                        ) -> dict[str, BacktestResult]:
    """The policy's condors, the rule-based condor and buy-and-hold over the same ``bars`` with the same config.

    Args:
        chain, bars: as :func:`~.simulator.backtest` reads them (the chain with ``iv``, for the rule).
        decisions: the policy's decisions (``ts`` and ``k_lower``, ``k_upper``, ``wing`` or absolute strikes); the
            simulator decides which of them open (``max_open``, quotes, credit, budget).
        config: entry, management, sizing, costs and capital, shared by all three; defaults to ``BacktestConfig()``.
        rule: the rule-based condor; defaults to ``RuleCondor()``.

    Returns:
        ``{"condorbrain": ..., "rule_condor": ..., "buy_and_hold": ...}`` (:data:`STRATEGIES` order).
    """
    cfg = config or BacktestConfig()
    return {"condorbrain": run_backtest(chain, bars, decisions, cfg),
            "rule_condor": run_backtest(chain, bars, rule or RuleCondor(), cfg),
            "buy_and_hold": buy_and_hold(bars, cfg)}


def compare_strategies(results: Mapping[str, BacktestResult]) -> pl.DataFrame:
    """One row per strategy (in the mapping's order): ``strategy``, ``first``, ``last``, ``bars``,
    ``initial_capital``, ``final_equity``, ``ruined`` (the first bar with equity <= 0, else null; module docstring),
    then :data:`METRIC_COLUMNS`.

    Raises:
        ValueError: the results do not share the same bars (equity timestamps) and the same initial capital, or
            there are none.
    """
    if not results:
        raise ValueError("results: nothing to compare")
    ref_name, ref = next(iter(results.items()))
    ref_ts = ref.equity.get_column("ts")
    rows = []
    for name, res in results.items():
        if not res.equity.get_column("ts").equals(ref_ts):
            raise ValueError(f"{name!r} was backtested on other bars than {ref_name!r}: compare the same period")
        if res.config.initial_capital != ref.config.initial_capital:
            raise ValueError(f"{name!r} starts with {res.config.initial_capital}, {ref_name!r} with "
                             f"{ref.config.initial_capital}: compare the same capital")
        equity = res.equity.get_column("equity")
        broke = np.flatnonzero(equity.to_numpy() <= 0)
        if broke.size:  # ruined: trade metrics of every trade, the curve's metrics as a total loss
            m = dataclasses.replace(strategy_metrics(res.trades, res.equity.head(int(broke[0]))),
                                    sharpe=-math.inf, sortino=-math.inf, calmar=-math.inf, cagr=-1.0,
                                    max_drawdown=1.0)
        else:
            m = strategy_metrics(res.trades, res.equity)
        rows.append({"strategy": name, "first": ref_ts[0] if len(ref_ts) else None,
                     "last": ref_ts[-1] if len(ref_ts) else None, "bars": len(ref_ts),
                     "initial_capital": res.config.initial_capital,
                     "final_equity": float(equity[-1]) if len(equity) else math.nan,
                     "ruined": ref_ts[int(broke[0])] if broke.size else None,
                     **{c: getattr(m, c) for c in METRIC_COLUMNS}})
    return pl.DataFrame(rows, schema_overrides={"ruined": ref_ts.dtype})


def rank_verdict(scores: Mapping[str, float], model: str, metric: str, *, higher_is_better: bool) -> str:
    """One line: whether ``model`` beats every other entry of ``scores`` on ``metric``, else the entries that beat
    it, best first. Pass comparable numbers: a NaN never beats and is never beaten."""
    others = dict(scores)
    mine = others.pop(model)
    beats = (lambda v: v > mine) if higher_is_better else (lambda v: v < mine)
    better = sorted(((v, k) for k, v in others.items() if beats(v)), reverse=higher_is_better)
    if not better:
        return f"-> {model} beats every baseline on {metric} ({mine:.5g})"
    return f"-> {model} LOSES on {metric} ({mine:.5g}) to " + ", ".join(f"{k} ({v:.5g})" for v, k in better)


def strategy_verdict(table: pl.DataFrame, model: str = "condorbrain", metric: str = "sharpe") -> str:
    """The verdict of a :func:`compare_strategies` table on ``metric`` (Sharpe: higher is better; for
    ``max_drawdown`` lower is better). A NaN Sharpe / Sortino / Calmar (a flat equity curve: no trades, nothing
    earned) counts as 0, and the line says so; ruined strategies (``ruined`` not null) are named too."""
    lower = metric == "max_drawdown"
    raw = dict(zip(table.get_column("strategy").to_list(), table.get_column(metric).to_list(), strict=True))
    nan = sorted(k for k, v in raw.items() if v is None or math.isnan(v))
    scores = {k: (0.0 if k in nan else float(v)) for k, v in raw.items()}
    line = rank_verdict(scores, model, metric, higher_is_better=not lower)
    ruined = (table.filter(pl.col("ruined").is_not_null()).get_column("strategy").to_list()
              if "ruined" in table.columns else [])
    return (line + (f" [NaN counted as 0: {', '.join(nan)}]" if nan else "")
            + (f" [ruined, equity <= 0: {', '.join(ruined)}]" if ruined else ""))
