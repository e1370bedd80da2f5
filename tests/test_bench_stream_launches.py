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


def test_triton_step_is_three_launches_per_layer(bench, monkeypatch):
    """With the library's norm, a layer's batch-1 step is the residual add, the norm and in_proj in one GEMV kernel
    (_rmsnorm_gemv), the state update (_mamba2_step_ssm) and the gated norm with out_proj (_mamba2_step_out); plus
    the input Linear, the last add + final norm and the head. In the anchors' wrapper (its own norm) the layer keeps
    its four-op norm and cuBLAS projections around the two step kernels. The eager path is ~40 launches per layer."""
    monkeypatch.setenv("CONDORBRAIN_SCAN_BACKEND", "auto")
    fused = bench.count_step("cb_m2n", 2, "triton")
    assert fused["triton_kernels"] == {"_rmsnorm_gemv": 2, "_mamba2_step_ssm": 2, "_mamba2_step_out": 2,
                                       "_rmsnorm_fwd": 1}
    assert fused["aten_ops"] == {"addmm": 2}
    assert fused["launches"] == 2 * 3 + 3
    anchors_norm = bench.count_step("cb_m2", 2, "triton")
    assert anchors_norm["triton_kernels"] == {"_mamba2_step_ssm": 2, "_mamba2_step_finish": 2}
    eager = bench.count_step("cb_m2n", 2, "torch")
    assert eager["triton"] == 0 and eager["per_layer"] > 30
    assert os.environ["CONDORBRAIN_SCAN_BACKEND"] == "auto"  # restored
