"""Whether the Triton kernels can run here, and the reason given when they cannot (``condorbrain.ssm.triton.status``).
Runs without triton installed: only the version logic and the messages are checked."""

from __future__ import annotations

import pytest

from condorbrain.ssm import triton as triton_path


@pytest.mark.parametrize(("triton_version", "numpy_version", "conflict"), [
    ("3.6.0", "2.4.6", True),   # torch 2.11's pinned triton with a current numpy: the interpreter fails
    ("3.6.0", "2.3.5", False),  # numpy only warns before 2.4
    ("3.7.0", "2.4.6", False),  # fixed in 3.7
    ("3.9.0", "3.0.0rc1", False),
    ("3.10.1+git1234", "2.4.0", False),
    ("2.3.1", "2.5.0.dev0", True),
])
def test_interpreter_conflict(triton_version, numpy_version, conflict):
    why = triton_path._interpreter_conflict(triton_version, numpy_version)
    assert (why is not None) == conflict
    if conflict:
        assert f"triton {triton_version}" in why and f"numpy {numpy_version}" in why and "triton >= 3.7" in why


def test_status_names_the_conflict(monkeypatch):
    """On the CPU under the interpreter, an old triton with a new numpy is reported as unusable, with the fix; on a
    CUDA device the same versions are fine (kernels are compiled, not interpreted)."""
    monkeypatch.setattr(triton_path, "_triton_version", lambda: "3.6.0")
    monkeypatch.setattr(triton_path.np, "__version__", "2.4.6")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    ok, why = triton_path.status("cpu")
    assert not ok and "numpy 2.4.6" in why and "use triton >= 3.7 or numpy < 2.4" in why
    monkeypatch.setattr(triton_path.np, "__version__", "2.3.5")
    assert triton_path.status("cpu") == (True, "triton 3.6.0 interpreter (TRITON_INTERPRET=1) on the CPU")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    ok, why = triton_path.status("cpu")
    assert not ok and "needs a CUDA device" in why


def test_status_without_triton(monkeypatch):
    monkeypatch.setattr(triton_path, "_triton_version", lambda: None)
    ok, why = triton_path.status("cpu")
    assert not ok and why.startswith("triton is not installed")
