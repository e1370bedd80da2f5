"""No Triton kernel loads or stores outside the tensors its launch was given, at the default settings and at the
variants that split work differently.

On a GPU a load or store whose mask is true at an address outside every allocation is "an illegal memory access"
(or, inside another live allocation, silent corruption); in the interpreter it reads or writes whatever host memory
is there, and the value tests rarely notice. ``bounds_checked`` makes the interpreter check every masked-in address
of every load, store and atomic of every launch against the tensors that launch received, and fail the launch with
the kernel, the source line (through its device functions), the first program, the pointer argument (the one holding
most of the access's addresses, else the nearest) and the offending element offsets against that tensor's extent.

Stricter than "inside some allocation": an address must be one of the elements of some tensor argument (its data_ptr
plus an index within its shape times its strides), so a kernel given a column slice of a wider buffer that reads the
next slice's columns fails too, even though on a GPU it would not crash. The message says which it is: between a
tensor's elements, inside an argument's storage but past every tensor's extent (silently wrong on a GPU), or outside
every argument's storage (a crash on a GPU).

Written against Triton 3.9's interpreter (triton/runtime/interpreter.py): ``InterpreterBuilder.create_masked_load``
/ ``create_masked_store`` (which ``create_load`` / ``create_store``, the atomics' loads and stores and the tensor
descriptors' go through), ``create_atomic_rmw`` / ``create_atomic_cas``, and ``GridExecutor._init_args_hst`` (the
host copies of the arguments, whose addresses the interpreter dereferences: on the CPU the tensors' own storage) and
``GridExecutor.__call__`` (one launch). Where any of them is missing (or takes other argument names) the tests skip,
naming it.

Not covered (no interpreter can): what the compiler does differently from the interpreter (software pipelining,
``num_stages``, which the interpreter ignores: e.g. loads a pipelined loop issues ahead for an iteration that never
runs), int32 offsets that overflow only at production sizes, and races.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import os
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("triton", reason="triton is not installed (`pip install triton`, or the `dev` extra)")

import triton
import triton.language as tl

from condorbrain.ssm import triton as triton_path
from condorbrain.ssm.triton import fused as fused_module
from condorbrain.ssm.triton import ssd as ssd_module
from condorbrain.ssm.triton import step as step_module

pytestmark = pytest.mark.skipif(not triton_path.available("cpu"), reason="the accesses can only be checked under "
                                f"Triton's interpreter: {triton_path.status('cpu')[1]}")

WRITTEN_AGAINST = "3.9.0"  # the Triton version whose interpreter the hooks below were written for

# InterpreterBuilder's memory operations: (what it is, its pointer argument, its mask argument)
_BUILDER_HOOKS = {
    "create_masked_load": ("load", "ptrs", "mask"),
    "create_masked_store": ("store", "ptrs", "mask"),
    "create_load": ("load", "ptr", None),  # (both delegate to the masked ones in 3.9: checked once)
    "create_store": ("store", "ptr", None),
    "create_atomic_rmw": ("atomic_rmw", "ptr", "mask"),
    "create_atomic_cas": ("atomic_cas", "ptr", None),
}
# and the arguments the unmasked ones are rerouted with
_UNMASKED_ARGS = {"create_load": ("ptr", "cache_policy", "is_volatile"), "create_store": ("ptr", "val", "cache_policy")}
_EXECUTOR_HOOKS = ("__call__", "_init_args_hst")
_CHECKER_CODE: set = set()  # the checker's own functions' code: not the access's line


# --- the checker -----------------------------------------------------------------------------------------------------

@dataclasses.dataclass
class _Region:
    name: str  # the kernel's argument name (tuple members as name[i])
    lo: int  # the tensor's extent: [lo, hi) in bytes
    hi: int
    storage_lo: int
    storage_hi: int
    data_ptr: int
    shape: tuple
    strides: tuple
    dtype: torch.dtype
    elsize: int
    dims: tuple = ()  # (size, stride) of the dims that step, largest stride first
    nested: bool = False  # each stride above the reach of the smaller ones: an offset has one index, found greedily

    def members(self, addr: np.ndarray, nbytes: int) -> np.ndarray:
        """Whether each address is one of this tensor's elements (for a column slice: not another slice's columns
        between its rows); the extent where that cannot be told (other element sizes, interleaved strides)."""
        ok = (addr >= np.uint64(self.lo)) & (addr + np.uint64(nbytes) <= np.uint64(self.hi))
        if not self.nested or nbytes != self.elsize or not ok.any():
            return ok
        o = addr.astype(np.int64) - np.int64(self.data_ptr)
        ok &= o % self.elsize == 0
        o //= self.elsize
        for size, stride in self.dims:
            i = o // stride
            ok &= (i >= 0) & (i < size)
            o -= i * stride
        return ok & (o == 0)


@dataclasses.dataclass
class _Violation:
    op: str
    arg: str
    where: str  # the kernel's source line(s)
    program: tuple  # the first program that made it
    count: int
    lo: int  # offending offsets from the argument's data_ptr, in its elements (min, max)
    hi: int
    region: _Region | None
    kind: str  # where the offending addresses are (see _KINDS)


_KINDS = {  # the worst of an access's offending addresses, best to worst
    "between": "inside an argument's extent but none of its elements (another view's part of the storage)",
    "storage": "inside some argument's storage, outside every tensor's extent",
    "outside": "outside every argument's storage",
}


@dataclasses.dataclass
class _Checked:
    kernels: list = dataclasses.field(default_factory=list)
    accesses: int = 0


class _Launch:
    def __init__(self, kernel: str):
        self.kernel = kernel
        self.regions: list[_Region] | None = None
        self.starts = self.ends = None  # the union of the extents, merged and sorted
        self.s_starts = self.s_ends = None  # the union of the storages
        self.violations: dict[tuple, _Violation] = {}

    def set_regions(self, regions: list[_Region]) -> None:
        self.regions = regions
        self.starts, self.ends = _merge([(r.lo, r.hi) for r in regions if r.hi > r.lo])
        self.s_starts, self.s_ends = _merge([(r.storage_lo, r.storage_hi) for r in regions
                                             if r.storage_hi > r.storage_lo])

    def summary(self) -> str:
        lines = [f"out-of-bounds accesses in kernel {self.kernel}:"]
        for v in self.violations.values():
            r = v.region
            what = (f"{v.arg} ({tuple(r.shape)} {r.dtype} strides {tuple(r.strides)}, extent "
                    f"{(r.hi - r.data_ptr) // r.elsize} elements from its data_ptr, storage "
                    f"{(r.storage_hi - r.storage_lo) // r.elsize})" if r is not None else v.arg)
            lines.append(f"  {v.op} of {what} at {v.where}: {v.count} element(s) at offsets {v.lo}..{v.hi} "
                         f"(first in program {v.program}), {_KINDS[v.kind]}")
        return "\n".join(lines)


def _merge(intervals):
    merged = []
    for lo, hi in sorted(intervals):
        if merged and lo <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], hi)
        else:
            merged.append([lo, hi])
    return (np.array([m[0] for m in merged], dtype=np.uint64), np.array([m[1] for m in merged], dtype=np.uint64))


def _inside(addr: np.ndarray, nbytes: int, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Whether each [addr, addr + nbytes) lies in one of the disjoint sorted intervals [starts, ends)."""
    if starts.size == 0:
        return np.zeros(addr.shape, dtype=bool)
    idx = np.searchsorted(starts, addr, side="right").astype(np.int64) - 1
    ok = idx >= 0
    end = ends[np.maximum(idx, 0)]
    return ok & (addr + np.uint64(nbytes) <= end)


