"""`condorbrain train | evaluate | predict` end to end on a tiny run; options from flags and from config files."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from test_main_job import tiny_config

from condorbrain.cli import main
from condorbrain.data import load_bars, load_sp500
from condorbrain.features import CONDOR_FEATURES
from condorbrain.main_job import DEFAULT_PRESET, RunConfig, daily_policy_frame
from condorbrain.predictor import PredictConfig, Predictor


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """(the config file, the run folder of `condorbrain train --config FILE --out DIR`)."""
    root = tmp_path_factory.mktemp("cli")
    config = root / "tiny.json"
    config.write_text(json.dumps(tiny_config(max_bars=1000).to_dict()))
    out = root / "run"
    assert main(["train", "--config", str(config), "--out", str(out)]) == 0
    return config, out


@pytest.fixture(scope="module")
def bars_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("bars") / "bars.parquet"
    load_sp500().tail(400).write_parquet(path)
    return path


def test_train_writes_a_run_folder_without_evaluation(trained):
    config, out = trained
    for name in ("config.json", "train.json", "metrics.jsonl"):
        assert (out / name).is_file(), name
    assert not (out / "evaluation.json").exists()
    assert RunConfig.from_file(out / "config.json") == RunConfig.from_file(config) == tiny_config(max_bars=1000)
    assert json.loads((out / "train.json").read_text())["steps"] > 0


def test_train_and_run_print_the_effective_config(trained, capsys):
    config, _ = trained
    assert main(["train", "--config", str(config), "--max-bars", "700", "--epochs", "2", "--print-config"]) == 0
    cfg = json.loads(capsys.readouterr().out)
    assert cfg["run"]["max_bars"] == 700 and cfg["train"]["epochs"] == 2 and cfg["model"]["d_model"] == 16
    assert main(["run", "--print-config"]) == 0  # the default preset
    assert json.loads(capsys.readouterr().out) == RunConfig.from_file(DEFAULT_PRESET).to_dict()


def test_evaluate_reruns_the_held_out_evaluation(trained, capsys):
    _, out = trained
    assert main(["evaluate", str(out)]) == 0
    text = capsys.readouterr().out
    assert "volatility, 10 bars" in text and "probability of profit" in text and "-> condorbrain" in text
    summary = json.loads((out / "evaluation.json").read_text())
    assert summary["train"] == json.loads((out / "train.json").read_text())
    assert summary["test_period"]["first"] >= "2018-03-01"
    assert set(summary["verdicts"]) == {"volatility, 10 bars", "return, 1 bars", "return, 5 bars",
                                        "probability of profit"}
    assert main(["evaluate", str(out), "--print-config"]) == 0
    assert json.loads(capsys.readouterr().out) == json.loads((out / "config.json").read_text())


def test_evaluate_refuses_unfinished_or_missing_runs(trained, tmp_path, capsys):
    _, out = trained
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "config.json").write_text((out / "config.json").read_text())
    assert main(["evaluate", str(partial)]) == 1
    assert "no complete checkpoint" in capsys.readouterr().err
    assert main(["evaluate", str(tmp_path / "none")]) == 1
    assert "is not a run folder" in capsys.readouterr().err


def test_predict_equals_the_predictor_on_the_same_windows(trained, bars_file, tmp_path, capsys):
    _, out = trained
    dest = tmp_path / "pred.parquet"
    assert main(["predict", str(out), "--bars", str(bars_file), "--last", "25", "--out", str(dest)]) == 0
    text = capsys.readouterr().out
    table = pl.read_parquet(dest)
    assert table.height == 25

    p = Predictor.from_run(out)
    frame = daily_policy_frame(load_bars(bars_file), None, p.config)  # a bars file brings no VIX
    raw = frame.select(list(CONDOR_FEATURES)).to_numpy()
    start = len(raw) - 25
    assert table.get_column("ts").to_list() == frame.get_column("ts").slice(start).to_list()
    for t in range(start, len(raw)):
        expected = p.policy(raw[start:t + 1]).to_row()
        row = table.row(t - start, named=True)
        np.testing.assert_allclose([row[k] for k in expected], list(expected.values()), rtol=1e-4, atol=1e-5,
                                   err_msg=f"bar {t}")
    last = p.policy(raw[start:])
    assert f"short put {last.k_lower_price:.2f}" in text and f"short call {last.k_upper_price:.2f}" in text


def test_predict_options_from_a_config_file_and_flags(trained, bars_file, tmp_path, capsys):
    _, out = trained
    cfg_file = tmp_path / "predict.toml"
    cfg_file.write_text(f'[predict]\nbars = "{bars_file}"\nlast = 3\nout = "{tmp_path / "p.csv"}"\n')
    assert main(["predict", str(out), "--config", str(cfg_file), "--print-config"]) == 0
    printed = json.loads(capsys.readouterr().out)["predict"]
    assert printed == {"bars": str(bars_file), "embedded": None, "last": 3, "out": str(tmp_path / "p.csv"),
                       "assume_tz": None}
    assert main(["predict", str(out), "--config", str(cfg_file)]) == 0
    assert pl.read_csv(tmp_path / "p.csv").height == 3
    assert main(["predict", str(out), "--config", str(cfg_file), "--last", "2"]) == 0  # a flag beats the file
    assert pl.read_csv(tmp_path / "p.csv").height == 2
    capsys.readouterr()
    assert main(["predict", str(out), "--config", str(cfg_file), "--embedded", "sp500", "--print-config"]) == 0
    assert json.loads(capsys.readouterr().out)["predict"]["bars"] is None  # --embedded replaces the file's bars


def test_predict_config_errors(trained, tmp_path, capsys):
    _, out = trained
    bad = tmp_path / "bad.toml"
    bad.write_text("[predict]\nlats = 3\n")
    assert main(["predict", str(out), "--config", str(bad)]) == 2
    assert "unknown [predict] key(s) ['lats']" in capsys.readouterr().err
    with pytest.raises(ValueError, match="last must be None or a positive int"):
        PredictConfig(last=0)
    with pytest.raises(ValueError, match="bars or embedded, not both"):
        PredictConfig(bars="x.csv", embedded="sp500")
    assert main(["predict", str(out), "--out", str(tmp_path / "x.txt")]) == 2
    assert "out must end in .parquet or .csv" in capsys.readouterr().err
    assert main(["predict", str(out), "--bars", str(tmp_path / "missing.csv")]) == 1
    assert "missing.csv" in capsys.readouterr().err
    assert main(["predict", str(tmp_path / "no-run")]) == 1
    assert "is not a run folder" in capsys.readouterr().err


def test_shipped_presets_parse_with_a_predict_table(tmp_path):
    for preset in sorted(DEFAULT_PRESET.parent.glob("*.toml")):
        RunConfig.from_file(preset)
        assert PredictConfig.from_file(preset) == PredictConfig(**tomllib.loads(preset.read_text()).get("predict", {}))
    both = tmp_path / "both.toml"
    both.write_text(DEFAULT_PRESET.read_text() + "\n[predict]\nlast = 5\n")
    assert RunConfig.from_file(both) == RunConfig.from_file(DEFAULT_PRESET)
    assert PredictConfig.from_file(both).last == 5
