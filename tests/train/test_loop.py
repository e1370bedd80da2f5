"""The loop's optimizer step: accumulation, clipping, non-finite losses, precision, checkpointing of activations,
runtime flags."""

from __future__ import annotations

import os
from contextlib import contextmanager

import pytest
import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_pre_hook

import _tiny
from condorbrain.train import NonFiniteLossError, TensorBatches, enable_grad_checkpointing, fit
from condorbrain.train.loop import _indexed_with_last


@contextmanager
def grads_at_each_step():
    """Record (clone) every parameter's gradient just before each optimizer step, of any optimizer."""
    seen: list[list[torch.Tensor]] = []

    def hook(optimizer, args, kwargs):
        seen.append([p.grad.detach().clone() for g in optimizer.param_groups for p in g["params"]])

    handle = register_optimizer_step_pre_hook(hook)
    try:
        yield seen
    finally:
        handle.remove()


def _one_epoch(tmp_path, name, n, batch_size, accum, **kw):
    model = _tiny.make_model()
    cfg = _tiny.cfg(batch_size=batch_size, grad_accum_steps=accum, epochs=1, warmup_steps=0, **kw)
    x, y = _tiny.data(n)
    with grads_at_each_step() as grads:
        fit(model, _tiny.loss_fn, TensorBatches(x, y, batch_size, shuffle=False), None, cfg, tmp_path / name)
    return model, grads


@pytest.mark.parametrize("n, micro, accum", [(16, 4, 4), (10, 4, 4), (16, 2, 8)])
def test_accumulation_equals_big_batch(tmp_path, n, micro, accum):
    """One step over n samples as micro-batches (the last one short for n = 10, and the group then holds 3 of the 4
    micro-batches) gives the big batch's gradient and parameters."""
    big_model, big_grads = _one_epoch(tmp_path, "big", n, n, 1)
    acc_model, acc_grads = _one_epoch(tmp_path, "acc", n, micro, accum)
    assert len(big_grads) == len(acc_grads) == 1
    for a, b in zip(acc_grads[0], big_grads[0]):
        assert torch.allclose(a, b, atol=1e-6, rtol=0)
    for k, v in big_model.state_dict().items():
        assert torch.allclose(acc_model.state_dict()[k], v, atol=1e-6, rtol=0)


def test_short_last_group_uses_its_own_mean(tmp_path):
    """10 samples, micro-batches of 4, accumulation 2: a step over samples 0-7, then one over samples 8-9 alone,
    each with the gradient of its own samples' mean loss."""
    _, grads = _one_epoch(tmp_path, "acc", 10, 4, 2)
    assert len(grads) == 2
    x, y = _tiny.data(10)
    reference = _tiny.make_model()
    # the run's learning rates: lr * cosine_with_warmup(s, 0, 2) = 0.05 * [1, 0.5]
    opt = torch.optim.AdamW(reference.parameters(), lr=0.05, weight_decay=0.0)
    for rows, got, lr in ((slice(0, 8), grads[0], 0.05), (slice(8, 10), grads[1], 0.025)):
        opt.zero_grad()
        _tiny.loss_fn(reference(x[rows]), {k: v[rows] for k, v in y.items()})[0].backward()
        in_fit_order = [p for p in reference.parameters() if p.ndim >= 2] + \
            [p for p in reference.parameters() if p.ndim < 2]  # fit's groups: decayed, then not decayed
        for p, g in zip(in_fit_order, got, strict=True):
            assert torch.allclose(p.grad, g, atol=1e-6, rtol=0)
        opt.param_groups[0]["lr"] = lr
        opt.step()


def test_gradient_clipping(tmp_path):
    _, raw = _one_epoch(tmp_path, "raw", 16, 16, 1)
    infos = []
    model = _tiny.make_model()
    cfg = _tiny.cfg(batch_size=16, epochs=1, warmup_steps=0, clip_grad_norm=0.01)
    x, y = _tiny.data(16)
    with grads_at_each_step() as clipped:
        fit(model, _tiny.loss_fn, TensorBatches(x, y, 16, shuffle=False), None, cfg, tmp_path / "clip",
            callbacks=[infos.append])
    raw_norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in raw[0]]))
    assert raw_norm > 0.01
    assert infos[0].grad_norm == pytest.approx(float(raw_norm), rel=1e-6)  # reported before clipping
    clipped_norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in clipped[0]]))
    assert float(clipped_norm) == pytest.approx(0.01, rel=1e-5)
    for g, r in zip(clipped[0], raw[0]):  # same direction, scaled by max_norm / norm
        assert torch.allclose(g, r * (0.01 / (raw_norm + 1e-6)), atol=1e-8, rtol=1e-5)


