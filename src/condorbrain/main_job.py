"""The main job (`condorbrain run`): real S&P 500 + VIX -> features -> CondorBrain -> held-out evaluation vs baselines.

Steps, each using data up to its own time only:

1. Data. The S&P 500 daily bars and VIX that ``arch`` ships (real), and Black-Scholes option chains priced over them
   (synthetic: :func:`condorbrain.data.synth_chains`). Each bar gets one *representative* contract, the put nearest
   to the money among the expiries nearest ``target_dte`` calendar days, chosen from that bar's own quotes; the
   as-of join attaches its quote, and :func:`condorbrain.features.condor_features` computes the 24 inputs. This gives
   one row per bar, a daily series a 120-bar window can run over (single contracts live for 45 bars at most).
2. Targets (:mod:`condorbrain.features.targets`): forward returns at the model's horizons, forward realized vol, up /
   down excursions and max drawdown over the holding horizon; the regime label is the tercile of the trailing 21-bar
   realized vol, with tercile edges from the training period. Probability of profit and ROI are labelled inside the
   loss from the model's own (detached) proposal (:func:`condor_strikes`, the one strike rule, which the predictor
   uses too): short strikes at its ``pop_level`` excursion quantiles, wings of its ``wing`` output, priced by
   Black-Scholes at the entry iv and settled at the horizon's close.
3. Split by time: train, then validation, then the held-out test period from ``test_start``; ``hold_horizon`` bars
   are purged before each boundary so that no training label overlaps a later period. The z-score scaler is fitted
   on training rows only.
4. Train ``CondorBrain`` with :func:`condorbrain.train.fit` (EMA weights for evaluation).
5. Evaluate on the test period next to the baselines on the same rows: random walk and momentum for returns;
   trailing realized vol, HAR-RV and GARCH(1,1) (refitted on past data only) for volatility; Brier score for POP.
   A model that loses to a baseline is reported as losing.
6. Backtest the policy's condors on the test period next to the rule-based condor and buy-and-hold, with the same
   config and capital (:mod:`condorbrain.backtest_job`); judged on Sharpe, losing reported as losing.

In code: :func:`prepare_data` (steps 1-3), :func:`train_model` (4), :func:`evaluate_model` (5),
:func:`condorbrain.backtest_job.backtest_model` (6). ``condorbrain run`` (:func:`run_main_job`) runs them all;
``condorbrain train`` (:func:`train_job`) the first two; ``condorbrain evaluate`` (:func:`evaluate_run`) reloads a
run folder (:func:`load_run`: config, final checkpoint, saved scaler) and runs the first and the fifth with the saved
scaler; ``condorbrain backtest`` (:func:`condorbrain.backtest_job.backtest_run`) the first and the sixth.

Modules: :mod:`condorbrain.job_data` (steps 1-3), :mod:`condorbrain.condor_labels` (the strike rule, the POP / ROI /
wing labels and the loss), this one (step 4, run folders), :mod:`condorbrain.evaluation` (step 5),
:mod:`condorbrain.backtest_job` (6), :mod:`condorbrain.walk_forward` (the same per window); their public names are
importable from here too.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from condorbrain.condor_labels import MIN_WING, CondorStrikes, condor_labels, condor_strikes, make_loss, wing_label
from condorbrain.data import ClippedZScore
from condorbrain.evaluation import (
    PopCalibration,
    _json_default,
    _labels,
    evaluate_model,
    forecast_frame,
    score_predictions,
    verdict,
)
from condorbrain.features import CONDOR_FEATURES
from condorbrain.job_data import (
    JobData,
    WindowBatches,
    _predict,
    daily_policy_frame,
    make_targets,
    prepare_data,
    trailing_vol,
)
from condorbrain.models import CondorBrain, LossWeights
from condorbrain.run_config import RunConfig
from condorbrain.train import Checkpoint, CheckpointError, RunInfo, fit, latest_checkpoint, load_checkpoint

__all__ = ["MIN_WING", "CondorStrikes", "JobData", "LoadedRun", "PopCalibration", "RunConfig", "WindowBatches",
           "condor_labels", "condor_strikes", "daily_policy_frame", "evaluate_model", "evaluate_run",
           "finished_training", "forecast_frame", "load_run", "make_loss", "make_targets", "prepare_data",
           "run_main_job", "score_predictions", "train_job", "train_model", "trailing_vol", "verdict", "wing_label"]

DEFAULT_PRESET = Path(__file__).resolve().parents[2] / "configs" / "cpu-small.toml"


def write_config(cfg: RunConfig, out_dir: str | os.PathLike[str]) -> Path:
    """Create the run folder and write its ``config.json`` (the effective config); returns the folder."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2, default=str))
    return out


