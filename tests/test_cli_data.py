"""`condorbrain data synth | build | validate | info` on tiny data, through `condorbrain.cli.main`, with exit codes."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from condorbrain import cli
from condorbrain.dataset import open_dataset, read_metadata

SYNTH = ["--sessions", "2", "--strikes-each-side", "1", "--no-progress"]  # 2 x 390 bars, 12 contracts a minute


@pytest.fixture(scope="module")
def market(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "market"
    assert cli.main(["data", "synth", str(out), *SYNTH]) == 0
    return out


def test_synth_writes_parts_and_a_marker(market: Path, capsys) -> None:
    assert sorted(p.name for p in market.iterdir()) == ["bars", "market.json", "quotes"]
    info = json.loads((market / "market.json").read_text())
    bars = pl.read_parquet(sorted((market / "bars").glob("*.parquet")))
    assert info["bars"] == bars.height == 780 and info["config"]["n_sessions"] == 2
    assert "simulated" in info["what"]
    # a second synth into the same folder is refused (its parts would mix with the new ones)
    assert cli.main(["data", "synth", str(market), *SYNTH]) == 1
    assert "already holds .parquet parts" in capsys.readouterr().err


def test_validate_reports_and_exit_codes(market: Path, tmp_path: Path, capsys) -> None:
    assert cli.main(["data", "validate", str(market / "bars"), "--strict"]) == 0
    assert "(bars, 780 rows): no problems" in capsys.readouterr().out
    assert cli.main(["data", "validate", str(market / "quotes")]) == 0  # kind detected from 'underlying'
    assert "(quotes, " in capsys.readouterr().out

    bad = tmp_path / "bad.csv"
    bad.write_text("ts,symbol,open,high,low,close,volume\n"
                   "2024-01-02T14:31:00Z,SPY,10,11,9,10,5\n"
                   "2024-01-02T14:32:00Z,SPY,10,8,9,10,5\n"
                   "2024-01-02T14:32:00Z,SPY,10,11,9,x,5\n")
    assert cli.main(["data", "validate", str(bad)]) == 0  # a report, not a failure, without --strict
    out = capsys.readouterr().out
    assert "high < low [high_below_low, 1 row(s)] (rows 1)" in out
    assert "duplicate timestamps" in out and "values are text" in out
    assert cli.main(["data", "validate", str(bad), "--strict"]) == 1
    assert cli.main(["data", "validate", str(tmp_path / "missing.csv")]) == 2
    assert "no such file" in capsys.readouterr().err
    odd = tmp_path / "odd.csv"
    odd.write_text("a,b\n1,2\n")
    assert cli.main(["data", "validate", str(odd)]) == 2
    assert "--kind" in capsys.readouterr().err
    assert cli.main(["data", "validate", str(odd), "--kind", "bars", "--strict"]) == 1
    assert "required column is missing" in capsys.readouterr().out


def test_build_then_info(market: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "ds"
    args = ["data", "build", str(out), "--bars", str(market / "bars"), "--quotes", str(market / "quotes"),
            "--ivr-window", "30", "--extra", "interaction", "--horizons", "1,5", "--no-progress"]
    assert cli.main(args) == 0
    table = capsys.readouterr().out
    assert "valid rows" in table and "invalid rows (kept)" in table and "seconds: total" in table
    meta = read_metadata(out)
    assert meta["rows"] == np.load(out / "features.npy", mmap_mode="r").shape[0] == 780 * 12
    assert len(meta["features"]) == 24 + 5 and [t["name"] for t in meta["targets"]][-1] == "mae_short_5"
    assert meta["provenance"]["bars"].startswith("SYNTHETIC")
    assert meta["config"]["features"]["ivr_window"] == 30

    assert cli.main(args) == 1  # the folder exists
    assert "overwrite" in capsys.readouterr().err
    assert cli.main([*args, "--overwrite"]) == 0
    capsys.readouterr()

    assert cli.main(["data", "info", str(out)]) == 0
    info = capsys.readouterr().out
    assert "9,360 (" in info and "symbols" in info and "SPY" in info and "contract-major" in info
    assert cli.main(["data", "info", str(market / "quotes")]) == 0
    info = capsys.readouterr().out
    assert "underlyings  SPY" in info and "time range" in info and "strike: Float64" in info
    part = sorted((market / "bars").glob("*.parquet"))[0]
    assert cli.main(["data", "info", str(part)]) == 0
    assert re.search(r"\nrows +780\n", capsys.readouterr().out)
    assert cli.main(["data", "info", str(tmp_path / "nothing")]) == 2
    assert cli.main(["data", "info", str(tmp_path)]) == 2  # a folder that is neither


def test_build_errors_and_config(market: Path, tmp_path: Path, capsys) -> None:
    assert cli.main(["data", "build", str(tmp_path / "x"), "--bars", str(market / "bars")]) == 2
    assert "either --bars and --quotes, or --embedded" in capsys.readouterr().err
    assert cli.main(["data", "build", str(tmp_path / "x"), "--embedded", "sp500", "--extra", "greeks"]) == 2
    assert "extra_sets" in capsys.readouterr().err
    bad = tmp_path / "quotes.parquet"
    q = pl.read_parquet(sorted((market / "quotes").glob("*.parquet")))
    q.with_columns(pl.when(pl.int_range(pl.len()) == 2).then(-1.0).otherwise(pl.col("bid")).alias("bid")) \
        .write_parquet(bad)
    assert cli.main(["data", "build", str(tmp_path / "x"), "--bars", str(market / "bars"), "--quotes", str(bad),
                     "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert str(bad) in err and "bid < 0" in err and "rows 2" in err
    assert not (tmp_path / "x").exists()

    assert cli.main(["data", "build", str(tmp_path / "x"), "--embedded", "sp500", "--print-config"]) == 0
    config = json.loads(capsys.readouterr().out)
    assert config["features"]["ivr_window"] == 252 and config["features"]["rate"] == 0.02
    # daily bars: the previous session's quote still counts, over a long weekend too (Friday 16:00 -> Tuesday 16:00)
    assert config["max_staleness"] == 4 * 86_400.0 and config["horizons"] == [1, 5, 10, 30]
    assert cli.main(["data", "build", str(tmp_path / "x"), "--print-config"]) == 0
    assert json.loads(capsys.readouterr().out)["max_staleness"] == 120.0  # files: the 1-minute default

    # a config file: what --print-config prints reads back; flags override it; nested fields merge one by one
    path = tmp_path / "build.json"
    path.write_text(json.dumps({"horizons": [2, 3], "features": {"rsi_window": 7}, "max_staleness": 30}))
    base = ["data", "build", str(tmp_path / "x"), "--config", str(path), "--print-config"]
    assert cli.main([*base, "--chunk-rows", "5000", "--max-staleness-s", "60"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["horizons"] == [2, 3] and got["features"]["rsi_window"] == 7 and got["chunk_rows"] == 5000
    assert got["max_staleness"] == 60.0 and got["features"]["dtype"] == "float32"
    path.write_text(json.dumps(got))
    assert cli.main(base) == 0
    assert json.loads(capsys.readouterr().out) == got
    path.write_text(json.dumps({"horizon": [1]}))
    assert cli.main(base) == 2
    assert "unknown field(s) ['horizon']" in capsys.readouterr().err
    assert cli.main(["data", "build", str(tmp_path / "x"), "--config", str(tmp_path / "none.json"),
                     "--print-config"]) == 2


def test_build_embedded(tmp_path: Path, monkeypatch, capsys) -> None:
    """--embedded sp500 wires the real bars, the real VIX and synth_chains; here on the first 600 sessions from
    2014 on (to mid-2016, inside the VIX's coverage) so the test stays small."""
    import condorbrain.data as data

    full = data.load_sp500()
    monkeypatch.setattr(data, "load_sp500", lambda: full.filter(pl.col("ts").dt.year() >= 2014).head(600))
    out = tmp_path / "sp"
    assert cli.main(["data", "build", str(out), "--embedded", "sp500", "--no-progress"]) == 0
    meta = read_metadata(out)
    assert meta["symbols"] == ["^GSPC"] and meta["counts"]["bars"] == 600
    assert meta["provenance"]["bars"].startswith("REAL") and "VIX" in meta["provenance"]["quotes"]
    assert meta["synthetic"]["quotes_flagged_synthetic"] == meta["synthetic"]["quotes_total"] > 0
    # a listed strike stays quoted at every bar until its expiry (its expiry bar included), so every joined row has
    # a fresh quote: one quote per row, none missing; the invalid rows are the indicators' and IV rank's warm-up
    c = meta["counts"]
    assert c["rows_without_quote"] == 0 and meta["synthetic"]["quotes_total"] == meta["rows"]
    assert "spread_ratio" not in c["nan_by_feature"] and "iv" not in c["nan_by_feature"]
    assert 0 < c["valid_rows"] < meta["rows"]
    assert c["nan_by_feature"]["ivr"] == c["invalid_rows"]  # ivr_window = 252 bars: the last to warm up
    # windows of 20 daily bars inside one contract, every row valid, exist in numbers (120 cannot: a contract lives
    # at most about 45 bars)
    assert len(open_dataset(out, 20)) > 1000


def test_every_option_is_documented() -> None:
    parser = cli.build_parser()

    def walk(p: argparse.ArgumentParser, path: str) -> None:
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(sub, f"{path} {name}")
            elif not isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
                assert action.help, f"{path}: option {action.option_strings or action.dest} has no help"

    walk(parser, "condorbrain")
    for sub in ("synth", "build", "validate", "info"):
        with pytest.raises(SystemExit) as e:
            cli.main(["data", sub, "--help"])
        assert e.value.code == 0
    assert cli.main(["data"]) == 0  # prints the data commands