class ScriptedNaN:
    """The loss of the k-th training call (0-based) is NaN."""

    def __init__(self, bad_call: int) -> None:
        self.calls, self.bad_call = 0, bad_call

    def __call__(self, out, targets):
        total, parts = _tiny.loss_fn(out, targets)
        if self.calls == self.bad_call:
            total = total * float("nan")
        self.calls += 1
        return total, parts


def test_nan_loss_stops_with_step_and_batch_and_no_update(tmp_path):
    # 40 samples, micro-batches of 4 (10 per epoch), accumulation 2 (5 steps per epoch). Call 13 is epoch 1,
    # batch 3: the second micro-batch of optimizer step 7 (6 completed).
    model = _tiny.make_model()
    snapshots = {}
    cfg = _tiny.cfg(grad_accum_steps=2, epochs=3)
    with pytest.raises(NonFiniteLossError, match=r"epoch 1, batch 3, while computing optimizer step 7") as info:
        fit(model, ScriptedNaN(13), _tiny.batches(cfg), None, cfg, tmp_path / "run",
            callbacks=[lambda s: snapshots.__setitem__(s.step, _tiny.params(model))])
    assert (info.value.step, info.value.epoch, info.value.batch_index) == (7, 1, 3)
    assert "parameters are those after step 6" in str(info.value)
    assert max(snapshots) == 6
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in snapshots[6].items())


def test_infinite_gradient_stops_before_the_step(tmp_path):
    model = _tiny.make_model()
    snapshots = {}

    def loss_fn(out, targets):
        total, parts = _tiny.loss_fn(out, targets)
        if loss_fn.calls == 4:  # step 3: finite loss (sqrt(0) = 0), infinite gradient (1 / (2 sqrt(0)))
            zero = out["ret"].sum() - out["ret"].sum().detach()
            total = total + torch.sqrt(zero)
        loss_fn.calls += 1
        return total, parts

    loss_fn.calls = 0
    cfg = _tiny.cfg(grad_accum_steps=2, epochs=1)
    with pytest.raises(NonFiniteLossError, match=r"non-finite gradient norm .* at optimizer step 3 \(epoch 0, "
                                                 r"batches 4\.\.5\)"):
        fit(model, loss_fn, _tiny.batches(cfg), None, cfg, tmp_path / "run",
            callbacks=[lambda s: snapshots.__setitem__(s.step, _tiny.params(model))])
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in snapshots[2].items())


class AutocastProbe(_tiny.TinyNet):
    def forward(self, x):
        device = x.device.type
        self.seen = (torch.is_autocast_enabled(device), torch.get_autocast_dtype(device))
        return super().forward(x)


@pytest.mark.parametrize("amp, enabled", [("auto", False), ("fp32", False), ("bf16", True)])
def test_mixed_precision_modes_on_cpu(tmp_path, amp, enabled):
    torch.manual_seed(0)
    model = AutocastProbe()
    cfg = _tiny.cfg(amp=amp, max_steps=3, warmup_steps=1)
    x, y = _tiny.data(8)
    result = fit(model, _tiny.loss_fn, _tiny.batches(cfg), [(x, y)], cfg, tmp_path / amp)
    assert model.seen[0] is enabled and (not enabled or model.seen[1] == torch.bfloat16)
    assert all(p.dtype == torch.float32 for p in model.parameters())  # weights stay fp32
    assert result.val is not None and torch.isfinite(torch.tensor(result.val["val_loss"]))


class BlockNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Dropout(0.3)) for _ in range(3))
        self.head = nn.Linear(4, 1)
        self.calls = 0
        for b in self.blocks:  # on the inner layer: the recompute calls the block's forward, not the block
            b[0].register_forward_pre_hook(lambda *a: setattr(self, "calls", self.calls + 1))

    def forward(self, x):
        for block in self.blocks:
            x = x + block(x)  # (B, 4)
        return self.head(x)


def test_grad_checkpointing_on_blocks_recomputes_and_keeps_gradients():
    x, y = torch.randn(6, 4), torch.randn(6, 1)
    grads = {}
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = BlockNet()
        if checkpointing:
            assert enable_grad_checkpointing(model) == "blocks"
            assert set(model.state_dict()) == set(BlockNet().state_dict())  # names unchanged
        torch.manual_seed(1)  # same dropout masks; checkpoint replays the RNG state in the recompute
        nn.functional.mse_loss(model(x), y).backward()
        grads[checkpointing] = [p.grad.clone() for p in model.parameters()]
        assert model.calls == (6 if checkpointing else 3)  # each block ran again in the backward pass
    for a, b in zip(grads[False], grads[True]):
        assert torch.allclose(a, b, atol=1e-6, rtol=0)