def _region(name: str, t) -> _Region | None:
    t = getattr(t, "base", t) if isinstance(t, triton.runtime.jit.TensorWrapper) else t
    if not isinstance(t, torch.Tensor):
        return None
    es = t.element_size()
    lo_el = sum(min(0, (s - 1) * st) for s, st in zip(t.shape, t.stride()))
    hi_el = sum(max(0, (s - 1) * st) for s, st in zip(t.shape, t.stride())) + 1
    empty = t.numel() == 0
    st = t.untyped_storage()
    dims = tuple(sorted(((n, d) for n, d in zip(t.shape, t.stride()) if n > 1 and d > 0), key=lambda nd: -nd[1]))
    nested = lo_el == 0 and all(dims[k][1] > sum((n - 1) * d for n, d in dims[k + 1:]) for k in range(len(dims)))
    return _Region(name, t.data_ptr() + (0 if empty else lo_el * es), t.data_ptr() + (0 if empty else hi_el * es),
                   st.data_ptr(), st.data_ptr() + st.nbytes(), t.data_ptr(), tuple(t.shape), tuple(t.stride()),
                   t.dtype, es, dims, nested)


def _regions(arg_names, args, kwargs) -> list[_Region]:
    out = []

    def add(name, a):
        if isinstance(a, tuple):
            for i, m in enumerate(a):
                add(f"{name}[{i}]", m)
        elif hasattr(a, "base") and hasattr(a, "block_shape"):  # a TensorDescriptor
            add(f"{name}.base", a.base)
        else:
            r = _region(name, a)
            if r is not None:
                out.append(r)

    for name, a in zip(arg_names, args):
        add(name, a)
    for name, a in kwargs.items():
        add(name, a)
    return out


def _source_line(kernel: str) -> str:
    """The access's line in the kernel's source, through its device functions: the frames outside triton and the
    checker, innermost first, up to the kernel's own."""
    triton_dir = os.path.dirname(os.path.abspath(triton.__file__))
    frames, f = [], sys._getframe(1)
    while f is not None and len(frames) < 4:
        fn = os.path.abspath(f.f_code.co_filename)
        if not fn.startswith(triton_dir) and f.f_code not in _CHECKER_CODE:
            frames.append(f"{os.path.basename(fn)}:{f.f_lineno} ({f.f_code.co_name})")
            if f.f_code.co_name == kernel:
                break
        f = f.f_back
    return " <- ".join(frames) or "?"


