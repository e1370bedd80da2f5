"""The predictor: run-folder round trip, streaming equals batch, the saved scaler, the shared strike rule, bad input."""

from __future__ import annotations

import dataclasses
import json
import shutil
from types import SimpleNamespace

import numpy as np
import polars as pl
import pytest
import torch
from test_main_job import tiny_config

from condorbrain.data import ClippedZScore, load_sp500, load_vix
from condorbrain.features import CONDOR_FEATURES
from condorbrain.main_job import (
    condor_labels,
    condor_strikes,
    evaluate_model,
    prepare_data,
    train_model,
    write_config,
)
from condorbrain.predictor import Policy, Predictor
from condorbrain.train import CheckpointError, latest_checkpoint

RTOL, ATOL = 1e-5, 1e-6  # float32 outputs of the same weights on the same inputs, different code paths


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny run trained and evaluated in memory (what run_main_job does, step by step), and its folder."""
    out = tmp_path_factory.mktemp("run")
    cfg = tiny_config(max_bars=1000)
    write_config(cfg, out)
    data = prepare_data(cfg)
    model, summary = train_model(cfg, data, out)
    evaluate_model(cfg, model, data, out, summary)
    return SimpleNamespace(out=out, cfg=cfg, data=data, model=model)


def _windows(data, period: str, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The first n windows of a period: raw (n, L, 24) float64 rows, scaled (n, L, 24) model inputs, end rows."""
    b = data.batches[period].ds.batch(np.arange(n))
    ends = b.end_row.numpy()
    L = b.x.shape[1]
    raw = np.stack([data.frame.select(list(CONDOR_FEATURES)).to_numpy()[e - L + 1:e + 1] for e in ends])
    return raw, b.x, ends


def _rows(policies: list[Policy]) -> dict[str, np.ndarray]:
    return {k: np.array([p.to_row()[k] for p in policies]) for k in policies[0].to_row()}


