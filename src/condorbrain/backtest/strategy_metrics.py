"""Strategy metrics of a backtest, from its trade log and daily equity curve.

Conventions:
- Returns are simple per-bar returns of the equity curve, ``r_t = E_t / E_{t-1} - 1`` (the first bar has none).
- Annualisation by ``periods_per_year = 252`` (daily bars); the risk-free rate is 0.
- Sharpe = mean(r) / std(r, ddof=1) * sqrt(252). Sortino = mean(r) / DD * sqrt(252) with the downside deviation
  DD = sqrt(mean(min(r, 0)^2)) over all returns (target 0). Both NaN when the denominator is 0 or fewer than two
  returns.
- Max drawdown: the largest fall from a running peak, ``max_t (1 - E_t / max_{s<=t} E_s)``, a positive fraction.
- CAGR = (E_last / E_first)^(252 / n) - 1 with n the number of returns; Calmar = CAGR / max drawdown (NaN when the
  drawdown is 0).
- Trade metrics use ``pnl`` and ``max_loss`` (currency) and ``days_held`` of the trade log: win rate = share of
  trades with pnl > 0; profit factor = gross profit / gross loss (inf with no losing trade, NaN with no trades);
  largest loss = the most negative pnl (0 if none lost); P&L per day on risk = mean over trades of
  ``pnl / max_loss / max(days_held, 1)`` (a fraction of the capital at risk per calendar day).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import polars as pl

__all__ = ["PERIODS_PER_YEAR", "StrategyMetrics", "drawdown", "max_drawdown", "strategy_metrics"]

PERIODS_PER_YEAR = 252.0
"""Bars per year for annualisation (daily bars)."""


@dataclass(frozen=True)
class StrategyMetrics:
    """Summary of one backtest (conventions in the module docstring)."""

    trades: int
    win_rate: float
    avg_pnl: float
    """Currency per trade."""
    pnl_per_day_on_risk: float
    """Fraction of max loss per calendar day held, averaged over trades."""
    profit_factor: float
    largest_loss: float
    """Currency, <= 0."""
    total_pnl: float
    sharpe: float
    sortino: float
    calmar: float
    max_drawdown: float
    """Positive fraction of the running peak."""
    cagr: float
    exits_by_reason: dict[str, int]

    def as_dict(self) -> dict[str, object]:
        """Plain dict (for JSON reports)."""
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def drawdown(equity: np.ndarray) -> np.ndarray:
    """Drawdown per bar: the fall from the running peak as a fraction of that peak, ``1 - E_t / max_{s<=t} E_s``,
    clipped to [0, 1]: 1 once the equity is <= 0 (all the capital lost), the convention of
    :func:`condorbrain.backtest.compare_strategies` for a ruined strategy (the run report plots it). ``equity``:
    (T,) currency, first bar > 0. NaN bars stay NaN and do not move the peak."""
    e = np.asarray(equity, dtype=np.float64)
    if e.size == 0:
        return e.copy()
    peak = np.fmax.accumulate(e)  # NaN-skipping running max
    if not peak[0] > 0:
        raise ValueError(f"the equity curve must start > 0, got {e[0]}")
    with np.errstate(invalid="ignore"):
        dd = np.clip(1.0 - e / peak, 0.0, 1.0)
    return np.where(np.isnan(e), np.nan, dd)


def max_drawdown(equity: np.ndarray) -> float:
    """Largest fall from a running peak as a positive fraction of that peak (0 for a non-falling curve): the
    maximum of :func:`drawdown`, for a finite curve that stays > 0."""
    e = np.asarray(equity, dtype=np.float64)
    if e.size == 0:
        return math.nan
    if not (np.isfinite(e).all() and (e > 0).all()):
        raise ValueError("equity must be finite and > 0")
    return float(np.max(drawdown(e)))


def strategy_metrics(trades: pl.DataFrame, equity: pl.DataFrame,
                     periods_per_year: float = PERIODS_PER_YEAR) -> StrategyMetrics:
    """Metrics from a trade log (``pnl``, ``max_loss``, ``days_held``, ``exit_reason``) and an equity curve
    (``equity``, one row per bar in time order)."""
    for col in ("pnl", "max_loss", "days_held", "exit_reason"):
        if col not in trades.columns:
            raise ValueError(f"trades: missing column {col!r}")
    if "equity" not in equity.columns:
        raise ValueError("equity: missing column 'equity'")
    pnl = trades.get_column("pnl").cast(pl.Float64).to_numpy()
    risk = trades.get_column("max_loss").cast(pl.Float64).to_numpy()
    days = trades.get_column("days_held").cast(pl.Float64).to_numpy()
    n = pnl.size
    gross_win, gross_loss = float(pnl[pnl > 0].sum()), float(-pnl[pnl < 0].sum())
    if n == 0:
        pf = math.nan
    elif gross_loss == 0:
        pf = math.inf
    else:
        pf = gross_win / gross_loss
    reasons = trades.get_column("exit_reason").value_counts(sort=True)

    e = equity.get_column("equity").cast(pl.Float64).to_numpy()
    mdd = max_drawdown(e)
    r = e[1:] / e[:-1] - 1.0 if e.size > 1 else np.empty(0)
    ann = math.sqrt(periods_per_year)
    sd = float(r.std(ddof=1)) if r.size > 1 else 0.0
    dd = float(np.sqrt(np.mean(np.minimum(r, 0.0) ** 2))) if r.size > 1 else 0.0
    mean = float(r.mean()) if r.size else math.nan
    cagr = float((e[-1] / e[0]) ** (periods_per_year / r.size) - 1.0) if r.size else math.nan
    return StrategyMetrics(
        trades=n,
        win_rate=float((pnl > 0).mean()) if n else math.nan,
        avg_pnl=float(pnl.mean()) if n else math.nan,
        pnl_per_day_on_risk=float(np.mean(pnl / risk / np.maximum(days, 1.0))) if n else math.nan,
        profit_factor=pf,
        largest_loss=float(min(pnl.min(), 0.0)) if n else 0.0,
        total_pnl=float(pnl.sum()),
        sharpe=mean / sd * ann if sd > 0 else math.nan,
        sortino=mean / dd * ann if dd > 0 else math.nan,
        calmar=cagr / mdd if mdd > 0 else math.nan,
        max_drawdown=mdd,
        cagr=cagr,
        exits_by_reason={str(k): int(v) for k, v in zip(reasons.get_column("exit_reason"),
                                                          reasons.get_column("count"))},
    )
