"""The report's numbers (report.json) against what the synthetic run folder holds."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from _run_folder import EQUITY, PNL, RELIABILITY, make_run

from condorbrain.backtest.strategy_metrics import max_drawdown
from condorbrain.report import ReportConfig, build_report, drawdown, json_safe, pnl_histogram
from condorbrain.report.numbers import downsample_indices


def test_drawdown_by_hand():
    e = np.array(EQUITY["condorbrain"])  # 100k, 110k, 90k, 120k, 60k, 130k
    np.testing.assert_allclose(drawdown(e), [0, 0, 20 / 110, 0, 0.5, 0])
    assert drawdown(e).max() == pytest.approx(max_drawdown(e))  # the backtest's own metric
    # equity <= 0: the whole capital lost, 1 (compare_strategies' convention for a ruined strategy)
    np.testing.assert_allclose(drawdown(np.array(EQUITY["buy_and_hold"])), [0, 0.5, 1.0, 0.9, 0.8, 0.7])
    np.testing.assert_allclose(drawdown(np.array([100.0, np.nan, 50.0])), [0, np.nan, 0.5])
    with pytest.raises(ValueError, match="start > 0"):
        drawdown(np.array([0.0, 1.0]))


def test_pnl_histogram_counts():
    pnl, reasons = PNL["condorbrain"]
    h = pnl_histogram(np.array(pnl), reasons)
    assert h["trades"] == len(pnl) and sum(h["counts"]) == len(pnl)
    assert len(h["bin_edges"]) == len(h["counts"]) + 1 == math.ceil(2 * len(pnl) ** (1 / 3)) + 1  # Rice's rule
    assert h["bin_edges"][0] == min(pnl) and h["bin_edges"][-1] == max(pnl)
    by_reason = h["counts_by_exit_reason"]
    assert {r: sum(c) for r, c in by_reason.items()} == {"stop": 2, "take_profit": 2, "dte": 2, "expiry": 1}
    np.testing.assert_array_equal(np.sum(list(by_reason.values()), axis=0), h["counts"])
    one = pnl_histogram(np.array([30_000.0, math.nan]))  # one value: one bin around it; NaN dropped and counted
    assert one["counts"] == [1] and one["n_dropped"] == 1 and one["bin_edges"] == [28_500.0, 31_500.0]
    assert pnl_histogram(np.array([]))["counts"] == []


def test_downsample_keeps_extremes():
    x = np.sin(np.linspace(0, 20, 10_000))
    x[1234] = 5.0
    keep = downsample_indices(x.size, 500, x)
    assert keep.size <= 500 and keep[0] == 0 and keep[-1] == x.size - 1
    assert 1234 in keep and np.all(np.diff(keep) > 0)
    np.testing.assert_array_equal(downsample_indices(10, 500, x[:10]), np.arange(10))


def test_json_safe():
    out = json_safe({"a": [math.nan, math.inf, -math.inf, np.float32(0.5)], 1: (np.int64(3),)})
    assert out == {"a": [None, "inf", "-inf", 0.5], "1": [3]}
    json.dumps(out, allow_nan=False)


def test_report_numbers_match_the_run_folder(tmp_path):
    rep = build_report(make_run(tmp_path))
    json.dumps(rep, allow_nan=False)  # valid JSON
    s = rep["strategies"]
    assert list(s["equity"]) == list(EQUITY)
    for name, e in EQUITY.items():
        assert s["equity"][name]["equity"] == e and s["equity"][name]["final_equity"] == e[-1]
        assert not s["equity"][name]["downsampled"]
        assert s["drawdown"][name]["drawdown"] == pytest.approx(drawdown(np.array(e)).tolist())
    assert s["equity"]["condorbrain"]["ts"][:2] == ["2015-01-02T21:00:00Z", "2015-01-03T21:00:00Z"]
    assert [s["drawdown"][n]["max_drawdown"] for n in EQUITY] == pytest.approx([0.5, 0.0, 1.0])
    for name, (pnl, _) in PNL.items():
        assert sum(s["pnl_histogram"][name]["counts"]) == len(pnl) == s["pnl_histogram"][name]["trades"]
    assert s["table"][2]["sharpe"] == "-inf"  # -inf in JSON as a string
    assert s["skipped"] == {"condorbrain": {"capacity": 3}, "rule_condor": {}}
    f = rep["forecasts"]
    assert f["calibration"] == json_safe(RELIABILITY)
    assert f["tables"]["probability of profit"][1]["brier"] is None  # NaN in evaluation.json -> null
    assert f["volatility"]["realized"][-3:] == [None, None, None] and len(f["volatility"]["ts"]) == 40
    assert list(f["volatility"]["forecasts"]) == ["condorbrain", "trailing_rv_22", "har_rv", "garch_1_1"]
    assert f["windows"] is None and rep["walk_forward"] is None
    r = rep["regimes"]
    assert list(r["probabilities"]) == ["0", "1", "2"] and r["label"][0] is None and len(r["label"]) == 40
    assert [v["topic"] for v in rep["verdicts"]] == ["backtest (Sharpe)", "volatility, 30 bars",
                                                      "probability of profit"]
    assert rep["verdicts"][0]["line"].startswith("condorbrain LOSES")  # the "-> " arrow stripped
    assert rep["run"]["test_period"]["samples"] == 40 and rep["run"]["model"]["mixer"] == "mamba2"


def test_long_series_are_downsampled_and_say_so(tmp_path):
    n = 3000
    curve = list(100_000.0 + np.cumsum(np.random.default_rng(0).normal(size=n)))
    rep = build_report(make_run(tmp_path, strategies={"condorbrain": curve}, n_pred=50),
                       ReportConfig(max_series_points=200))
    eq = rep["strategies"]["equity"]["condorbrain"]
    assert eq["downsampled"] and len(eq["equity"]) <= 200 and eq["bars"] == n and eq["final_equity"] == curve[-1]
    assert max(eq["equity"]) == max(curve) and min(eq["equity"]) == min(curve)
    assert any("downsampled from 3000" in note for note in rep["notes"])


def test_walk_forward_windows(tmp_path):
    rep = build_report(make_run(tmp_path, walk_forward=True))
    assert rep["walk_forward"]["mode"] == "expanding" and rep["run"]["walk_forward_mode"] == "expanding"
    assert [w["window"] for w in rep["forecasts"]["windows"]] == [1, 2]
    assert rep["forecasts"]["windows"][1]["first"] == "2015-01-22T21:00:00Z"
    # the overall verdicts, but not one that evaluation.json already holds
    assert rep["verdicts"][-1] == {"topic": "walk-forward, volatility, 30 bars",
                                   "line": "condorbrain LOSES on qlike overall"}
    assert [v["topic"] for v in rep["verdicts"]].count("walk-forward, probability of profit") == 0


def test_missing_optional_inputs(tmp_path):
    run = make_run(tmp_path, regimes=False, trades=False)
    (run / "backtest.json").unlink()
    rep = build_report(run)
    assert rep["regimes"] is None and rep["strategies"]["table"] == []
    assert all(h is None for h in rep["strategies"]["pnl_histogram"].values())
    assert any("no trade log" in n for n in rep["notes"]) and any("backtest.json" in n for n in rep["notes"])


@pytest.mark.parametrize("name", ["backtest_equity.parquet", "evaluation.json", "predictions.parquet"])
def test_missing_required_file(tmp_path, name):
    run = make_run(tmp_path)
    (run / name).unlink()
    with pytest.raises(FileNotFoundError, match=name.replace(".", r"\.")):
        build_report(run)


def test_config_is_validated():
    with pytest.raises(ValueError, match="max_plot_points"):
        ReportConfig(max_plot_points=2)


def test_curve_not_starting_above_zero(tmp_path):
    rep = build_report(make_run(tmp_path, strategies={"condorbrain": [0.0, 5.0], "rule_condor": [100.0, 90.0]}))
    s = rep["strategies"]
    assert s["equity"]["condorbrain"]["equity"] == [0.0, 5.0] and "condorbrain" not in s["drawdown"]
    assert s["drawdown"]["rule_condor"]["max_drawdown"] == pytest.approx(0.1)
    assert any("not > 0: no drawdown" in n for n in rep["notes"])
