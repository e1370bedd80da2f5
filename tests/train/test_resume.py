"""Killed-and-resumed equals uninterrupted; metrics.jsonl and TensorBoard logs; early stopping and plateau in `fit`."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

import _tiny
from condorbrain.train import (TensorBatches, cosine_with_warmup, fit, latest_checkpoint, load_checkpoint,
                               read_event_file)

# 40 samples in micro-batches of 4, accumulation 3: 10 micro-batches = 4 steps per epoch (the last one short);
# 15 steps cross three epoch boundaries. Dropout makes the run depend on the restored torch RNG.
CFG = _tiny.cfg(max_steps=15, grad_accum_steps=3, ema_decay=0.8, eval_every=4, checkpoint_every=5, log_every=2,
                clip_grad_norm=1.0, weight_decay=0.01, plateau_patience=0, plateau_factor=0.5, seed=3)
VAL = [_tiny.data(12, seed=1), _tiny.data(6, seed=2)]


class Kill(Exception):
    pass


def _kill_at(step: int):
    def callback(info):
        if info.step == step:
            raise Kill(f"killed after step {step}")
    return callback


def _run(run_dir, resume=False, callbacks=(), cfg=CFG):
    model = _tiny.make_model(dropout=0.25)
    result = fit(model, _tiny.loss_fn, _tiny.batches(cfg, seed=5), VAL, cfg, run_dir, resume=resume,
                 callbacks=callbacks)
    return model, result


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("full")
    model, result = _run(run_dir)
    return _tiny.params(model), result, _tiny.records(run_dir), run_dir


@pytest.mark.parametrize("kills", [[7], [10], [4, 12]])
def test_killed_and_resumed_equals_uninterrupted(tmp_path, uninterrupted, kills):
    """Killed after step 7 (resumes from 5), after step 10 (a checkpoint) or twice (after 4, before any checkpoint,
    so the second start is fresh; then after 12, resuming from 10)."""
    full_params, full_result, full_records, _ = uninterrupted
    for k in kills:
        with pytest.raises(Kill):
            _run(tmp_path, resume=True, callbacks=[_kill_at(k)])
        torch.manual_seed(12345)  # a resumed process starts from some other global RNG state
    model, result = _run(tmp_path, resume=True)
    params = _tiny.params(model)
    assert all(torch.equal(params[k], v) for k, v in full_params.items())
    assert result.steps == full_result.steps == 15
    assert (result.val, result.best_val_loss, result.best_step, result.train_loss, result.stopped) == \
        (full_result.val, full_result.best_val_loss, full_result.best_step, full_result.train_loss,
         full_result.stopped)
    assert _tiny.records(tmp_path) == full_records  # records of the killed tail were dropped, then rewritten
    final, reference = load_checkpoint(result.checkpoint), load_checkpoint(full_result.checkpoint)
    assert all(torch.equal(final.ema[k], v) for k, v in reference.ema.items())
    assert final.meta["plateau"] == reference.meta["plateau"]
    # TensorBoard, as its reader sees it (a START purge drops the killed tail): the same train/loss series
    got = [(s, v) for t, s, v in read_event_file(tmp_path / "tb") if t == "train/loss"]
    want = [(s, v) for t, s, v in read_event_file(uninterrupted[3] / "tb") if t == "train/loss"]
    assert got == want


def test_resume_of_a_finished_run_changes_nothing(tmp_path, uninterrupted):
    _, full_result, full_records, original = uninterrupted
    run_dir = tmp_path / "copy"
    shutil.copytree(original, run_dir)
    model, result = _run(run_dir, resume=True)
    assert result.steps == 15 and result.resumed_from.name == full_result.checkpoint.name
    assert _tiny.records(run_dir) == full_records


def test_resume_guards(tmp_path):
    with pytest.raises(Kill):
        _run(tmp_path, callbacks=[_kill_at(5)])
    with pytest.raises(FileExistsError, match="resume=True"):
        _run(tmp_path)
    with pytest.raises(ValueError, match=r"differs in \['lr'\]"):
        _run(tmp_path, resume=True, cfg=CFG.replace(lr=0.1))
    model, result = _run(tmp_path, resume=True, cfg=CFG.replace(log_every=3, progress=True))  # allowed to differ
    assert result.steps == 15


def test_metrics_jsonl_content(uninterrupted):
    _, result, records, _ = uninterrupted
    train = [r for r in records if r["kind"] == "train"]
    evals = [r for r in records if r["kind"] == "eval"]
    assert [r["step"] for r in train] == [2, 4, 6, 8, 10, 12, 14, 15]  # log_every=2 and the last step
    assert [r["step"] for r in evals] == [4, 8, 12, 15]  # eval_every=4 and the last step
    assert [r["epoch"] for r in evals] == [0, 1, 2, 3]
    for r in train:
        assert set(r) >= {"loss", "lr", "grad_norm", "train/ret", "train/vol"}
        assert r["loss"] == pytest.approx(r["train/ret"] + 0.5 * r["train/vol"], rel=1e-6)
    assert all(r["weights"] == "ema" and set(r) >= {"val_loss", "val/ret", "val/vol", "best_val_loss", "lr_scale"}
               for r in evals)
    assert evals[-1]["val_loss"] == result.val["val_loss"]
    assert min(r["val_loss"] for r in evals) == result.best_val_loss
    # the learning rate of the logged step s is lr * cosine(s - 1) * the plateau scale in force at that step
    scale = 1.0
    for r in records:
        if r["kind"] == "eval":
            scale = r["lr_scale"]
        else:
            assert r["lr"] == pytest.approx(CFG.lr * cosine_with_warmup(r["step"] - 1, 2, 15, 0.1) * scale,
                                            rel=1e-12)
    raw = [json.loads(line) for line in (uninterrupted[3] / "metrics.jsonl").read_text().splitlines()]
    assert all(r["samples_per_s"] > 0 and r["time"] > 0 for r in raw if r["kind"] == "train")


def test_tensorboard_event_file_reads_back(uninterrupted):
    _, _, records, run_dir = uninterrupted
    files = list((run_dir / "tb").glob("events.out.tfevents.*"))
    assert len(files) == 1
    scalars = read_event_file(files[0])
    loss = [(s, v) for t, s, v in scalars if t == "train/loss"]
    assert loss == [(r["step"], pytest.approx(r["loss"], rel=1e-6)) for r in records if r["kind"] == "train"]
    val = [(s, v) for t, s, v in scalars if t == "eval/val_loss"]
    assert val == [(r["step"], pytest.approx(r["val_loss"], rel=1e-6)) for r in records if r["kind"] == "eval"]
    damaged = run_dir / "damaged.tfevents"
    data = files[0].read_bytes()
    damaged.write_bytes(data[:60] + bytes([data[60] ^ 1]) + data[61:])
    with pytest.raises(ValueError, match="CRC"):
        read_event_file(damaged)
    try:  # the official reader, when tensorboard is installed
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    except ImportError:
        return
    acc = EventAccumulator(str(files[0]))
    acc.Reload()
    assert [(e.step, e.value) for e in acc.Scalars("train/loss")] == [(s, pytest.approx(v)) for s, v in loss]


class ScriptedValidation:
    """Training loss as usual; the validation loss (one batch per validation) follows ``curve``."""

    def __init__(self, model, curve):
        self.model, self.curve, self.evals = model, curve, 0

    def __call__(self, out, targets):
        total, parts = _tiny.loss_fn(out, targets)
        if not self.model.training:
            total = total * 0 + self.curve[self.evals]
            self.evals += 1
        return total, parts


def _scripted_fit(tmp_path, curve, **kw):
    model = _tiny.make_model()
    cfg = _tiny.cfg(max_steps=30, eval_every=2, **kw)
    infos = []
    result = fit(model, ScriptedValidation(model, curve), _tiny.batches(cfg), [_tiny.data(4)], cfg, tmp_path,
                 callbacks=[infos.append])
    return result, infos


def test_early_stopping_on_scripted_curve(tmp_path):
    # best 0.9 at the 2nd validation (step 4); 0.95, 0.91 and 0.90 are not better -> stop at the 5th (step 10)
    curve = [1.0, 0.9, 0.95, 0.91, 0.90, 0.1, 0.1]
    result, infos = _scripted_fit(tmp_path, curve, early_stopping_patience=3)
    assert result.stopped == "early_stopping" and result.steps == 10
    assert (result.best_val_loss, result.best_step) == (pytest.approx(0.9), 4)  # 0.9 in float32
    assert infos[-1].step == 10 and infos[-1].val == {"val_loss": pytest.approx(0.90), "val/ret": pytest.approx(
        infos[-1].val["val/ret"]), "val/vol": pytest.approx(infos[-1].val["val/vol"])}
    assert latest_checkpoint(tmp_path).name == "step-000000010"  # the stopping step is saved


def test_reduce_on_plateau_scales_the_cosine(tmp_path):
    # patience 1, factor 0.5: validations at steps 2, 4, ...; bad at 6 and 8 -> scale 0.5 from step 9 on;
    # better at 10; bad at 12, 14 -> 0.25 from step 15 on.
    curve = [1.0, 0.9, 0.95, 0.96, 0.5, 0.6, 0.7] + [0.7] * 20
    result, infos = _scripted_fit(tmp_path, curve, plateau_patience=1, plateau_factor=0.5, plateau_min_scale=0.2)
    scales = {1: 1.0, 9: 0.5, 15: 0.25, 19: 0.2}  # then floored at 0.2 (0.125 < 0.2) from step 19 on
    scale = 1.0
    for info in infos:
        scale = scales.get(info.step, scale)
        expected = 0.05 * cosine_with_warmup(info.step - 1, 2, 30, 0.1) * scale
        assert info.lr == pytest.approx(expected, rel=1e-12), info.step
    assert result.stopped == "max_steps" and result.steps == 30


def test_epochs_mode_counts_steps_from_the_source(tmp_path):
    cfg = _tiny.cfg(epochs=3, grad_accum_steps=4, warmup_steps=1)  # 10 micro-batches: 3 steps per epoch
    x, y = _tiny.data(40)
    infos = []
    result = fit(_tiny.make_model(), _tiny.loss_fn, TensorBatches(x, y, 4, seed=1), None, cfg, tmp_path,
                 callbacks=[infos.append])
    assert result.steps == 9 and result.stopped == "epochs" and result.val is None
    assert [(i.epoch, i.batch_index) for i in infos] == [(e, b) for e in range(3) for b in (3, 7, 9)]
