"""Loading a script of ``benchmarks/`` as a module for its tests (the scripts are not a package: each puts its own
folder on sys.path to import ``_gpu_models``)."""

from __future__ import annotations

import contextlib
import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@contextlib.contextmanager
def benchmark_module(script: str) -> Iterator[ModuleType]:
    """``benchmarks/<script>.py`` loaded as the module ``bench_<script>`` (registered in sys.modules while in use:
    dataclasses look their module up), with ``benchmarks/`` on sys.path; both undone on exit."""
    name = f"bench_{script}"
    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location(name, BENCH / f"{script}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(name, None)
        sys.path.remove(str(BENCH))
