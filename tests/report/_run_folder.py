"""A small synthetic run folder with the schemas ``condorbrain run`` writes (copied from a real run folder:
``backtest_equity.parquet``, ``evaluation.json``, ``predictions.parquet``, ``backtest.json``, ``trades_*.parquet``,
``config.json``, ``train.json``; optionally the walk-forward ``walk_forward.json``), with hand-made numbers the
tests check the report against."""

from __future__ import annotations

import datetime as dt
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

__all__ = ["EQUITY", "PNL", "RELIABILITY", "make_run"]

EQUITY = {
    # max drawdown 0.5: the peak 120k, then 60k
    "condorbrain": [100_000.0, 110_000.0, 90_000.0, 120_000.0, 60_000.0, 130_000.0],
    "rule_condor": [100_000.0, 101_000.0, 102_000.0, 103_000.0, 104_000.0, 105_000.0],  # never falls: 0
    "buy_and_hold": [100_000.0, 50_000.0, -20_000.0, 10_000.0, 20_000.0, 30_000.0],  # ruined: 0, .5, 1, .9, .8, .7
}
"""Equity per bar (currency) of each strategy, 6 bars."""
PNL = {
    "condorbrain": ([-900.0, -800.0, 150.0, 200.0, 210.0, -50.0, 300.0], ["stop", "stop", "take_profit",
                                                                        "take_profit", "dte", "dte", "expiry"]),
    "rule_condor": ([120.0, -400.0, 80.0], ["take_profit", "stop", "dte"]),
    "buy_and_hold": ([30_000.0], ["end_of_data"]),
}
"""Trade P&L (currency) and exit reason of each strategy."""
RELIABILITY = {
    "condorbrain": {"bin_edges": [0.0, 0.25, 0.5, 0.75, 1.0], "count": [0, 5, 10, 3],
                    "mean_predicted": [math.nan, 0.4, 0.6, 0.8], "observed_frequency": [math.nan, 0.2, 0.7, 1.0],
                    "n_dropped": 2},
    "condorbrain (uncalibrated)": {"bin_edges": [0.0, 0.25, 0.5, 0.75, 1.0], "count": [0, 0, 0, 18],
                                   "mean_predicted": [math.nan, math.nan, math.nan, 0.95],
                                   "observed_frequency": [math.nan, math.nan, math.nan, 0.66], "n_dropped": 2},
}
"""``evaluation.json``'s ``pop_reliability``."""

_T0 = dt.datetime(2015, 1, 2, 21, tzinfo=dt.UTC)


def _ts(n: int) -> list[dt.datetime]:
    return [_T0 + dt.timedelta(days=i) for i in range(n)]


