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
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import polars as pl
import torch

from condorbrain.backtest import compare_forecasts, rank_verdict, reliability_curve, return_baselines, vol_baselines
from condorbrain.data import ClippedZScore, LazySequenceDataset, asof_join, load_sp500, load_vix, synth_chains
from condorbrain.features import CONDOR_FEATURES, FeatureConfig, black_scholes_torch, condor_features
from condorbrain.features.targets import (
    forward_max_adverse_excursion,
    forward_max_drawdown,
    forward_realized_vol,
    forward_return,
)
from condorbrain.models import (
    CondorBrain,
    LossWeights,
    PolicyOutput,
    condor_loss,
)
from condorbrain.run_config import RunConfig
from condorbrain.train import Checkpoint, CheckpointError, RunInfo, fit, latest_checkpoint, load_checkpoint

__all__ = ["CondorStrikes", "JobData", "LoadedRun", "RunConfig", "condor_labels", "condor_strikes",
           "daily_policy_frame", "evaluate_model", "evaluate_run", "finished_training", "forecast_frame", "load_run",
           "make_targets", "prepare_data", "run_main_job", "score_predictions", "train_job", "train_model"]

DEFAULT_PRESET = Path(__file__).resolve().parents[2] / "configs" / "cpu-small.toml"


# ---------------------------------------------------------------------------------------------------------------
# 1. Data: one representative contract per bar
# ---------------------------------------------------------------------------------------------------------------

def daily_policy_frame(bars: pl.DataFrame, vix: pl.DataFrame | None, cfg: RunConfig) -> pl.DataFrame:
    """One row per bar: the bar, its representative contract's quote (as-of joined) and the 24 features.

    The contract is chosen from the bar's own quotes only: among the expiries whose days to expiry are nearest
    ``target_dte``, the put whose strike is nearest the bar's close.
    """
    quotes = synth_chains(bars, vix=vix)
    spot = bars.select("ts", pl.col("close").alias("_spot"))
    dte = (pl.col("expiry") - pl.col("ts")).dt.total_seconds() / 86_400.0
    chosen = (
        quotes.filter(pl.col("right") == "P")
        .join(spot, on="ts", how="left")
        .with_columns((dte - cfg.target_dte).abs().alias("_dte_gap"), (pl.col("strike") - pl.col("_spot")).abs()
                      .alias("_k_gap"))
        .sort("ts", "_dte_gap", "_k_gap", "expiry", "strike")
        .group_by("ts", maintain_order=True).first()
        .drop("_spot", "_dte_gap", "_k_gap")
    )
    joined = asof_join(bars, chosen, dt.timedelta(days=cfg.max_staleness_days))
    # A contract stays listed after its bar; keep each bar's own pick (the quote stamped at the bar).
    joined = joined.filter(pl.col("quote_ts") == pl.col("ts"))
    if joined.height != bars.height:
        raise ValueError(f"{bars.height - joined.height} bars have no representative quote; the chains should "
                         "quote every bar")
    fcfg = FeatureConfig(rate=cfg.rate, dividend_yield=cfg.dividend_yield, ivr_window=252)
    feats = condor_features(joined, fcfg)
    return joined.select("ts").hstack(feats.select(list(CONDOR_FEATURES)))  # close, iv: the bar's and quote's own


# ---------------------------------------------------------------------------------------------------------------
# 2. Targets
# ---------------------------------------------------------------------------------------------------------------

def trailing_vol(close: np.ndarray, window: int) -> np.ndarray:
    """Realized vol of the last ``window`` one-bar log returns up to and including t (NaN before)."""
    r2 = np.r_[np.nan, np.diff(np.log(close))] ** 2
    out = np.full(close.shape, np.nan)
    c = np.nancumsum(r2)
    out[window:] = np.sqrt(c[window:] - c[:-window])
    return out


def make_targets(frame: pl.DataFrame, cfg: RunConfig, train_rows: np.ndarray) -> dict[str, np.ndarray]:
    """Arrays of targets per bar (NaN where the horizon runs past the data). ``train_rows``: the bool mask of
    training rows, from which (only) the regime tercile edges are taken."""
    close = frame.get_column("close").to_numpy()
    hold = cfg.model.hold_horizon
    ret = np.stack([forward_return(close, h) for h in cfg.model.horizons], axis=1)  # (N, H)
    tv = trailing_vol(close, cfg.vol_window)
    edges = np.nanquantile(tv[train_rows], [1 / 3, 2 / 3])
    regime = np.where(np.isnan(tv), -1, np.digitize(tv, edges)).astype(np.int64)
    return {
        "ret": ret.astype(np.float32),
        "vol": forward_realized_vol(close, hold).astype(np.float32),
        "up": forward_max_adverse_excursion(close, hold, side=-1).astype(np.float32),
        "down": forward_max_adverse_excursion(close, hold, side=1).astype(np.float32),
        "max_dd": forward_max_drawdown(close, hold).astype(np.float32),
        "regime": regime,
        "_term": forward_return(close, hold).astype(np.float32),  # for the POP / ROI labels
        "_iv": frame.get_column("iv").to_numpy().astype(np.float32),
    }