def _missing_hooks() -> list[str]:
    try:
        from triton.runtime import interpreter
    except ImportError as e:  # pragma: no cover
        return [f"triton.runtime.interpreter ({e})"]
    missing = []
    builder = getattr(interpreter, "interpreter_builder", None)
    if builder is None:
        missing.append("interpreter.interpreter_builder")
    else:
        for h, (_, ptr, mask) in _BUILDER_HOOKS.items():
            fn = getattr(type(builder), h, None)
            params = set(inspect.signature(fn).parameters) if fn is not None else set()
            wanted = {ptr, *([mask] if mask else []), *_UNMASKED_ARGS.get(h, ())}
            if not wanted <= params:
                missing.append(f"InterpreterBuilder.{h}({', '.join(sorted(wanted - params))})")
    executor = getattr(interpreter, "GridExecutor", None)
    if executor is None:
        missing.append("interpreter.GridExecutor")
    else:
        missing += [f"GridExecutor.{h}" for h in _EXECUTOR_HOOKS if h not in vars(executor)]
    return missing


@contextlib.contextmanager
def bounds_checked():
    """Inside: every launch under Triton's interpreter checks each masked-in address of its loads, stores and
    atomics against the extents of the tensors it was given; a launch that accessed outside them raises an
    AssertionError after its programs ran (the offending lanes masked off, so nothing outside is touched), naming
    the kernel, the line, the pointer argument and the offsets. Yields a record of what was checked: the launches'
    kernel names (``.kernels``) and the number of accesses (``.accesses``)."""
    missing = _missing_hooks()
    if missing:
        pytest.skip(f"Triton {triton.__version__}'s interpreter lacks the hooks this check was written against "
                    f"(Triton {WRITTEN_AGAINST}): {', '.join(missing)}")
    from triton.runtime import interpreter

    builder_type = type(interpreter.interpreter_builder)
    executor = interpreter.GridExecutor
    real = {h: getattr(builder_type, h) for h in _BUILDER_HOOKS}
    real_call, real_init = executor.__call__, executor._init_args_hst
    stack: list[_Launch] = []
    checked = _Checked()
    busy = [0]  # inside one of the hooks (create_load delegates to create_masked_load): check once

    def check(builder, op, ptrs, mask):
        """The mask with the out-of-bounds lanes cleared (records them)."""
        if not stack or stack[-1].regions is None:
            return mask
        launch = stack[-1]
        checked.accesses += 1
        data = np.asarray(ptrs.data)
        m = np.ones(data.shape, dtype=bool) if mask is None else np.broadcast_to(np.asarray(mask.data, bool),
                                                                                 data.shape)
        es = max(1, ptrs.get_element_ty().primitive_bitwidth // 8)
        addr = data[m].astype(np.uint64)
        if addr.size == 0:
            return mask
        ok = _inside(addr, es, launch.starts, launch.ends)  # in some tensor's extent
        # then one of some tensor's elements; the pointer argument: the one holding most of the access's elements
        lo, hi = int(addr.min()), int(addr.max()) + es
        best, votes = None, 0
        member = np.zeros(addr.shape, dtype=bool)
        for r in launch.regions:
            if r.lo < hi and lo < r.hi:
                mine = r.members(addr, es)
                k = int(np.count_nonzero(mine))
                member |= mine
                if k > votes:
                    best, votes = r, k
        if ok.all() and member.all():
            return mask
        bad = addr[~(ok & member)]
        if best is None:  # nothing in bounds: the nearest argument of the access's element size
            b0 = int(bad.min())
            cands = [r for r in launch.regions if r.elsize == es] or launch.regions
            if cands:
                best = min(cands, key=lambda r: max(r.lo - b0, b0 - r.hi + 1, 0))
        offs = (bad.astype(np.int64) - np.int64(best.data_ptr if best else 0)) // es
        if ok.all():
            kind = "between"
        elif _inside(addr[~ok], es, launch.s_starts, launch.s_ends).all():
            kind = "storage"
        else:
            kind = "outside"
        where = _source_line(launch.kernel)
        key = (op, best.name if best else "?", where)
        v = launch.violations.get(key)
        if v is None:
            launch.violations[key] = _Violation(op, best.name if best else "?", where,
                                                tuple(getattr(builder, "grid_idx", ())), int(bad.size),
                                                int(offs.min()), int(offs.max()), best, kind)
        else:
            v.count += int(bad.size)
            v.lo, v.hi = min(v.lo, int(offs.min())), max(v.hi, int(offs.max()))
            v.kind = max(v.kind, kind, key=list(_KINDS).index)
        full = np.zeros(data.shape, dtype=bool)
        full[m] = ok & member
        return interpreter.TensorHandle(full, tl.int1)

    def hooked(name):
        op, ptr_name, mask_name = _BUILDER_HOOKS[name]
        fn = real[name]
        sig = inspect.signature(fn)

        def wrapper(self, *args, **kwargs):
            if busy[0]:
                return fn(self, *args, **kwargs)
            busy[0] += 1
            try:
                bound = sig.bind(self, *args, **kwargs)
                mask = bound.arguments.get(mask_name) if mask_name else None
                new = check(self, op, bound.arguments[ptr_name], mask)
                if new is mask:
                    return fn(self, *args, **kwargs)
                a = bound.arguments
                if mask_name:
                    a[mask_name] = new
                    return fn(*bound.args, **bound.kwargs)
                # an unmasked access: its masked twin, with the offending lanes masked off
                if name == "create_load":
                    return real["create_masked_load"](self, a["ptr"], new, None, a["cache_policy"], a["is_volatile"])
                if name == "create_store":
                    return real["create_masked_store"](self, a["ptr"], a["val"], new, a["cache_policy"])
                raise AssertionError(stack[-1].summary())  # (an atomic compare-and-swap: no mask to clear)
            finally:
                busy[0] -= 1

        return wrapper

    def init_args(self, *args, **kwargs):
        hst = real_init(self, *args, **kwargs)
        if stack:
            args_hst, kwargs_hst = hst
            stack[-1].set_regions(_regions(self.arg_names, args_hst, kwargs_hst))
        return hst

    def call(self, *args, **kwargs):
        launch = _Launch(getattr(self.fn, "__name__", repr(self.fn)))
        stack.append(launch)
        checked.kernels.append(launch.kernel)
        try:
            real_call(self, *args, **kwargs)
        except Exception as e:
            if launch.violations:
                raise AssertionError(launch.summary()) from e
            raise
        finally:
            stack.pop()
        if launch.violations:
            raise AssertionError(launch.summary())

    patches = {name: hooked(name) for name in _BUILDER_HOOKS}
    _CHECKER_CODE.update({check.__code__, call.__code__, init_args.__code__,
                          *(fn.__code__ for fn in patches.values())})
    for name, fn in patches.items():
        setattr(builder_type, name, fn)
    executor.__call__, executor._init_args_hst = call, init_args
    try:
        yield checked
    finally:
        for name, fn in real.items():
            setattr(builder_type, name, fn)
        executor.__call__, executor._init_args_hst = real_call, real_init


# --- the checker itself ----------------------------------------------------------------------------------------------

@triton.jit
def _copy(src_ptr, dst_ptr, n, READ_PAST: tl.constexpr, WRITE_PAST: tl.constexpr, BLOCK: tl.constexpr):
    i = tl.arange(0, BLOCK)
    v = tl.load(src_ptr + i, mask=i < n + READ_PAST, other=0.0)
    tl.store(dst_ptr + i, v, mask=i < n + WRITE_PAST)


@triton.jit
def _scalar_read(src_ptr, dst_ptr, k):
    tl.store(dst_ptr, tl.load(src_ptr + k))


def test_checker_passes_a_correct_masked_access():
    src, dst = torch.arange(10, dtype=torch.float32), torch.zeros(10)
    with bounds_checked() as checked:
        _copy[(1,)](src, dst, 10, READ_PAST=0, WRITE_PAST=0, BLOCK=16)  # lanes 10..15 masked out
        _scalar_read[(1,)](src, dst, 9)
    assert checked.kernels == ["_copy", "_scalar_read"] and checked.accesses == 4
    assert torch.equal(dst[1:], src[1:]) and dst[0] == 9


def test_checker_catches_a_read_one_past_the_end():
    src, dst = torch.arange(10, dtype=torch.float32), torch.zeros(10)
    with bounds_checked(), pytest.raises(AssertionError) as err:
        _copy[(1,)](src, dst, 10, READ_PAST=1, WRITE_PAST=0, BLOCK=16)
    msg = str(err.value)
    assert "_copy" in msg and "load of src_ptr" in msg and "offsets 10..10" in msg and "1 element(s)" in msg, msg
    assert "test_triton_bounds.py:" in msg and "(_copy)" in msg, msg  # the kernel's line is named
    assert torch.equal(dst, src)  # the in-bounds lanes still ran


def test_checker_catches_a_store_past_a_view_and_a_scalar_read():
    # dst a slice of a larger buffer: the element past it exists (no crash on a GPU) but is not the kernel's
    src, big = torch.arange(10, dtype=torch.float32), torch.zeros(20)
    with bounds_checked(), pytest.raises(AssertionError) as err:
        _copy[(1,)](src, big[:10], 10, READ_PAST=0, WRITE_PAST=3, BLOCK=16)
    msg = str(err.value)
    assert "store of dst_ptr" in msg and "offsets 10..12" in msg and "inside some argument's storage" in msg, msg
    assert big[10:].abs().sum() == 0  # masked off: never written
    with bounds_checked(), pytest.raises(AssertionError, match=r"load of src_ptr .* offsets -1\.\.-1"):
        _scalar_read[(1,)](src, big, -1)
    # and restored after: no check
    _scalar_read[(1,)](src[1:], big, -1)
    assert big[0] == 0


@triton.jit
def _read_cols(src_ptr, dst_ptr, nrows, ncols, s_row, ROWS: tl.constexpr, COLS: tl.constexpr):
    r, c = tl.arange(0, ROWS)[:, None], tl.arange(0, COLS)[None, :]
    m = (r < nrows) & (c < ncols)
    tl.store(dst_ptr + r * COLS + c, tl.load(src_ptr + r * s_row + c, mask=m), mask=m)


def test_checker_catches_a_read_into_the_next_column_slice():
    # src: the first 4 of 8 columns; column 4 of rows 0..2 lies inside src's extent (its first to its last element)
    # but is another slice's, and row 3's is past its extent
    big, dst = torch.arange(32, dtype=torch.float32).view(4, 8), torch.zeros(4, 8)
    with bounds_checked():
        _read_cols[(1,)](big[:, :4], dst, 4, 4, 8, ROWS=4, COLS=8)
    with bounds_checked(), pytest.raises(AssertionError) as err:
        _read_cols[(1,)](big[:, :4], dst, 3, 5, 8, ROWS=4, COLS=8)
    assert "load of src_ptr ((4, 4) torch.float32 strides (8, 1)" in str(err.value)
    assert "3 element(s) at offsets 4..20" in str(err.value) and _KINDS["between"] in str(err.value)
    with bounds_checked(), pytest.raises(AssertionError) as err:
        _read_cols[(1,)](big[:, :4], dst, 4, 5, 8, ROWS=4, COLS=8)
    assert "4 element(s) at offsets 4..28" in str(err.value) and _KINDS["storage"] in str(err.value)


def test_checker_skips_where_the_interpreter_lacks_its_hooks(monkeypatch):
    from triton.runtime import interpreter

    monkeypatch.delattr(interpreter.GridExecutor, "_init_args_hst")
    with (pytest.raises(pytest.skip.Exception, match=r"lacks the hooks .*GridExecutor\._init_args_hst"),
          bounds_checked()):
        pass


# --- the SSD scan alone, forward and backward ------------------------------------------------------------------------

# the module settings the variants change (read at call time). The shapes below have 6 heads in one group, so that
# 4 heads a program split a group unevenly (4 + 2) and 2 a program split it in 3
VARIANTS = {
    "defaults": {},
    "bc_heads_4": {"ssd._BC_HEADS": 4},
    "dx_heads_4": {"ssd._DX_HEADS": 4},
    "heads_per_program_2": {"ssd.HEADS_PER_PROGRAM": 2},
    "dx_channel_blocks_1": {"ssd._DX_CHANNEL_BLOCKS": 1},
    "max_chunk_32": {"ssd._MAX_CHUNK": 32},
    # _chunk_bwd_bc split over heads and state columns at once (production's d_state 128 has 2 column blocks)
    "bc_heads_4_state_block_16": {"ssd._BC_HEADS": 4, "ssd._BWD_STATE_BLOCK": 16},
    # run 9's: one 16-row tile a program of the norm's backward, 16-step tiles of the conv's, the conv recomputed
    "run9_backward": {"fused._NORM_BWD_ROWS": 16, "fused._NORM_BWD_PROGRAMS": 1 << 30, "fused._NORM_BWD_STAGES": 1,
                      "fused._CONV_BWD_BL": 16, "fused._CONV_BWD_STAGES": 1, "fused._SAVE_CONV_OUT": False},
    # the conv's SiLU derivative where the SSD's backward kernels store dx, dB, dC: the conv's input read there
    "dsilu_in_ssd": {"fused._DSILU_IN_SSD": True},
    # the conv's backward as one sliding kernel, a row's steps in runs of 8 (each run reads the next one's first 3
    # steps and the previous one's last 3 inputs)
    "conv_bwd_slide": {"fused._CONV_BWD_SLIDE": True, "fused._CONV_BWD_PROGRAMS": 1 << 20},
}


def _set(monkeypatch, variant):
    for name, value in VARIANTS[variant].items():
        module, attr = name.split(".")
        monkeypatch.setattr({"fused": fused_module, "ssd": ssd_module}[module], attr, value)


# (b, L, h, p, g, n, chunk_size, options): L never a multiple of the chunk
SSD_CASES = {
    # 2 chunks of 16 (the last of 4 steps), every option: D per head, z, dt_bias + softplus, an initial state, the
    # final state's gradient
    "all_options": (2, 20, 6, 16, 1, 16, 16, {"D": "head", "z": True, "bias": True, "h0": True, "final": True}),
    # none of them: no D, z, bias, initial state, final state (HAS_DFINAL off, the last chunk's state unstored)
    "no_options": (1, 23, 6, 16, 1, 16, 16, {"D": None, "z": False, "bias": False, "h0": False, "final": False}),
    # p, n not powers of 2 (padded, masked): D per channel, 2 groups of 3 heads, _chunk_bwd_dx's 2nd channel block
    # mostly masked (p 40 in blocks of 32), with _BWD_STATE_BLOCK 16 the 2nd state block half masked (n 24)
    "padded": (1, 21, 6, 40, 2, 24, 16, {"D": "channel", "z": True, "bias": True, "h0": True, "final": True}),
    # headdim 64, d_state 64: _state_rows splits a head's rows (4 blocks of 16), _chunk_bwd_dx's channels (2 blocks
    # of 32); 2 chunks of 64 (3 of 32 with _MAX_CHUNK 32)
    "headdim_64": (1, 70, 6, 64, 1, 64, 64, {"D": "head", "z": False, "bias": True, "h0": True, "final": True}),
}


def _ssd_inputs(b, L, h, p, g, n, opts, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)

    def r(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen) * scale).to(dtype)

    D = opts["D"]
    return {
        "x": r(b, L, h, p), "dt": r(b, L, h, scale=0.5), "A": -0.5 - torch.rand(h, generator=gen),
        "B": r(b, L, g, n), "C": r(b, L, g, n),
        "D": None if D is None else (torch.randn(h, generator=gen) if D == "head" else torch.randn(h, p, generator=gen)),
        "z": r(b, L, h, p) if opts["z"] else None, "dt_bias": r(h, scale=0.3) if opts["bias"] else None,
        "initial_states": torch.randn(b, h, p, n, generator=gen) if opts["h0"] else None,
    }


