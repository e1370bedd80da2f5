"""Step 5 of :mod:`condorbrain.main_job`: the model's forecasts on the test period next to every baseline on the same
rows (:func:`forecast_frame`), the comparison tables with their verdicts (:func:`score_predictions`,
:func:`verdict`), and the POP head's calibration (:class:`PopCalibration`)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

from condorbrain.backtest import compare_forecasts, rank_verdict, reliability_curve, return_baselines, vol_baselines
from condorbrain.condor_labels import condor_labels
from condorbrain.job_data import JobData, _predict
from condorbrain.models import CondorBrain, PolicyOutput
from condorbrain.run_config import RunConfig

__all__ = ["PRIMARY_METRIC", "PopCalibration", "evaluate_model", "forecast_frame", "score_predictions", "verdict"]


def forecast_frame(cfg: RunConfig, model: CondorBrain, data: JobData, calibration: PopCalibration) -> pl.DataFrame:
    """One row per window ending in the test period: the targets, the model's forecasts and every baseline's, on the
    same rows (what ``predictions.parquet`` holds and :func:`score_predictions` scores).

    Columns: ``ts``, ``close``; ``target_ret_{h}``, ``pred_ret_{h}`` and ``return_baseline_{h}_{name}`` (simple
    returns over h bars; random walk, momentum); ``target_vol``, ``pred_vol`` and ``baseline_{name}`` (realized vol
    over the holding horizon; trailing RV, HAR-RV, GARCH(1,1)); ``pred_pop`` (calibrated by ``calibration``),
    ``pred_pop_uncalibrated``, ``pop_base_rate`` (the training period's frequency of profit of the model's own
    proposals), ``pop_label``; ``pred_roi``, ``roi_label``; ``regime_label``, ``pred_regime_{i}``.

    The fitted baselines see only the past: HAR-RV and GARCH(1,1) are fitted on the bars from the first training row
    up to the first test row and GARCH refits every ``garch_refit_every`` bars on the bars before each refit; the
    series handed to them ends at the last test row.
    """
    targets, frame = data.targets, data.frame
    rows, pred = _predict(model, data.batches["test"])
    close = frame.get_column("close").to_numpy()
    r = np.r_[np.nan, np.diff(np.log(close))]
    first = int(np.argmax(data.periods["train"]))
    test_rows = np.flatnonzero(data.periods["test"])
    test_lo, test_hi = int(test_rows[0]), int(test_rows[-1]) + 1
    hold = cfg.model.hold_horizon
    vb = vol_baselines(r[first + 1:test_hi], hold, test_lo - first - 1, window=cfg.vol_window,
                       refit_every=cfg.garch_refit_every)  # (test_hi - first - 1,) each, starting at bar first + 1
    at = rows - first - 1
    ret_cols: dict[str, np.ndarray] = {}
    for j, h in enumerate(cfg.model.horizons):
        ret_cols[f"target_ret_{h}"] = targets["ret"][rows, j]
        ret_cols[f"pred_ret_{h}"] = pred["ret"][:, j]
        for name, f in return_baselines(r[1:test_hi], h).items():
            ret_cols[f"return_baseline_{h}_{name}"] = np.expm1(f[rows - 1])
    pop_label, roi_label = _labels(pred, rows, targets, cfg)
    train_rows, train_pred = _predict(model, data.batches["train"])
    train_pop, _ = _labels(train_pred, train_rows, targets, cfg)
    regime_p = torch.softmax(torch.from_numpy(pred["regime_logits"]), -1).numpy()
    return pl.DataFrame({
        "ts": frame.get_column("ts").gather(rows), "close": close[rows], **ret_cols,
        "target_vol": targets["vol"][rows].astype(np.float64), "pred_vol": pred["vol"],
        **{f"baseline_{k}": v[at] for k, v in vb.items()},
        "pred_pop": calibration.apply(pred["pop_logit"]), "pred_pop_uncalibrated": pred["pop_prob"],
        "pop_base_rate": np.full(len(rows), float(np.nanmean(train_pop.numpy()))), "pop_label": pop_label.numpy(),
        "pred_roi": pred["roi"], "roi_label": roi_label.numpy(), "regime_label": targets["regime"][rows],
        **{f"pred_regime_{i}": regime_p[:, i] for i in range(cfg.model.n_regimes)},
    })


def score_predictions(cfg: RunConfig, preds: pl.DataFrame) -> tuple[dict[str, pl.DataFrame], dict[str, Any]]:
    """The comparison tables of :func:`forecast_frame`'s columns (one window's, or several windows' stacked): the
    model next to every baseline on the same rows. Returns the tables (volatility, each return horizon, probability
    of profit) and the POP reliability curves."""

    def col(name: str) -> np.ndarray:
        return preds.get_column(name).to_numpy().astype(np.float64)

    tables: dict[str, pl.DataFrame] = {}
    vol = {c.removeprefix("baseline_"): col(c) for c in preds.columns if c.startswith("baseline_")}
    tables[f"volatility, {cfg.model.hold_horizon} bars"] = compare_forecasts(
        col("target_vol"), {"condorbrain": col("pred_vol"), **vol}, kind="volatility")
    for h in cfg.model.horizons:
        prefix = f"return_baseline_{h}_"
        base = {c.removeprefix(prefix): np.log1p(col(c)) for c in preds.columns if c.startswith(prefix)}
        tables[f"return, {h} bars"] = compare_forecasts(
            np.log1p(col(f"target_ret_{h}")), {"condorbrain": np.log1p(col(f"pred_ret_{h}")), **base}, kind="return")
    label = col("pop_label")
    forecasts = {"condorbrain": col("pred_pop"), "condorbrain (uncalibrated)": col("pred_pop_uncalibrated")}
    tables["probability of profit"] = compare_forecasts(
        label, {**forecasts, "training base rate": col("pop_base_rate")}, kind="probability")
    reliability = {name: {k: np.asarray(v).tolist() for k, v in dataclasses.asdict(
                       reliability_curve(p, label, n_bins=10)).items()} for name, p in forecasts.items()}
    return tables, reliability


def evaluate_model(cfg: RunConfig, model: CondorBrain, data: JobData, out_dir: str | os.PathLike[str],
                   train_summary: Mapping[str, Any], *, t_start: float | None = None, quiet: bool = False
                   ) -> dict[str, Any]:
    """Step 5: score ``model`` on the test period next to the baselines (:func:`forecast_frame`,
    :func:`score_predictions`); print the tables with their verdicts (unless ``quiet``) and write
    ``predictions.parquet`` and ``evaluation.json`` into ``out_dir``. Returns the summary."""
    t_start = time.perf_counter() if t_start is None else t_start
    out = Path(out_dir)
    print("[4/5] evaluation on the held-out period, next to the baselines")
    preds = forecast_frame(cfg, model, data, PopCalibration(**train_summary.get("pop_calibration", {})))
    tables, reliability = score_predictions(cfg, preds)
    print("[5/5] writing the run folder")
    preds.write_parquet(out / "predictions.parquet")
    ts = preds.get_column("ts")
    summary = {
        "seconds": round(time.perf_counter() - t_start, 1),
        "verdicts": {name: verdict(t) for name, t in tables.items()},
        "train": dict(train_summary),
        "test_period": {"first": str(ts[0]), "last": str(ts[-1]), "samples": preds.height},
        "tables": {name: t.to_dicts() for name, t in tables.items()},
        "pop_reliability": reliability,
    }
    (out / "evaluation.json").write_text(json.dumps(summary, indent=2, default=_json_default))
    if not quiet:
        _print_summary(summary, tables)
    return summary


def _labels(pred: Mapping[str, np.ndarray], rows: np.ndarray, targets: Mapping[str, np.ndarray], cfg: RunConfig
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """POP / ROI labels of predicted proposals ``pred`` at window ends ``rows``."""
    out = PolicyOutput(*(torch.from_numpy(pred[f]) for f in PolicyOutput._fields))
    return condor_labels(out, torch.from_numpy(targets["_term"][rows]), torch.from_numpy(targets["_iv"][rows]), cfg)


@dataclass(frozen=True)
class PopCalibration:
    """Platt scaling of the POP head: p = sigmoid(a * logit + b), fitted on the validation period only.

    The POP head is trained with binary cross-entropy, but the labels depend on the model's own strikes, which move
    while it trains, and early stopping picks weights by the total loss: its raw probabilities need not be
    calibrated. Two parameters fitted on the validation period (after training, before the test period) fix the
    level and the spread without touching the ranking.
    """

    a: float = 1.0
    b: float = 0.0
    n: int = 0
    """Validation samples with a label the fit used (0: identity, not fitted)."""

    def apply(self, logit: torch.Tensor | np.ndarray) -> np.ndarray:
        x = torch.as_tensor(np.asarray(logit, dtype=np.float64))
        return torch.sigmoid(self.a * x + self.b).numpy()

    @classmethod
    def fit(cls, logit: np.ndarray, label: np.ndarray, min_samples: int = 50, ridge: float = 1.0) -> PopCalibration:
        """Penalised maximum likelihood: Newton's method with step halving on the logistic log-likelihood of the
        standardised logit, with an L2 penalty ``ridge`` on the slope (a weak prior that keeps the fit finite when
        the logits barely vary or separate the classes). The identity when fewer than ``min_samples`` labels or a
        single class."""
        keep = np.isfinite(label) & np.isfinite(logit)
        x, y = logit[keep].astype(np.float64), label[keep].astype(np.float64)
        if len(y) < min_samples or y.min() == y.max():
            return cls()
        mu, sd = float(x.mean()), float(x.std())
        X = np.stack([(x - mu) / sd if sd > 1e-8 else np.zeros_like(x), np.ones_like(x)], axis=1)  # (n, 2)
        penalty = np.diag([ridge, 0.0])

        def objective(w: np.ndarray) -> float:
            z = X @ w
            return float(np.sum(np.logaddexp(0.0, z) - y * z) + 0.5 * w @ penalty @ w)

        w = np.array([0.0, float(np.log(y.mean() / (1.0 - y.mean())))])
        f = objective(w)
        for _ in range(100):
            p = 1.0 / (1.0 + np.exp(-np.clip(X @ w, -30, 30)))
            grad = X.T @ (p - y) + penalty @ w
            hess = (X * (p * (1 - p))[:, None]).T @ X + penalty + 1e-9 * np.eye(2)
            step = np.linalg.solve(hess, grad)
            t = 1.0
            while objective(w - t * step) > f and t > 1e-6:  # step halving: the objective never increases
                t /= 2
            w, f_new = w - t * step, objective(w - t * step)
            if abs(f - f_new) < 1e-12 * max(1.0, abs(f)):
                break
            f = f_new
        slope = w[0] / sd if sd > 1e-8 else 0.0
        return cls(a=float(slope), b=float(w[1] - slope * mu), n=len(y))


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, (dt.datetime, dt.date, np.datetime64)):
        return str(o)
    return str(o)


def _print_summary(summary: Mapping[str, Any], tables: Mapping[str, pl.DataFrame]) -> None:
    train = summary["train"]
    if "windows" in train:  # walk-forward: one model per window
        train = {"steps": "+".join(str(w["steps"]) for w in train["windows"]),
                 "stopped": f"{len(train['windows'])} windows, one model each"}
    print(f"\nHeld-out test period {summary['test_period']['first'][:10]} .. {summary['test_period']['last'][:10]}, "
          f"{summary['test_period']['samples']} samples; training: {train['steps']} steps "
          f"({train['stopped']}); {summary['seconds']} s in all")
    with pl.Config(tbl_rows=50, tbl_cols=20, float_precision=5, tbl_hide_dataframe_shape=True,
                   tbl_hide_column_data_types=True):
        for name, table in tables.items():
            print(f"\n{name}")
            print(table)
            print(verdict(table))


PRIMARY_METRIC = {"qlike": "volatility", "mse": "return", "brier": "probability"}
"""The metric each table is judged on (lower is better): QLIKE for variance, MSE for returns, Brier for POP."""


def verdict(table: pl.DataFrame, model: str = "condorbrain") -> str:
    """One line: how the model ranks on the table's primary metric, naming every baseline it loses to."""
    metric = next(m for m in PRIMARY_METRIC if m in table.columns)
    scores = dict(zip(table.get_column("forecast").to_list(), table.get_column(metric).to_list(), strict=True))
    return rank_verdict(scores, model, metric, higher_is_better=False)
