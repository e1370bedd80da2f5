"""Walk-forward evaluation: a fresh CondorBrain per window, every result next to the baselines on the same rows.

For each window of :class:`~condorbrain.run_config.WalkForwardConfig` (train, then validation, then test, with the
purge and embargo of :func:`condorbrain.main_job._periods` at both boundaries):

1. the scaler and the regime edges are refitted on the window's training rows
   (:func:`condorbrain.main_job.prepare_data`);
2. a new model is trained from scratch (:func:`~condorbrain.main_job.train_model`: early stopping and POP calibration
   on the window's validation period);
3. it is scored on the window's test period next to the baselines, HAR-RV and GARCH(1,1) refitted on the same window's
   past (:func:`~condorbrain.main_job.evaluate_model`);
4. its condors are backtested on that test period next to the rule-based condor and buy-and-hold.

Then the windows are put together: the forecast tables over all test rows (each scored by the model of its window),
and one backtest over the whole out-of-sample period in which each bar's proposal comes from its window's model
(one equity curve, one capital, positions carried across window boundaries), next to the baselines over the same
bars. Every window's folder (``windows/wNN/``) is a complete run folder of its own.

Files in the run folder: ``config.json``, ``windows/wNN/`` (each a run folder: checkpoints, predictions, evaluation,
backtest), ``predictions.parquet`` (all windows' test rows, with a ``window`` column), ``evaluation.json`` (the
overall tables and verdicts), ``walk_forward.json`` (per-window tables and backtests, and the overall),
``backtest.json`` / ``backtest_equity.parquet`` / ``trades_<strategy>.parquet`` / ``decisions.parquet`` (the
stitched backtest), ``report.html`` / ``report.json``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import time
from pathlib import Path
from typing import Any, NamedTuple

import polars as pl

from condorbrain.backtest import BacktestConfig
from condorbrain.backtest_job import backtest_decisions, policy_decisions
from condorbrain.data import load_sp500, load_vix, synth_chains
from condorbrain.evaluation import (
    PopCalibration,
    _json_default,
    _print_summary,
    evaluate_model,
    score_predictions,
    verdict,
)
from condorbrain.job_data import JobData, daily_policy_frame, prepare_data
from condorbrain.main_job import finished_training, load_run, train_model, write_config
from condorbrain.models import CondorBrain
from condorbrain.report import write_report
from condorbrain.run_config import RunConfig

__all__ = ["WindowRun", "backtest_walk_forward", "evaluate_walk_forward", "is_walk_forward_run", "run_walk_forward",
           "window_configs", "window_dirs"]


class WindowRun(NamedTuple):
    """One window's trained model with what scoring and backtesting it needs."""

    config: RunConfig
    """The window's single-split config (its dates)."""
    model: CondorBrain
    """Its model, EMA weights, eval mode."""
    data: JobData
    """Its data: periods, scaler fitted on its training rows, windows."""
    calibration: PopCalibration
    """Its POP calibration (fitted on its validation period)."""
    folder: Path
    """Its run folder (``windows/wNN``)."""


def window_configs(cfg: RunConfig, last_day: dt.date) -> list[RunConfig]:
    """One single-split RunConfig per window (``walk_forward`` cleared, dates set), data ending on ``last_day``."""
    if cfg.walk_forward is None:
        raise ValueError("cfg.walk_forward is None: this run has one split, not windows")
    return [dataclasses.replace(cfg, walk_forward=None, **w) for w in cfg.walk_forward.windows(last_day)]


def is_walk_forward_run(run_dir: str | os.PathLike[str]) -> bool:
    """Whether ``run_dir``'s ``config.json`` has a ``[walk_forward]`` table (FileNotFoundError when it has none)."""
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: {run_dir} is not a run folder (condorbrain train / run "
                                "write one)")
    return RunConfig.from_file(path).walk_forward is not None


def window_dirs(run_dir: str | os.PathLike[str]) -> list[Path]:
    """The window folders of a walk-forward run folder, in order (FileNotFoundError when there are none)."""
    dirs = sorted(p for p in (Path(run_dir) / "windows").glob("w[0-9][0-9]") if p.is_dir())
    if not dirs:
        raise FileNotFoundError(f"{Path(run_dir) / 'windows'} holds no window folder (w01, w02, ...): the "
                                "walk-forward has not trained a window yet")
    return dirs


def _load_market(cfg: RunConfig) -> tuple[pl.DataFrame, pl.DataFrame]:
    bars, vix = load_sp500(), load_vix()
    return (bars if cfg.max_bars is None else bars.tail(cfg.max_bars)), vix


def _test_ts(data: JobData) -> pl.Series:
    return data.frame.get_column("ts").filter(pl.Series(data.periods["test"]))


def _window_line(k: int, n: int, w: RunConfig) -> str:
    train = f"{w.train_start or 'start'} .. {w.val_start}"
    return f"\n=== window {k}/{n}: train {train}, validation {w.val_start} .. {w.test_start}, test {w.test_start} .. " \
           f"{w.test_end} (exclusive)"


