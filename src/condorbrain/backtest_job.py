"""The held-out backtest of a trained policy next to its baselines (``condorbrain backtest``; the last step of
``condorbrain run``).

1. The policy's decisions (:func:`policy_decisions`): at every bar of the run's held-out test period, the trained
   model's proposal on the window of ``lookback`` bars ending at that bar, the same windows and scaler the
   evaluation scores (:func:`condorbrain.main_job.prepare_data`), turned into strikes by
   :func:`condorbrain.main_job.condor_strikes` (``k_lower``, ``k_upper``, ``wing``: fractions of the bar's close).
   The policy proposes at every bar, as the rule does; the simulator decides which proposals open (``max_open``,
   quotes, a positive credit, the risk budget) and records the rest in ``skipped``.
2. The chain: :func:`condorbrain.data.synth_chains` over the same bars and VIX the features were computed from (the
   chain the representative contracts were picked from), restricted to the test bars.
3. :func:`condorbrain.backtest.backtest_strategies` on the test bars: the policy's condors, the rule-based condor
   (``RuleCondor()``) and buy-and-hold, one :class:`~condorbrain.backtest.BacktestConfig` and capital for all three;
   :func:`condorbrain.backtest.compare_strategies` and :func:`~condorbrain.backtest.strategy_verdict` (Sharpe).

The default config takes the run's ``target_dte``, ``rate`` and ``dividend_yield`` (the condor the model's POP / ROI
heads were trained on), the rest from ``BacktestConfig``'s defaults (:func:`backtest_config`).

Files (into the run folder, or another): ``trades_<strategy>.parquet`` (trade logs), ``backtest_equity.parquet``
(``strategy``, then the equity curve columns, one row per strategy and bar), ``decisions.parquet`` (the policy's
proposals), ``backtest.json`` (config, period, table, verdict, skipped decisions by reason).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

from condorbrain.backtest import (
    BacktestConfig,
    backtest_strategies,
    compare_strategies,
    strategy_verdict,
    write_trade_log,
)
from condorbrain.condor_labels import condor_strikes
from condorbrain.data import synth_chains
from condorbrain.evaluation import PopCalibration, _json_default
from condorbrain.job_data import JobData, _predict, prepare_data
from condorbrain.main_job import finished_training, load_run
from condorbrain.models import CondorBrain, PolicyOutput
from condorbrain.run_config import RunConfig

__all__ = ["PRINTED_COLUMNS", "backtest_config", "backtest_decisions", "backtest_model", "backtest_run",
           "policy_decisions"]

PRINTED_COLUMNS = ("strategy", "trades", "win_rate", "total_pnl", "final_equity", "sharpe", "sortino", "calmar",
                   "max_drawdown", "profit_factor", "ruined")
"""Columns of the comparison table printed on stdout (``backtest.json`` holds all of them)."""


def backtest_config(cfg: RunConfig, **overrides: Any) -> BacktestConfig:
    """The run's backtest config (:meth:`RunConfig.backtest_config`), then ``overrides`` (BacktestConfig fields)."""
    return cfg.backtest_config(**overrides)


def policy_decisions(model: CondorBrain, cfg: RunConfig, data: JobData,
                     calibration: PopCalibration | None = None) -> pl.DataFrame:
    """The model's condor at every test-period bar that ends a window, in time order: ``ts``, ``k_lower``,
    ``k_upper``, ``wing`` (fractions of that bar's close), ``pop`` (probability of profit, Platt-calibrated by
    ``calibration``), ``roi`` (predicted return on max risk) and ``enter`` (``cfg.policy``'s filter holds). Each
    row reads the ``lookback`` bars up to its ts only."""
    rows, pred = _predict(model, data.batches["test"])
    out = PolicyOutput(*(torch.from_numpy(pred[f]) for f in PolicyOutput._fields))
    k = condor_strikes(out, cfg)
    pop = (calibration or PopCalibration()).apply(pred["pop_logit"])
    roi = pred["roi"].astype(np.float64)
    enter = np.ones(len(rows), dtype=bool)
    if cfg.policy.min_pop is not None:
        enter &= pop >= cfg.policy.min_pop
    if cfg.policy.min_roi is not None:
        enter &= roi >= cfg.policy.min_roi
    return pl.DataFrame({
        "ts": data.frame.get_column("ts").gather(rows),
        **{name: getattr(k, name).double().numpy() for name in ("k_lower", "k_upper", "wing")},
        "pop": pop, "roi": roi, "enter": enter,
    }).sort("ts")


def backtest_model(cfg: RunConfig, model: CondorBrain, data: JobData, out_dir: str | os.PathLike[str],
                   config: BacktestConfig | None = None, *, calibration: PopCalibration | None = None,
                   t_start: float | None = None) -> dict[str, Any]:
    """Backtest ``model``'s decisions (:func:`policy_decisions`) on the test period next to the rule-based condor
    and buy-and-hold: :func:`backtest_decisions`. Returns the ``backtest.json`` summary."""
    t_start = time.perf_counter() if t_start is None else t_start
    print("[backtest] the policy's condors on the held-out period, next to the rule-based condor and buy-and-hold")
    decisions = policy_decisions(model, cfg, data, calibration)
    test_ts = data.frame.get_column("ts").filter(pl.Series(data.periods["test"]))
    return backtest_decisions(cfg, data.bars, data.vix, test_ts, decisions, out_dir, config, t_start=t_start)


