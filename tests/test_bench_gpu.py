"""benchmarks/gpu.py: the harness runs every case in its CPU smoke mode, its floor arithmetic, and a row that runs
out of memory is recorded while the others still run. (Timings are never asserted; the GPU figures come from the GPU
machine.)"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from _bench import benchmark_module
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


@pytest.fixture(scope="module")
def gpu():
    with benchmark_module("gpu") as module:
        yield module


def run(gpu, tmp_path: Path, *args: str) -> dict:
    out = tmp_path / "gpu.json"
    threads = torch.get_num_threads()
    try:
        assert gpu.main(["--device", "cpu", "--tiny", "--threads", "1", "--out", str(out), *args]) == 0
    finally:
        torch.set_num_threads(threads)
    return json.loads(out.read_text())


def positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def test_tiny_cpu_run_has_every_case_with_sane_numbers(gpu, tmp_path):
    res = run(gpu, tmp_path)
    assert positive(res["floors"]["matmul_flops_per_s"]) and positive(res["floors"]["copy_bytes_per_s"])
    assert sorted(res["cases"]) == ["a", "b", "c", "d"]
    measured = {"a": "tokens_per_s", "b": "samples_per_s", "c": "ms", "d": "tokens_per_s"}
    for case, key in measured.items():
        rows = res["cases"][case]["rows"]
        for r in rows:
            if r.get("path") == "cuda-graph":
                assert "CUDA graphs need a CUDA device" in r["skipped"]
            elif r["model"] == "ref_m2":  # the official layer is CUDA-only (and not installed here)
                assert "CUDA only" in r["skipped"]
            else:
                assert "error" not in r and "skipped" not in r, r
                for k in (key, "ms", "flops", "bytes", "matmul_floor_pct", "bandwidth_floor_pct"):
                    assert positive(r[k]), (case, r["model"], k, r.get(k))
                assert all(b["met"] is None for b in r.get("bars", {}).values())  # tiny: bars not judged
    ran = {(r["model"], r.get("path")) for r in res["cases"]["c"]["rows"] if "ms" in r}
    assert ran == {("cb_m2", "eager"), ("cb_m2n", "eager"), ("cb_m1", "eager")}
    for model in ("cb_m2", "cb_m2n", "cb_m1", "attn"):
        long_rows = [r for r in res["cases"]["d"]["rows"] if r["model"] == model]
        assert [r["L"] for r in long_rows] == [8, 16, 32, 64] and {r["L"] * r["batch"] for r in long_rows} == {128}
        assert long_rows[0]["per_token_cost_vs_first_L"] == 1.0
        assert all(positive(r["per_token_cost_vs_first_L"]) for r in long_rows)


def test_out_of_memory_in_one_row_is_recorded_and_the_others_run(gpu, tmp_path, monkeypatch):
    build = gpu.gm.build

    class OutOfMemory(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.ones(1))

        def forward(self, x):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 80.00 GiB (injected)")

    monkeypatch.setattr(gpu.gm, "build", lambda name, *a: OutOfMemory() if name == "attn" else build(name, *a))
    res = run(gpu, tmp_path, "--case", "a,b")
    assert sorted(res["cases"]) == ["a", "b"]
    for case in ("a", "b"):
        rows = res["cases"][case]["rows"]
        rows = [r for r in rows if r.get("path") != "cuda-graph"]  # the graph rows: skipped
        # on the CPU before a model is built
        assert [r["error"] for r in rows if r["model"] == "attn"] == ["out of memory"]
        assert all(positive(r["tokens_per_s"]) for r in rows if r["model"] in ("cb_m2", "cb_m2n", "cb_m1"))


def test_floor_arithmetic_on_a_known_linear(gpu):
    gm = gpu.gm
    tokens, n_in, n_out = 8, 1024, 4096
    # 8 tokens through Linear(1024 -> 4096): 8 * 1024 * 4096 multiply-adds = 67,108,864 FLOPs, as torch counts them
    assert gm.linear_flops(n_in, n_out) * tokens == 2 * 8 * 1024 * 4096 == 67_108_864
    with FlopCounterMode(display=False) as counter:
        nn.Linear(n_in, n_out, bias=False)(torch.randn(tokens, n_in))
    assert counter.get_total_flops() == 67_108_864
    # at 1e12 FLOP/s and 1e11 B/s, a call of 1 ms with those FLOPs and 4 MB is at 6.71% / 4% of the floors' times
    fig = gpu.floor_figures(1e-3, 67_108_864, 4e6, {"matmul_flops_per_s": 1e12, "copy_bytes_per_s": 1e11})
    assert fig["matmul_floor_pct"] == pytest.approx(6.7108864) and fig["bandwidth_floor_pct"] == pytest.approx(4.0)
    # a training step = 3 forward passes of FLOPs; bytes: activations in each pass plus 36 B per parameter
    cost = gm.Cost(flops=100.0, act_elems=10.0)
    assert gm.train_step_cost(cost, params=1000, tokens=5, act_bytes=2) == (1500.0, 3 * 10 * 2 * 5 + 36_000)
    assert gm.forward_cost(cost, params=1000, tokens=5, act_bytes=2) == (500.0, 10 * 2 * 5 + 4000)


def test_model_cost_counts_the_linears_as_torch_does(gpu):
    """The Linears of the analytic count equal torch's FLOP counter on the attention model (its SDPA term aside)."""
    gm = gpu.gm
    d, layers, L, B = 32, 2, 16, 3
    net = gm.build("attn", d, layers, gm.TINY)
    with FlopCounterMode(display=False) as counter:
        net(torch.randn(B, L, gm.N_IN))
    counts = counter.get_flop_counts()["Global"]
    linears = sum(v for k, v in counts.items() if "sdpa" not in str(k) and "attention" not in str(k))
    cost = gm.model_cost("attn", d, layers, L, gm.TINY)
    assert linears == (cost.flops - layers * 2 * L * d) * B * L  # minus the causal half of QK^T and AV


