"""Checkpoints: round trip, verification against the manifest, never unpickling."""

from __future__ import annotations

import hashlib
import json
import pickle
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from condorbrain.train import (SCHEMA_VERSION, CheckpointError, RunInfo, fit, latest_checkpoint, load_checkpoint,
                               save_checkpoint)
from condorbrain.train.checkpoint import (capture_rng_state, flatten_optimizer_state, list_checkpoints,
                                          restore_rng_state, unflatten_optimizer_state)

import _tiny

RUN_INFO = RunInfo(features=("a", "b", "c", "d"), normalization={"mean": [0.0] * 4, "std": [1.0] * 4},
                   data_range={"train": ["2020-01-02", "2020-06-30"], "val": ["2020-07-01", "2020-09-30"]},
                   model_config={"hidden": 8}, extra={"horizons": [5, 10]})


@pytest.fixture
def trained(tmp_path):
    """A short fit with EMA and a checkpoint every 3 steps; returns (model, result)."""
    model = _tiny.make_model()
    cfg = _tiny.cfg(ema_decay=0.9, checkpoint_every=3, keep_checkpoints=2)
    x, y = _tiny.data(12)
    result = fit(model, _tiny.loss_fn, _tiny.batches(cfg), [(x, y)], cfg, tmp_path / "run", run_info=RUN_INFO)
    return model, result


def test_save_load_round_trip(tmp_path):
    tensors = {"w": torch.randn(3, 4), "b": torch.arange(5, dtype=torch.int64), "s": torch.tensor(2.5)}
    path = save_checkpoint(tmp_path / "c", model_state=tensors, meta={"hello": [1, 2.5, None]},
                           train_state={"optim.0.exp_avg": torch.ones(2)})
    loaded = load_checkpoint(path)
    assert loaded.meta["hello"] == [1, 2.5, None] and loaded.meta["schema_version"] == SCHEMA_VERSION
    assert set(loaded.meta["code"]) == {"condorbrain", "git_commit", "torch"}
    assert all(torch.equal(loaded.model[k], v) for k, v in tensors.items()) and loaded.model.keys() == tensors.keys()
    assert loaded.ema is None and torch.equal(loaded.train_state["optim.0.exp_avg"], torch.ones(2))
    manifest = json.loads((path / "manifest.json").read_text())
    assert set(manifest["files"]) == {"model.safetensors", "train_state.safetensors", "meta.json"}
    assert not [p for p in path.iterdir() if ".tmp" in p.name]  # no temporary files left behind


def test_fit_checkpoint_carries_everything(trained):
    model, result = trained
    loaded = load_checkpoint(result.checkpoint)
    meta = loaded.meta
    assert meta["schema_version"] == SCHEMA_VERSION and meta["loop"]["step"] == result.steps == loaded.step
    assert meta["config"]["ema_decay"] == 0.9 and meta["config"]["batch_size"] == 4
    assert meta["run"]["features"] == ["a", "b", "c", "d"] and meta["run"]["data_range"]["val"][0] == "2020-07-01"
    assert meta["run"]["normalization"]["std"] == [1.0] * 4 and meta["run"]["model_config"] == {"hidden": 8}
    assert meta["code"]["condorbrain"] and meta["code"]["torch"] == torch.__version__
    assert meta["metrics"]["val"]["val_loss"] == pytest.approx(result.val["val_loss"])
    assert all(torch.equal(loaded.model[k], v.cpu()) for k, v in model.state_dict().items())
    assert loaded.ema is not None and not torch.equal(loaded.ema["ret.weight"], loaded.model["ret.weight"])
    assert loaded.weights() is loaded.ema and loaded.weights(prefer_ema=False) is loaded.model
    assert any(k.startswith("optim.") for k in loaded.train_state) and "rng.torch" in loaded.train_state
    # keep_checkpoints=2: 20 steps, saved at 3, 6, ..., 18 and 20 -> the newest two remain
    assert [p.name for p in list_checkpoints(result.checkpoint.parent.parent)] == ["step-000000018",
                                                                                   "step-000000020"]


