"""Backtesting and evaluation: the iron condor backtester, strategy metrics, baselines that every model result
stands beside, and forecast metrics.

- `condor`: the iron condor (payoff at expiry, max loss), strike snapping and expiry choice.
- `fills`: fills at bid / ask plus slippage, commissions, the contract multiplier.
- `simulator`: `backtest` over a history of chains, from a policy's decisions or the rule-based condor, with
  take-profit / DTE / stop / expiry management, risk-budget sizing, a trade log and a daily equity curve.
- `strategy_metrics`: trade and equity-curve metrics (win rate, profit factor, Sharpe, Sortino, Calmar, drawdown).
- `compare`: buy-and-hold of the underlying, and a policy's condors next to the rule-based condor and buy-and-hold
  on the same bars, capital and config: one metrics table and a verdict line (Sharpe first).

- `baselines`: volatility baselines (trailing realized vol, HAR-RV, GARCH(1,1) from arch) and return baselines
  (random walk, seed 004's momentum fallback), each computed from past data only.
- `forecast_metrics`: MSE / MAE, QLIKE, directional accuracy, information coefficient, Brier score and reliability
  curve, NaN-aware, and `compare_forecasts` for one table of several named forecasts.
"""

from condorbrain.backtest.baselines import (
    GARCH_SCALE,
    GarchConvergenceWarning,
    GarchFit,
    GarchForecast,
    HARFit,
    HARForecast,
    garch_vol_forecast,
    har_rv_forecast,
    momentum_return_forecast,
    return_baselines,
    trailing_vol_forecast,
    vol_baselines,
)
from condorbrain.backtest.compare import (
    STRATEGIES,
    backtest_strategies,
    buy_and_hold,
    compare_strategies,
    rank_verdict,
    strategy_verdict,
)
from condorbrain.backtest.condor import (
    IronCondor,
    NoListedStrikeError,
    choose_expiry,
    condor_max_loss,
    condor_payoff,
    settlement_value,
    snap_strike,
)
from condorbrain.backtest.fills import FillConfig, close_fill, fill_prices, open_fill, order_fees
from condorbrain.backtest.forecast_metrics import (
    DirectionalScore,
    QlikeScore,
    ReliabilityCurve,
    Score,
    brier_score,
    compare_forecasts,
    directional_accuracy,
    information_coefficient,
    mae,
    mse,
    qlike,
    reliability_curve,
)
from condorbrain.backtest.simulator import (
    EXIT_REASONS,
    BacktestConfig,
    BacktestInputError,
    BacktestResult,
    MissingQuotesError,
    RuleCondor,
    backtest,
    write_trade_log,
)
from condorbrain.backtest.strategy_metrics import StrategyMetrics, drawdown, max_drawdown, strategy_metrics

__all__ = [
    "EXIT_REASONS",
    "GARCH_SCALE",
    "STRATEGIES",
    "BacktestConfig",
    "BacktestInputError",
    "BacktestResult",
    "DirectionalScore",
    "FillConfig",
    "GarchConvergenceWarning",
    "GarchFit",
    "GarchForecast",
    "HARFit",
    "HARForecast",
    "IronCondor",
    "MissingQuotesError",
    "NoListedStrikeError",
    "QlikeScore",
    "ReliabilityCurve",
    "RuleCondor",
    "Score",
    "StrategyMetrics",
    "backtest",
    "backtest_strategies",
    "brier_score",
    "buy_and_hold",
    "choose_expiry",
    "close_fill",
    "compare_forecasts",
    "compare_strategies",
    "condor_max_loss",
    "condor_payoff",
    "directional_accuracy",
    "drawdown",
    "fill_prices",
    "garch_vol_forecast",
    "har_rv_forecast",
    "information_coefficient",
    "mae",
    "max_drawdown",
    "momentum_return_forecast",
    "mse",
    "open_fill",
    "order_fees",
    "qlike",
    "rank_verdict",
    "reliability_curve",
    "return_baselines",
    "settlement_value",
    "snap_strike",
    "strategy_metrics",
    "strategy_verdict",
    "trailing_vol_forecast",
    "vol_baselines",
    "write_trade_log",
]
