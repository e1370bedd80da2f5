"""The inference casts of parameters (``condorbrain.ssm.casts``): made once where no gradient is recorded, equal to
the cast they stand for, remade in place when a source changes, never used where a gradient is recorded."""

from __future__ import annotations

import gc

import pytest
import torch
from torch import nn

from condorbrain.ssm import casts

BF16 = torch.bfloat16


@pytest.fixture(autouse=True)
def empty_cache():
    casts.clear()
    yield
    casts.clear()


def param(*shape: int, seed: int = 0) -> nn.Parameter:
    return nn.Parameter(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)))


def test_cast_is_made_once_and_equals_the_cast():
    w = param(6, 5)
    with torch.no_grad():
        a = casts.cast(w, BF16)
        b = casts.cast(w, BF16)
    assert a is b and a.dtype == BF16
    assert torch.equal(a, w.detach().to(BF16))
    assert casts.cast(None, BF16) is None and casts.cast(w, torch.float32) is w  # nothing to cast


def test_cast_follows_in_place_updates_in_the_same_storage():
    w = param(6, 5)
    opt = torch.optim.SGD([w], lr=0.5)
    with torch.no_grad():
        first = casts.cast(w, BF16)
        ptr = first.data_ptr()
    for step in range(3):  # an optimizer step, load_state_dict and a plain in-place write: each is seen
        if step == 0:
            w.grad = torch.ones_like(w)
            opt.step()
        elif step == 1:
            nn.Linear(5, 6, bias=False).requires_grad_(False).load_state_dict({"weight": torch.full((6, 5), 3.0)})
            with torch.no_grad():
                w.copy_(torch.full((6, 5), 3.0))
        else:
            with torch.no_grad():
                w[0, 0] = -7.0
        with torch.no_grad():
            got = casts.cast(w, BF16)
        assert got.data_ptr() == ptr  # remade in place: a graph that reads it reads the new values
        assert torch.equal(got, w.detach().to(BF16)), step


def test_no_cache_where_a_gradient_is_recorded():
    w = param(4, 3)
    assert casts.cast(w, BF16) is w  # the caller casts (autograd sees its usual graph)
    x = torch.randn(2, 3)
    y = (x.to(BF16) @ casts.cast(w, BF16).to(BF16).t()).float().sum()
    y.backward()
    torch.testing.assert_close(w.grad, x.to(BF16).float().sum(0).expand(4, 3).to(w.grad.dtype), rtol=1e-2,
                               atol=1e-2)
    assert len(casts._CACHE) == 0


def test_inference_mode_entries_are_remade_outside_it():
    w = param(4, 3)
    with torch.inference_mode():
        a = casts.cast(w, BF16)
    assert not a.is_inference()  # a normal tensor, so that it can be remade in place anywhere
    with torch.no_grad():
        w.mul_(2.0)
        b = casts.cast(w, BF16)
    assert b is a and torch.equal(b, w.detach().to(BF16))
    with torch.inference_mode():
        t = torch.randn(4, 3)
        assert casts.cast(t, BF16) is t  # an inference tensor has no version counter: not cached


def test_folded_is_the_float32_product_rounded_once():
    w, s = param(6, 5, seed=1), param(5, seed=2)
    want = (w.detach().float() * s.detach().float()).to(BF16)
    with torch.no_grad():
        got = casts.folded(w, s, BF16)
        assert casts.folded(w, s, BF16) is got
        assert torch.equal(got, want)
        s.add_(1.0)  # the second source changed: remade
        assert torch.equal(casts.folded(w, s, BF16), (w.float() * s.float()).to(BF16))
        s2 = param(5, seed=3)  # a different second source: its own product, not the first's
        assert torch.equal(casts.folded(w, s2, BF16), (w.float() * s2.float()).to(BF16))
    got_grad = casts.folded(w, s, BF16)  # with a gradient recorded: computed, not cached
    assert torch.equal(got_grad, (w.detach().float() * s.detach().float()).to(BF16))


def test_entries_are_freed_with_their_parameter_and_by_clear():
    w = param(3, 3)
    with torch.no_grad():
        casts.cast(w, BF16)
    assert len(casts._CACHE) == 1
    del w
    gc.collect()
    assert len(casts._CACHE) == 0
    v = param(3, 3)
    with torch.no_grad():
        casts.cast(v, BF16)
    casts.clear()
    assert len(casts._CACHE) == 0


def test_recorded_entries_are_refreshed_in_place():
    # what a CUDA graph wrapper does: record the entries a run reads, then before each replay refresh them
    w, s = param(6, 5), param(5, seed=4)
    with torch.no_grad(), casts.recording() as entries:
        c = casts.cast(w, BF16)
        f = casts.folded(w, s, BF16)
    assert len(entries) == 2
    with torch.no_grad():
        w.sub_(0.25)
        s.mul_(-1.0)
    casts.refresh(entries)
    assert torch.equal(c, w.detach().to(BF16))
    assert torch.equal(f, (w.detach().float() * s.detach().float()).to(BF16))
    casts.clear()  # entries a recording holds stay alive and refreshable
    with torch.no_grad():
        w.add_(1.0)
    casts.refresh(entries)
    assert torch.equal(c, w.detach().to(BF16))