def _ssd_fwd_bwd(case, dtype=torch.float32):
    b, L, h, p, g, n, chunk, opts = SSD_CASES[case]
    leaves = {k: (v.requires_grad_() if v is not None else None) for k, v in _ssd_inputs(b, L, h, p, g, n, opts,
                                                                                       dtype).items()}
    y, final = ssd_module.ssd_scan_triton(leaves["x"], leaves["dt"], leaves["A"], leaves["B"], leaves["C"],
                                          chunk_size=chunk, D=leaves["D"], z=leaves["z"], dt_bias=leaves["dt_bias"],
                                          dt_softplus=opts["bias"], initial_states=leaves["initial_states"],
                                          return_final_states=True)
    gen = torch.Generator().manual_seed(1)
    outs, grads = [y], [torch.randn(y.shape, generator=gen).to(y.dtype)]
    if opts["final"]:
        outs.append(final)
        grads.append(torch.randn(final.shape, generator=gen))
    torch.autograd.backward(outs, grads)
    for k, v in leaves.items():
        if v is not None:
            assert v.grad is not None and torch.isfinite(v.grad).all(), k


# each variant where it changes something: the head splits need > 4 heads a group, one channel block p > 16,
# _MAX_CHUNK 32 a chunk_size of 64
SSD_PARAMS = ([("all_options", v) for v in ("defaults", "bc_heads_4", "dx_heads_4", "heads_per_program_2",
                                            "bc_heads_4_state_block_16")]
              + [("no_options", v) for v in ("defaults", "bc_heads_4_state_block_16")]
              + [("padded", v) for v in ("defaults", "dx_channel_blocks_1", "bc_heads_4_state_block_16")]
              + [("headdim_64", v) for v in ("defaults", "bc_heads_4", "dx_channel_blocks_1", "max_chunk_32")])


