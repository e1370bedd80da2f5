"""Suite-wide settings: every test starts from the same global seeds (tests also seed their own generators).

Without a GPU the Triton kernels are tested under Triton's interpreter: ``TRITON_INTERPRET`` must be set before
triton is first imported, so it is set here, before any test module imports it."""

import os

import numpy as np
import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_finish(session: pytest.Session) -> None:
    """Start the sm_90 compile of every Triton kernel (tests/ssm/test_triton_compile.py, ~50 s of one core) as soon as
    collection has selected its tests, so that it runs beside the tests before them."""
    for item in session.items:
        module = getattr(item, "module", None)
        if module is not None and module.__name__.endswith("test_triton_compile"):
            module.start_early()
            return


@pytest.fixture(autouse=True)
def _fixed_seeds():
    torch.manual_seed(0)
    np.random.seed(0)
    yield


@pytest.fixture
def isfinite_scans(monkeypatch):
    """The shapes of the tensors ``torch.isfinite`` is called on during the test: each a scan for NaN / inf."""
    scans = []
    real = torch.isfinite
    monkeypatch.setattr(torch, "isfinite", lambda t: scans.append(tuple(t.shape)) or real(t))
    return scans
