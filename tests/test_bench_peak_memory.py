"""benchmarks/peak_memory.py: its live-bytes tracker counts what torch allocates and frees, as the GPU's
max_memory_allocated does (the seed prediction itself is a benchmark figure, not asserted)."""

from __future__ import annotations

import pytest
import torch
from _bench import benchmark_module


@pytest.fixture(scope="module")
def bench():
    with benchmark_module("peak_memory") as module:
        yield module


def test_live_bytes_follows_allocations_views_and_frees(bench):
    x = torch.randn(1000)  # before the mode: not counted
    with bench.LiveBytes() as mem:
        a = x * 2  # 4,000 B
        v = a.view(10, 100)[3]  # a view: same storage, nothing new
        b = torch.empty(500, dtype=torch.float64)  # 4,000 B
        assert mem.live == 8_000 and mem.peak == 8_000
        del b
        assert mem.live == 4_000 and mem.peak == 8_000
        assert mem.mark() == 4_000 and mem.peak == 4_000
        c = a.to(torch.bfloat16)  # 2,000 B
        del a  # the view keeps a's storage alive
        assert mem.live == 6_000
        del v
        assert mem.live == 2_000 and mem.peak == 6_000
        del c
        assert mem.live == 0


def test_autograd_saves_and_frees_are_seen(bench):
    w = torch.randn(64, 64, requires_grad=True)
    x = torch.randn(32, 64)
    with bench.LiveBytes() as mem:
        h = torch.tanh(x @ w)  # x @ w is freed once tanh has run: tanh's backward needs only its output h
        assert mem.live == 32 * 64 * 4 and mem.peak == 2 * 32 * 64 * 4
        h.sum().backward()
        assert mem.live == 32 * 64 * 4 + 64 * 64 * 4  # h, and the gradient of w (autograd's buffers are freed)
    assert w.grad.untyped_storage().nbytes() == 64 * 64 * 4