@pytest.mark.parametrize("case,variant", SSD_PARAMS)
def test_ssd_scan_in_bounds(case, variant, monkeypatch):
    _set(monkeypatch, variant)
    with bounds_checked() as checked:
        _ssd_fwd_bwd(case)
    assert {"_state_fwd", "_chunk_scan_fwd", "_state_bwd", "_chunk_bwd_bc", "_chunk_bwd_dx"} <= set(checked.kernels)
    assert checked.accesses > 100


def test_ssd_scan_bfloat16_in_bounds(monkeypatch):
    # bf16 inputs: bf16 entering states and state gradients in the backward (ssd._BWD_STATES_BF16), half-size
    # elements in every offset; with the backward's head splits on
    _set(monkeypatch, "bc_heads_4_state_block_16")
    monkeypatch.setattr(ssd_module, "_DX_HEADS", 4)
    with bounds_checked():
        _ssd_fwd_bwd("all_options", torch.bfloat16)


def test_checker_catches_a_scan_told_a_longer_sequence(monkeypatch):
    # the kernels told L + 1 steps (the buffers they write sized for it too): the last chunk's loads of the inputs
    # read one step past them, which the checker names
    real = ssd_module._dims
    monkeypatch.setattr(ssd_module, "_dims", lambda x, B, chunk: {**real(x, B, chunk), "L": x.shape[1] + 1})
    b, L, h, p, g, n, chunk, opts = SSD_CASES["no_options"]
    t = _ssd_inputs(b, L, h, p, g, n, opts, torch.float32)
    with bounds_checked(), pytest.raises(AssertionError) as err:
        ssd_module.ssd_scan_triton(t["x"], t["dt"], t["A"], t["B"], t["C"], chunk_size=chunk)
    # the first kernel, dt's cumulative sum, reads dt (1, 23, 6) at step 23: elements 138 .. 143 of its 138
    msg = str(err.value)
    assert msg.startswith("out-of-bounds accesses in kernel _cumsum_fwd:\n  load of dt_ptr ((1, 23, 6)"), msg
    assert "ssd.py:" in msg and f"{h} element(s) at offsets {L * h}..{L * h + h - 1}" in msg, msg
    assert "outside every argument's storage" in msg