def test_models_run_in_the_order_given_and_a_spent_budget_skips_rows(gpu, tmp_path):
    res = run(gpu, tmp_path, "--case", "a,c", "--models", "cb_m1,attn")
    assert [(r["model"], r["path"]) for r in res["cases"]["a"]["rows"]] == [
        ("cb_m1", "eager"), ("cb_m1", "cuda-graph"), ("attn", "eager")]  # the captured step: the library's layers
    assert {r["model"] for r in res["cases"]["c"]["rows"]} == {"cb_m1"}  # attention has no streaming row
    assert res["config"]["models"] == ["cb_m1", "attn"]
    assert all(positive(r["tokens_per_s"]) for r in res["cases"]["a"]["rows"] if r["path"] == "eager")
    # a budget spent before the first row: every row is recorded as skipped, naming the budget, and the JSON is written
    res = run(gpu, tmp_path, "--case", "a,d", "--models", "cb_m2n", "--deadline-s", "0")
    rows = res["cases"]["a"]["rows"] + res["cases"]["d"]["rows"]
    assert len(rows) == 2 + 4
    assert all(r["skipped"] == "time budget (--deadline-s 0) spent before this row started" for r in rows)


def test_rows_are_saved_as_they_finish(gpu, tmp_path, monkeypatch):
    """The JSON on disk holds every finished row while later rows run (a run killed at its limit keeps them)."""
    out = tmp_path / "gpu.json"
    seen = []
    train_row = gpu.train_row

    def spying_row(name, *args):
        if out.exists():
            seen.append((name, [r["model"] for r in json.loads(out.read_text())["cases"]["a"]["rows"]]))
        return train_row(name, *args)

    monkeypatch.setattr(gpu, "train_row", spying_row)
    run(gpu, tmp_path, "--case", "a", "--models", "cb_m2n,cb_m1,attn")
    # each model's eager row, then (this project's layers) its CUDA-graph row (skipped on the CPU)
    assert seen == [("cb_m2n", ["cb_m2n"]), ("cb_m1", ["cb_m2n", "cb_m2n"]), ("cb_m1", ["cb_m2n", "cb_m2n", "cb_m1"]),
                    ("attn", ["cb_m2n", "cb_m2n", "cb_m1", "cb_m1"])]


def test_unknown_model_is_named(gpu, tmp_path, capsys):
    with pytest.raises(SystemExit):
        gpu.main(["--device", "cpu", "--tiny", "--models", "cb_m2n,mamba3", "--out", str(tmp_path / "x.json")])
    assert "unknown model(s) ['mamba3']" in capsys.readouterr().err