def make_run(root: Path, *, walk_forward: bool = False, regimes: bool = True, n_pred: int = 40,
             strategies: dict[str, list[float]] | None = None, trades: bool = True) -> Path:
    """Write a run folder under ``root`` and return it. ``strategies``: equity per strategy (default
    :data:`EQUITY`); ``trades``: write the trade logs of :data:`PNL`."""
    run = root / "run"
    run.mkdir()
    equity = strategies or EQUITY
    pl.concat([
        pl.DataFrame({"strategy": [name] * len(e), "ts": _ts(len(e)), "equity": e,
                      "realized": [0.0] * len(e), "unrealized": [0.0] * len(e), "open_positions": [0] * len(e)},
                     schema={"strategy": pl.String, "ts": pl.Datetime("us", "UTC"), "equity": pl.Float64,
                             "realized": pl.Float64, "unrealized": pl.Float64, "open_positions": pl.Int64})
        for name, e in equity.items()
    ]).write_parquet(run / "backtest_equity.parquet")
    if trades:
        for name, (pnl, reasons) in PNL.items():
            if name in equity:
                pl.DataFrame({"entry_ts": _ts(len(pnl)), "exit_ts": _ts(len(pnl)), "pnl": pnl,
                              "max_loss": [1000.0] * len(pnl), "days_held": [3.0] * len(pnl),
                              "exit_reason": reasons}).write_parquet(run / f"trades_{name}.parquet")
    rng = np.random.default_rng(0)
    ts = _ts(n_pred)
    vol = 0.03 + 0.01 * np.sin(np.arange(n_pred) / 5)
    pred: dict[str, Any] = {
        "ts": ts, "close": 2000 + np.cumsum(rng.normal(size=n_pred)),
        "target_ret_1": rng.normal(0, 0.01, n_pred).astype(np.float32),
        "pred_ret_1": rng.normal(0, 0.01, n_pred).astype(np.float32),
        "target_vol": np.where(np.arange(n_pred) >= n_pred - 3, np.nan, vol),  # the horizon runs past the data
        "pred_vol": (vol * 1.1).astype(np.float32),
        "baseline_trailing_rv_22": vol * 0.9, "baseline_har_rv": vol * 0.95, "baseline_garch_1_1": vol * 1.02,
        "pred_pop": rng.uniform(0.3, 0.9, n_pred), "pop_label": (rng.uniform(size=n_pred) > 0.4).astype(np.float32),
    }
    if regimes:
        p = rng.dirichlet(np.ones(3), n_pred).astype(np.float32)
        pred |= {"regime_label": np.r_[[-1], rng.integers(0, 3, n_pred - 1)].astype(np.int64),
                 **{f"pred_regime_{k}": p[:, k] for k in range(3)}}
    frame = pl.DataFrame(pred).with_columns(pl.col("ts").cast(pl.Datetime("us", "UTC")))
    if walk_forward:
        frame = frame.with_columns(window=pl.Series(np.repeat([1, 2], [n_pred // 2, n_pred - n_pred // 2])))
    frame.write_parquet(run / "predictions.parquet")
    vol_rows = [{"forecast": "condorbrain", "n": 37, "n_dropped": 3, "qlike": 0.58, "ic": 0.15},
                {"forecast": "garch_1_1", "n": 37, "n_dropped": 3, "qlike": 0.37, "ic": 0.48}]
    evaluation = {
        "seconds": 1.0,
        "verdicts": {"volatility, 30 bars": "-> condorbrain LOSES on qlike (0.58) to garch_1_1 (0.37)",
                     "probability of profit": "-> condorbrain beats every baseline on brier (0.22586)"},
        "train": {"steps": 10},
        "test_period": {"first": "2015-01-02T21:00:00.000000", "last": "2015-02-10T21:00:00.000000",
                        "samples": n_pred},
        "tables": {"volatility, 30 bars": vol_rows,
                   "probability of profit": [{"forecast": "condorbrain", "n": 37, "n_dropped": 3, "brier": 0.22},
                                             {"forecast": "training base rate", "n": 37, "n_dropped": 3,
                                              "brier": math.nan}]},
        "pop_reliability": RELIABILITY,
    }
    (run / "evaluation.json").write_text(json.dumps(evaluation, indent=2))  # NaN tokens, as the job writes them
    table = [{"strategy": name, "first": "2015-01-02 21:00:00+00:00", "last": "2015-01-07 21:00:00+00:00", "bars": 6,
              "initial_capital": 100_000.0, "final_equity": e[-1], "ruined": None, "trades": len(PNL[name][0]),
              "sharpe": -math.inf if name == "buy_and_hold" else 0.5, "max_drawdown": 0.5}
             for name, e in equity.items() if name in PNL] + [
             {"strategy": name, "final_equity": e[-1], "trades": 0} for name, e in equity.items() if name not in PNL]
    backtest = {"seconds": 1.0, "verdict": "-> condorbrain LOSES on sharpe (0.5) to rule_condor (0.6)",
                "test_period": {"first": "2015-01-02 21:00:00+00:00", "last": "2015-01-07 21:00:00+00:00",
                                "bars": 6},
                "decisions": 6, "config": {"target_dte": 45.0, "initial_capital": 100_000.0,
                                           "fills": {"slippage": 0.5}},
                "table": table, "skipped": {"condorbrain": {"capacity": 3}, "rule_condor": {}}}
    (run / "backtest.json").write_text(json.dumps(backtest, indent=2))
    (run / "config.json").write_text(json.dumps({"model": {"mixer": "mamba2", "d_model": 64, "n_layer": 4},
                                                 "run": {"val_start": "2012-01-01", "test_start": "2015-01-01"}}))
    (run / "train.json").write_text(json.dumps({"steps": 10, "stopped": "max_steps", "best_step": 5}))
    if walk_forward:
        # the shape condorbrain.walk_forward writes
        (run / "walk_forward.json").write_text(json.dumps({
            "mode": "expanding", "config": {"mode": "expanding"}, "purge_bars": 30, "embargo_bars": 0,
            "windows": [{"window": w, "folder": f"windows/w{w:02d}",
                         "train": {"first": "2000-01-03", "last": f"201{w}-12-31"},
                         "val": {"first": f"201{w + 1}-01-02", "last": f"201{w + 1}-12-31"},
                         "test": {"first": f"201{w + 2}-01-02", "last": f"201{w + 2}-12-31", "samples": 20},
                         "training": {"steps": 10, "stopped": "max_steps", "best_step": 5},
                         "tables": {"volatility, 30 bars": vol_rows},
                         "verdicts": {"volatility, 30 bars": f"-> condorbrain LOSES on qlike in window {w}"},
                         "backtest": [{"strategy": "condorbrain", "final_equity": 90_000.0 + w, "sharpe": -0.1}],
                         "backtest_verdict": f"-> condorbrain LOSES on sharpe in window {w}"}
                        for w in (1, 2)],
            "overall": {"tables": {"volatility, 30 bars": vol_rows},
                        "verdicts": {"volatility, 30 bars": "-> condorbrain LOSES on qlike overall",
                                     "probability of profit": evaluation["verdicts"]["probability of profit"]},
                        "backtest": [{"strategy": "condorbrain", "final_equity": 80_000.0, "sharpe": -0.2}],
                        "backtest_verdict": "-> condorbrain LOSES on sharpe overall"},
        }))
    return run