# --- the fused Mamba-2 layer (conv, SSD, gated norm, out_proj) -----------------------------------------------------

LAYERS = {
    # 6 heads of 16 channels in one group, d_state 16, the gated norm, conv bias; chunks of 64 (32 with _MAX_CHUNK 32)
    "default": {"d_model": 48, "d_state": 16, "headdim": 16, "chunk_size": 64},
    # 2 groups, D per channel, the norm before the gate, a d_mlp branch (d_ssm < d_inner), dt_limit, no conv bias,
    # 3 taps, d_state 24 (padded)
    "groups_mlp": {"d_model": 48, "d_state": 24, "headdim": 16, "chunk_size": 16, "ngroups": 2, "D_has_hdim": True,
                   "norm_before_gate": True, "d_ssm": 64, "dt_limit": (0.01, 0.5), "conv_bias": False, "d_conv": 3},
    # no norm: z inside the scan (dz from the forward's kernel); headdim 32 (_chunk_bwd_dx's 2 channel blocks)
    "no_norm": {"d_model": 48, "d_state": 16, "headdim": 32, "chunk_size": 16, "rmsnorm": False},
}


def _layer_step(name, L=None, batch=2, autocast=False):
    from condorbrain.ssm.mamba2 import Mamba2

    torch.manual_seed(0)
    m = Mamba2(**LAYERS[name])
    L = L or m.chunk_size + 6  # 2 chunks, the last of 6 steps (T 64; 3 chunks of 32 with _MAX_CHUNK 32)
    u = torch.randn(batch, L, m.d_model, requires_grad=True)
    assert m._fused_path(u)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out = m(u)
    (out.float() * torch.randn(out.shape)).sum().backward()
    assert u.grad is not None and torch.isfinite(u.grad).all()


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_fused_layer_in_bounds(variant, monkeypatch):
    # Mamba2.forward's fused path (out_proj inside), forward and backward, 2 chunks with the last partial; dx, dB, dC
    # stored into the columns of the conv's output gradient (dx over the norm's dy)
    monkeypatch.setenv("CONDORBRAIN_SCAN_BACKEND", "triton")
    _set(monkeypatch, variant)
    with bounds_checked() as checked:
        _layer_step("default")
    conv_bwd = "_conv_bwd_slide" if VARIANTS[variant].get("fused._CONV_BWD_SLIDE") else "_conv_bwd"
    assert {conv_bwd, "_rmsnorm_bwd", "_chunk_bwd_bc"} <= set(checked.kernels), checked.kernels


