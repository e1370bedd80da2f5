"""The `condorbrain` command: --help, --version, info, and the smoke run end to end."""

from __future__ import annotations

import pytest

from condorbrain import __version__
from condorbrain.cli import main
from condorbrain.smoke import smoke_run


def test_version_and_help(capsys):
    with pytest.raises(SystemExit) as ex:
        main(["--version"])
    assert ex.value.code == 0
    assert __version__ in capsys.readouterr().out
    with pytest.raises(SystemExit) as ex:
        main(["--help"])
    assert ex.value.code == 0
    out = capsys.readouterr().out
    assert "smoke" in out and "info" in out


def test_info_names_the_scan_path(capsys, monkeypatch):
    assert main(["info"]) == 0
    assert "CPU scan path:" in capsys.readouterr().out
    # under the interpreter, whether it can run the kernels here, and why not
    from condorbrain.ssm import triton as triton_path

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(triton_path, "status", lambda device=None: (False, f"because ({device})"))
    assert main(["info"]) == 0
    assert "Triton interpreter on the CPU: not usable: because (cpu)" in capsys.readouterr().out


def test_smoke_run_learns_and_streams_like_batch():
    res = smoke_run(steps=25, seed=0)
    # the model must beat both its own start and the trivial zero predictor on held-out data
    assert res["last_loss"] < 0.5 * res["first_loss"]
    assert res["stream_max_abs_diff"] < 1e-4


def test_smoke_bad_steps():
    with pytest.raises(ValueError, match="steps must be >= 1"):
        smoke_run(steps=0)
