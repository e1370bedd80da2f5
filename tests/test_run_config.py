"""The main job's config tables: windows by hand, the [backtest] / [policy] tables, round trips and errors."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json

import numpy as np
import pytest

from condorbrain.backtest import BacktestConfig, FillConfig
from condorbrain.job_data import _periods
from condorbrain.main_job import DEFAULT_PRESET
from condorbrain.run_config import PolicyFilter, RunConfig, WalkForwardConfig, add_months


def test_add_months_clips_the_day():
    assert add_months(dt.date(2011, 1, 31), 1) == dt.date(2011, 2, 28)
    assert add_months(dt.date(2012, 1, 31), 1) == dt.date(2012, 2, 29)
    assert add_months(dt.date(2011, 3, 15), -24) == dt.date(2009, 3, 15)
    assert add_months(dt.date(2011, 11, 1), 2) == dt.date(2012, 1, 1)


def test_expanding_windows_tile_the_test_period():
    wf = WalkForwardConfig(first_test="2011-01-01", test_months=24, val_months=12)
    w = wf.windows(dt.date(2016, 6, 30))
    assert [x["test_start"] for x in w] == ["2011-01-01", "2013-01-01", "2015-01-01"]
    assert [x["test_end"] for x in w] == ["2013-01-01", "2015-01-01", "2017-01-01"]
    assert [x["val_start"] for x in w] == ["2010-01-01", "2012-01-01", "2014-01-01"]
    assert all(x["train_start"] is None for x in w)
    assert len(dataclasses.replace(wf, max_windows=2).windows(dt.date(2016, 6, 30))) == 2


def test_sliding_windows_keep_a_fixed_training_length():
    wf = WalkForwardConfig(first_test="2011-01-01", test_months=12, val_months=12, mode="sliding", train_months=36)
    w = wf.windows(dt.date(2012, 12, 31))
    assert [(x["train_start"], x["val_start"], x["test_start"]) for x in w] == [
        ("2007-01-01", "2010-01-01", "2011-01-01"), ("2008-01-01", "2011-01-01", "2012-01-01")]


@pytest.mark.parametrize("kwargs, match", [
    ({"first_test": "2011-13-01"}, "first_test"),
    ({"test_months": 0}, "test_months"),
    ({"val_months": 1.5}, "val_months"),
    ({"mode": "rolling"}, "mode"),
    ({"mode": "sliding"}, "train_months is required"),
    ({"max_windows": 0}, "max_windows"),
])
def test_walk_forward_config_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        WalkForwardConfig(**kwargs)


def test_windows_after_the_data_is_an_error():
    with pytest.raises(ValueError, match="after the data's last day"):
        WalkForwardConfig(first_test="2030-01-01").windows(dt.date(2018, 12, 31))


def test_periods_purge_and_embargo_at_both_boundaries():
    ts = np.arange(np.datetime64("2020-01-01"), np.datetime64("2020-12-31")).astype("datetime64[us]")
    cfg = RunConfig.from_file(DEFAULT_PRESET)
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, lookback=5, hold_horizon=10), embargo=3,
                              train_start="2020-01-11", val_start="2020-05-01", test_start="2020-08-01",
                              test_end="2020-11-01", walk_forward=None)
    train, val, test = _periods(ts, cfg)
    idx = np.arange(len(ts))
    val_lo, test_lo, test_hi, train_lo = (int(np.searchsorted(ts, np.datetime64(d))) for d in
                                          ("2020-05-01", "2020-08-01", "2020-11-01", "2020-01-11"))
    np.testing.assert_array_equal(idx[train], np.arange(train_lo, val_lo - 13))
    np.testing.assert_array_equal(idx[val], np.arange(val_lo, test_lo - 13))
    np.testing.assert_array_equal(idx[test], np.arange(test_lo, test_hi))
    with pytest.raises(ValueError, match="training period has .* purge 10 \\+ embargo 3"):
        _periods(ts, dataclasses.replace(cfg, val_start="2020-01-20"))


def test_preset_tables_round_trip_through_json(tmp_path):
    cfg = RunConfig.from_file(DEFAULT_PRESET)
    assert cfg.walk_forward == WalkForwardConfig(first_test="2011-01-01", test_months=24, val_months=24)
    assert cfg.backtest == BacktestConfig(target_dte=45.0, rate=0.02, div_yield=0.018,
                                          fills=FillConfig(slippage=0.5, commission=0.65))
    assert cfg.policy == PolicyFilter()
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg.to_dict()))
    assert RunConfig.from_file(path) == cfg
    single = dataclasses.replace(cfg, walk_forward=None, backtest=None)
    path.write_text(json.dumps(single.to_dict()))
    assert RunConfig.from_file(path) == single
    assert "walk_forward" not in single.to_dict()


def test_backtest_table_defaults_come_from_the_run(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[run]\ntarget_dte = 30\nrate = 0.05\n[backtest]\nmax_open = 3\n[backtest.fills]\nslippage = 0.25\n'
                    '[policy]\nmin_pop = 0.6\n')
    cfg = RunConfig.from_file(path)
    assert cfg.backtest == BacktestConfig(target_dte=30.0, rate=0.05, div_yield=0.018, max_open=3,
                                          fills=FillConfig(slippage=0.25))
    assert cfg.policy == PolicyFilter(min_pop=0.6)
    assert cfg.backtest_config(stop_loss=None).stop_loss is None
    # without a [backtest] table: BacktestConfig's defaults with the run's condor
    path.write_text('[run]\ntarget_dte = 30\n')
    assert RunConfig.from_file(path).backtest_config() == BacktestConfig(target_dte=30.0)


@pytest.mark.parametrize("text, match", [
    ("[backtest]\nmax_opne = 2\n", r"unknown \[backtest\] key\(s\) \['max_opne'\]"),
    ("[backtest.fills]\nslipage = 1\n", r"unknown \[backtest.fills\] key\(s\) \['slipage'\]"),
    ("[backtest]\nmax_open = 0\n", r"\[backtest\]: max_open must be >= 1"),
    ("[policy]\nmin_pop = 2\n", r"\[policy\]: policy.min_pop"),
    ("[walk_forward]\nmode = 'x'\n", r"\[walk_forward\]: walk_forward.mode"),
    ("[walk_forwrd]\n", r"unknown table\(s\) \['walk_forwrd'\]"),
    ("[run]\nembargo = -1\n", "embargo must be an int >= 0"),
    ("[run]\ntest_end = '2014-01-01'\n", r"test_start \(2015-01-01\) must be before test_end \(2014-01-01\)"),
    ("[run]\ntrain_start = '2013-01-01'\n", "train_start .* must be before val_start"),
])
def test_config_errors_name_the_table_and_key(tmp_path, text, match):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ValueError, match=match):
        RunConfig.from_file(path)
