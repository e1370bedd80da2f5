"""Every Triton kernel gives the same bits whatever order its programs run in.

On a GPU the programs of a launch run concurrently, in no fixed order; Triton's interpreter runs them one after
another in grid order. A kernel whose programs read what another writes, or write the same element (the gated
norm's weight gradient did, in the first GPU run: right here, 40% off there), passes every interpreter test and
races on the GPU. Here each case runs twice, the second time with every launch's programs in the reverse of grid
order: every pair of programs of a launch then runs in both orders, so an order dependence between two programs
shows as a difference. No kernel uses atomics, so the two runs must agree to the bit: outputs, states and every
gradient, through the training step, inference and streaming of whole backbones, with the fused layer's switches
each way and the size constants that split work over more programs turned down to split it at these small shapes.

Not covered (no interpreter can): races between the threads of one program (a program runs as whole-tensor
operations here) and between kernels, which one stream orders.
"""

from __future__ import annotations

import contextlib

import pytest
import torch

pytest.importorskip("triton", reason="triton is not installed (`pip install triton`, or the `dev` extra)")

import triton
import triton.language as tl

from condorbrain.ssm import triton as triton_path
from condorbrain.ssm.blocks import Backbone, BackboneConfig
from condorbrain.ssm.triton import fused as fused_module
from condorbrain.ssm.triton import ssd as ssd_module
from condorbrain.ssm.triton import step as step_module

pytestmark = pytest.mark.skipif(not triton_path.available("cpu"), reason="the programs' order can only be changed "
                                f"under Triton's interpreter: {triton_path.status('cpu')[1]}")


@contextlib.contextmanager
def programs_reversed():
    """Inside: every launch under the interpreter runs its programs from the last grid index to the first (the
    interpreter loops over the grid in order and sets each program's index; the index is mapped to its mirror)."""
    from triton.runtime import interpreter

    builder_type = type(interpreter.interpreter_builder)
    in_order = builder_type.set_grid_idx

    def mirrored(self, x, y, z):
        nx, ny, nz = self.grid_dim
        in_order(self, nx - 1 - x, ny - 1 - y, nz - 1 - z)

    builder_type.set_grid_idx = mirrored
    try:
        yield
    finally:
        builder_type.set_grid_idx = in_order


def assert_order_free(run):
    """run() (a dict of tensors) in grid order and in reverse: equal to the bit, key by key."""
    forward = run()
    backward = run_reversed(run)
    assert forward.keys() == backward.keys()
    differ = [k for k in forward if not torch.equal(forward[k], backward[k])]
    assert not differ, f"depends on the order of the programs: {differ}"


def run_reversed(run):
    with programs_reversed():
        return run()


# --- the check itself sees an order dependence --------------------------------------------------------------------

@triton.jit
def _last_program_wins(out_ptr):
    # a deliberate race: every program stores its index at the same address
    tl.store(out_ptr, tl.program_id(0))


def test_reversal_shows_a_race():
    out = torch.full((1,), -1, dtype=torch.int32)
    _last_program_wins[(5,)](out)
    assert out.item() == 4
    with programs_reversed():
        _last_program_wins[(5,)](out)
    assert out.item() == 0
    _last_program_wins[(5,)](out)  # and restored after
    assert out.item() == 4


# --- whole backbones on the Triton path ------------------------------------------------------------------------------

@pytest.fixture
def split_small(monkeypatch):
    """The constants that split a launch's work over more programs, turned down so that these small shapes split
    along every axis they have: 1 head a program in the forward's chunk kernel and _chunk_bwd_dx (a group's 2 heads in
    2 programs; _chunk_bwd_bc keeps a group's heads in one, storing dB, dC straight into the conv's gradient),
    _chunk_bwd_bc's state columns (2 blocks of 16 at d_state 32), the state kernels' rows (16 a program, as for few
    sequences), the norm's backward (3 programs over 10 tiles: runs of several, a partial last one), the conv's
    backward (a row's steps over 2 programs)."""
    monkeypatch.setenv("CONDORBRAIN_SCAN_BACKEND", "triton")
    for name, value in {"HEADS_PER_PROGRAM": 1, "_DX_HEADS": 1, "_BWD_STATE_BLOCK": 16,
                        "_STATE_PROGRAMS": 1 << 20}.items():
        monkeypatch.setattr(ssd_module, name, value)
    monkeypatch.setattr(fused_module, "_NORM_BWD_PROGRAMS", 3)
    monkeypatch.setattr(fused_module, "_CONV_BWD_PROGRAMS", 1 << 20)


