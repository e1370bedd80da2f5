"""The main job: end to end on a short slice of the real data, its labels by hand, and its time discipline."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import polars as pl
import pytest
import torch

from condorbrain.cli import main
from condorbrain.data import load_sp500, load_vix
from condorbrain.main_job import (
    DEFAULT_PRESET,
    MIN_WING,
    PopCalibration,
    RunConfig,
    condor_labels,
    daily_policy_frame,
    make_targets,
    run_main_job,
    verdict,
    wing_label,
)
from condorbrain.models import CondorBrainConfig, PolicyOutput


def tiny_config(**run) -> RunConfig:
    cfg = RunConfig.from_file(DEFAULT_PRESET)
    model = dataclasses.replace(cfg.model, lookback=16, d_model=16, n_layer=1, headdim=8, d_state=8, chunk_size=16,
                                hold_horizon=10, horizons=(1, 5))
    train = cfg.train.replace(epochs=1, warmup_steps=2, batch_size=64, progress=False, early_stopping_patience=None)
    return dataclasses.replace(cfg, model=model, train=train, **{"val_start": "2017-07-01",
                                                                 "test_start": "2018-03-01", "walk_forward": None,
                                                                 **run})


def test_main_job_end_to_end(tmp_path):
    summary = run_main_job(tiny_config(), tmp_path, max_bars=1000)
    for name in ("config.json", "evaluation.json", "predictions.parquet", "metrics.jsonl", "backtest.json",
                 "trades_condorbrain.parquet", "trades_rule_condor.parquet", "trades_buy_and_hold.parquet"):
        assert (tmp_path / name).exists(), name
    tables = summary["tables"]
    vol = {row["forecast"] for row in tables["volatility, 10 bars"]}
    assert vol == {"condorbrain", "trailing_rv_22", "har_rv", "garch_1_1"}
    assert {row["forecast"] for row in tables["return, 5 bars"]} == {"condorbrain", "random_walk", "momentum_10"}
    assert all(v.startswith("-> condorbrain") for v in summary["verdicts"].values())
    # every forecast is scored on the same rows
    assert len({row["n"] for row in tables["volatility, 10 bars"]}) == 1
    preds = pl.read_parquet(tmp_path / "predictions.parquet")
    assert str(preds.get_column("ts").min()) >= "2018-03-01"  # only the held-out period is scored
    assert json.loads((tmp_path / "config.json").read_text())["run"]["test_start"] == "2018-03-01"
    # the job ends with the held-out backtest against the strategy baselines
    backtest = summary["backtest"]
    assert backtest == json.loads((tmp_path / "backtest.json").read_text())
    assert [r["strategy"] for r in backtest["table"]] == ["condorbrain", "rule_condor", "buy_and_hold"]
    assert backtest["test_period"]["first"] >= "2018-03-01" and backtest["verdict"].startswith("-> condorbrain")


def test_daily_frame_uses_only_the_past():
    bars, vix = load_sp500().slice(3000, 400), load_vix()
    cfg = tiny_config()
    full = daily_policy_frame(bars, vix, cfg)
    assert full.height == bars.height
    cut = 300
    changed = bars.with_columns(
        pl.when(pl.int_range(pl.len()) >= cut).then(pl.col(c) * 1.3).otherwise(pl.col(c)).alias(c)
        for c in ("open", "high", "low", "close", "adj_close"))
    other = daily_policy_frame(changed, vix, cfg)
    a = full.head(cut).drop("ts").to_numpy()
    b = other.head(cut).drop("ts").to_numpy()
    np.testing.assert_array_equal(np.isnan(a), np.isnan(b))
    np.testing.assert_array_equal(a[~np.isnan(a)], b[~np.isnan(b)])


def test_regime_edges_from_training_rows_only():
    bars = load_sp500().slice(2000, 600)
    frame = daily_policy_frame(bars, load_vix(), tiny_config())
    train = np.zeros(frame.height, bool)
    train[:300] = True
    t1 = make_targets(frame, tiny_config(), train)
    future = frame.with_columns(pl.when(pl.int_range(pl.len()) >= 320).then(pl.col("close") * 1.5)
                                .otherwise(pl.col("close")).alias("close"))
    t2 = make_targets(future, tiny_config(), train)
    # labels of training rows depend on trailing vol and training edges only
    np.testing.assert_array_equal(t1["regime"][:300], t2["regime"][:300])
    assert set(np.unique(t1["regime"][25:300])) == {0, 1, 2}


def _out(up, down, wing, cfg: CondorBrainConfig) -> PolicyOutput:
    B, Q = len(up), len(cfg.quantiles)
    z = torch.zeros(B)
    upq = torch.tensor(up, dtype=torch.float32)[:, None].repeat(1, Q)
    dnq = torch.tensor(down, dtype=torch.float32)[:, None].repeat(1, Q)
    return PolicyOutput(ret=torch.zeros(B, cfg.n_horizons), vol=z + 0.1, up_q=upq, down_q=dnq,
                        wing=torch.tensor(wing, dtype=torch.float32), pop_logit=z, roi=z, max_dd=z + 0.01,
                        regime_logits=torch.zeros(B, cfg.n_regimes))


def test_condor_labels_by_hand():
    cfg = tiny_config()
    out = _out([0.05, 0.05, 0.05, 0.05], [0.05, 0.05, 0.05, 0.05], [0.05, 0.05, 0.05, 0.05], cfg.model)
    iv = torch.full((4,), 1e-4)  # tiny vol: every leg is worth its intrinsic value, ~0 here -> credit ~ 0
    term = torch.tensor([0.0, 0.20, -0.07, math.nan])
    pop, roi = condor_labels(out, term, iv, cfg)
    assert pop[:3].tolist() == [1.0, 0.0, 0.0] and math.isnan(pop[3])
    # credit ~0: in range -> P&L 0; far above -> loss = wing; -7% -> put spread in the money by 2%
    torch.testing.assert_close(roi[:3], torch.tensor([0.0, -1.0, -0.4]), rtol=0, atol=1e-4)


def test_run_cli_prints_config(capsys):
    assert main(["run", "--print-config", "--epochs", "3", "--mixer", "mamba"]) == 0
    cfg = json.loads(capsys.readouterr().out)
    assert cfg["train"]["epochs"] == 3 and cfg["model"]["mixer"] == "mamba"


def test_run_config_errors(tmp_path):
    with pytest.raises(ValueError, match="test_start"):
        tiny_config(test_start="2010-01-01")
    bad = tmp_path / "bad.toml"
    bad.write_text("[run]\nnot_a_key = 1\n")
    with pytest.raises(ValueError, match="not_a_key"):
        RunConfig.from_file(bad)
    with pytest.raises(FileNotFoundError):
        RunConfig.from_file(tmp_path / "missing.toml")


def test_verdict_names_the_baselines_that_win():
    t = pl.DataFrame({"forecast": ["condorbrain", "garch_1_1", "trailing"], "qlike": [0.5, 0.3, 0.7]})
    assert verdict(t) == "-> condorbrain LOSES on qlike (0.5) to garch_1_1 (0.3)"
    t = pl.DataFrame({"forecast": ["condorbrain", "random_walk"], "mse": [0.1, 0.2]})
    assert verdict(t) == "-> condorbrain beats every baseline on mse (0.1)"


def test_wing_label_by_hand():
    cfg = tiny_config()
    out = _out([0.05, 0.05, 0.05], [0.04, 0.04, 0.04], [0.02, 0.02, 0.02], cfg.model)
    up = torch.tensor([0.03, 0.08, math.nan])
    down = torch.tensor([0.01, 0.00, 0.01])
    w = wing_label(out, up, down, cfg)
    # inside both strikes -> the floor; 8% up vs a 5% short call -> 3% of protection needed; NaN stays NaN
    torch.testing.assert_close(w[:2], torch.tensor([MIN_WING, 0.03]), rtol=0, atol=1e-6)
    assert math.isnan(w[2])


def test_pop_calibration_recovers_a_known_platt_map():
    gen = np.random.default_rng(0)
    logit = gen.normal(0.0, 2.0, 20_000)
    p_true = 1.0 / (1.0 + np.exp(-(0.5 * logit - 1.0)))  # the raw head is over-confident and too optimistic
    label = (gen.random(20_000) < p_true).astype(np.float64)
    label[:100] = np.nan  # unlabelled rows (horizon past the data) are skipped
    cal = PopCalibration.fit(logit, label)
    assert abs(cal.a - 0.5) < 0.05 and abs(cal.b + 1.0) < 0.05 and cal.n == 19_900
    np.testing.assert_allclose(cal.apply(logit[100:]), p_true[100:], atol=0.03)
    # too few labels or one class: the identity, not a fit
    assert PopCalibration.fit(logit[:10], label[200:210]) == PopCalibration()
    assert PopCalibration.fit(logit, np.ones_like(logit)) == PopCalibration()


def test_pop_calibration_stays_finite_on_nearly_constant_logits():
    gen = np.random.default_rng(1)
    logit = 1.3 + 1e-4 * gen.normal(size=700)  # a head that barely varies, as after a short run
    label = (gen.random(700) < 0.74).astype(np.float64)
    cal = PopCalibration.fit(logit, label)
    assert np.isfinite([cal.a, cal.b]).all()
    # ~ the base rate: what is left is the noise of a slope fitted to pure noise (about 0.1 sd in logit units)
    np.testing.assert_allclose(cal.apply(logit), label.mean(), atol=0.06)
