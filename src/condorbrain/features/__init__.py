"""Features: options maths (Black-Scholes, implied vol, greeks proxies), technical indicators, microstructure, the
seeds' feature sets, and (kept apart) the prediction targets.

Every feature at t uses data up to t only; targets (`condorbrain.features.targets`) look ahead by design and are
never model inputs. ``black_scholes_torch`` (the differentiable twin) imports torch on first use only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from condorbrain.features.indicators import (
    adx,
    atr,
    bollinger,
    ema,
    iv_rank,
    macd,
    momentum,
    price_position,
    psar,
    psar_mark,
    roc,
    rolling_std,
    rolling_volatility,
    rsi,
    sma,
    stoch_k,
    true_range,
    wilder_smooth,
)
from condorbrain.features.microstructure import bvc_imbalance, interaction_terms, quote_microstructure
from condorbrain.features.options import Greeks, GreeksProxy, black_scholes, greeks_proxy, implied_vol
from condorbrain.features.sets import (
    CONDOR_BAR_FEATURES,
    CONDOR_FEATURE_UNITS,
    CONDOR_FEATURES,
    CONDOR_ROW_FEATURES,
    INTERACTION_FEATURES,
    MICROSTRUCTURE_FEATURES,
    FeatureConfig,
    ForecasterConfig,
    RowFeatures,
    atm_candidates,
    atm_iv,
    bar_bvc_imbalance,
    condor_bar_features,
    condor_features,
    condor_row_features,
    forecaster_arrays,
    forecaster_features,
    interaction_features,
    microstructure_features,
    years_to_expiry,
)
from condorbrain.features.targets import (
    DEFAULT_HORIZONS,
    forward_log_return,
    forward_max_adverse_excursion,
    forward_max_drawdown,
    forward_realized_vol,
    forward_return,
    target_frame,
)

if TYPE_CHECKING:
    from condorbrain.features.options_torch import TorchGreeks, black_scholes_torch

__all__ = [
    "CONDOR_BAR_FEATURES",
    "CONDOR_FEATURES",
    "CONDOR_FEATURE_UNITS",
    "CONDOR_ROW_FEATURES",
    "DEFAULT_HORIZONS",
    "INTERACTION_FEATURES",
    "MICROSTRUCTURE_FEATURES",
    "FeatureConfig",
    "ForecasterConfig",
    "Greeks",
    "GreeksProxy",
    "RowFeatures",
    "TorchGreeks",
    "adx",
    "atm_candidates",
    "atm_iv",
    "atr",
    "bar_bvc_imbalance",
    "black_scholes",
    "black_scholes_torch",
    "bollinger",
    "bvc_imbalance",
    "condor_bar_features",
    "condor_features",
    "condor_row_features",
    "ema",
    "forecaster_arrays",
    "forecaster_features",
    "forward_log_return",
    "forward_max_adverse_excursion",
    "forward_max_drawdown",
    "forward_realized_vol",
    "forward_return",
    "greeks_proxy",
    "implied_vol",
    "interaction_features",
    "interaction_terms",
    "iv_rank",
    "macd",
    "microstructure_features",
    "momentum",
    "price_position",
    "psar",
    "psar_mark",
    "quote_microstructure",
    "roc",
    "rolling_std",
    "rolling_volatility",
    "rsi",
    "sma",
    "stoch_k",
    "target_frame",
    "true_range",
    "wilder_smooth",
    "years_to_expiry",
]


def __getattr__(name: str) -> Any:
    """Import the torch twin lazily: the numpy feature pipeline should not pay torch's import time."""
    if name in ("black_scholes_torch", "TorchGreeks"):
        from condorbrain.features import options_torch

        return getattr(options_torch, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