def test_grad_checkpointing_contract(tmp_path):
    class WithMethod(_tiny.TinyNet):
        enabled = False

        def set_grad_checkpointing(self, enabled: bool) -> None:
            self.enabled = enabled

    model = WithMethod()
    cfg = _tiny.cfg(grad_checkpointing=True, max_steps=2, warmup_steps=0)
    fit(model, _tiny.loss_fn, _tiny.batches(cfg), None, cfg, tmp_path / "m")
    assert model.enabled
    with pytest.raises(ValueError, match="set_grad_checkpointing.*'blocks'"):
        fit(_tiny.make_model(), _tiny.loss_fn, _tiny.batches(cfg), None, cfg, tmp_path / "n")


def _flags():
    return (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic,
            torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision,
            torch.are_deterministic_algorithms_enabled(), os.environ.get("PYTORCH_CUDA_ALLOC_CONF"),
            os.environ.get("CUBLAS_WORKSPACE_CONFIG"))


def test_benchmark_mode_leaves_h100_flags_untouched_on_cpu(tmp_path):
    before = _flags()
    during = []
    cfg = _tiny.cfg(deterministic=False, max_steps=2, warmup_steps=0)
    fit(_tiny.make_model(), _tiny.loss_fn, _tiny.batches(cfg), None, cfg, tmp_path / "run",
        callbacks=[lambda s: during.append(_flags())])
    assert during == [before, before] and _flags() == before


def test_deterministic_mode_repeats_exactly_and_restores_flags(tmp_path):
    before = _flags()
    runs = []
    for name in ("a", "b"):
        model = _tiny.make_model(dropout=0.2)
        enabled = []
        cfg = _tiny.cfg(deterministic=True, ema_decay=0.9, grad_accum_steps=2, seed=7)
        torch.manual_seed(999 if name == "b" else 0)  # fit reseeds: the global state before it does not matter
        result = fit(model, _tiny.loss_fn, _tiny.batches(cfg), [_tiny.data(8)], cfg, tmp_path / name,
                     callbacks=[lambda s: enabled.append(torch.are_deterministic_algorithms_enabled())])
        assert all(enabled)
        runs.append((_tiny.params(model), result.val, _tiny.records(tmp_path / name)))
    assert runs[0][0].keys() == runs[1][0].keys()
    assert all(torch.equal(runs[0][0][k], runs[1][0][k]) for k in runs[0][0])
    assert runs[0][1] == runs[1][1] and runs[0][2] == runs[1][2]
    assert _flags() == before


def test_indexed_with_last():
    assert list(_indexed_with_last("abcd", start=0)) == [(0, "a", False), (1, "b", False), (2, "c", False),
                                                          (3, "d", True)]
    assert list(_indexed_with_last("abcd", start=3)) == [(3, "d", True)]
    assert list(_indexed_with_last("abcd", start=4)) == []


def test_bad_inputs(tmp_path):
    cfg = _tiny.cfg(max_steps=2, warmup_steps=0)
    x, y = _tiny.data(8)
    with pytest.raises(TypeError, match="re-iterable"):
        fit(_tiny.make_model(), _tiny.loss_fn, _tiny.batches(cfg), iter([(x, y)]), cfg, tmp_path / "a")
    with pytest.raises(TypeError, match="len"):
        fit(_tiny.make_model(), _tiny.loss_fn, lambda epoch: iter([(x, y)]), None, _tiny.cfg(), tmp_path / "b")
    with pytest.raises(ValueError, match="warmup_steps"):
        fit(_tiny.make_model(), _tiny.loss_fn, _tiny.batches(cfg), None, _tiny.cfg(warmup_steps=50), tmp_path / "c")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_benchmark_mode_sets_h100_flags_and_bf16_then_restores(tmp_path):
    before = _flags()
    seen = []
    torch.manual_seed(0)
    model = AutocastProbe()

    def probe(_info):
        seen.append((torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.fp32_precision,
                     torch.backends.cudnn.conv.fp32_precision))

    cfg = _tiny.cfg(device="cuda", deterministic=False, max_steps=2, warmup_steps=0)
    fit(model, _tiny.loss_fn, _tiny.batches(cfg), [_tiny.data(8)], cfg, tmp_path / "run", callbacks=[probe])
    assert seen == [(True, "tf32", "tf32")] * 2
    assert model.seen == (True, torch.bfloat16)  # amp="auto" on CUDA
    assert next(model.parameters()).is_cuda and next(model.parameters()).dtype == torch.float32
    assert _flags() == before
