"""Every Triton kernel compiles for an H100 (CUDA sm_90, warp size 32), on a machine without a GPU.

The other ``test_triton_*`` files run the kernels under Triton's interpreter, which never compiles them: a kernel
that Triton's compiler or ptxas rejects, or one that asks for more shared memory than an H100 gives a block, would
only show on a GPU. Here the host code of each kernel module runs at the seed's production sizes (configs/
h100-seed.toml: Mamba-2 with d_model 512, expand 2, headdim 64, ngroups 1, L 120, bfloat16 activations, d_state 64
and also 128, chunk_size 64 and 256 requested; Mamba-1 with d_inner 1024, d_state 16) with every
``kernel[grid](...)`` recorded instead of launched, forward and backward (and the streaming step, batch 1 and 2),
so the block sizes, flags and launch options are the ones the host code picks. Each distinct launch is specialised
as Triton specialises a real one (pointer dtypes and 16-byte alignment, integers equal to 1 or divisible by 16:
Triton's own ``native_specialize_impl``) and compiled ahead of time::

    triton.compile(ASTSource(fn=kernel, signature=..., constexprs=..., attrs=...),
                   target=GPUTarget("cuda", 90, 32), options={"num_warps": ..., "enable_fp_fusion": True})

which runs Triton's whole pipeline and ptxas (shipped in the triton wheel) down to a cubin.

The compiling runs in a subprocess (this file run as a script) with ``TRITON_INTERPRET=0``: conftest sets
``TRITON_INTERPRET=1`` before triton is first imported, and then every ``@triton.jit`` is an interpreter wrapper that
cannot be compiled (nor can a fresh JITFunction of its ``fn``, whose helpers are wrappers too). The host checks that
want a CUDA device (``on_device``, ``status``) are patched out there, as the tensors are CPU ones. tests/conftest.py
starts the subprocess as soon as collection has selected this file's tests (``start_early``), so that its ~50 s of
one core overlap the tests before them. The batch is 2, not the seed's 1024: no kernel argument depends on it except
the RMSNorm's row count b * L, divisible by 16 for both.

Fails on a compile error, on shared memory over an H100's 227 KB per block (its opt-in maximum) and on a kernel that
no case launches. Registers and spills are reported, not checked (``pytest -s`` prints the table): Triton's own
``n_regs`` / ``n_spills`` come from the driver when it loads the binary, so they are read from ptxas' report instead
(registers per thread; stack frame and spill stores in bytes per thread); shared memory is the compiled kernel's
``metadata.shared``.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

H100_SHARED_BYTES = 227 * 1024  # cudaDevAttrMaxSharedMemoryPerBlockOptin on an H100 (sm_90)
TARGET = ("cuda", 90, 32)  # GPUTarget(backend, capability, warp size) of an H100
MODULES = ("selective", "ssd", "fused", "step")  # condorbrain.ssm.triton.<module>

# ----------------------------------------------------------------------------------------------------------------
# The cases: host calls at the production sizes, run in the subprocess with the launches recorded
# ----------------------------------------------------------------------------------------------------------------

BATCH, SEQLEN = 2, 120  # seed: batch 1024 (see the module docstring), lookback 120


def _backward(*outs) -> None:
    """Gradients of every output (values are garbage: nothing is launched)."""
    import torch

    torch.autograd.backward(list(outs), [torch.ones_like(o) for o in outs])


def _selective_cases():
    """Mamba-1 (condorbrain.ssm.mamba.Mamba): d_inner 1024, d_state 16, bf16 activations, float32 A, D, dt bias and
    state (the layer upcasts them); chunk_size the default 64."""
    import torch

    from condorbrain.ssm.triton.selective import selective_scan_triton

    b, d, n, L = BATCH, 1024, 16, SEQLEN
    bf = {"dtype": torch.bfloat16}

    def act(*shape, grad=True):  # a bf16 activation
        return torch.randn(*shape, **bf).requires_grad_(grad)

    def param(*shape, grad=True):
        return torch.randn(*shape).requires_grad_(grad)

    def layer(train: bool):
        # as Mamba.forward calls it: u, delta, z (b, d, L) and B, C (b, N, L) are transposed views
        xz = act(b, L, 2 * d, grad=train)
        x_dbl = act(b, L, 32 + 2 * n, grad=train)
        u, z = (t.transpose(1, 2) for t in xz.chunk(2, dim=-1))
        B, C = (t.transpose(1, 2) for t in x_dbl[..., 32:].split(n, dim=-1))
        delta = act(b, L, d, grad=train).transpose(1, 2)
        out, last = selective_scan_triton(u, delta, -param(d, n, grad=train).exp(), B, C, param(d, grad=train), z,
                                          param(d, grad=train), True, True, None)
        if train:  # inference: no input wants a gradient, so no states are stored for a backward
            _backward(out, last)

    def plain_grouped(G: int, b_variable: bool, c_variable: bool):
        # no D, z, bias, softplus; an initial state; B, C (b, G, N, L) or time-invariant (d, N)
        def bc(variable):
            return act(b, G, n, L) if variable else param(d, n)

        out, last = selective_scan_triton(act(b, d, L), act(b, d, L), -param(d, n).exp(), bc(b_variable),
                                          bc(c_variable), return_last_state=True, initial_state=param(b, d, n))
        _backward(out, last)

    return {
        "mamba1 train": lambda: layer(True),
        "mamba1 inference": lambda: layer(False),
        "plain, h0, B (b,4,N,L), C (d,N)": lambda: plain_grouped(4, True, False),
        "plain, h0, B (d,N), C (b,2,N,L)": lambda: plain_grouped(2, False, True),
    }


def _mamba2_zxbcdt(d_state: int):
    """(zxbcdt, conv weight, conv bias, dt_bias, A_log, D, norm weight) of a seed Mamba2 layer; zxbcdt bf16 as
    in_proj gives it under autocast, the parameters float32."""
    import torch

    from condorbrain.ssm.mamba2 import Mamba2

    m = Mamba2(512, d_state=d_state, expand=2, headdim=64)
    zxbcdt = torch.randn(BATCH, SEQLEN, m.in_proj.out_features, dtype=torch.bfloat16, requires_grad=True)
    return zxbcdt, m.conv1d.weight, m.conv1d.bias, m.dt_bias, m.A_log, m._D(), m.norm.weight


def _fused_layer(d_state: int, chunk_size: int, norm_weight: bool = True, dt_limit=(0.0, float("inf")),
                 inference: bool = False, deferred: bool = False):
    """The seed layer after in_proj: a training step, or (inference) a forward with no gradient, the gated norm
    left pending (deferred: ``mamba2_deferred_forward``, as the library's Backbone runs it) or not."""
    import torch

    from condorbrain.ssm.triton import fused

    zxbcdt, w, bias, dt_bias, A_log, D, norm = _mamba2_zxbcdt(d_state)
    out_proj = torch.randn(512, 1024, requires_grad=True)  # inside, as Mamba2.forward passes it (d_model 512)
    with torch.set_grad_enabled(not inference):  # inference: no state kept for a backward
        if deferred:
            fused.mamba2_deferred_forward(zxbcdt, w, bias, dt_bias, A_log, D, norm, out_proj, headdim=64,
                                          d_state=d_state, chunk_size=chunk_size, dt_limit=dt_limit)
            return
        y = fused.mamba2_fused_forward(zxbcdt, w, bias, dt_bias, A_log, D, norm if norm_weight else None, headdim=64,
                                       d_state=d_state, chunk_size=chunk_size, dt_limit=dt_limit,
                                       out_proj_weight=out_proj)
    if not inference:
        _backward(y)


def _ssd_cases():
    """The seed layer's SSD through the fused path (x, B, C views of the conv output, dt a view of in_proj's output,
    bias and softplus inside, D per head, no z), at d_state 64 and 128 and chunk_size 64 and 256 (chunk 256 gives
    the same kernel chunk as 64, see kernel_chunk_size); the layer with rmsnorm=False (z, a view, in the scan) and
    a dt_limit (dt clamped on the host: no bias or softplus in the scan); and ssd_scan_triton directly with z, D per
    channel, an initial state and the final state's gradient."""
    import torch

    from condorbrain.ssm.triton.ssd import ssd_scan_triton

    def direct(d_state: int):
        b, L, h, p = BATCH, SEQLEN, 16, 64
        bf = {"dtype": torch.bfloat16, "requires_grad": True}
        x, z = torch.randn(b, L, h, p, **bf), torch.randn(b, L, h, p, **bf)
        B, C = torch.randn(b, L, 1, d_state, **bf), torch.randn(b, L, 1, d_state, **bf)
        dt = torch.rand(b, L, h, **bf)
        f32 = {"requires_grad": True}
        out, final = ssd_scan_triton(x, dt, -torch.rand(h, **f32), B, C, 64, D=torch.randn(h, p, **f32), z=z,
                                     initial_states=torch.randn(b, h, p, d_state, **f32),
                                     return_final_states=True)
        _backward(out, final)

    cases = {}
    for n in (64, 128):
        for chunk in (64, 256):
            cases[f"mamba2 d_state {n} chunk {chunk}"] = lambda n=n, chunk=chunk: _fused_layer(n, chunk)
        cases[f"z, D (h,p), h0, final grad, d_state {n}"] = lambda n=n: direct(n)
    cases["mamba2 d_state 64, rmsnorm=False, dt_limit"] = lambda: _fused_layer(64, 64, False, (0.001, 0.1))
    for n in (64, 128):
        cases[f"mamba2 inference d_state {n}"] = lambda n=n: _fused_layer(n, 64, inference=True)
        cases[f"mamba2 inference, the norm deferred, d_state {n}"] = lambda n=n: _fused_layer(
            n, 64, inference=True, deferred=True)

    def switched(variant: str, case):  # a case under a variant of benchmarks/gpu_sweep.py (settings, then undone)
        def run():
            sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
            import gpu_sweep

            with gpu_sweep.applied(variant):
                case()

        return run

    # the variants benchmarks/gpu_sweep.py tries next (the first two faulted in _chunk_bwd_dx on an H100 before its
    # inner loops became masked loads; the last two are the fourteenth session's): they compile at the seed sizes
    # (the table printed gives their spills: with triton 3.6, the H100 image's compiler, none; with 3.9, dx capped
    # at 168 registers spills 18 B), and the fifteenth session's fused._DSILU_IN_SSD and fused._CONV_BWD_SLIDE
    for variant in ("ssd._DX_STAGES=2", "ssd._BC_HEADS=4", "ssd._DX_MAXNREG=168", "ssd._COLSUM_IN_DX=1",
                    "fused._DSILU_IN_SSD=1", "fused._CONV_BWD_SLIDE=1",
                    "fused._CONV_BWD_SLIDE=1+fused._DSILU_IN_SSD=1"):
        cases[f"mamba2 d_state 64, {variant}"] = switched(variant, lambda: _fused_layer(64, 64))
    return cases


def _fused_cases():
    """The fused layer's conv and RMSNorm at the seed sizes, and their other flags."""
    import torch

    from condorbrain.ssm.triton.fused import (
        add_rmsnorm_linear_triton,
        add_rmsnorm_triton,
        causal_conv1d_silu_triton,
        rmsnorm_gated_triton,
    )

    def conv_no_bias():
        zxbcdt, w, *_ = _mamba2_zxbcdt(64)  # split [z, xBC, dt] (no MLP branch): xBC from column d_ssm = 1024
        _backward(causal_conv1d_silu_triton(zxbcdt[..., 1024:1024 + w.shape[0]], w, None))

    def add_norm(batch: int):  # a streaming step's residual add + the next block's norm, d_model 512
        x, h = (torch.randn(batch, 1, 512, dtype=torch.bfloat16) for _ in range(2))
        add_rmsnorm_triton(x, h, torch.ones(512), 1e-5)

    def add_norm_linear():  # training: the residual add, the block's norm and in_proj (d_model 512 -> 2192)
        x, h = (torch.randn(BATCH, SEQLEN, 512, dtype=torch.bfloat16, requires_grad=True) for _ in range(2))
        w = torch.randn(2192, 512, dtype=torch.bfloat16, requires_grad=True)
        _backward(*add_rmsnorm_linear_triton(x, h, torch.ones(512, requires_grad=True), 1e-5, w))

    def add_pending_norm_linear():  # inference: the add of a deferred norm's output (its 1/rms), norm, in_proj
        from condorbrain.ssm.pending import PendingScaled

        x, h = (torch.randn(BATCH, SEQLEN, 512, dtype=torch.bfloat16) for _ in range(2))
        pending = PendingScaled(h, torch.rand(BATCH * SEQLEN, 4), 1024, 1e-5)
        with torch.no_grad():
            add_rmsnorm_linear_triton(x, pending, torch.ones(512), 1e-5, torch.randn(2192, 512, dtype=torch.bfloat16))

    def norm(with_z: bool, before_gate: bool):
        y = torch.randn(BATCH, SEQLEN, 1024, dtype=torch.bfloat16, requires_grad=True)
        z = torch.randn(BATCH, SEQLEN, 2 * 1024, dtype=torch.bfloat16, requires_grad=True)[..., :1024]  # a view
        w = torch.ones(1024, requires_grad=True)
        _backward(rmsnorm_gated_triton(y, z if with_z else None, w, 1e-5, 1024, before_gate))

    return {
        "mamba2 d_state 64 chunk 64": lambda: _fused_layer(64, 64),
        "conv without bias": conv_no_bias,
        "norm before gate": lambda: norm(True, True),
        "norm without z": lambda: norm(False, False),
        **{f"add + norm, streaming batch {batch}": lambda batch=batch: add_norm(batch) for batch in (1, BATCH)},
        "add + norm + in_proj, training": add_norm_linear,
        "add of a pending 1/rms + norm + in_proj, inference": add_pending_norm_linear,
    }


def _step_cases():
    """The streaming step (condorbrain.ssm.triton.step) of the seed layers, as ``step`` calls it under a CUDA graph:
    Mamba-2 at d_state 64 and 128, bf16 activations (in_proj's output) and float32 states (conv_state in
    ``allocate_inference_cache``'s transposed layout), batch 1 (streaming) and BATCH; the other flags (no norm,
    d_mlp, dt_limit, D per channel, 2 groups, no conv bias, bf16 states) once; Mamba-1 (d_inner 1024, d_state 16)."""
    import torch

    from condorbrain.ssm.mamba import Mamba
    from condorbrain.ssm.mamba2 import Mamba2
    from condorbrain.ssm.triton.step import mamba2_step_triton, mamba_step_triton

    bf = torch.bfloat16

    def mamba2(d_state: int, batch: int, state_dtype=torch.float32, **kw):
        m = Mamba2(512, d_state=d_state, expand=2, headdim=64, **kw).to(bf)
        conv_state, ssm_state = m.allocate_inference_cache(batch, dtype=bf)
        conv_state, ssm_state = conv_state.to(state_dtype), ssm_state.to(state_dtype)  # .to keeps the layout
        zxbcdt = torch.randn(batch, m.in_proj.out_features, dtype=bf)
        mamba2_step_triton(zxbcdt, conv_state, ssm_state, m.conv1d.weight, m.conv1d.bias, m.dt_bias, m.A_log,
                           m._D(), m.norm.weight if m.rmsnorm else None, headdim=64, d_state=d_state,
                           ngroups=m.ngroups, norm_before_gate=m.norm_before_gate, dt_limit=m.dt_limit,
                           out_dtype=bf)

    def mamba(batch: int):
        m = Mamba(512, d_state=16, expand=2).to(bf)
        conv_state, ssm_state = m.allocate_inference_cache(batch, dtype=torch.float32)
        mamba_step_triton(torch.randn(batch, 2 * m.d_inner, dtype=bf), conv_state, ssm_state, m.conv1d.weight,
                          m.conv1d.bias, m.x_proj.weight, m.dt_proj.weight, m.dt_proj.bias, m.A_log, m.D,
                          out_dtype=bf)

    def block(d_state: int, batch: int, pending: bool = True, **kw):  # a block's step: add + norm + in_proj, the
        # update, norm + out_proj
        m = Mamba2(512, d_state=d_state, expand=2, headdim=64, **kw).to(bf)
        x = torch.randn(batch, 1, 512, dtype=bf)
        m.step_prenormed(x, torch.randn_like(x) if pending else None, torch.ones(512, dtype=bf), 1e-6,
                         *m.allocate_inference_cache(batch, dtype=bf))

    cases = {}
    for n in (64, 128):
        for batch in (1, BATCH):
            cases[f"mamba2 step d_state {n} batch {batch}"] = lambda n=n, batch=batch: mamba2(n, batch)
    for batch in (1, BATCH):
        cases[f"mamba2 block step d_state 64 batch {batch}"] = lambda batch=batch: block(64, batch)
    cases["mamba2 block step: d_state 128, no norm, d_mlp, biases, nothing pending"] = lambda: block(
        128, 1, pending=False, rmsnorm=False, d_ssm=768, bias=True)
    cases["mamba2 block step: 2 groups, d_mlp, norm before gate"] = lambda: block(
        64, 1, ngroups=2, d_ssm=512, norm_before_gate=True)
    cases["mamba2 step: no norm, d_mlp, dt_limit, D (h,p), no conv bias"] = lambda: mamba2(
        64, 1, rmsnorm=False, d_ssm=768, dt_limit=(0.001, 0.1), D_has_hdim=True, conv_bias=False)
    cases["mamba2 step: 2 groups, d_mlp, norm before gate, bf16 states"] = lambda: mamba2(
        128, 1, state_dtype=bf, ngroups=2, d_ssm=512, norm_before_gate=True)
    for batch in (1, BATCH):
        cases[f"mamba1 step batch {batch}"] = lambda batch=batch: mamba(batch)
    return cases


# ----------------------------------------------------------------------------------------------------------------
# The subprocess: record, specialise, compile
# ----------------------------------------------------------------------------------------------------------------

def _record(case, pdl: bool = False) -> list:
    """(kernel, args, kwargs) of every launch ``case()`` makes; nothing is launched. ``pdl``: the streaming kernels
    as an sm_90 GPU launches them, with programmatic dependent launch (``step._pdl`` is False for CPU tensors)."""
    from unittest import mock

    import triton

    from condorbrain.ssm.triton import fused, selective, ssd, step

    launches = []

    def getitem(kernel, grid):
        return lambda *args, **kwargs: launches.append((kernel, args, kwargs))

    with contextlib.ExitStack() as stack:
        stack.enter_context(mock.patch.object(triton.runtime.jit.KernelInterface, "__getitem__", getitem))
        for module in (ssd, fused, step):  # CPU tensors, no interpreter: the device checks would refuse them
            stack.enter_context(mock.patch.object(module, "on_device", lambda t: contextlib.nullcontext()))
        stack.enter_context(mock.patch.object(selective, "status", lambda device: (True, "recording")))
        stack.enter_context(mock.patch.object(step, "_pdl", lambda t, asked=True: pdl and asked))
        case()
    return launches


def _specialise(kernel, args: tuple, kwargs: dict) -> tuple[dict, dict, dict, dict]:
    """(signature, constexprs, attrs, options) of a launch, as JITFunction.run derives them."""
    from triton._C.libtriton import native_specialize_impl
    from triton.backends.compiler import BaseBackend

    values = dict(zip(kernel.arg_names, args)) | {k: v for k, v in kwargs.items() if k in kernel.arg_names}
    options = {k: v for k, v in kwargs.items() if k not in kernel.arg_names}
    signature, constexprs, attrs = {}, {}, {}
    for i, param in enumerate(kernel.params):
        value = values[param.name]
        if param.is_constexpr:
            signature[param.name], constexprs[param.name] = "constexpr", value
            continue
        ty, attr = native_specialize_impl(BaseBackend, value, param.is_const, not param.do_not_specialize,
                                          not param.do_not_specialize_on_alignment)
        signature[param.name] = ty
        if ty == "constexpr":  # an integer 1 or None
            constexprs[param.name] = value
        elif isinstance(attr, str):
            attrs[(i,)] = BaseBackend.parse_attr(attr)
    return signature, constexprs, attrs, options


def _describe(kernel, constexprs: dict, options: dict) -> str:
    """The launch's tl.constexpr parameters and num_warps, compactly (flags by name when set)."""
    parts = []
    for name, value in constexprs.items():
        param = kernel.params[kernel.arg_names.index(name)]
        if not param.is_constexpr:
            continue
        if isinstance(value, bool):
            parts.extend([name] if value else [])
        else:
            parts.append(f"{name}={getattr(value, 'name', value)}")
    return " ".join(parts + [f"warps={options.get('num_warps')}"])


def _compile(kernel, signature: dict, constexprs: dict, attrs: dict, options: dict) -> dict:
    """Compile one launch for sm_90: shared memory per block (bytes) from the kernel's metadata; registers per
    thread, stack frame and spill stores (bytes per thread) from ptxas' own report (``ptxas -v``, which Triton
    prints when ``knobs.nvidia.dump_ptxas_log`` is set; the cache is fresh, so ptxas always runs)."""
    import io
    import re

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    log = io.StringIO()
    with contextlib.redirect_stdout(log):
        src = ASTSource(fn=kernel, signature=signature, constexprs=constexprs, attrs=attrs)
        compiled = triton.compile(src, target=GPUTarget(*TARGET), options=options)
    text = log.getvalue()
    regs = re.search(r"Used (\d+) registers", text)
    frame = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", text)
    if regs is None or frame is None:
        raise RuntimeError(f"no ptxas report for {kernel.fn.__name__}:\n{text}")
    return {"shared": compiled.metadata.shared, "regs": int(regs.group(1)), "stack": int(frame.group(1)),
            "spills": int(frame.group(2))}


def _compile_all(out_path: str) -> None:
    """Record every case, compile each distinct launch for sm_90, write the rows (or why not) to ``out_path``."""
    import importlib
    import re
    import time

    import triton

    triton.knobs.nvidia.dump_ptxas_log = True

    def write(obj):
        Path(out_path).write_text(json.dumps(obj))

    try:
        from triton.backends.nvidia.compiler import get_ptxas

        ptxas = get_ptxas(TARGET[1])
    except Exception as e:  # noqa: BLE001 - no CUDA backend or no ptxas: cannot compile here
        ptxas, why = None, f"{type(e).__name__}: {e}"
    else:
        why = "no ptxas found (it ships in the triton wheel, or set TRITON_PTXAS_BLACKWELL_PATH)"
    if ptxas is None:
        return write({"skip": f"the CUDA backend cannot compile here: {why}"})

    cases = {"selective": _selective_cases(), "ssd": _ssd_cases(), "fused": _fused_cases(), "step": _step_cases()}
    rows, seen, launched, counts = [], set(), set(), {}
    for module_name, module_cases in cases.items():
        module = importlib.import_module(f"condorbrain.ssm.triton.{module_name}")
        for case_name, case in module_cases.items():
            launches = _record(case, pdl="block step" in case_name)  # the streaming block: as on an H100
            n_rows = len(rows)
            for kernel, args, kwargs in launches:
                name = kernel.fn.__name__
                launched.add((kernel.fn.__module__, name))
                # kernels of other modules too (the SSD kernels the fused layer launches, with the conv applied
                # inside its forward's): each distinct specialisation once, whichever case launches it
                signature, constexprs, attrs, options = _specialise(kernel, args, kwargs)
                key = repr((name, signature, constexprs, sorted(attrs.items()), sorted(options.items())))
                if key in seen:
                    continue
                seen.add(key)
                row = {"module": kernel.fn.__module__.rsplit(".", 1)[-1], "kernel": name, "case": case_name,
                       "config": _describe(kernel, constexprs, options)}
                t0 = time.perf_counter()
                try:
                    row |= _compile(kernel, signature, constexprs, attrs, options)
                except Exception as e:  # noqa: BLE001 - reported per launch by the test
                    row["error"] = f"{type(e).__name__}: {e}"[-4000:]
                row["seconds"] = round(time.perf_counter() - t0, 2)
                rows.append(row)
            counts[f"{module_name}: {case_name}"] = (len(launches), len(rows) - n_rows)

    # every @triton.jit of the modules is launched, or used by a launched kernel or by a helper one uses
    uncovered = []
    for module_name in MODULES:
        module = importlib.import_module(f"condorbrain.ssm.triton.{module_name}")
        jitted = {n: obj for n, obj in vars(module).items() if isinstance(obj, triton.runtime.jit.JITFunction)
                  and obj.fn.__module__ == module.__name__}
        used = {n for mod, n in launched if mod == module.__name__}
        grown = True
        while grown:
            sources = "".join(jitted[n].src for n in used if n in jitted)
            more = {n for n in jitted if re.search(rf"\b{n}\b", sources)} - used
            used |= more
            grown = bool(more)
        uncovered += [f"{module_name}.{n}" for n in sorted(set(jitted) - used)]
    write({"rows": rows, "uncovered": uncovered, "counts": counts})


# ----------------------------------------------------------------------------------------------------------------
# The tests
# ----------------------------------------------------------------------------------------------------------------

def _table(rows: list[dict]) -> str:
    lines = [f"{'kernel':<23} {'regs':>4} {'spill B':>7} {'stack B':>7} {'smem KB':>7} {'s':>4}  config  [case]"]
    for r in rows:
        if "error" in r:
            lines.append(f"{r['kernel']:<23} COMPILE ERROR {'':>22}  {r['config']}  [{r['case']}]")
        else:
            lines.append(f"{r['kernel']:<23} {r['regs']:>4} {r['spills']:>7} {r['stack']:>7} "
                         f"{r['shared'] / 1024:>7.1f} {r['seconds']:>4.1f}  {r['config']}  [{r['case']}]")
    return "\n".join(lines)


_early: tuple[subprocess.Popen, Path] | None = None  # the compile subprocess, started once collection is done


def start_compiling(tmp: Path) -> tuple[subprocess.Popen, Path]:
    """Start the compile subprocess (this file as a script) writing tmp/rows.json, its stderr to tmp/stderr.txt, with
    a fresh cache under tmp, so that every kernel goes through the compiler and ptxas, whatever ran before."""
    out = tmp / "rows.json"
    env = {**os.environ, "TRITON_INTERPRET": "0", "TRITON_CACHE_DIR": str(tmp / "cache")}
    with open(tmp / "stderr.txt", "w") as err:
        proc = subprocess.Popen([sys.executable, "-W", "error", __file__, str(out)], env=env,
                                stdout=subprocess.DEVNULL, stderr=err)
    return proc, out


def start_early() -> None:
    """Called by tests/conftest.py once collection has selected this file's tests: the compiling (~50 s of one core)
    then runs beside the tests before them, on a second core, instead of ahead of this file's."""
    global _early
    if _early is None and importlib.util.find_spec("triton") is not None:
        tmp = Path(tempfile.mkdtemp(prefix="triton_compile_"))
        _early = start_compiling(tmp)
        atexit.register(_discard, _early[0], tmp)  # also when the run ends before this file's tests (-x, Ctrl-C)


def _discard(proc: subprocess.Popen, tmp: Path) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> dict:
    global _early
    pytest.importorskip("triton", reason="triton is not installed (`pip install triton`, or the `dev` extra)")
    proc, out = _early or start_compiling(tmp_path_factory.mktemp("triton_compile"))
    _early = None
    try:
        proc.wait(timeout=600)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError("the compile subprocess took over 600 s") from None
    if proc.returncode != 0 or not out.exists():
        stderr = (out.parent / "stderr.txt").read_text()
        raise AssertionError(f"the compile subprocess failed (rc {proc.returncode}):\n{stderr[-6000:]}")
    result = json.loads(out.read_text())
    if "skip" in result:
        pytest.skip(result["skip"])
    print(f"\nTriton kernels compiled for sm_90 (per thread: registers, spill stores, stack frame; per block: shared "
          f"memory, limit {H100_SHARED_BYTES / 1024:.0f} KB; compile seconds):\n{_table(result['rows'])}")
    print("launches recorded per case, and how many were new (not the same specialisation as an earlier one):")
    for case, (n, new) in result["counts"].items():
        print(f"  {case}: {n} launches, {new} new")
    return result


@pytest.mark.parametrize("module", MODULES)
def test_kernels_compile_for_h100(compiled, module):
    rows = [r for r in compiled["rows"] if r["module"] == module]
    assert rows, f"no launch of condorbrain.ssm.triton.{module} was recorded"
    errors = [f"{r['kernel']} [{r['config']}] ({r['case']}):\n{r['error']}" for r in rows if "error" in r]
    assert not errors, "kernels that do not compile for sm_90:\n" + "\n\n".join(errors)
    over = [f"{r['kernel']} [{r['config']}]: {r['shared'] / 1024:.1f} KB" for r in rows
            if r["shared"] > H100_SHARED_BYTES]
    assert not over, f"shared memory over the H100's {H100_SHARED_BYTES // 1024} KB per block: {over}"


def test_every_kernel_is_compiled(compiled):
    assert not compiled["uncovered"], f"@triton.jit functions no case launches: {compiled['uncovered']}"


if __name__ == "__main__":  # the subprocess of the `compiled` fixture: python test_triton_compile.py OUT.json
    _compile_all(sys.argv[1])