@pytest.mark.parametrize("name,variant", [("groups_mlp", "defaults"), ("groups_mlp", "bc_heads_4"),
                                          ("no_norm", "defaults"), ("no_norm", "dx_channel_blocks_1"),
                                          ("no_norm", "dsilu_in_ssd"), ("groups_mlp", "conv_bwd_slide")])
def test_fused_layer_options_in_bounds(name, variant, monkeypatch):
    monkeypatch.setenv("CONDORBRAIN_SCAN_BACKEND", "triton")
    _set(monkeypatch, variant)
    with bounds_checked():
        _layer_step(name)


@pytest.mark.parametrize("variant", ["defaults", "bc_heads_4", "dsilu_in_ssd", "conv_bwd_slide"])
def test_fused_layer_autocast_in_bounds(variant, monkeypatch):
    # bf16 autocast, as training runs: bf16 activations, the SSD's gradients stored in bf16 into dxBC's columns
    monkeypatch.setenv("CONDORBRAIN_SCAN_BACKEND", "triton")
    _set(monkeypatch, variant)
    with bounds_checked():
        _layer_step("default", autocast=True)


def test_fused_layer_inference_in_bounds(monkeypatch):
    # no gradient: the forward's kernels only
    monkeypatch.setenv("CONDORBRAIN_SCAN_BACKEND", "triton")
    from condorbrain.ssm.mamba2 import Mamba2

    torch.manual_seed(0)
    m = Mamba2(**LAYERS["default"]).eval()
    with bounds_checked(), torch.no_grad():
        m(torch.randn(2, 70, m.d_model))


