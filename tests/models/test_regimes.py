"""On synthetic data with known regimes, CondorBrain's training loss falls and its regime head beats chance (issue 4,
section 5).

Data: :func:`condorbrain.data.synth_market`, 20 sessions of 1-minute bars (7,800 bars) whose volatility, jumps and
volume switch between the regimes low / normal / high; the spells are shortened to a fraction of a session
(``regime_mean_sessions`` below) so that a few sessions hold dozens of them (57 switches here). Per bar, four simple
features: the one-bar log return, the log of the log high / low range, the log volume, and the time of day (the
market's intraday volatility and volume are U-shaped); z-scored by :class:`condorbrain.data.ClippedZScore` fitted on
the training bars only.

Windows of ``LOOKBACK`` bars, one every ``STRIDE`` bars. Labels: the market's true regime at the window's last bar,
and the forward realized volatility over the next ``HOLD`` bars (the vol head, so the loss is multi-task as in the
real model). Time split: windows whose labels end before the first 60% of the bars train; windows that start after
them (the last 40%) are held out. No window, label or scaling statistic crosses the boundary.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from condorbrain.data import ClippedZScore, MarketConfig, synth_market
from condorbrain.features import forward_realized_vol
from condorbrain.models import CondorBrain, CondorBrainConfig, LossWeights, condor_loss
from condorbrain.train import TensorBatches, TrainConfig, evaluate, fit

MARKET = MarketConfig(n_sessions=20, seed=7, n_expiries=1, strikes_each_side=0,  # few quotes: bars are what we use
                      regime_mean_sessions=(0.5, 0.5, 0.3))  # mean spells of 195 / 195 / 117 minutes
LOOKBACK = 32  # bars per window
STRIDE = 2  # bars between window ends
HOLD = 10  # bars of the forward realized-vol target
TRAIN_FRACTION = 0.6
WEIGHTS = LossWeights(ret=0, vol=1, up=0, down=0, wing=0, pop=0, roi=0, max_dd=0, regime=1)

# Measured with the set-up below (market seed 7, mamba2, 200 steps; 2-core machine, torch 2.13 CPU; ~5 s), by
# printing the values the tests assert on: training-set loss 1.371 -> 0.187 (x0.14; vol head 0.166 -> 0.072, x0.43;
# regime head 1.205 -> 0.114); held-out regime accuracy 0.863 on 1,545 windows against a majority-class rate of
# 0.417 (margin +0.45). With market seeds 1 / 2 / 3 instead: loss x0.12 / x0.18 / x0.18, accuracy 0.81 / 0.84 / 0.86
# against majority rates 0.60 / 0.44 / 0.56 (margins +0.21 to +0.40). The thresholds leave room for numerical
# differences between machines while still failing a model that learns nothing about the regimes.
MAX_LOSS_RATIO = 0.7
MIN_ACCURACY_MARGIN = 0.2


def _bar_features(bars) -> tuple[np.ndarray, np.ndarray]:
    """Per-bar features (N, 4) float64 and one-bar log returns (N,) of a synthetic bar frame (time order)."""
    close = bars["close"].to_numpy()
    log_ret = np.diff(np.log(close), prepend=np.log(bars["open"][0]))  # the first bar: open to close
    log_range = np.log(np.log(bars["high"].to_numpy() / bars["low"].to_numpy()))
    log_volume = np.log(bars["volume"].to_numpy().astype(np.float64))
    minute = np.arange(len(bars)) % 390  # 390 bars a session, every session complete
    time_of_day = minute / 389 * 2.0 - 1.0  # -1 at the open, +1 at the close
    return np.stack([log_ret, log_range, log_volume, time_of_day], axis=1), log_ret


def _windows(x: np.ndarray, ends: np.ndarray, regime: np.ndarray, fvol: np.ndarray):
    """Windows x[end - LOOKBACK + 1 .. end] (B, LOOKBACK, F) and their targets at each end."""
    rows = ends[:, None] + np.arange(-LOOKBACK + 1, 1)[None, :]  # (B, LOOKBACK)
    return torch.from_numpy(x[rows]), {"regime": torch.from_numpy(regime[ends]),
                                       "vol": torch.from_numpy(fvol[ends]).float()}


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    bars, _ = synth_market(MARKET)
    features, log_ret = _bar_features(bars)
    regime = bars["regime"].to_numpy().astype(np.int64)
    fvol = forward_realized_vol(bars["close"].to_numpy(), HOLD)  # NaN for the last HOLD bars (masked in the loss)
    cut = int(TRAIN_FRACTION * len(bars))  # first held-out bar
    x = ClippedZScore.fit(features, range(cut)).transform(features).astype(np.float32)  # (N, 4)

    ends = np.arange(LOOKBACK - 1, len(bars), STRIDE)
    train_ends = ends[ends + HOLD < cut]  # the vol label ends before the held-out bars
    test_ends = ends[ends - LOOKBACK + 1 >= cut]  # the window starts in the held-out bars
    x_train, y_train = _windows(x, train_ends, regime, fvol)
    x_test, y_test = _windows(x, test_ends, regime, fvol)

    config = CondorBrainConfig(
        n_features=4, lookback=LOOKBACK, d_model=24, n_layer=2, mixer="mamba2", d_state=8, headdim=8, chunk_size=16,
        horizons=(1,), hold_horizon=HOLD, quantiles=(0.5,), d_expert=24, dropout=0.0,
        step_vol=float(log_ret[:cut].std()),  # one-bar return scale from the training bars
    )
    torch.manual_seed(0)
    model = CondorBrain(config)

    def loss_fn(out, targets):
        return condor_loss(out, targets, WEIGHTS, config)

    cfg = TrainConfig(lr=3e-3, warmup_steps=20, max_steps=200, batch_size=64, ema_decay=0.0, seed=0,
                      progress=False, device="cpu", log_every=50)
    train_set = TensorBatches(x_train, y_train, 512, shuffle=False)(0)  # the whole training set, for the loss
    cpu = torch.device("cpu")
    before = evaluate(model, loss_fn, train_set, cpu, bf16=False)
    fit(model, loss_fn, TensorBatches(x_train, y_train, cfg.batch_size, seed=0), None, cfg,
        Path(tmp_path_factory.mktemp("regimes")))
    after = evaluate(model, loss_fn, train_set, cpu, bf16=False)

    model.eval()
    with torch.no_grad():
        predicted = model(x_test).regime_logits.argmax(-1)  # (B_test,)
    labels = y_test["regime"]
    return {
        "before": before, "after": after,
        "accuracy": float((predicted == labels).double().mean()),
        "majority": float(torch.bincount(labels, minlength=3).max()) / len(labels),
        "n_test": len(labels),
    }


def test_training_loss_falls(trained):
    before, after = trained["before"], trained["after"]
    assert after["val_loss"] < MAX_LOSS_RATIO * before["val_loss"], (before, after)
    for head in ("val/vol", "val/regime"):  # both heads learn, not just the easy one
        assert after[head] < MAX_LOSS_RATIO * before[head], (head, before[head], after[head])


def test_regime_head_beats_majority_class_on_later_windows(trained):
    assert trained["n_test"] > 1000  # enough held-out windows for the margin to mean something
    assert trained["accuracy"] > trained["majority"] + MIN_ACCURACY_MARGIN, trained
