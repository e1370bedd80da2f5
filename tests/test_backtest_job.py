"""`condorbrain backtest` on a tiny trained run: the policy's decisions (the predictor's, look-ahead free), the
comparison with the rule-based condor and buy-and-hold on the held-out period, the files and the options."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from test_main_job import tiny_config

from condorbrain.backtest import STRATEGIES
from condorbrain.backtest_job import policy_decisions
from condorbrain.cli import main
from condorbrain.features import CONDOR_FEATURES
from condorbrain.main_job import load_run, prepare_data
from condorbrain.predictor import Predictor

TEST_START = "2018-03-01"  # tiny_config's held-out period


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """The run folder of `condorbrain train` with a tiny config (trained once for the module)."""
    root = tmp_path_factory.mktemp("bt")
    config = root / "tiny.json"
    config.write_text(json.dumps(tiny_config(max_bars=1000).to_dict()))
    out = root / "run"
    assert main(["train", "--config", str(config), "--out", str(out)]) == 0
    return out


def test_backtest_cli_compares_the_three_strategies(trained, tmp_path, capsys):
    out = tmp_path / "bt"
    assert main(["backtest", str(trained), "--out", str(out), "--max-open", "2", "--take-profit", "none"]) == 0
    text = capsys.readouterr().out
    assert all(name in text for name in STRATEGIES) and "-> condorbrain" in text
    summary = json.loads((out / "backtest.json").read_text())
    assert summary["verdict"] in text
    cfg = summary["config"]
    assert cfg["max_open"] == 2 and cfg["take_profit"] is None and cfg["close_dte"] == 21.0  # flags, then defaults
    assert cfg["target_dte"] == 45.0 and cfg["rate"] == 0.02 and cfg["div_yield"] == 0.018  # the run's condor
    table = summary["table"]
    assert [r["strategy"] for r in table] == list(STRATEGIES)
    assert {(r["first"], r["last"], r["bars"], r["initial_capital"]) for r in table} == {
        (summary["test_period"]["first"], summary["test_period"]["last"], summary["test_period"]["bars"], 100_000.0)}
    assert summary["test_period"]["first"] >= TEST_START
    # trade logs: every condor opened inside the held-out period; the equity curves cover the same bars
    for name in STRATEGIES:
        trades = pl.read_parquet(out / f"trades_{name}.parquet")
        assert trades.height == next(r["trades"] for r in table if r["strategy"] == name)
        assert (trades["entry_ts"].dt.strftime("%Y-%m-%d") >= TEST_START).all()
    equity = pl.read_parquet(out / "backtest_equity.parquet")
    assert equity.group_by("strategy").len().sort("strategy")["len"].to_list() == [summary["test_period"]["bars"]] * 3
    # the decisions are the model's proposal at every held-out bar (the simulator decides which open)
    decisions = pl.read_parquet(out / "decisions.parquet")
    assert decisions.height == summary["decisions"] == summary["test_period"]["bars"]
    skipped = summary["skipped"]["condorbrain"]
    assert sum(skipped.values()) + table[0]["trades"] == decisions.height
    assert not (trained / "backtest.json").exists()  # --out was given


def test_decisions_are_the_predictors_strikes(trained):
    p = Predictor.from_run(trained)
    run = load_run(trained)
    data = prepare_data(run.config, scaler=run.scaler)
    decisions = policy_decisions(run.model, run.config, data)
    assert decisions["ts"].is_sorted() and (decisions["ts"].dt.strftime("%Y-%m-%d") >= TEST_START).all()
    raw = data.frame.select(list(CONDOR_FEATURES)).to_numpy()
    ts = data.frame["ts"].to_list()
    L = run.config.model.lookback
    for row in decisions.gather([0, decisions.height // 2, decisions.height - 1]).iter_rows(named=True):
        t = ts.index(row["ts"])
        pol = p.policy(raw[t - L + 1: t + 1])
        np.testing.assert_allclose([row["k_lower"], row["k_upper"], row["wing"]], [pol.k_lower, pol.k_upper, pol.wing],
                                   rtol=1e-5, atol=1e-6)


def test_decision_at_t_ignores_later_bars(trained):
    run = load_run(trained)
    data = prepare_data(run.config, scaler=run.scaler)
    base = policy_decisions(run.model, run.config, data)
    cut_ts = base["ts"][base.height // 2]
    after = pl.col("ts") > cut_ts
    bars = data.bars.with_columns(pl.when(after).then(pl.col(c) * 1.3).otherwise(pl.col(c)).alias(c)
                                  for c in ("open", "high", "low", "close", "adj_close"))
    vix = data.vix.with_columns(pl.when(after).then(pl.col("vix") * 1.5).otherwise(pl.col("vix")).alias("vix"))
    changed = policy_decisions(run.model, run.config, prepare_data(run.config, bars=bars, vix=vix, scaler=run.scaler))
    assert changed["ts"].to_list() == base["ts"].to_list()
    cols = ["k_lower", "k_upper", "wing"]
    upto = base["ts"] <= cut_ts
    np.testing.assert_array_equal(changed.filter(upto).select(cols).to_numpy(),
                                  base.filter(upto).select(cols).to_numpy())
    assert not np.allclose(changed.filter(~upto).select(cols).to_numpy(), base.filter(~upto).select(cols).to_numpy())


def test_backtest_cli_options_and_errors(trained, tmp_path, capsys):
    assert main(["backtest", str(trained), "--stop-loss", "3", "--close-dte", "none", "--print-config"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["out"] == str(trained) and printed["backtest"]["stop_loss"] == 3.0
    assert printed["backtest"]["close_dte"] is None and printed["backtest"]["max_open"] == 1
    assert main(["backtest", str(trained), "--max-open", "0"]) == 2
    assert "max_open must be >= 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["backtest", str(trained), "--take-profit", "half"])
    assert "expected a number or 'none'" in capsys.readouterr().err
    assert main(["backtest", str(tmp_path / "none")]) == 1
    assert "is not a run folder" in capsys.readouterr().err
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "config.json").write_text((trained / "config.json").read_text())
    assert main(["backtest", str(unfinished)]) == 1
    assert "no complete checkpoint" in capsys.readouterr().err
    shutil.copytree(trained, tmp_path / "killed")
    (tmp_path / "killed" / "train.json").unlink()  # a checkpoint, but training did not finish
    assert main(["backtest", str(tmp_path / "killed")]) == 1
    assert "did not finish" in capsys.readouterr().err
