"""The compiled path's build and fallback: a failed build leaves the PyTorch path in charge, with the reason."""

from __future__ import annotations

import pytest
import torch

from condorbrain.ssm import cpu_kernel, scan_backend, selective_scan, selective_scan_ref


@pytest.fixture
def fresh_loader(monkeypatch):
    monkeypatch.setattr(cpu_kernel, "_lib", None)
    monkeypatch.setattr(cpu_kernel, "_reason", None)
    return cpu_kernel


def test_no_compiler_falls_back_to_torch_with_reason(fresh_loader, monkeypatch, tmp_path):
    monkeypatch.setenv("CONDORBRAIN_CACHE", str(tmp_path))  # nothing cached there
    monkeypatch.setattr(cpu_kernel, "_compiler", lambda: None)
    monkeypatch.setenv("CONDORBRAIN_SCAN_BACKEND", "auto")
    assert not cpu_kernel.available()
    assert "no C++ compiler" in cpu_kernel.unavailable_reason()
    assert scan_backend("cpu", torch.float32) == "torch"
    gen = torch.Generator().manual_seed(0)
    args = (torch.randn(1, 3, 9, generator=gen, dtype=torch.float64), torch.rand(1, 3, 9, generator=gen, dtype=torch.float64),
            -torch.rand(3, 2, generator=gen, dtype=torch.float64), torch.randn(1, 2, 9, generator=gen, dtype=torch.float64),
            torch.randn(1, 2, 9, generator=gen, dtype=torch.float64))
    torch.testing.assert_close(selective_scan(*args), selective_scan_ref(*args), rtol=1e-12, atol=1e-12)
    monkeypatch.setenv("CONDORBRAIN_SCAN_BACKEND", "compiled")
    with pytest.raises(RuntimeError, match="cannot be built"):
        scan_backend("cpu", torch.float32)


def test_build_is_cached_and_atomic(fresh_loader, monkeypatch, tmp_path):
    monkeypatch.setenv("CONDORBRAIN_CACHE", str(tmp_path))
    assert cpu_kernel.available(), cpu_kernel.unavailable_reason()
    built = list((tmp_path / "kernels").glob("cpu_ops-*.so"))
    assert len(built) == 1
    assert not [p for p in (tmp_path / "kernels").iterdir() if p.suffix != ".so" or p not in built]  # no temp files
    mtime = built[0].stat().st_mtime_ns
    monkeypatch.setattr(cpu_kernel, "_lib", None)
    assert cpu_kernel.available()
    assert built[0].stat().st_mtime_ns == mtime  # loaded from the cache, not rebuilt


def test_bad_backend_name(monkeypatch):
    monkeypatch.setenv("CONDORBRAIN_SCAN_BACKEND", "cuda-please")
    with pytest.raises(ValueError, match="CONDORBRAIN_SCAN_BACKEND must be"):
        scan_backend("cpu")
