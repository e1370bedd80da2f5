"""benchmarks/gpu_sweep.py: variants parse, apply and are undone; a tiny CPU run records every variant, a failing one
beside the others. (Timings are never asserted; the figures come from the GPU machine.)"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
from _bench import benchmark_module

from condorbrain.ssm.triton import ssd, step


@pytest.fixture(scope="module")
def sweep():
    with benchmark_module("gpu_sweep") as module:
        yield module


def test_variants_apply_and_are_undone(sweep, monkeypatch):
    monkeypatch.delenv("CONDORBRAIN_SSD_DOT", raising=False)
    before = (ssd.HEADS_PER_PROGRAM, step._STATE_TILE)
    with sweep.applied("ssd.HEADS_PER_PROGRAM=2+step._STATE_TILE=512+env:CONDORBRAIN_SSD_DOT=tf32"):
        assert (ssd.HEADS_PER_PROGRAM, step._STATE_TILE) == (2, 512)
        assert os.environ["CONDORBRAIN_SSD_DOT"] == "tf32"
    assert (ssd.HEADS_PER_PROGRAM, step._STATE_TILE) == before
    assert "CONDORBRAIN_SSD_DOT" not in os.environ
    with sweep.applied("step._PDL=0"):
        assert step._PDL is False  # a bool setting from "0" (bool("0") would be True)
    assert step._PDL is True
    with pytest.raises(ValueError, match="not a bool setting"), sweep.applied("step._PDL=off"):
        pass
    assert sweep.parse("default") == []
    with pytest.raises(ValueError, match="not NAME=value"):
        sweep.parse("ssd.HEADS_PER_PROGRAM")
    with pytest.raises(ValueError, match="has no setting NO_SUCH"), sweep.applied("ssd.NO_SUCH=1"):
        pass


def test_tiny_cpu_run_records_every_variant(sweep, tmp_path: Path):
    out = tmp_path / "sweep.json"
    variants = ["default", "ssd.HEADS_PER_PROGRAM=1+step._GEMV_MAX_BK=8", "step.NO_SUCH=1"]
    assert sweep.main(["--device", "cpu", "--tiny", "--out", str(out), "--variants", *variants]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["variant"] for r in rows] == variants
    for r in rows[:2]:
        for key in ("train_ms_per_layer", "infer_ms_per_layer", "stream_us_per_layer", "long_ms_per_layer",
                    "long_cost_ratio"):
            assert math.isfinite(r[key]) and r[key] > 0, (r["variant"], key)
    assert "has no setting NO_SUCH" in rows[2]["error"]


def test_tiny_cpu_run_train_only(sweep, tmp_path: Path, capsys):
    """--train-only: the training step alone (the backward's settings), no inference, streaming or long rows."""
    out = tmp_path / "sweep.json"
    variants = ["default", "fused._CONV_BWD_STAGES=1+fused._SAVE_CONV_OUT=0"]
    assert sweep.main(["--device", "cpu", "--tiny", "--train-only", "--out", str(out), "--variants", *variants]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["variant"] for r in rows] == variants
    for r in rows:
        assert math.isfinite(r["train_ms_per_layer"]) and r["train_ms_per_layer"] > 0
        assert not {"infer_ms_per_layer", "stream_us_per_layer", "long_cost_ratio"} & set(r), r
    assert "infer ms" not in capsys.readouterr().out