def test_run_folder_round_trip_equals_the_in_memory_model(run):
    p = Predictor.from_run(run.out)
    raw, x, ends = _windows(run.data, "test", 12)
    got = _rows(p.policy(raw))
    with torch.no_grad():
        out = run.model(x)
    k = condor_strikes(out, run.cfg)
    np.testing.assert_allclose(got["k_lower"], k.k_lower.numpy(), rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(got["k_upper"], k.k_upper.numpy(), rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(got["wing"], k.wing.numpy(), rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(got["max_drawdown"], out.max_dd.numpy(), rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(got["regime_high"], out.regime_probs[:, 2].numpy(), rtol=RTOL, atol=ATOL)
    close = run.data.frame.get_column("close").to_numpy()
    np.testing.assert_array_equal(got["spot"], close[ends])
    np.testing.assert_allclose(got["k_lower_price"], close[ends] * got["k_lower"], rtol=1e-12)
    # and what the evaluation wrote from the in-memory model into predictions.parquet
    preds = pl.read_parquet(run.out / "predictions.parquet").head(12)
    np.testing.assert_array_equal(preds.get_column("close").to_numpy(), close[ends])
    for col, key in (("pred_vol", "vol"), ("pred_pop", "pop"), ("pred_roi", "expected_roi"), ("pred_ret_5", "ret_5"),
                     ("pred_regime_0", "regime_low")):
        np.testing.assert_allclose(got[key], preds.get_column(col).to_numpy(), rtol=RTOL, atol=ATOL, err_msg=col)


def test_stream_equals_the_batch_forward_at_every_position(run):
    p = Predictor.from_run(run.out)
    a = run.data.frame.select(list(CONDOR_FEATURES)).to_numpy()[np.flatnonzero(run.data.valid)[:30]]
    b = a[::-1].copy()  # a second, different series for a two-stream run
    one, two = p.stream(), p.stream(n_streams=2)
    for t in range(len(a)):
        streamed = one.update(a[t])
        batch = p.policy(a[:t + 1])
        np.testing.assert_allclose(list(streamed.to_row().values()), list(batch.to_row().values()), rtol=1e-4,
                                   atol=1e-5, err_msg=f"position {t}")
        pair = two.update(np.stack([a[t], b[t]]))
        if t % 3 == 2:  # the batched forward of two series: every third position keeps the test short
            both = p.policy(np.stack([a[:t + 1], b[:t + 1]]))
            for s, q in zip(pair, both, strict=True):
                np.testing.assert_allclose(list(s.to_row().values()), list(q.to_row().values()), rtol=1e-4,
                                           atol=1e-5, err_msg=f"two streams, position {t}")
    assert one.steps == len(a)
    assert one.path == "eager"  # "cuda-graph" for a model on a GPU (tests/ssm/test_graph.py)
    one.reset()  # back to the first bar: the same policies again
    assert one.steps == 0
    np.testing.assert_allclose(list(one.update(a[0]).to_row().values()), list(p.policy(a[:1]).to_row().values()),
                               rtol=1e-4, atol=1e-5)


def test_the_scaler_is_the_saved_one(run):
    p = Predictor.from_run(run.out)
    assert p.scaler.to_dict() == run.data.scaler.to_dict()
    # Data after the training period changed: refitting (on training rows only) gives the saved statistics back,
    # while a scaler fitted on every row would not.
    bars = load_sp500().tail(run.cfg.max_bars)
    after = pl.col("ts") >= pl.lit(run.cfg.val_start).str.to_datetime().dt.replace_time_zone("UTC")
    changed = bars.with_columns(pl.when(after).then(pl.col(c) * 1.5).otherwise(pl.col(c)).alias(c)
                                for c in ("open", "high", "low", "close", "adj_close"))
    data2 = prepare_data(run.cfg, bars=changed, vix=load_vix())
    assert data2.scaler.to_dict() == p.scaler.to_dict()
    everything = ClippedZScore.fit(data2.raw, data2.valid, feature_names=list(CONDOR_FEATURES))
    assert not np.allclose(everything.mean, p.scaler.mean)
    # the policy on a window of the changed data applies the saved statistics
    w = data2.raw[np.flatnonzero(data2.valid)[-20:]]
    with torch.no_grad():
        expected = p.model(torch.from_numpy(p.scaler.transform(w.astype(np.float32)))[None])
        other = p.model(torch.from_numpy(everything.transform(w.astype(np.float32)))[None])
    got = p.policy(w.astype(np.float64))
    assert got.vol == pytest.approx(float(expected.vol[0]), rel=RTOL)
    assert got.vol != pytest.approx(float(other.vol[0]), rel=1e-3)


def test_policy_strikes_are_the_training_labels_strikes(run):
    """POP labels computed by condor_labels (training) agree with the Predictor's strikes on the same rows."""
    p = Predictor.from_run(run.out)
    raw, x, ends = _windows(run.data, "test", 64)
    pols = p.policy(raw)
    with torch.no_grad():
        out = p.model(x)
    term = torch.from_numpy(run.data.targets["_term"][ends])
    pop, _ = condor_labels(out, term, torch.from_numpy(run.data.targets["_iv"][ends]), run.cfg)
    s_T = 1.0 + term.numpy().astype(np.float64)
    mine = np.array([float(lo < s < hi) for s, lo, hi in
                     zip(s_T, (q.k_lower for q in pols), (q.k_upper for q in pols), strict=True)])
    keep = np.isfinite(s_T)
    j = run.cfg.model.quantiles.index(run.cfg.pop_level)
    np.testing.assert_allclose([q.k_lower for q in pols], 1 - out.down_q[:, j].numpy(), rtol=RTOL)
    assert keep.sum() > 30
    np.testing.assert_array_equal(mine[keep], pop.numpy()[keep])


def test_tampered_or_incomplete_run_folders_give_clear_errors(run, tmp_path):
    def copy(name: str):
        dst = tmp_path / name
        shutil.copytree(run.out, dst)
        return dst, latest_checkpoint(dst)

    d, ck = copy("flipped")
    data = bytearray((ck / "ema.safetensors").read_bytes())
    data[-3] ^= 0xFF
    (ck / "ema.safetensors").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"ema\.safetensors: sha256 differs"):
        Predictor.from_run(d)

    d, ck = copy("truncated")
    blob = (ck / "model.safetensors").read_bytes()
    (ck / "model.safetensors").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(CheckpointError, match=r"model\.safetensors: .* truncated"):
        Predictor.from_run(d)

    d, _ = copy("config")
    cfg = json.loads((d / "config.json").read_text())
    cfg["model"]["d_model"] = 32
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"model config differs .* \['d_model'\]"):
        Predictor.from_run(d)

    d, _ = copy("no-checkpoint")
    shutil.rmtree(d / "checkpoints")
    with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
        Predictor.from_run(d)
    with pytest.raises(FileNotFoundError, match="config.json does not exist"):
        Predictor.from_run(tmp_path / "nothing")


def test_bad_input_names_the_argument(run):
    p = Predictor.from_run(run.out)
    good = run.data.raw[np.flatnonzero(run.data.valid)[:10]].astype(np.float64)
    with pytest.raises(ValueError, match=r"window must have shape \(L, 24\) or \(B, L, 24\).*\(10, 23\)"):
        p.policy(good[:, :23])
    with pytest.raises(ValueError, match="window must have shape"):
        p.policy(good[None, None])
    bad = good.copy()
    bad[4, CONDOR_FEATURES.index("iv")] = np.nan
    with pytest.raises(ValueError, match=r"window has NaN or inf at index \(4, 10\) \(column 'iv'\)"):
        p.policy(bad)
    with pytest.raises(ValueError, match=r"window lacks the feature column\(s\) \['close'\]"):
        p.policy(pl.DataFrame(good, schema=list(CONDOR_FEATURES)).drop("close"))
    # a DataFrame with the columns in another order is read by name
    frame = pl.DataFrame(good, schema=list(CONDOR_FEATURES)).select(reversed(CONDOR_FEATURES))
    assert p.policy(frame) == p.policy(good)

    s = p.stream()
    with pytest.raises(ValueError, match=r"features_row must have shape \(24,\) or \(n_streams, 24\)"):
        s.update(good[0, :20])
    with pytest.raises(ValueError, match="features_row has NaN or inf"):
        s.update(bad[4])
    with pytest.raises(ValueError, match=r"features_row must have shape \(24,\) or \(n_streams, 24\).*\(2, 24\)"):
        s.update(good[:2])
    assert s.steps == 0  # a refused row leaves the state as it was
    np.testing.assert_allclose(list(s.update(good[0]).to_row().values()), list(p.policy(good[:1]).to_row().values()),
                               rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="n_streams must be a positive int"):
        p.stream(n_streams=0)


def test_predictor_refuses_a_mismatched_model(run):
    p = Predictor.from_run(run.out)
    other = dataclasses.replace(run.cfg, model=dataclasses.replace(run.cfg.model, hold_horizon=20))
    with pytest.raises(ValueError, match="model.config differs"):
        Predictor(p.model, p.scaler, other)
