"""benchmarks/stream_launches.py: what its counter counts as a kernel launch, and the launches of a streaming step
on the Triton path (the figure the CUDA-graph latency follows: issue 6's <= 0.2 ms per 24-layer step)."""

from __future__ import annotations

import os

import pytest
import torch
from _bench import benchmark_module

from condorbrain.ssm import triton as triton_path

pytestmark = pytest.mark.skipif(not triton_path.available("cpu"), reason=triton_path.status("cpu")[1])


@pytest.fixture(scope="module")
def bench():
    with benchmark_module("stream_launches") as module:
        yield module


def test_counter_counts_writes_not_views(bench):
    x = torch.randn(4, 6)
    with bench.LaunchCounter() as counter:
        v = x.view(6, 4).t().unsqueeze(0)[0]  # views: no kernel
        w = torch.empty(3)  # an allocation: no kernel
        y = v @ x.t()  # one matmul
        y.add_(1.0)  # in place: a kernel
        w.fill_(2.0)
        parts = torch.split(y, 2)  # views
    assert counter.aten == {"mm": 1, "add_": 1, "fill_": 1}
    assert len(parts) == 2 and not counter.triton


def test_triton_step_is_five_launches_per_layer(bench, monkeypatch):
    """With the library's norm, a layer's step is the residual add fused with the norm (one _rmsnorm_fwd), in_proj,
    the two step kernels and out_proj; plus the input Linear, the first norm (nothing to add yet) and the head. The eager path is ~40
    launches per layer."""
    monkeypatch.setenv("CONDORBRAIN_SCAN_BACKEND", "auto")
    fused = bench.count_step("cb_m2n", 2, "triton")
    assert fused["triton_kernels"] == {"_rmsnorm_fwd": 3, "_mamba2_step_ssm": 2, "_mamba2_step_finish": 2}
    assert fused["aten_ops"] == {"mm": 4, "addmm": 2}
    eager = bench.count_step("cb_m2n", 2, "torch")
    assert eager["triton"] == 0 and eager["per_layer"] > 30
    assert os.environ["CONDORBRAIN_SCAN_BACKEND"] == "auto"  # restored