def train_model(cfg: RunConfig, data: JobData, out_dir: str | os.PathLike[str], *, resume: bool = False
                ) -> tuple[CondorBrain, dict[str, Any]]:
    """Step 4: train CondorBrain into ``out_dir`` (checkpoints/, metrics.jsonl, train.json).

    Returns the model with its final EMA weights (eval mode) and the training summary (also ``train.json``).
    """
    torch.manual_seed(cfg.train.seed)
    out = Path(out_dir)
    print(f"[3/5] training CondorBrain ({cfg.model.mixer}, d_model {cfg.model.d_model}, {cfg.model.n_layer} layers)")
    model = CondorBrain(cfg.model)
    weights = LossWeights()
    ts = data.ts
    info = RunInfo(features=tuple(CONDOR_FEATURES), normalization=data.scaler.to_dict(),
                   data_range={"first": str(ts[0]), "last": str(ts[-1]), "val_start": cfg.val_start,
                               "test_start": cfg.test_start},
                   model_config=cfg.model.to_dict())
    result = fit(model, make_loss(cfg, weights), data.batches["train"], data.batches["val"](0), cfg.train, out,
                 resume=resume, run_info=info)
    model.load_state_dict(load_checkpoint(result.checkpoint).weights(prefer_ema=True))
    model.eval()
    val_rows, val_pred = _predict(model, data.batches["val"])
    val_pop, _ = _labels(val_pred, val_rows, data.targets, cfg)
    calibration = PopCalibration.fit(val_pred["pop_logit"], val_pop.numpy())
    summary = {"steps": result.steps, "stopped": result.stopped, "best_val_loss": result.best_val_loss,
               "best_step": result.best_step, "checkpoint": str(result.checkpoint),
               "pop_calibration": dataclasses.asdict(calibration)}
    (out / "train.json").write_text(json.dumps(summary, indent=2, default=_json_default))
    return model, summary


def train_job(cfg: RunConfig, out_dir: str | os.PathLike[str], *, resume: bool = False
              ) -> tuple[CondorBrain, dict[str, Any]]:
    """``condorbrain train``: steps 1-4 (data, train) into a run folder; no evaluation. See :func:`train_model`.
    One model on the one split of ``cfg`` (``val_start``, ``test_start``): a ``walk_forward`` table is dropped."""
    cfg = dataclasses.replace(cfg, walk_forward=None)
    out = write_config(cfg, out_dir)
    return train_model(cfg, prepare_data(cfg), out, resume=resume)


def run_main_job(cfg: RunConfig, out_dir: str | os.PathLike[str], *, resume: bool = False,
                 max_bars: int | None = None) -> dict[str, Any]:
    """Run the whole job into ``out_dir``. With ``cfg.walk_forward`` set, the walk-forward
    (:func:`condorbrain.walk_forward.run_walk_forward`: a model per window, the tables per window and overall, the
    backtest over every window, the report); otherwise one split: train, evaluate on the test period, backtest it
    against the strategy baselines (:func:`condorbrain.backtest_job.backtest_model`), write the report. Returns the
    evaluation summary (``evaluation.json``) with the backtest's (``backtest.json``) under ``"backtest"``.

    ``max_bars`` overrides ``cfg.max_bars`` (keep only the last bars: quick runs and tests). Files: ``config.json``
    (the effective config), ``checkpoints/``, ``metrics.jsonl`` and ``train.json`` (training),
    ``predictions.parquet`` (test rows: targets, model, baselines), ``evaluation.json``, the backtest's
    ``backtest.json``, ``trades_<strategy>.parquet``, ``backtest_equity.parquet``, ``decisions.parquet``, and
    ``report.html`` / ``report.json``.
    """
    t_start = time.perf_counter()
    if max_bars is not None:
        cfg = dataclasses.replace(cfg, max_bars=max_bars)
    # These import this module: imported here, not at the top.
    from condorbrain.backtest_job import backtest_model
    from condorbrain.report import write_report
    from condorbrain.walk_forward import run_walk_forward

    if cfg.walk_forward is not None:
        return run_walk_forward(cfg, out_dir, resume=resume)
    out = write_config(cfg, out_dir)
    data = prepare_data(cfg)
    model, train_summary = train_model(cfg, data, out, resume=resume)
    summary = evaluate_model(cfg, model, data, out, train_summary, t_start=t_start)
    calibration = PopCalibration(**train_summary.get("pop_calibration", {}))
    summary = {**summary, "backtest": backtest_model(cfg, model, data, out, calibration=calibration)}
    paths = write_report(out)
    print(f"report: {paths.html}")
    return summary