def run_walk_forward(cfg: RunConfig, out_dir: str | os.PathLike[str], *, resume: bool = False,
                     bars: pl.DataFrame | None = None, vix: pl.DataFrame | None = None) -> dict[str, Any]:
    """The walk-forward main job (module docstring) into ``out_dir``; returns the overall summary
    (``evaluation.json``) with the stitched backtest's under ``"backtest"`` and the windows under
    ``"walk_forward"``. ``resume`` continues each window's training from its newest checkpoint.

    ``bars`` / ``vix``: daily bars and VIX closes instead of the embedded S&P 500 and VIX (tests; ``condorbrain
    evaluate`` / ``backtest`` reload a run folder on the embedded data)."""
    t_start = time.perf_counter()
    out = write_config(cfg, out_dir)
    source = "given"
    if bars is None:
        (bars, vix), source = _load_market(cfg), "real S&P 500 and VIX, from arch"
    elif cfg.max_bars is not None:
        bars = bars.tail(cfg.max_bars)
    print(f"[walk-forward] {bars.height} daily bars {bars['ts'][0]:%Y-%m-%d} .. {bars['ts'][-1]:%Y-%m-%d} "
          f"({source}); the features are computed once, every value from its bar and earlier ones")
    frame = daily_policy_frame(bars, vix, cfg)
    windows = window_configs(cfg, bars["ts"][-1].date())
    models: list[WindowRun] = []
    for k, w in enumerate(windows, 1):
        print(_window_line(k, len(windows), w))
        wdir = write_config(w, out / "windows" / f"w{k:02d}")
        data = prepare_data(w, bars=bars, vix=vix, frame=frame)
        model, train_summary = train_model(w, data, wdir, resume=resume)
        evaluate_model(w, model, data, wdir, train_summary, quiet=True)
        models.append(WindowRun(w, model, data, PopCalibration(**train_summary["pop_calibration"]), wdir))
    return _assemble(cfg, out, bars, vix, models, cfg.backtest_config(), t_start)


def _load_windows(run_dir: Path) -> tuple[RunConfig, pl.DataFrame, pl.DataFrame, list[WindowRun]]:
    cfg = RunConfig.from_file(run_dir / "config.json")
    bars, vix = _load_market(cfg)
    frame = daily_policy_frame(bars, vix, cfg)
    models: list[WindowRun] = []
    for wdir in window_dirs(run_dir):
        run = load_run(wdir)
        finished_training(run)
        data = prepare_data(run.config, bars=bars, vix=vix, frame=frame, scaler=run.scaler)
        models.append(WindowRun(run.config, run.model, data, run.pop_calibration, wdir))
    return cfg, bars, vix, models


