"""Build (on first use, cached) and call the compiled CPU scan in ``csrc/scan_cpu.cpp``.

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

_SRC = Path(__file__).parent / "csrc" / "scan_cpu.cpp"
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
    src = _SRC.read_bytes()
    key = hashlib.sha256(src + " ".join(_FLAGS).encode() + version.encode() + _cpu_signature().encode()).hexdigest()
    path = _cache_dir() / f"scan_cpu-{key[:16]}.so"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=path.parent)
        os.close(fd)
        try:
            res = subprocess.run([cxx, *_FLAGS, str(_SRC), "-o", tmp], capture_output=True, text=True, check=False)
            if res.returncode != 0:
                raise RuntimeError(f"compiling {_SRC.name} failed:\n{res.stderr[-2000:]}")
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
    def forward(ctx, u, delta, A, B, C, h0, lb: BCLayout, lc: BCLayout, a_scalar: bool, chunk: int):
        lib = load()
        batch, dim, L = u.shape
        N = B.shape[-1]
        nchunks = -(-L // chunk)
        y = torch.empty_like(u)
        h_last = u.new_empty(batch, dim, N)
        ckpt = u.new_empty(batch, dim, nchunks, N)  # the state entering each chunk; all the backward pass keeps
        nthreads = max(1, min(torch.get_num_threads(), batch * dim))
        getattr(lib, f"cb_scan_fwd_{_sfx(u.dtype)}")(
            *_i(batch, dim, L, N), _ptr(u), _ptr(delta), _ptr(A), ctypes.c_int(int(a_scalar)),
            _ptr(B), *_i(lb.sb, lb.sg, lb.st, lb.dpg), _ptr(C), *_i(lc.sb, lc.sg, lc.st, lc.dpg),
            _ptr(h0), _ptr(y), _ptr(h_last), _ptr(ckpt), ctypes.c_int64(chunk), ctypes.c_int(nthreads),
        )
        ctx.save_for_backward(u, delta, A, B, C, ckpt)
        ctx.meta = (lb, lc, a_scalar, chunk, h0 is not None)
        return y, h_last

    @staticmethod
    def backward(ctx, dy, dh_last):
        lib = load()
        u, delta, A, B, C, ckpt = ctx.saved_tensors
        lb, lc, a_scalar, chunk, has_h0 = ctx.meta
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
            *_i(batch, dim, L, N), _ptr(u), _ptr(delta), _ptr(A), ctypes.c_int(int(a_scalar)),
            _ptr(B), *_i(lb.sb, lb.sg, lb.st, lb.dpg), _ptr(C), *_i(lc.sb, lc.sg, lc.st, lc.dpg),
            _ptr(ckpt), _ptr(dy), _ptr(dh_last), _ptr(du), _ptr(ddelta),
            _ptr(dA), ctypes.c_int64(A.numel()), _ptr(dB), ctypes.c_int64(B.numel()), _ptr(dC),
            ctypes.c_int64(C.numel()), _ptr(dh0), ctypes.c_int64(chunk), ctypes.c_int(nthreads),
        )
        return du, ddelta, dA.sum(0), dB.sum(0), dC.sum(0), dh0, None, None, None, None


def compiled_scan(
    u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, h0: Tensor | None,
    lb: BCLayout, lc: BCLayout, a_scalar: bool, chunk: int,
) -> tuple[Tensor, Tensor]:
    """Run the compiled scan. All tensors contiguous, on the CPU, one dtype (float32 or float64).

    u, delta: (batch, dim, L); A: (dim, N), or (dim,) with ``a_scalar``; B, C: canonical buffers from
    :func:`canonical_bc`; h0: (batch, dim, N) or None. Returns y (batch, dim, L), h_last (batch, dim, N).
    """
    return _CompiledScan.apply(u, delta, A, B, C, h0, lb, lc, a_scalar, chunk)
