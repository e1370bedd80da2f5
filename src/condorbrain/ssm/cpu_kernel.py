"""Build (on first use, cached) and call the compiled CPU ops in ``csrc/``: the selective scan and the causal conv.

The library is plain C++ with OpenMP and a C ABI, compiled by the system's C++ compiler in about a second and loaded
with ctypes, so it needs neither torch's headers nor ninja. It is cached under ``$CONDORBRAIN_CACHE`` (default
``~/.cache/condorbrain``) keyed by a hash of the source, the flags, the compiler and the CPU, and written atomically.
If no compiler is found or the build fails, :func:`available` is False, the reason is in :func:`unavailable_reason`,
and the scans fall back to their pure-PyTorch chunked path.

``CONDORBRAIN_SCAN_BACKEND=torch`` makes the scans skip this path (see :func:`condorbrain.ssm.scans.scan_backend`).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

_CSRC = Path(__file__).parent / "csrc"
_SRCS = [_CSRC / name for name in ("scan_cpu.cpp", "conv_cpu.cpp", "ssd_cpu.cpp")]
_HEADERS = [_CSRC / "common.h"]
# -ffast-math lets GCC call glibc's vector exp (libmvec) inside the `omp simd` loops; the scan has no NaN/inf
# handling to lose (inputs are checked before the call) and its sums are short.
_FLAGS = ["-O3", "-march=native", "-ffast-math", "-fopenmp", "-fPIC", "-shared", "-std=c++17", "-fvisibility=hidden"]

_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_reason: str | None = None


def _cpu_signature() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            lines = [ln for ln in f if ln.startswith(("model name", "flags"))][:2]
    except OSError:
        lines = []
    return platform.machine() + "".join(lines)


def _compiler() -> str | None:
    for cand in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if cand and shutil.which(cand):
            return cand
    return None


def _cache_dir() -> Path:
    base = os.environ.get("CONDORBRAIN_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "condorbrain")
    return Path(base) / "kernels"


def _build() -> ctypes.CDLL:
    cxx = _compiler()
    if cxx is None:
        raise RuntimeError("no C++ compiler found (install g++ or set CXX)")
    version = subprocess.run([cxx, "--version"], capture_output=True, text=True, check=False).stdout
    src = b"".join(p.read_bytes() for p in _SRCS + _HEADERS)
    key = hashlib.sha256(src + " ".join(_FLAGS).encode() + version.encode() + _cpu_signature().encode()).hexdigest()
    path = _cache_dir() / f"cpu_ops-{key[:16]}.so"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=path.parent)
        os.close(fd)
        try:
            res = subprocess.run([cxx, *_FLAGS, *map(str, _SRCS), "-o", tmp], capture_output=True, text=True,
                                 check=False)
            if res.returncode != 0:
                raise RuntimeError(f"compiling {[p.name for p in _SRCS]} failed:\n{res.stderr[-2000:]}")
            os.replace(tmp, path)  # atomic: a concurrent builder never sees a half-written library
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    lib = ctypes.CDLL(str(path))
    if lib.cb_abi_version() != 1:
        raise RuntimeError(f"{path} has an unexpected ABI version")
    return lib


def load() -> ctypes.CDLL | None:
    """The compiled library, building it on first use; None where it cannot be built."""
    global _lib, _reason
    if _lib is not None or _reason is not None:
        return _lib
    with _lock:
        if _lib is None and _reason is None:
            try:
                _lib = _build()
            except (OSError, RuntimeError) as ex:
                _reason = str(ex)
    return _lib


def available() -> bool:
    return load() is not None


def unavailable_reason() -> str | None:
    load()
    return _reason


@dataclass(frozen=True)
class BCLayout:
    """How B or C is laid out for the kernel: element (b, d, t, n) at b*sb + (d // dpg)*sg + t*st + n."""

    sb: int
    sg: int
    st: int
    dpg: int


def canonical_bc(X: Tensor, batch: int, dim: int) -> tuple[Tensor, BCLayout]:
    """B or C in a mamba_ssm layout -> a contiguous buffer with n innermost, and its layout. Copies at most once."""
    N = X.shape[-2] if X.dim() >= 3 else X.shape[-1]
    if X.dim() == 2:  # (dim, N): time-invariant, one row per channel
        return X.contiguous(), BCLayout(sb=0, sg=N, st=0, dpg=1)
    if X.dim() == 3:  # (batch, N, L) -> (batch, L, N)
        L = X.shape[2]
        return X.transpose(1, 2).contiguous(), BCLayout(sb=L * N, sg=0, st=N, dpg=dim)
    G, L = X.shape[1], X.shape[3]  # (batch, G, N, L) -> (batch, G, L, N)
    return X.transpose(2, 3).contiguous(), BCLayout(sb=G * L * N, sg=L * N, st=N, dpg=dim // G)


def _ptr(t: Tensor | None) -> ctypes.c_void_p:
    return ctypes.c_void_p(t.data_ptr() if t is not None else 0)


def _sfx(dtype: torch.dtype) -> str:
    return {torch.float32: "f32", torch.float64: "f64"}[dtype]


def _i(*xs: int) -> list[ctypes.c_int64]:
    return [ctypes.c_int64(x) for x in xs]


class _CompiledScan(torch.autograd.Function):
    """Autograd wrapper: (u, delta, A, B, C, h0) -> (y, h_last) with y_t = C_t h_t (no D, no z)."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, h0, lb: BCLayout, lc: BCLayout, chunk: int):
        lib = load()
        batch, dim, L = u.shape
        N = B.shape[-1]
        nchunks = -(-L // chunk)
        y = torch.empty_like(u)
        h_last = u.new_empty(batch, dim, N)
        ckpt = u.new_empty(batch, dim, nchunks, N)  # the state entering each chunk; all the backward pass keeps
        nthreads = max(1, min(torch.get_num_threads(), batch * dim))
        getattr(lib, f"cb_scan_fwd_{_sfx(u.dtype)}")(
            *_i(batch, dim, L, N), _ptr(u), _ptr(delta), _ptr(A),
            _ptr(B), *_i(lb.sb, lb.sg, lb.st, lb.dpg), _ptr(C), *_i(lc.sb, lc.sg, lc.st, lc.dpg),
            _ptr(h0), _ptr(y), _ptr(h_last), _ptr(ckpt), ctypes.c_int64(chunk), ctypes.c_int(nthreads),
        )
        ctx.save_for_backward(u, delta, A, B, C, ckpt)
        ctx.meta = (lb, lc, chunk, h0 is not None)
        return y, h_last

    @staticmethod
    def backward(ctx, dy, dh_last):
        lib = load()
        u, delta, A, B, C, ckpt = ctx.saved_tensors
        lb, lc, chunk, has_h0 = ctx.meta
        batch, dim, L = u.shape
        N = B.shape[-1]
        nthreads = max(1, min(torch.get_num_threads(), batch * dim))
        dy = dy.contiguous() if dy is not None else torch.zeros_like(u)
        dh_last = dh_last.contiguous() if dh_last is not None else None
        du = torch.empty_like(u)
        ddelta = torch.empty_like(u)
        dA = A.new_zeros(nthreads, *A.shape)  # one slice per thread, summed below
        dB = B.new_zeros(nthreads, *B.shape)
        dC = C.new_zeros(nthreads, *C.shape)
        dh0 = u.new_empty(batch, dim, N) if has_h0 else None
        getattr(lib, f"cb_scan_bwd_{_sfx(u.dtype)}")(
            *_i(batch, dim, L, N), _ptr(u), _ptr(delta), _ptr(A),
            _ptr(B), *_i(lb.sb, lb.sg, lb.st, lb.dpg), _ptr(C), *_i(lc.sb, lc.sg, lc.st, lc.dpg),
            _ptr(ckpt), _ptr(dy), _ptr(dh_last), _ptr(du), _ptr(ddelta),
            _ptr(dA), ctypes.c_int64(A.numel()), _ptr(dB), ctypes.c_int64(B.numel()), _ptr(dC),
            ctypes.c_int64(C.numel()), _ptr(dh0), ctypes.c_int64(chunk), ctypes.c_int(nthreads),
        )
        return du, ddelta, dA.sum(0), dB.sum(0), dC.sum(0), dh0, None, None, None


def compiled_scan(
    u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, h0: Tensor | None,
    lb: BCLayout, lc: BCLayout, chunk: int,
) -> tuple[Tensor, Tensor]:
    """Run the compiled scan. All tensors contiguous, on the CPU, one dtype (float32 or float64).

    u, delta: (batch, dim, L); A: (dim, N); B, C: canonical buffers from
    :func:`canonical_bc`; h0: (batch, dim, N) or None. Returns y (batch, dim, L), h_last (batch, dim, N).
    """
    return _CompiledScan.apply(u, delta, A, B, C, h0, lb, lc, chunk)


class _CompiledConv(torch.autograd.Function):
    """Autograd wrapper of the causal depthwise conv: x (B, L, C) channel-last view -> y (B, L, C)."""

    @staticmethod
    def forward(ctx, x, w_kc, bias, state_bkc, silu: bool):
        lib = load()
        batch, L, C = x.shape
        K = w_kc.shape[0]
        y = x.new_empty(batch, L, C)
        nthreads = max(1, min(torch.get_num_threads(), batch))
        getattr(lib, f"cb_conv_fwd_{_sfx(x.dtype)}")(
            *_i(batch, L, C, K), _ptr(x), *_i(x.stride(0), x.stride(1)), _ptr(w_kc), _ptr(bias), _ptr(state_bkc),
            ctypes.c_int(int(silu)), _ptr(y), ctypes.c_int(nthreads))
        ctx.save_for_backward(x, w_kc, bias, state_bkc)
        ctx.silu = silu
        return y

    @staticmethod
    def backward(ctx, dy):
        lib = load()
        x, w_kc, bias, state_bkc = ctx.saved_tensors
        batch, L, C = x.shape
        K = w_kc.shape[0]
        nthreads = max(1, min(torch.get_num_threads(), batch))
        dy = dy.contiguous()
        dx = x.new_zeros(batch, L, C)
        dstate = torch.zeros_like(state_bkc) if state_bkc is not None else None
        dw = w_kc.new_zeros(nthreads, K, C)
        db = w_kc.new_zeros(nthreads, C)
        getattr(lib, f"cb_conv_bwd_{_sfx(x.dtype)}")(
            *_i(batch, L, C, K), _ptr(x), *_i(x.stride(0), x.stride(1)), _ptr(w_kc), _ptr(bias), _ptr(state_bkc),
            ctypes.c_int(int(ctx.silu)), _ptr(dy), _ptr(dx), _ptr(dstate), _ptr(dw), _ptr(db), ctypes.c_int(nthreads))
        return dx, dw.sum(0), (db.sum(0) if bias is not None else None), dstate, None


def compiled_causal_conv(x: Tensor, w_kc: Tensor, bias: Tensor | None, state_bkc: Tensor | None, silu: bool) -> Tensor:
    """x: (B, L, C) with unit channel stride; w_kc: (K, C) contiguous; bias: (C,); state_bkc: (B, K, C) contiguous."""
    return _CompiledConv.apply(x, w_kc, bias, state_bkc, silu)


# Steps between stored states in the compiled SSD: the backward recomputes this many (P, N) states into a
# per-thread buffer, kept at about 128 KiB of float32 so that it stays in L2.
_SSD_BUFFER_ELEMS = 32768


class _CompiledSSD(torch.autograd.Function):
    """Autograd wrapper: (x, dt, A, B, C, h0) -> (y, h_last), y_t = S_t C_t with S the per-head (P, N) state."""

    @staticmethod
    def forward(ctx, x, dt, A, B, C, h0, chunk: int):
        lib = load()
        batch, L, H, P = x.shape
        G, N = B.shape[2], B.shape[3]
        K = max(1, min(chunk, _SSD_BUFFER_ELEMS // (P * N)))
        nck = -(-L // K)
        y = x.new_empty(batch, L, H, P)
        h_last = x.new_empty(batch, H, P, N)
        ckpt = x.new_empty(batch, H, nck, P, N) if any(ctx.needs_input_grad) else None
        nthreads = max(1, min(torch.get_num_threads(), batch * H))
        getattr(lib, f"cb_ssd_fwd_{_sfx(x.dtype)}")(
            *_i(batch, L, H, P, G, N, K), _ptr(x), *_i(x.stride(0), x.stride(1)), _ptr(dt), _ptr(A),
            _ptr(B), *_i(B.stride(0), B.stride(1)), _ptr(C), *_i(C.stride(0), C.stride(1)), _ptr(h0), _ptr(y),
            _ptr(h_last), _ptr(ckpt), ctypes.c_int(nthreads))
        ctx.save_for_backward(x, dt, A, B, C, ckpt)
        ctx.meta = (K, h0 is not None)
        return y, h_last

    @staticmethod
    def backward(ctx, dy, dh_last):
        lib = load()
        x, dt, A, B, C, ckpt = ctx.saved_tensors
        K, has_h0 = ctx.meta
        batch, L, H, P = x.shape
        G, N = B.shape[2], B.shape[3]
        nthreads = max(1, min(torch.get_num_threads(), batch * H))
        dy = dy.contiguous() if dy is not None else torch.zeros_like(x)
        dh_last = dh_last.contiguous() if dh_last is not None else None
        dx = x.new_empty(batch, L, H, P)
        ddt = dt.new_empty(dt.shape)
        dA = A.new_zeros(nthreads, H)  # per-thread slices, summed below
        dB = B.new_zeros(nthreads, batch, L, G, N)
        dC = C.new_zeros(nthreads, batch, L, G, N)
        dh0 = x.new_empty(batch, H, P, N) if has_h0 else None
        getattr(lib, f"cb_ssd_bwd_{_sfx(x.dtype)}")(
            *_i(batch, L, H, P, G, N, K), _ptr(x), *_i(x.stride(0), x.stride(1)), _ptr(dt), _ptr(A),
            _ptr(B), *_i(B.stride(0), B.stride(1)), _ptr(C), *_i(C.stride(0), C.stride(1)), _ptr(ckpt), _ptr(dy),
            _ptr(dh_last), _ptr(dx), _ptr(ddt), _ptr(dA), _ptr(dB), _ptr(dC), _ptr(dh0), ctypes.c_int(nthreads))
        return dx, ddt, dA.sum(0), dB.sum(0), dC.sum(0), dh0, None


def _inner_contiguous(t: Tensor, inner: int) -> Tensor:
    """``t`` itself if its last ``inner`` dims are packed row-major (any outer strides), else a contiguous copy."""
    expected = 1
    for size, stride in zip(reversed(t.shape[-inner:]), reversed(t.stride()[-inner:])):
        if size > 1 and stride != expected:
            return t.contiguous()
        expected *= size
    return t


def compiled_ssd(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, chunk: int, h0: Tensor | None
                 ) -> tuple[Tensor, Tensor]:
    """x (b, L, h, p), B/C (b, L, g, n): any batch/time strides, packed inner dims (no copy for slices of the
    conv output); dt (b, L, h), A (h,), h0 (b, h, p, n). Returns y (b, L, h, p) and the final state (b, h, p, n)."""
    return _CompiledSSD.apply(_inner_contiguous(x, 2), dt.contiguous(), A.contiguous(), _inner_contiguous(B, 2),
                              _inner_contiguous(C, 2), h0.contiguous() if h0 is not None else None, chunk)