def backtest_decisions(cfg: RunConfig, bars: pl.DataFrame, vix: pl.DataFrame | None, test_ts: pl.Series,
                       decisions: pl.DataFrame, out_dir: str | os.PathLike[str], config: BacktestConfig | None = None,
                       *, t_start: float | None = None, quiet: bool = False, chain: pl.DataFrame | None = None
                       ) -> dict[str, Any]:
    """Backtest ``decisions`` (:func:`policy_decisions`' frame; the rows with ``enter`` false are not proposed)
    over the bars at ``test_ts`` next to the rule-based condor and buy-and-hold, one config and capital for all;
    print the table and the verdict (unless ``quiet``), write the files (module docstring) into ``out_dir``.

    The chain is :func:`condorbrain.data.synth_chains` over all of ``bars`` (its proxy iv reads the past), then
    restricted to ``test_ts``; ``chain`` hands in that chain when it is already computed (the walk-forward's
    backtests share one). Returns the ``backtest.json`` summary."""
    t_start = time.perf_counter() if t_start is None else t_start
    config = config or backtest_config(cfg)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    in_test = pl.col("ts").is_in(test_ts.implode())
    test_bars = bars.filter(in_test)
    chain = (synth_chains(bars, vix=vix) if chain is None else chain).filter(in_test)
    entered = decisions.filter(pl.col("enter")).select("ts", "k_lower", "k_upper", "wing")
    results = backtest_strategies(chain, test_bars, entered, config)
    table = compare_strategies(results)
    line = strategy_verdict(table)

    for name, res in results.items():
        write_trade_log(res.trades, out / f"trades_{name}.parquet")
    pl.concat([res.equity.select(pl.lit(name).alias("strategy"), pl.all()) for name, res in results.items()]
              ).write_parquet(out / "backtest_equity.parquet")
    decisions.write_parquet(out / "decisions.parquet")
    summary = {
        "seconds": round(time.perf_counter() - t_start, 1),
        "verdict": line,
        "test_period": {"first": str(test_bars["ts"][0]), "last": str(test_bars["ts"][-1]),
                        "bars": test_bars.height},
        "decisions": decisions.height,
        "filtered": decisions.height - entered.height,
        "policy_filter": dataclasses.asdict(cfg.policy),
        "config": dataclasses.asdict(config),
        "table": table.to_dicts(),
        "skipped": {name: dict(res.skipped.get_column("reason").value_counts().iter_rows())
                    for name, res in results.items()},
    }
    text = json.dumps(summary, indent=2, default=_json_default)
    (out / "backtest.json").write_text(text)
    if not quiet:
        _print_table(summary, table)
    return json.loads(text)  # what the file holds (times as ISO strings)


def backtest_run(run_dir: str | os.PathLike[str], config: BacktestConfig | None = None,
                 out_dir: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """``condorbrain backtest``: :func:`backtest_model` for a trained run folder (its config, final EMA weights,
    saved scaler and POP calibration, :func:`condorbrain.main_job.load_run`), writing into ``out_dir`` (default: the
    run folder). A walk-forward run folder is backtested over all its windows, each bar by the model of its window
    (:func:`condorbrain.walk_forward.backtest_walk_forward`).

    Raises FileNotFoundError / CheckpointError for a missing, unfinished or altered run folder (naming the file)."""
    from condorbrain.walk_forward import backtest_walk_forward, is_walk_forward_run

    if is_walk_forward_run(run_dir):
        return backtest_walk_forward(run_dir, config, out_dir)
    t_start = time.perf_counter()
    run = load_run(run_dir)
    finished_training(run)
    data = prepare_data(run.config, scaler=run.scaler)
    return backtest_model(run.config, run.model, data, run.run_dir if out_dir is None else out_dir,
                          config or backtest_config(run.config), calibration=run.pop_calibration, t_start=t_start)


def _print_table(summary: dict[str, Any], table: pl.DataFrame) -> None:
    period = summary["test_period"]
    print(f"\nBacktest {period['first'][:10]} .. {period['last'][:10]} ({period['bars']} bars), the same config and "
          f"capital ({summary['config']['initial_capital']:,.0f}) for every strategy; "
          f"{summary['decisions']} policy decisions ({summary['filtered']} not entered by the [policy] filter); "
          f"{summary['seconds']} s")
    with pl.Config(tbl_rows=10, tbl_cols=len(PRINTED_COLUMNS), float_precision=3, tbl_hide_dataframe_shape=True,
                   tbl_hide_column_data_types=True, tbl_width_chars=200):
        print(table.select(PRINTED_COLUMNS))
    print(summary["verdict"])