def evaluate_walk_forward(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """``condorbrain evaluate`` on a walk-forward run folder: every window re-scored from its saved weights and
    scaler, then the overall tables; rewrites the evaluation files (not the backtest's)."""
    t_start = time.perf_counter()
    run_dir = Path(run_dir)
    cfg, bars, vix, models = _load_windows(run_dir)
    for w, model, data, _, wdir in models:  # WindowRun fields
        evaluate_model(w, model, data, wdir, json.loads((wdir / "train.json").read_text()), quiet=True)
    return _overall_evaluation(cfg, run_dir, [m.folder for m in models], t_start)


def backtest_walk_forward(run_dir: str | os.PathLike[str], config: BacktestConfig | None = None,
                          out_dir: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """``condorbrain backtest`` on a walk-forward run folder: each bar's proposal by its window's saved model, one
    backtest over every window's test bars next to the baselines (``config``: the run's by default); files into
    ``out_dir`` (default: the run folder)."""
    t_start = time.perf_counter()
    run_dir = Path(run_dir)
    cfg, bars, vix, models = _load_windows(run_dir)
    decisions, test_ts = _stitched(models, _decisions(models))
    return backtest_decisions(cfg, bars, vix, test_ts, decisions, out_dir or run_dir, config or cfg.backtest_config(),
                              t_start=t_start)


def _decisions(models: list[WindowRun]) -> list[pl.DataFrame]:
    """Each window's decisions (:func:`~condorbrain.backtest_job.policy_decisions`, by its own model)."""
    return [policy_decisions(m.model, m.config, m.data, m.calibration) for m in models]


def _stitched(models: list[WindowRun], decisions: list[pl.DataFrame]) -> tuple[pl.DataFrame, pl.Series]:
    """The windows' decisions stacked in time order with a ``window`` column (1, 2, ...), and their test bars."""
    frames = [d.with_columns(pl.lit(k).alias("window")) for k, d in enumerate(decisions, 1)]
    return pl.concat(frames).sort("ts"), pl.concat([_test_ts(m.data) for m in models]).sort()


def _overall_evaluation(cfg: RunConfig, out: Path, wdirs: list[Path], t_start: float) -> dict[str, Any]:
    """Stack the windows' ``predictions.parquet`` (``window`` column), score them together, write
    ``predictions.parquet`` and ``evaluation.json`` into ``out``; return the summary with the per-window one."""
    preds = pl.concat([pl.read_parquet(d / "predictions.parquet").with_columns(pl.lit(k).alias("window"))
                       for k, d in enumerate(wdirs, 1)], how="vertical")
    tables, reliability = score_predictions(cfg, preds)
    preds.write_parquet(out / "predictions.parquet")
    evals = [json.loads((d / "evaluation.json").read_text()) for d in wdirs]
    ts = preds.get_column("ts")
    summary = {
        "seconds": round(time.perf_counter() - t_start, 1),
        "verdicts": {name: verdict(t) for name, t in tables.items()},
        "train": {"windows": [e["train"] for e in evals]},
        "test_period": {"first": str(ts[0]), "last": str(ts[-1]), "samples": preds.height},
        "tables": {name: t.to_dicts() for name, t in tables.items()},
        "pop_reliability": reliability,
    }
    (out / "evaluation.json").write_text(json.dumps(summary, indent=2, default=_json_default))
    _print_summary(summary, tables)
    return summary


def _assemble(cfg: RunConfig, out: Path, bars: pl.DataFrame, vix: pl.DataFrame | None, models: list[WindowRun],
              config: BacktestConfig, t_start: float) -> dict[str, Any]:
    """Per-window backtests, the overall evaluation, the stitched backtest, ``walk_forward.json``, the report."""
    windows = []
    chain = synth_chains(bars, vix=vix)  # one chain for every backtest below (each keeps its test bars)
    decisions = _decisions(models)
    for k, ((w, _, data, _, wdir), window_decisions) in enumerate(zip(models, decisions, strict=True), 1):
        bt = backtest_decisions(w, bars, vix, _test_ts(data), window_decisions, wdir, config, quiet=True, chain=chain)
        ev = json.loads((wdir / "evaluation.json").read_text())
        windows.append({"window": k, "folder": str(wdir.relative_to(out)),
                        "train": _rows_period(data, "train"), "val": _rows_period(data, "val"),
                        "test": {"first": ev["test_period"]["first"], "last": ev["test_period"]["last"],
                                 "samples": ev["test_period"]["samples"]},
                        "training": {k2: ev["train"][k2] for k2 in ("steps", "stopped", "best_step")},
                        "tables": ev["tables"], "verdicts": ev["verdicts"],
                        "backtest": bt["table"], "backtest_verdict": bt["verdict"]})
    print("\n=== all windows together: each test row scored by its own window's model")
    summary = _overall_evaluation(cfg, out, [m.folder for m in models], t_start)
    print("\n=== backtest over every window's test period, each bar's condor proposed by that window's model")
    stitched, test_ts = _stitched(models, decisions)
    backtest = backtest_decisions(cfg, bars, vix, test_ts, stitched, out, config, chain=chain)
    record = {"mode": cfg.walk_forward.mode if cfg.walk_forward else None,
              "config": dataclasses.asdict(cfg.walk_forward) if cfg.walk_forward else None,
              "purge_bars": cfg.model.hold_horizon, "embargo_bars": cfg.embargo, "windows": windows,
              "overall": {"tables": summary["tables"], "verdicts": summary["verdicts"],
                          "backtest": backtest["table"], "backtest_verdict": backtest["verdict"]}}
    (out / "walk_forward.json").write_text(json.dumps(record, indent=2, default=_json_default))
    _print_windows(windows)
    paths = write_report(out)
    print(f"report: {paths.html}")
    seconds = round(time.perf_counter() - t_start, 1)
    print(f"walk-forward: {len(windows)} windows in {seconds} s")
    return {**summary, "seconds": seconds, "backtest": backtest, "walk_forward": record}


def _rows_period(data: JobData, name: str) -> dict[str, Any]:
    """First and last bar of a period's rows (after purge and embargo) and how many rows it has."""
    ts = data.ts[data.periods[name]]
    return {"first": str(ts[0]), "last": str(ts[-1]), "rows": int(len(ts))}


def _print_windows(windows: list[dict[str, Any]]) -> None:
    """Per window: the volatility verdict and each strategy's total P&L and Sharpe."""
    rows = []
    for w in windows:
        vol = next(name for name in w["tables"] if name.startswith("volatility"))
        qlike = {r["forecast"]: r["qlike"] for r in w["tables"][vol]}
        row = {"window": w["window"], "test": f"{w['test']['first'][:10]} .. {w['test']['last'][:10]}",
               "qlike model": qlike["condorbrain"], "qlike garch": qlike["garch_1_1"]}
        for r in w["backtest"]:
            row[f"pnl {r['strategy']}"] = r["total_pnl"]
            row[f"sharpe {r['strategy']}"] = r["sharpe"]
        rows.append(row)
    print("\nPer window (each model trained on its own past; volatility QLIKE lower is better)")
    with pl.Config(tbl_rows=50, tbl_cols=20, float_precision=3, tbl_hide_dataframe_shape=True,
                   tbl_hide_column_data_types=True, tbl_width_chars=220):
        print(pl.DataFrame(rows))
