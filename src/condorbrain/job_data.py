"""The main job's data (steps 1-3 of :mod:`condorbrain.main_job`): one representative contract per bar and its 24
features, the targets, the periods with purge and embargo, the scaled windows. :func:`prepare_data` is the one data
path of training, evaluation, backtests and the walk-forward."""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import polars as pl
import torch

from condorbrain.data import ClippedZScore, LazySequenceDataset, asof_join, load_sp500, load_vix, synth_chains
from condorbrain.features import CONDOR_FEATURES, FeatureConfig, condor_features
from condorbrain.features.targets import (
    forward_max_adverse_excursion,
    forward_max_drawdown,
    forward_realized_vol,
    forward_return,
)
from condorbrain.models import CondorBrain, PolicyOutput
from condorbrain.run_config import RunConfig

__all__ = ["JobData", "WindowBatches", "daily_policy_frame", "make_targets", "prepare_data", "trailing_vol"]


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


