"""Fixtures of the SSM tests."""

from __future__ import annotations

import pytest
import torch

from condorbrain.ssm import triton as triton_path


@pytest.fixture(params=["cpu", "cuda"])
def device(request):
    """Where the Triton kernels run: the CPU under Triton's interpreter (tests/conftest.py sets TRITON_INTERPRET=1
    when no GPU is visible) and a CUDA device; a case is skipped where they cannot (naming why)."""
    ok, why = triton_path.status(request.param)
    if not ok:
        pytest.skip(f"Triton kernels cannot run on {request.param}: {why}")
    return torch.device(request.param)


@pytest.fixture
def triton_layers(monkeypatch):
    """The layers' Triton path selected (CONDORBRAIN_SCAN_BACKEND=triton: on the CPU, under the interpreter), for the
    test modules that compare it with the other paths (``pytestmark = pytest.mark.usefixtures("triton_layers")``)."""
    monkeypatch.setenv("CONDORBRAIN_SCAN_BACKEND", "triton")