# each: the fused layer's module switches (condorbrain.ssm.triton.fused / .ssd) set so
SWITCHES = {
    "defaults": {},
    # every switch the other way at once (each is tested both ways against float64 in test_triton_fused.py)
    "the other way": {"fused._CONV_BWD_WARPS": 8, "fused._NORM_OUT_IN_BWD": False, "fused._GRADS_IN_ACT_DTYPE": False,
                      "fused._NORM_BWD_ROWS": 16, "ssd._BWD_STATES_BF16": False, "ssd._DX_CHANNEL_BLOCKS": 1,
                      "ssd._BC_HEADS": 1, "ssd._DX_HEADS": 2, "fused._SAVE_CONV_OUT": False,
                      "fused._CONV_BWD_STAGES": 1, "fused._CONV_BWD_BL": 16, "fused._NORM_BWD_STAGES": 1,
                      "ssd._COLSUM_IN_DX": True, "fused._DSILU_IN_SSD": True, "fused._CONV_BWD_SLIDE": True},
}


def _set(monkeypatch, switches):
    for name, value in switches.items():
        module, attr = name.split(".")
        monkeypatch.setattr({"fused": fused_module, "ssd": ssd_module}[module], attr, value)


L = 20  # steps: 2 chunks of 16 (Mamba-2), the last partial


def _backbone(mixer, d_intermediate=48):
    # Mamba-2: 4 heads of 32 channels (2 of _chunk_bwd_dx's channel blocks), 2 groups, d_state 32, two blocks (the
    # second's norm adds the residual), the gated MLP's norm and add; Mamba (one block): the selective scan's path
    torch.manual_seed(0)
    if mixer == "mamba2":
        config = BackboneConfig(d_model=64, n_layer=2, mixer=mixer, d_intermediate=d_intermediate, d_state=32,
                                headdim=32, ngroups=2, chunk_size=16)
    else:
        config = BackboneConfig(d_model=32, n_layer=1, mixer=mixer, d_intermediate=d_intermediate, d_state=8)
    return Backbone(config)


# the defaults under bf16 autocast (as training runs; the SSD's gradients and backward states in bf16), the other way
# in float32
@pytest.mark.parametrize("switches,autocast", [("defaults", True), ("the other way", False)])
def test_mamba2_training_step(split_small, monkeypatch, switches, autocast):
    _set(monkeypatch, SWITCHES[switches])
    model = _backbone("mamba2")
    x = torch.randn(2, L, model.config.d_model)
    w = torch.randn(2, L, 64)

    def run():
        model.zero_grad(set_to_none=True)
        xx = x.clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out = model(xx)
        (out.float() * w).sum().backward()
        return {"out": out.detach(), "dx": xx.grad, **{n: p.grad for n, p in model.named_parameters()}}

    assert_order_free(run)


@pytest.mark.parametrize("mixer", ["mamba2", "mamba"])
def test_inference_forward(split_small, mixer):
    # no gradient: the forward's kernels only
    model = _backbone(mixer).eval()
    x = torch.randn(2, L, model.config.d_model)

    def run():
        with torch.no_grad():
            return {"out": model(x)}

    assert_order_free(run)


def test_inference_forward_deferred_norm(split_small):
    # one group: the gated norms deferred (condorbrain.ssm.pending): a scan program per head storing its column of
    # the rows' sums of squares, which the next block's add + norm and the final norm read
    torch.manual_seed(0)
    model = Backbone(BackboneConfig(d_model=64, n_layer=2, mixer="mamba2", d_state=32, headdim=32,
                                    chunk_size=16)).eval()
    x = torch.randn(2, L, model.config.d_model)
    with torch.no_grad():
        assert model.layers[0].mixer.defers_norm(x)

    def run():
        with torch.no_grad():
            return {"out": model(x)}

    assert_order_free(run)