class CondorStrikes(NamedTuple):
    """The iron condor a policy proposes, as fractions of the spot at the decision time (shapes as the policy's)."""

    k_lower: torch.Tensor
    """Short put strike / spot; the long put is ``wing`` below it."""
    k_upper: torch.Tensor
    """Short call strike / spot; the long call is ``wing`` above it."""
    wing: torch.Tensor
    """Distance between each short strike and its long strike / spot."""


def condor_strikes(out: PolicyOutput, cfg: RunConfig) -> CondorStrikes:
    """The strike rule, the one place it lives (training labels and the predictor both call it).

    K_lower / S = 1 - down_q(pop_level), floored at 1e-3; K_upper / S = 1 + up_q(pop_level): the short strikes sit at
    the ``pop_level`` quantiles of the predicted down / up excursions over the holding horizon. Wing = ``wing``,
    floored at 1e-4 (fractions of spot). Gradients flow through (detach for labels).
    """
    j = cfg.model.quantiles.index(cfg.pop_level)
    return CondorStrikes(k_lower=(1.0 - out.down_q[..., j]).clamp_min(1e-3), k_upper=1.0 + out.up_q[..., j],
                         wing=out.wing.clamp_min(1e-4))


def condor_labels(out: PolicyOutput, term: torch.Tensor, iv: torch.Tensor, cfg: RunConfig
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """POP and ROI labels of the condor the model proposes (strikes and wings detached), per sample.

    Strikes from :func:`condor_strikes`: short put at 1 - down_q, short call at 1 + up_q (the ``pop_level``
    quantiles, as fractions of spot), long legs ``wing`` further out; credit from Black-Scholes at the entry iv with
    ``target_dte`` days to expiry, settled at the holding horizon's close (intrinsic value). POP = 1 if the close
    ends between the short strikes; ROI = P&L / max loss (width - credit). NaN where the horizon runs past the data.
    """
    k_put, k_call, wing = (t.detach() for t in condor_strikes(out, cfg))
    s = torch.ones_like(k_put)
    T = torch.full_like(k_put, cfg.target_dte / 365.0)
    r, q = cfg.rate, cfg.dividend_yield

    def price(k: torch.Tensor, is_call: bool) -> torch.Tensor:
        return black_scholes_torch(s, k, T, r, iv, is_call, q).price

    credit = (price(k_put, False) - price((k_put - wing).clamp_min(1e-4), False)
              + price(k_call, True) - price(k_call + wing, True))
    s_T = 1.0 + term
    loss = ((k_put - s_T).clamp_min(0) - (k_put - wing - s_T).clamp_min(0)
            + (s_T - k_call).clamp_min(0) - (s_T - k_call - wing).clamp_min(0))
    max_loss = (wing - credit).clamp_min(1e-6)
    roi = (credit - loss) / max_loss
    pop = ((s_T > k_put) & (s_T < k_call)).float()
    missing = ~torch.isfinite(term)
    return pop.masked_fill(missing, math.nan), roi.masked_fill(missing, math.nan)


MIN_WING = 0.005
"""Narrowest wing label, a fraction of spot (0.5%: about two strike steps of a $5-grid SPX chain near 2,000)."""


def wing_label(out: PolicyOutput, up: torch.Tensor, down: torch.Tensor, cfg: RunConfig) -> torch.Tensor:
    """The protection the proposed condor needed: how far the price went beyond a short strike during the holding
    horizon, floored at :data:`MIN_WING` (fractions of spot; strikes detached).

    With ``up`` / ``down`` the realized max up / down excursions over the horizon (``targets["up"]``, ``["down"]``),
    label = max(MIN_WING, up - (K_upper - 1), down - (1 - K_lower)). The wing head thus learns the expected breach
    size: wide wings where the tails run far past the short strikes, the narrowest where they do not. NaN where the
    horizon runs past the data.
    """
    k_put, k_call, _ = (t.detach() for t in condor_strikes(out, cfg))
    breach = torch.maximum(up - (k_call - 1.0), down - (1.0 - k_put))
    return breach.clamp_min(MIN_WING)  # NaN stays NaN (clamp keeps NaN)


def make_loss(cfg: RunConfig, weights: LossWeights):
    """``loss_fn(out, targets)`` for :func:`fit`: labels POP / ROI / wing from the proposal, then
    :func:`condor_loss`."""

    def loss_fn(out: PolicyOutput, targets: Mapping[str, torch.Tensor]):
        t = dict(targets)
        term, iv = t.pop("_term"), t.pop("_iv")
        t["pop"], t["roi"] = condor_labels(out, term, iv, cfg)
        t["wing"] = wing_label(out, t["up"], t["down"], cfg)
        return condor_loss(out, t, weights, cfg.model)

    return loss_fn


# ---------------------------------------------------------------------------------------------------------------
# 3. Windows and batches
# ---------------------------------------------------------------------------------------------------------------

class WindowBatches:
    """A :data:`condorbrain.train.BatchSource` of lazy windows: seeded order per epoch, targets at each window end."""

    def __init__(self, ds: LazySequenceDataset, targets: Mapping[str, np.ndarray], batch_size: int, *,
                 shuffle: bool, seed: int) -> None:
        self.ds, self.targets, self.batch_size, self.shuffle, self.seed = ds, targets, batch_size, shuffle, seed

    def __len__(self) -> int:
        return math.ceil(len(self.ds) / self.batch_size)

    def __call__(self, epoch: int) -> list[tuple[torch.Tensor, dict[str, torch.Tensor]]]:
        n = len(self.ds)
        order = np.random.default_rng([self.seed, epoch]).permutation(n) if self.shuffle else np.arange(n)
        return [self._batch(order[i:i + self.batch_size]) for i in range(0, n, self.batch_size)]

    def _batch(self, idx: np.ndarray) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        b = self.ds.batch(idx)
        ends = b.end_row.numpy()
        return b.x, {k: torch.from_numpy(np.ascontiguousarray(v[ends])) for k, v in self.targets.items()}


def _window_dataset(x: np.ndarray, valid: np.ndarray, period: np.ndarray, L: int) -> LazySequenceDataset:
    return LazySequenceDataset(x, L, row_mask=valid, end_mask=period)


# ---------------------------------------------------------------------------------------------------------------
# 5. The job, in steps: prepare_data -> train_model -> evaluate_model (run_main_job runs all three; `condorbrain
#    train` the first two; `condorbrain evaluate` reloads a run folder with load_run and runs the first and last)
# ---------------------------------------------------------------------------------------------------------------

def _periods(ts: np.ndarray, cfg: RunConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Boolean masks of training / validation / test rows.

    Training: ``[train_start, val_start)``, validation ``[val_start, test_start)``, test ``[test_start, test_end)``
    (open ends: the data's). Before each boundary ``hold_horizon + embargo`` rows are dropped: the purge (no label
    window of an earlier period reaches into a later one) and the embargo (inputs serially correlated past it)."""
    day = ts.astype("datetime64[D]")

    def row(date: str | None, default: int) -> int:
        return default if date is None else int(np.searchsorted(day, np.datetime64(date)))

    train_lo, val_lo = row(cfg.train_start, 0), row(cfg.val_start, 0)
    test_lo, test_hi = row(cfg.test_start, 0), row(cfg.test_end, len(ts))
    gap = cfg.model.hold_horizon + cfg.embargo
    idx = np.arange(len(ts))
    train = (idx >= train_lo) & (idx < val_lo - gap)
    val = (idx >= val_lo) & (idx < test_lo - gap)
    test = (idx >= test_lo) & (idx < test_hi)
    for name, m in (("training", train), ("validation", val), ("test", test)):
        if m.sum() < cfg.model.lookback:
            raise ValueError(f"the {name} period has {int(m.sum())} rows, fewer than lookback={cfg.model.lookback} "
                             f"(train_start {cfg.train_start}, val_start {cfg.val_start}, test_start "
                             f"{cfg.test_start}, test_end {cfg.test_end}, purge {cfg.model.hold_horizon} + embargo "
                             f"{cfg.embargo} bars)")
    return train, val, test


@torch.no_grad()
def _predict(model: CondorBrain, batches: WindowBatches) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    model.eval()
    rows, outs = [], []
    for start in range(0, len(batches.ds), batches.batch_size):
        idx = np.arange(start, min(len(batches.ds), start + batches.batch_size))
        b = batches.ds.batch(idx)
        rows.append(b.end_row.numpy())
        outs.append(model(b.x))
    cat = {f: torch.cat([getattr(o, f) for o in outs]).numpy() for f in PolicyOutput._fields}
    cat["pop_prob"] = torch.sigmoid(torch.from_numpy(cat["pop_logit"])).numpy()
    return np.concatenate(rows), cat


@dataclass(frozen=True, eq=False)
class JobData:
    """The job's data after steps 1-3 (what training and evaluation read)."""

    bars: pl.DataFrame
    """The daily bars the frame was computed from (after ``max_bars``), in the bars schema."""
    vix: pl.DataFrame | None
    """The VIX closes given with the bars (None: the chains use their proxy iv)."""
    frame: pl.DataFrame
    """One row per bar of ``bars``, in their order: ts and the 24 raw features (:func:`daily_policy_frame`)."""
    ts: np.ndarray
    """(N,) datetime64, UTC without zone."""
    periods: dict[str, np.ndarray]
    """"train", "val", "test": (N,) bool row masks (:func:`_periods`)."""
    raw: np.ndarray
    """(N, 24) float32 unnormalised features, NaN in the indicators' warm-up rows."""
    valid: np.ndarray
    """(N,) bool, every feature finite; windows use valid rows only."""
    targets: dict[str, np.ndarray]
    """:func:`make_targets` (NaN where the horizon runs past the data)."""
    scaler: ClippedZScore
    """The z-score scaler: fitted on training rows, or the saved one handed to :func:`prepare_data`."""
    batches: dict[str, WindowBatches]
    """"train" (shuffled per epoch), "val", "test": windows of ``lookback`` bars ending in each period."""


def prepare_data(cfg: RunConfig, *, bars: pl.DataFrame | None = None, vix: pl.DataFrame | None = None,
                 scaler: ClippedZScore | None = None, frame: pl.DataFrame | None = None) -> JobData:
    """Steps 1-3: bars -> daily frame -> targets, periods, scaled windows. The one data path of train and evaluate.

    Args:
        cfg: the job's config (``max_bars`` keeps the last bars only).
        bars, vix: daily bars and VIX closes; None = the embedded S&P 500 and VIX (both loaded when ``bars`` is None).
        scaler: None fits a :class:`ClippedZScore` on the training rows only; a saved one (a run folder's) is
            applied as it is, never refitted.
        frame: :func:`daily_policy_frame` of these ``bars`` / ``vix`` under ``cfg``, when already computed (the
            walk-forward's windows share one; every feature at a bar reads that bar and earlier ones only).
    """
    source = "given"
    if bars is None:
        bars, vix, source = load_sp500(), load_vix(), "real S&P 500, from arch"
    if cfg.max_bars is not None:
        bars = bars.tail(cfg.max_bars)
    print(f"[1/5] data: {bars.height} daily bars {bars['ts'][0]:%Y-%m-%d} .. {bars['ts'][-1]:%Y-%m-%d} ({source}), "
          f"synthetic chains priced on {'VIX / ' if vix is not None else ''}proxy iv")
    if frame is None:
        frame = daily_policy_frame(bars, vix, cfg)
    elif frame.height != bars.height:
        raise ValueError(f"frame has {frame.height} rows for {bars.height} bars")
    ts = frame.get_column("ts").dt.replace_time_zone(None).to_numpy()
    train, val, test = _periods(ts, cfg)

    raw = frame.select(list(CONDOR_FEATURES)).to_numpy().astype(np.float32)
    valid = np.isfinite(raw).all(axis=1)
    targets = make_targets(frame, cfg, train)
    if scaler is None:
        print("[2/5] features, targets, scaler (fitted on training rows only)")
        scaler = ClippedZScore.fit(raw, train & valid, feature_names=list(CONDOR_FEATURES))
    else:
        print("[2/5] features, targets, the saved scaler")
        if scaler.feature_names != tuple(CONDOR_FEATURES):
            raise ValueError(f"scaler scales {scaler.feature_names}, not CONDOR_FEATURES {CONDOR_FEATURES}")
    x = np.ascontiguousarray(scaler.transform(np.where(valid[:, None], raw, 0.0).astype(np.float32)))
    L, tcfg = cfg.model.lookback, cfg.train
    batches = {name: WindowBatches(_window_dataset(x, valid, m, L), targets, tcfg.batch_size,
                                   shuffle=name == "train", seed=tcfg.seed)
               for name, m in (("train", train), ("val", val), ("test", test))}
    print(f"      windows of {L} bars: train {len(batches['train'].ds)}, validation {len(batches['val'].ds)}, "
          f"test {len(batches['test'].ds)}")
    return JobData(bars=bars, vix=vix, frame=frame, ts=ts, periods={"train": train, "val": val, "test": test},
                   raw=raw, valid=valid, targets=targets, scaler=scaler, batches=batches)


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
