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
        assert mem.timeline == [4_000, 6_000]  # from the mark: the live bytes there, then after each allocation


def test_autograd_saves_and_frees_are_seen(bench):
    w = torch.randn(64, 64, requires_grad=True)
    x = torch.randn(32, 64)
    with bench.LiveBytes() as mem:
        h = torch.tanh(x @ w)  # x @ w is freed once tanh has run: tanh's backward needs only its output h
        assert mem.live == 32 * 64 * 4 and mem.peak == 2 * 32 * 64 * 4
        h.sum().backward()
        assert mem.live == 32 * 64 * 4 + 64 * 64 * 4  # h, and the gradient of w (autograd's buffers are freed)
    assert w.grad.untyped_storage().nbytes() == 64 * 64 * 4


def test_working_set_is_the_largest_per_allocation_slope(bench):
    # One layer's backward at two lengths, 200 and 300 tokens: a 5,000 B weight gradient allocated once 20 B a token
    # of saved activations are gone. The peaks' slope is negative (1,000 B above the forward at 200 tokens, nothing
    # above it at 300); allocation by allocation nothing above the forward's bytes grows with tokens.
    short, long = [0, 5_000 - 200 * 20], [0, 5_000 - 300 * 20]
    assert (max(long) - max(short)) / 100 == -10.0
    assert bench.working_per_token(short, long, 100) == 0.0
    # A buffer of 10 B a token allocated before the activations are freed: that is the working set.
    short.insert(1, 5_000 + 200 * 10)
    long.insert(1, 5_000 + 300 * 10)
    assert bench.working_per_token(short, long, 100) == 10.0
    with pytest.raises(RuntimeError, match="2 allocations at one length and 3"):
        bench.working_per_token(short[:2], long, 100)


def test_anchors_norm_keeps_float32_copies_under_cuda_autocast(bench):
    # Under CUDA's autocast the anchors' norm keeps x in float32 (pow's input, 4d B a token), x * rsqrt in float32
    # (4d), rsqrt (4) and the in-projection's bf16 copy (2d); under the CPU's x * rsqrt in bf16 (2d), rsqrt (2) and
    # the copy (2d): 6d + 2 B a token more on a GPU.
    assert bench.anchors_norm_cuda_extra() == 6 * bench.D_MODEL + 2