def test_mamba_training_step(split_small):
    model = _backbone("mamba", d_intermediate=0)
    x = torch.randn(2, L, model.config.d_model)

    def run():
        model.zero_grad(set_to_none=True)
        xx = x.clone().requires_grad_(True)
        out = model(xx)
        out.square().sum().backward()
        return {"out": out.detach(), "dx": xx.grad, **{n: p.grad for n, p in model.named_parameters()}}

    assert_order_free(run)


@pytest.mark.parametrize("mixer", ["mamba2", "mamba"])
@pytest.mark.parametrize("batch", [1, 3])
def test_streaming_steps(split_small, monkeypatch, mixer, batch):
    # the step kernels on small state tiles (more programs a layer), the GEMV path of the block's norm and in_proj
    monkeypatch.setattr(step_module, "_STATE_TILE", 128)
    model = _backbone(mixer).eval()
    xs = torch.randn(3, batch, 1, model.config.d_model)

    def run():
        cache = model.allocate_inference_cache(batch)
        with torch.no_grad():
            gen = torch.Generator().manual_seed(1)
            for states in cache:  # random, not zero, states to start from
                for s in states:
                    s.copy_(torch.randn(s.shape, generator=gen))
            outs = {f"out {t}": model.step(x, cache) for t, x in enumerate(xs)}
        return {**outs, **{f"state {i}.{j}": s for i, c in enumerate(cache) for j, s in enumerate(c)}}

    assert_order_free(run)


# --- the scans alone, with what the layers leave out (initial and final states) -------------------------------------

def _scan_grads(fn, tensors, **kwargs):
    """fn's outputs and the gradients of fixed random weights against them, with respect to every tensor."""
    leaves = {k: v.clone().requires_grad_(True) for k, v in tensors.items()}
    outs = fn(**leaves, **kwargs)
    gen = torch.Generator().manual_seed(1)
    torch.autograd.backward(outs, [torch.randn(o.shape, generator=gen) for o in outs])
    return {"out": outs[0].detach(), "final": outs[1].detach(), **{f"d{k}": v.grad for k, v in leaves.items()}}


def _randn():
    gen = torch.Generator().manual_seed(0)
    return lambda *shape: torch.randn(*shape, generator=gen)


def test_ssd_scan_with_states(split_small):
    # 2 groups of 2 heads, 40 channels (_chunk_bwd_dx: 2 blocks, the second mostly masked), d_state 40 (3 column
    # blocks of _chunk_bwd_bc, the last half masked), 3 chunks with the last partial, an initial and a final state
    r = _randn()
    b, L, h, p, g, n = 1, 41, 4, 40, 2, 40
    tensors = {"x": r(b, L, h, p), "dt": r(b, L, h) * 0.5, "A": -0.5 - r(h).abs(), "B": r(b, L, g, n),
               "C": r(b, L, g, n), "D": r(h, p), "z": r(b, L, h, p), "dt_bias": r(h) * 0.3,
               "initial_states": r(b, h, p, n)}
    assert_order_free(lambda: _scan_grads(ssd_module.ssd_scan_triton, tensors, chunk_size=16, dt_softplus=True,
                                          return_final_states=True))


def test_selective_scan_with_states():
    from condorbrain.ssm.triton.selective import selective_scan_triton

    # grouped time-varying B, C (2 groups of 3 channels), every option, 3 tiles of 8 steps (the last short)
    r = _randn()
    b, d, L, n = 2, 6, 19, 4
    tensors = {"u": r(b, d, L), "delta": r(b, d, L) * 0.5, "A": -0.1 - 2 * r(d, n).abs(), "B": r(b, 2, n, L),
               "C": r(b, 2, n, L), "D": r(d), "z": r(b, d, L), "delta_bias": r(d) * 0.3, "initial_state": r(b, d, n)}
    assert_order_free(lambda: _scan_grads(selective_scan_triton, tensors, delta_softplus=True, chunk_size=8,
                                          return_last_state=True))
