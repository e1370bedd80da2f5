"""Backtesting and evaluation: baselines that every model result stands beside, and forecast metrics.

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

__all__ = [
    "GARCH_SCALE",
    "DirectionalScore",
    "GarchConvergenceWarning",
    "GarchFit",
    "GarchForecast",
    "HARFit",
    "HARForecast",
    "QlikeScore",
    "ReliabilityCurve",
    "Score",
    "brier_score",
    "compare_forecasts",
    "directional_accuracy",
    "garch_vol_forecast",
    "har_rv_forecast",
    "information_coefficient",
    "mae",
    "momentum_return_forecast",
    "mse",
    "qlike",
    "reliability_curve",
    "return_baselines",
    "trailing_vol_forecast",
    "vol_baselines",
]
