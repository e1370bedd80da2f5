"""GPU kernels in Triton: the fast path of the scans and of the fused Mamba-2 layer on CUDA tensors.

Triton ships with the CUDA builds of torch; on a CPU machine it can be installed on its own (the ``dev`` extra does,
for the tests) and the kernels then run under Triton's interpreter (``TRITON_INTERPRET=1``, set before triton is
first imported): slow, numpy-emulated, but the same kernel code, which is how CI checks them against the CPU
references. Host code that needs a driver (device properties, the autotuner's timing) stays off that path: one fixed
launch config when interpreting.

:func:`status` says whether the kernels can run here, and why not.
"""

from __future__ import annotations

import functools
import importlib.util
import os

import numpy as np
import torch

__all__ = ["available", "interpreting", "status"]


def interpreting() -> bool:
    """True when Triton runs kernels on the CPU through its interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@functools.cache
def _triton_version() -> str | None:
    if importlib.util.find_spec("triton") is None:
        return None
    import triton

    return str(triton.__version__)


@functools.cache
def _cuda_name(index: int) -> str:
    return torch.cuda.get_device_name(index)


def _release(version: str) -> tuple[int, int]:
    """(major, minor) of a version string such as '3.6.0' or '2.4.0rc1'."""
    major, minor = (version.split("+")[0].split(".") + ["0"])[:2]
    return int(major), int("".join(ch for ch in minor if ch.isdigit()) or 0)


def _interpreter_conflict(triton_version: str, numpy_version: str) -> str | None:
    """Why this triton's interpreter cannot run with this numpy, or None.

    Before 3.7 the interpreter turns a kernel's integer argument into a one-element array and takes ``int()`` of it
    (a loop bound such as ``range(n_chunks)``); numpy deprecated that in 1.25 and rejects it from 2.4 on, so every
    kernel with such a loop fails there. Torch 2.11's CUDA wheels pin triton 3.6, which is fine on a GPU (compiled,
    not interpreted): only the interpreter is affected."""
    if _release(triton_version) < (3, 7) and _release(numpy_version) >= (2, 4):
        return (f"triton {triton_version}'s interpreter cannot run with numpy {numpy_version} (it takes int() of "
                "one-element arrays, which numpy rejects from 2.4): use triton >= 3.7 or numpy < 2.4")
    return None


def status(device: torch.device | str | None = None) -> tuple[bool, str]:
    """(usable, why): whether the Triton kernels can run on ``device`` (None: CUDA if present, else the CPU).

    Usable on a CUDA device when triton imports; on the CPU only under the interpreter."""
    version = _triton_version()
    if version is None:
        return False, "triton is not installed (it ships with CUDA builds of torch; `pip install triton` elsewhere)"
    dev = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            return False, "no CUDA device"
        return True, f"triton {version} on {_cuda_name(dev.index if dev.index is not None else 0)}"
    if dev.type == "cpu" and interpreting():
        if (why := _interpreter_conflict(version, np.__version__)) is not None:
            return False, why
        return True, f"triton {version} interpreter (TRITON_INTERPRET=1) on the CPU"
    return False, f"triton {version} needs a CUDA device (or TRITON_INTERPRET=1 on the CPU), not {dev.type}"


def available(device: torch.device | str | None = None) -> bool:
    """``status(device)[0]``."""
    return status(device)[0]
