"""The walk-forward main job on a short slice of the real data: a model per window, each trained on its own past,
tables per window and overall, one stitched backtest, and its time discipline (changing the future changes nothing
before it)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import polars as pl
import pytest
from safetensors.numpy import load_file
from test_main_job import tiny_config

from condorbrain.cli import main
from condorbrain.data import ClippedZScore, load_sp500, load_vix
from condorbrain.main_job import daily_policy_frame, load_run
from condorbrain.run_config import WalkForwardConfig
from condorbrain.train import latest_checkpoint
from condorbrain.walk_forward import run_walk_forward, window_configs, window_dirs

WF = WalkForwardConfig(first_test="2017-01-01", test_months=6, val_months=6, max_windows=3)


def same(a, b) -> bool:
    """Equal tables (NaN equal to NaN: compared as their JSON text)."""
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def wf_config(**run):
    cfg = tiny_config(max_bars=1200, walk_forward=WF, **run)
    return dataclasses.replace(cfg, train=cfg.train.replace(batch_size=16))


@pytest.fixture(scope="module")
def market():
    return load_sp500(), load_vix()


@pytest.fixture(scope="module")
def wf_run(tmp_path_factory, market):
    out = tmp_path_factory.mktemp("wf")
    summary = run_walk_forward(wf_config(), out, bars=market[0], vix=market[1])
    return out, summary


def test_one_model_per_window_each_on_its_own_past(wf_run, market):
    out, summary = wf_run
    record = json.loads((out / "walk_forward.json").read_text())
    assert [w["test"]["first"][:10] for w in record["windows"]] == ["2017-01-03", "2017-07-03", "2018-01-02"]
    assert record["purge_bars"] == 10 and record["embargo_bars"] == 5
    dirs = window_dirs(out)
    assert [d.name for d in dirs] == ["w01", "w02", "w03"]
    cfg = wf_config()
    bars = market[0].tail(cfg.max_bars)
    frame = daily_policy_frame(bars, market[1], cfg)
    raw = frame.select(pl.exclude("ts")).to_numpy()
    ts = frame.get_column("ts").dt.replace_time_zone(None).to_numpy()
    day = ts.astype("datetime64[D]")
    means = []
    for d, w in zip(dirs, window_configs(cfg, bars["ts"][-1].date()), strict=True):
        run = load_run(d)
        assert run.config == w and run.config.walk_forward is None
        # the scaler is refitted per window, on the rows before its validation period (less purge and embargo)
        last_train = int(np.searchsorted(day, np.datetime64(w.val_start))) - cfg.model.hold_horizon - cfg.embargo
        rows = np.arange(len(ts)) < last_train
        rows &= np.isfinite(raw).all(axis=1)
        expected = ClippedZScore.fit(raw.astype(np.float32), rows)
        np.testing.assert_allclose(run.scaler.mean, expected.mean, rtol=1e-6)
        means.append(run.scaler.mean)
        # every test row of the window is after its training and validation periods
        preds = pl.read_parquet(d / "predictions.parquet")
        assert preds["ts"].min().date().isoformat() >= w.test_start
        assert preds["ts"].max().date().isoformat() < w.test_end
    assert not np.allclose(means[0], means[-1])  # a different scaler each window
    # the overall predictions are the windows' stacked, each row scored by its own window's model
    overall = pl.read_parquet(out / "predictions.parquet")
    stacked = pl.concat([pl.read_parquet(d / "predictions.parquet") for d in dirs])
    assert overall.drop("window").equals(stacked)
    assert overall["window"].to_list() == sum(([k] * pl.read_parquet(d / "predictions.parquet").height
                                               for k, d in enumerate(dirs, 1)), [])
    assert overall["ts"].is_sorted() and overall["ts"].n_unique() == overall.height


def test_tables_per_window_and_overall_with_every_baseline(wf_run):
    out, summary = wf_run
    record = json.loads((out / "walk_forward.json").read_text())
    for w in record["windows"] + [record["overall"]]:
        vol = w["tables"]["volatility, 10 bars"]
        assert [r["forecast"] for r in vol] == ["condorbrain", "trailing_rv_22", "har_rv", "garch_1_1"]
        assert [r["forecast"] for r in w["tables"]["return, 5 bars"]] == ["condorbrain", "random_walk",
                                                                          "momentum_10"]
        assert [r["strategy"] for r in w["backtest"]] == ["condorbrain", "rule_condor", "buy_and_hold"]
    n = sum(w["test"]["samples"] for w in record["windows"])
    assert record["overall"]["tables"]["volatility, 10 bars"][0]["n"] + \
        record["overall"]["tables"]["volatility, 10 bars"][0]["n_dropped"] == n
    evaluation = json.loads((out / "evaluation.json").read_text())
    assert same(evaluation["tables"], record["overall"]["tables"]) and same(evaluation["tables"], summary["tables"])
    assert len(evaluation["train"]["windows"]) == 3


def test_stitched_backtest_uses_each_windows_model(wf_run):
    out, summary = wf_run
    decisions = pl.read_parquet(out / "decisions.parquet")
    assert decisions["window"].unique().sort().to_list() == [1, 2, 3]
    for k, d in enumerate(window_dirs(out), 1):
        own = pl.read_parquet(d / "decisions.parquet")
        assert decisions.filter(pl.col("window") == k).drop("window").equals(own)
    equity = pl.read_parquet(out / "backtest_equity.parquet")
    per_strategy = equity.group_by("strategy").len()
    bars = pl.read_parquet(out / "predictions.parquet").height
    assert set(per_strategy["len"].to_list()) == {bars}  # one curve over every window's test bars
    assert summary["backtest"]["test_period"]["bars"] == bars


def test_changing_the_future_changes_no_earlier_window(tmp_path, market, wf_run):
    """Bars from the second window's test start on are altered: the first window's model is bit-identical, and
    every forecast, baseline and decision before the change is unchanged."""
    out, _ = wf_run
    bars, vix = market
    cut = np.datetime64("2017-07-01")
    after = pl.col("ts").dt.replace_time_zone(None) >= cut
    factor = pl.when(after).then(1.3).otherwise(1.0)
    bars2 = bars.with_columns(*(pl.col(c) * factor for c in ("open", "high", "low", "close")))
    vix2 = vix.with_columns(pl.when(after).then(pl.col("vix") * 2).otherwise(pl.col("vix")).alias("vix"))
    cfg = dataclasses.replace(wf_config(), walk_forward=dataclasses.replace(WF, max_windows=2))
    run_walk_forward(cfg, tmp_path, bars=bars2, vix=vix2)
    w1a, w1b = (latest_checkpoint(d / "windows" / "w01") for d in (out, tmp_path))
    a, b = load_file(w1a / "model.safetensors"), load_file(w1b / "model.safetensors")
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    pa, pb = (pl.read_parquet(d / "predictions.parquet").filter(pl.col("window") == 1) for d in (out, tmp_path))
    forecasts = [c for c in pa.columns if c.startswith(("pred_", "baseline_", "return_baseline_"))]
    assert pa.select(forecasts).equals(pb.select(forecasts))
    da, db = (pl.read_parquet(d / "decisions.parquet").filter(pl.col("window") == 1) for d in (out, tmp_path))
    assert da.equals(db)
    # and the change is real: the second window's forecasts differ
    qa, qb = (pl.read_parquet(d / "predictions.parquet").filter(pl.col("window") == 2) for d in (out, tmp_path))
    assert not qa["pred_vol"].equals(qb["pred_vol"])


def test_reloaded_walk_forward_reproduces_its_tables(wf_run, tmp_path, capsys):
    out, summary = wf_run
    before = json.loads((out / "evaluation.json").read_text())
    assert main(["evaluate", str(out)]) == 0
    after = json.loads((out / "evaluation.json").read_text())
    assert same(after["tables"], before["tables"])
    assert main(["backtest", str(out), "--out", str(tmp_path)]) == 0
    again = json.loads((tmp_path / "backtest.json").read_text())
    assert same(again["table"], summary["backtest"]["table"])
    assert "LOSES" in capsys.readouterr().out or "beats" in again["verdict"]
    # predict / load_run use the newest window's model
    assert load_run(out).run_dir == window_dirs(out)[-1]


def test_policy_filter_keeps_the_proposals_it_drops(tmp_path, wf_run, market):
    from condorbrain.backtest_job import backtest_decisions

    out, _ = wf_run
    decisions = pl.read_parquet(out / "decisions.parquet")
    threshold = float(decisions["pop"].median())
    cfg = dataclasses.replace(wf_config(), policy=dataclasses.replace(wf_config().policy, min_pop=threshold))
    filtered = decisions.with_columns((pl.col("pop") >= threshold).alias("enter"))
    test_ts = pl.read_parquet(out / "predictions.parquet")["ts"]
    bars = market[0].tail(1200)
    s = backtest_decisions(cfg, bars, market[1], test_ts, filtered, tmp_path, quiet=True)
    assert s["filtered"] == int((~filtered["enter"]).sum()) > 0
    assert s["policy_filter"]["min_pop"] == threshold
    assert pl.read_parquet(tmp_path / "decisions.parquet").equals(filtered)  # nothing dropped from the record
    trades = pl.read_parquet(tmp_path / "trades_condorbrain.parquet")
    entered = set(filtered.filter(pl.col("enter"))["ts"].to_list())
    assert set(trades["entry_ts"].to_list()) <= entered


def test_report_command_and_single_split_flag(wf_run, tmp_path, capsys):
    out, _ = wf_run
    assert main(["report", str(out)]) == 0
    assert (out / "report.html").is_file() and json.loads((out / "report.json").read_text())["walk_forward"]
    capsys.readouterr()
    assert main(["report", str(tmp_path)]) == 1  # an empty folder: the error names the missing file
    assert "backtest_equity.parquet not found" in (err := capsys.readouterr().err) and str(tmp_path) in err
    assert main(["run", "--single-split", "--print-config"]) == 0
    assert "walk_forward" not in json.loads(capsys.readouterr().out)
    assert main(["run", "--print-config"]) == 0
    assert json.loads(capsys.readouterr().out)["walk_forward"]["first_test"] == "2011-01-01"


def test_resuming_a_finished_walk_forward_changes_nothing(wf_run, market):
    """`condorbrain run --resume --out RUN`: each window continues from its newest checkpoint; a finished window
    trains no further step, so the tables and checkpoints stay as they were."""
    out, summary = wf_run
    before = [latest_checkpoint(d) for d in window_dirs(out)]
    again = run_walk_forward(wf_config(), out, resume=True, bars=market[0], vix=market[1])
    assert [latest_checkpoint(d) for d in window_dirs(out)] == before
    assert same(again["tables"], summary["tables"]) and same(again["backtest"]["table"], summary["backtest"]["table"])