@pytest.mark.parametrize("L", [37, 27], ids=["three chunks", "two chunks, no state passed"])
@pytest.mark.parametrize("headdim", [16, 8], ids=["6 heads, 2 scan programs a chunk", "12 heads, 3 (4 in the norm)"])
def test_backbone_inference_deferred_norm_in_bounds(headdim, L, monkeypatch):
    # the inference forward with the gated norms deferred (condorbrain.ssm.pending): the scan storing its rows'
    # partial sums of squares (a program of fewer heads last), the next block's add + norm and the final norm
    # reading them (their count padded to a power of two, masked); over two chunks (T 16) the scan reading chunk 0's
    # inputs for chunk 1 (ssd._PREV_CHUNK_TERM), masked out in chunk 0's programs, and no state pass
    from condorbrain.ssm.blocks import Backbone, BackboneConfig

    monkeypatch.setenv("CONDORBRAIN_SCAN_BACKEND", "triton")
    torch.manual_seed(0)
    model = Backbone(BackboneConfig(d_model=48, n_layer=2, mixer="mamba2", d_state=16, headdim=headdim,
                                    chunk_size=16)).eval()
    x = torch.randn(2, L, 48)
    with bounds_checked() as checked, torch.no_grad():
        assert model.layers[0].mixer.defers_norm(x)
        model(x)
    assert {"_chunk_scan_fwd", "_rmsnorm_fwd"} <= set(checked.kernels), checked.kernels
    assert ("_state_fwd" in checked.kernels) == (L > 32), checked.kernels


# --- the backbone's streaming step and the selective scan --------------------------------------------------------------

@pytest.mark.parametrize("mixer,batch", [("mamba2", 1), ("mamba2", 3), ("mamba", 2)])
def test_backbone_streaming_step_in_bounds(mixer, batch, monkeypatch):
    # the step kernels on small state tiles (several programs a head), the block's norm + in_proj GEMV
    from condorbrain.ssm.blocks import Backbone, BackboneConfig

    monkeypatch.setenv("CONDORBRAIN_SCAN_BACKEND", "triton")
    monkeypatch.setattr(step_module, "_STATE_TILE", 128)
    torch.manual_seed(0)
    if mixer == "mamba2":
        config = BackboneConfig(d_model=64, n_layer=2, mixer=mixer, d_intermediate=48, d_state=24, headdim=16,
                                ngroups=2, chunk_size=16)
    else:
        config = BackboneConfig(d_model=32, n_layer=1, mixer=mixer, d_intermediate=48, d_state=8)
    model = Backbone(config).eval()
    cache = model.allocate_inference_cache(batch)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for states in cache:
            for s in states:
                s.copy_(torch.randn(s.shape, generator=gen))
        with bounds_checked() as checked:
            model.step(torch.randn(batch, 1, config.d_model, generator=gen), cache)
    assert any("step" in k for k in checked.kernels), checked.kernels


@pytest.mark.parametrize("kw", [{}, {"ngroups": 2, "d_ssm": 32, "rmsnorm": False, "D_has_hdim": True},
                                {"d_ssm": 48, "norm_before_gate": True, "conv_bias": False, "d_conv": 3}],
                         ids=["default", "groups d_mlp no norm", "d_mlp norm before gate"])
def test_mamba2_layer_step_in_bounds(kw, monkeypatch):
    # Mamba2.step: the state update and the finishing kernel (norm, gate, the d_mlp branch), out_proj apart
    from condorbrain.ssm.mamba2 import Mamba2

    monkeypatch.setenv("CONDORBRAIN_SCAN_BACKEND", "triton")
    monkeypatch.setattr(step_module, "_STATE_TILE", 128)
    torch.manual_seed(0)
    m = Mamba2(**{"d_model": 32, "d_state": 24, "headdim": 16, **kw}).eval()
    conv_state, ssm_state = m.allocate_inference_cache(3)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for st in (conv_state, ssm_state):
            st.copy_(torch.randn(st.shape, generator=gen))
        with bounds_checked() as checked:
            m.step(torch.randn(3, 1, 32, generator=gen), conv_state, ssm_state)
    assert checked.kernels == ["_mamba2_step_ssm", "_mamba2_step_finish"]


def test_selective_scan_in_bounds():
    from condorbrain.ssm.triton.selective import selective_scan_triton

    # grouped time-varying B, C, every option, 3 tiles of 8 steps (the last short)
    gen = torch.Generator().manual_seed(0)
    b, d, L, n = 2, 6, 19, 4

    def r(*shape):
        return torch.randn(*shape, generator=gen).requires_grad_()

    t = {"u": r(b, d, L), "delta": r(b, d, L), "A": (-0.1 - 2 * torch.rand(d, n, generator=gen)).requires_grad_(),
         "B": r(b, 2, n, L), "C": r(b, 2, n, L), "D": r(d), "z": r(b, d, L), "delta_bias": r(d),
         "initial_state": r(b, d, n)}
    with bounds_checked():
        out, last = selective_scan_triton(**t, delta_softplus=True, chunk_size=8, return_last_state=True)
        torch.autograd.backward([out, last], [torch.randn(out.shape), torch.randn(last.shape)])
    assert all(v.grad is not None for v in t.values())