@dataclass(frozen=True, eq=False)
class LoadedRun:
    """A trained run folder, loaded by :func:`load_run`."""

    run_dir: Path
    config: RunConfig
    """The run's effective config (its ``config.json``)."""
    model: CondorBrain
    """The network with the final checkpoint's EMA weights (live weights if the run had no EMA), in eval mode."""
    scaler: ClippedZScore
    """The scaler saved in the checkpoint (fitted on the run's training rows)."""
    checkpoint: Checkpoint
    """The final checkpoint (verified against its manifest)."""
    pop_calibration: PopCalibration
    """POP calibration from ``train.json`` (the identity if training did not finish)."""


def load_run(run_dir: str | os.PathLike[str], *, device: str | torch.device = "cpu") -> LoadedRun:
    """Load a run folder: ``config.json``, the newest complete checkpoint (safetensors + JSON, never unpickled), its
    EMA weights and its saved scaler. For a walk-forward run folder, its last window's (``windows/wNN``, trained on
    the most data): the model to use from here on.

    Raises:
        FileNotFoundError: no folder, no ``config.json``, or no complete checkpoint.
        CheckpointError: a checkpoint file is truncated or altered, or the checkpoint disagrees with ``config.json``
            (model config, feature list) or holds no usable scaler; the message names the file.
    """
    run_dir = Path(run_dir)
    config_path = run_dir / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path} does not exist: {run_dir} is not a run folder (condorbrain train / "
                                "run write one)")
    cfg = RunConfig.from_file(config_path)
    if cfg.walk_forward is not None:  # a walk-forward run: its newest window's model (trained on the most data)
        from condorbrain.walk_forward import window_dirs

        return load_run(window_dirs(run_dir)[-1], device=device)
    path = latest_checkpoint(run_dir)
    if path is None:
        raise FileNotFoundError(f"{run_dir / 'checkpoints'} holds no complete checkpoint: training has not saved one")
    ckpt = load_checkpoint(path)
    meta_file = path / "meta.json"
    run = ckpt.meta.get("run") or {}
    if tuple(run.get("features") or ()) != tuple(CONDOR_FEATURES):
        raise CheckpointError(f"{meta_file}: features {run.get('features')} are not CONDOR_FEATURES")
    saved_model = run.get("model_config")
    if saved_model != cfg.model.to_dict():
        diff = sorted(k for k in set(saved_model or {}) | set(cfg.model.to_dict())
                      if (saved_model or {}).get(k) != cfg.model.to_dict().get(k))
        raise CheckpointError(f"{meta_file}: the model config differs from {config_path} in {diff}; the run folder "
                              "was altered")
    try:
        scaler = ClippedZScore.from_dict(run.get("normalization"))
    except ValueError as e:
        raise CheckpointError(f"{meta_file}: no usable normalization statistics ({e})") from None
    if scaler.feature_names != tuple(CONDOR_FEATURES):
        raise CheckpointError(f"{meta_file}: the scaler scales {scaler.feature_names}, not CONDOR_FEATURES")
    model = CondorBrain(cfg.model)
    try:
        model.load_state_dict(ckpt.weights(prefer_ema=True))
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not fit the model of {config_path}: {e}") from None
    train_file = run_dir / "train.json"
    calibration = PopCalibration()
    if train_file.is_file():
        calibration = PopCalibration(**json.loads(train_file.read_text()).get("pop_calibration", {}))
    return LoadedRun(run_dir=run_dir, config=cfg, model=model.to(device).eval(), scaler=scaler, checkpoint=ckpt,
                     pop_calibration=calibration)


def evaluate_run(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """``condorbrain evaluate``: re-run the held-out evaluation of a trained run folder with its saved weights and
    scaler; rewrites ``predictions.parquet`` and ``evaluation.json`` there and returns the summary.

    Raises FileNotFoundError when the folder has no ``train.json`` (training did not finish: resume it first).
    """
    from condorbrain.walk_forward import evaluate_walk_forward, is_walk_forward_run

    if is_walk_forward_run(run_dir):
        return evaluate_walk_forward(run_dir)
    t_start = time.perf_counter()
    run = load_run(run_dir)
    train_summary = finished_training(run)
    data = prepare_data(run.config, scaler=run.scaler)
    return evaluate_model(run.config, run.model, data, run.run_dir, train_summary, t_start=t_start)


def finished_training(run: LoadedRun) -> dict[str, Any]:
    """The run's training summary (``train.json``); FileNotFoundError, saying how to resume, when training did not
    finish (the folder's checkpoint is then an intermediate one, not the run's model)."""
    train_file = run.run_dir / "train.json"
    if not train_file.is_file():
        raise FileNotFoundError(f"{train_file} does not exist: training of {run.run_dir} did not finish; continue "
                                f"it with `condorbrain train --resume --out {run.run_dir}`")
    return json.loads(train_file.read_text())
