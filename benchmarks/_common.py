"""Helpers shared by the benchmark scripts."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any


def proc_status() -> dict[str, int]:
    """Memory lines of /proc/self/status (VmRSS, VmHWM, RssAnon, RssFile, ...) in bytes (Linux)."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            parts = value.split()
            if len(parts) == 2 and parts[1] == "kB":
                out[key] = int(parts[0]) * 1024
    return out


def rss_mib() -> float:
    """Resident set size of this process now, MiB."""
    return proc_status()["VmRSS"] / 2**20


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (platform.processor() where that is unreadable)."""
    import platform

    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def device_seconds(fn: Callable[[], Any], device: Any, repeats: int) -> list[float]:
    """Seconds of each of ``repeats`` calls of ``fn``: CUDA events around each call on a CUDA ``device`` (a
    torch.device), perf_counter elsewhere. Warm-up is the caller's."""
    import torch

    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return times


@contextlib.contextmanager
def around_interpreted_launches(around: Callable[[str], contextlib.AbstractContextManager]) -> Iterator[None]:
    """Run every Triton launch made under the interpreter (``TRITON_INTERPRET=1``) inside ``around(kernel name)``,
    until exit: for counting launches, or for acting after each."""
    from triton.runtime.interpreter import GridExecutor

    run = GridExecutor.__call__

    def wrapped(self, *args, **kwargs):
        with around(self.fn.__name__):
            return run(self, *args, **kwargs)

    GridExecutor.__call__ = wrapped
    try:
        yield
    finally:
        GridExecutor.__call__ = run