def _rewrite_manifest_entry(path: Path, name: str) -> None:
    """Make the manifest agree with a replaced file (what a deliberate forger would do)."""
    manifest = json.loads((path / "manifest.json").read_text())
    data = (path / name).read_bytes()
    manifest["files"][name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (path / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize("name, damage, message", [
    ("model.safetensors", "flip", r"model\.safetensors: sha256 differs"),
    ("model.safetensors", "truncate", r"model\.safetensors: \d+ bytes, the manifest records"),
    ("ema.safetensors", "delete", r"ema\.safetensors: file is missing"),
    ("train_state.safetensors", "truncate", r"train_state\.safetensors: \d+ bytes"),
    ("meta.json", "edit", r"meta\.json: sha256 differs"),
    ("manifest.json", "truncate", r"manifest\.json: not valid JSON"),
    ("manifest.json", "delete", r"manifest\.json: file is missing; the save was interrupted"),
    ("model.safetensors", "forge", r"model\.safetensors: not a readable safetensors file"),
    ("meta.json", "forge", r"meta\.json: not valid JSON"),
])
def test_damaged_files_raise_naming_the_file(trained, name, damage, message):
    path = trained[1].checkpoint
    target = path / name
    data = target.read_bytes()
    if damage == "flip":
        target.write_bytes(data[:-3] + bytes([data[-3] ^ 0xFF]) + data[-2:])
    elif damage == "truncate":
        target.write_bytes(data[: len(data) // 2])
    elif damage == "delete":
        target.unlink()
    elif damage == "edit":
        target.write_text(data.decode().replace('"ema_decay": 0.9', '"ema_decay": 0.5'))
    elif damage == "forge":
        target.write_bytes(data[: len(data) // 2])
        _rewrite_manifest_entry(path, name)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(path)


def test_incomplete_save_is_ignored_by_latest(tmp_path, trained):
    run = trained[1].checkpoint.parent.parent
    newest = latest_checkpoint(run)
    interrupted = run / "checkpoints" / "step-000000099"
    interrupted.mkdir()
    (interrupted / "model.safetensors").write_bytes(b"partial")
    assert latest_checkpoint(run) == newest
    with pytest.raises(CheckpointError, match="manifest.json: file is missing"):
        load_checkpoint(interrupted)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nowhere")


def test_loading_and_resuming_never_unpickle(trained, monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("unpickling is forbidden")

    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr(pickle, "Unpickler", forbidden)
    monkeypatch.setattr(torch, "load", forbidden)
    model, result = trained
    loaded = load_checkpoint(result.checkpoint)
    assert loaded.step == 20
    # resuming a longer run from that checkpoint goes through the whole restore path
    cfg = _tiny.cfg(ema_decay=0.9, checkpoint_every=3, keep_checkpoints=2)
    x, y = _tiny.data(12)
    again = fit(_tiny.make_model(), _tiny.loss_fn, _tiny.batches(cfg), [(x, y)], cfg,
                result.checkpoint.parent.parent, resume=True)
    assert again.resumed_from == result.checkpoint and again.steps == 20


def test_optimizer_state_round_trip():
    model = _tiny.make_model()
    opt = torch.optim.AdamW(model.parameters(), lr=0.1, betas=(0.8, 0.9))
    for _ in range(2):
        model(torch.randn(3, 4))["ret"].sum().backward()
        opt.step()
    tensors, rest = flatten_optimizer_state(opt.state_dict())
    json.dumps(rest)  # the non-tensor rest is JSON-ready
    fresh = torch.optim.AdamW(model.parameters(), lr=0.1, betas=(0.8, 0.9))
    fresh.load_state_dict(unflatten_optimizer_state(tensors, json.loads(json.dumps(rest))))
    a, b = opt.state_dict(), fresh.state_dict()
    assert a["param_groups"] == b["param_groups"]
    for i in a["state"]:
        assert all(torch.equal(a["state"][i][k], b["state"][i][k]) for k in a["state"][i])


def test_rng_state_round_trip():
    tensors, rest = capture_rng_state()
    rest = json.loads(json.dumps(rest))
    expected = (torch.rand(3), np.random.rand(3), random.random(), np.random.randn())
    torch.manual_seed(123), np.random.seed(123), random.seed(123)
    restore_rng_state(tensors, rest)
    got = (torch.rand(3), np.random.rand(3), random.random(), np.random.randn())
    assert torch.equal(expected[0], got[0]) and np.array_equal(expected[1], got[1])
    assert expected[2:] == got[2:]
