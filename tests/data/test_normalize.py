"""The clipped z-score scaler against the formula of seed 000 §2.2 written out here with numpy in float64."""

from __future__ import annotations

import json
import tracemalloc

import numpy as np
import pytest
import safetensors.numpy as safetensors_numpy
from safetensors import safe_open

from condorbrain.data.normalize import DEFAULT_CLIP, DEFAULT_EPS, ClippedZScore

NAMES = ("close", "volume", "iv", "flat")


def make_x(n: int = 1000, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = np.empty((n, 4), dtype=np.float32)
    x[:, 0] = 400 + rng.standard_normal(n).cumsum()
    x[:, 1] = rng.lognormal(10, 1, n)
    x[:, 2] = 0.2 + 0.05 * rng.standard_normal(n)
    x[:, 3] = 7.5  # constant on every row
    return x


def reference(x: np.ndarray, train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    t = x[train].astype(np.float64)
    return t.mean(axis=0), t.std(axis=0)


@pytest.mark.parametrize("chunk_rows", [7, 64, 1 << 16])
def test_fit_matches_numpy_on_training_rows(chunk_rows):
    x = make_x()
    s = ClippedZScore.fit(x, range(0, 700), feature_names=NAMES, chunk_rows=chunk_rows)
    mu, sd = reference(x, np.arange(700))
    np.testing.assert_allclose(s.mean, mu, rtol=1e-12)
    np.testing.assert_allclose(s.std[:3], sd[:3], rtol=1e-10)
    assert s.std[3] == 0.0 and s.mean[3] == 7.5
    assert s.n_fit_rows == 700 and s.feature_names == NAMES


def test_fit_with_mask_and_slice():
    x = make_x()
    mask = np.zeros(len(x), dtype=bool)
    mask[::3] = True
    s = ClippedZScore.fit(x, mask, chunk_rows=50)
    mu, sd = reference(x, mask)
    np.testing.assert_allclose(s.mean, mu, rtol=1e-12)
    np.testing.assert_allclose(s.std[:3], sd[:3], rtol=1e-10)
    assert s.n_fit_rows == mask.sum()
    by_slice = ClippedZScore.fit(x, slice(None, 600))
    by_range = ClippedZScore.fit(x, range(0, 600))
    np.testing.assert_array_equal(by_slice.mean, by_range.mean)
    np.testing.assert_array_equal(by_slice.std, by_range.std)


def test_look_ahead_rows_outside_training_change_nothing():
    x = make_x()
    base = ClippedZScore.fit(x, range(0, 600), chunk_rows=64)
    x2 = x.copy()
    x2[600:] = np.random.default_rng(9).standard_normal((400, 4)).astype(np.float32) * 1e6  # val / test rows
    x2[650, 0] = np.nan  # even a NaN outside the training rows is never read
    changed = ClippedZScore.fit(x2, range(0, 600), chunk_rows=64)
    np.testing.assert_array_equal(base.mean, changed.mean)
    np.testing.assert_array_equal(base.std, changed.std)
    mask = np.zeros(len(x), dtype=bool)
    mask[:600] = True
    by_mask = ClippedZScore.fit(x2, mask, chunk_rows=64)
    np.testing.assert_array_equal(base.mean, by_mask.mean)


def test_transform_matches_formula_and_clips():
    x = make_x()
    x[900, 1] = 1e12  # a "black swan" far above +10 sigma
    x[901, 2] = -1e3  # far below -10 sigma
    s = ClippedZScore.fit(x, range(0, 700))
    out = s.transform(x, chunk_rows=33)
    assert out.dtype == np.float32 and out.shape == x.shape
    div = np.where(s.std == 0, 1.0, s.std + DEFAULT_EPS)
    expected = np.clip((x.astype(np.float64) - s.mean) / div, -DEFAULT_CLIP, DEFAULT_CLIP).astype(np.float32)
    np.testing.assert_array_equal(out, expected)
    assert out[900, 1] == 10.0 and out[901, 2] == -10.0
    assert np.abs(out).max() <= 10.0
    # the training rows are standardised: mean 0, std 1 (up to float32 rounding and the rare clipped value)
    np.testing.assert_allclose(out[:700, :3].astype(np.float64).mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(out[:700, :3].astype(np.float64).std(axis=0), 1, atol=1e-5)


def test_constant_column_is_centred_not_divided_by_eps():
    x = make_x()
    x[800, 3] = 9.0  # departs from the training constant 7.5 after the training rows
    x[801, 3] = 7.5 - 50  # and far below it
    s = ClippedZScore.fit(x, range(0, 700))
    np.testing.assert_array_equal(s.constant_columns, [3])
    out = s.transform(x)
    assert np.isfinite(out).all()
    assert (out[:700, 3] == 0).all()
    assert out[800, 3] == pytest.approx(1.5)  # x - mu, in the column's own units
    assert out[801, 3] == -10.0  # still clipped
    assert s.divisor[3] == 1.0


def test_nan_and_inf_raise_naming_column_and_rows():
    x = make_x()
    x[[5, 17], 2] = np.nan
    with pytest.raises(ValueError, match=r"NaN first.*column 2 \('iv'\).*first rows \[5, 17\]"):
        ClippedZScore.fit(x, range(0, 700), feature_names=NAMES, chunk_rows=1000)
    mask = np.zeros(len(x), dtype=bool)
    mask[[3, 17, 40]] = True
    with pytest.raises(ValueError, match=r"column 2.*first rows \[17\]"):
        ClippedZScore.fit(x, mask)
    clean = make_x()
    s = ClippedZScore.fit(clean, range(0, 700), feature_names=NAMES)
    clean[950, 1] = np.inf
    with pytest.raises(ValueError, match=r"inf first.*column 1 \('volume'\).*first rows \[950\]"):
        s.transform(clean, chunk_rows=100)


def test_round_trip_through_json_and_safetensors(tmp_path):
    x = make_x()
    s = ClippedZScore.fit(x, range(0, 700), feature_names=NAMES)
    text = json.dumps(s.to_dict())
    back = ClippedZScore.from_dict(json.loads(text))
    np.testing.assert_array_equal(back.mean, s.mean)  # python floats round-trip float64 exactly
    np.testing.assert_array_equal(back.std, s.std)
    assert back.feature_names == NAMES and back.n_fit_rows == 700
    np.testing.assert_array_equal(back.transform(x), s.transform(x))
    # arrays in safetensors, the rest as JSON metadata: the checkpoint layout of train/
    d = s.to_dict()
    path = tmp_path / "scaler.safetensors"
    meta = {k: json.dumps(v) for k, v in d.items() if k not in ("mean", "std")}
    safetensors_numpy.save_file({"mean": s.mean, "std": s.std}, str(path), metadata=meta)
    arrays = safetensors_numpy.load_file(str(path))
    with safe_open(str(path), framework="numpy") as f:
        loaded_meta = {k: json.loads(v) for k, v in f.metadata().items()}
    back2 = ClippedZScore.from_dict({**loaded_meta, **arrays})
    np.testing.assert_array_equal(back2.mean, s.mean)
    np.testing.assert_array_equal(back2.std, s.std)


def test_transform_memmap_in_place_without_a_second_copy(tmp_path):
    n, f, chunk = 400_000, 8, 10_000
    rng = np.random.default_rng(1)
    path = tmp_path / "features.npy"
    mm = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, f))
    for lo in range(0, n, 100_000):
        mm[lo:lo + 100_000] = rng.standard_normal((100_000, f)).astype(np.float32) * 3 + 1
    raw = np.array(mm)  # a reference copy, made before tracing
    s = ClippedZScore.fit(mm, range(0, 150_000), chunk_rows=10_000)
    tracemalloc.start()
    try:
        out = s.transform(mm, out=mm, chunk_rows=chunk)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert out is mm
    # a float64 chunk plus its finiteness mask (about 2 chunks), never anything of the array's size
    assert peak < 3 * chunk * f * 8 < 0.2 * raw.nbytes
    np.testing.assert_array_equal(np.asarray(mm), s.transform(raw))
    # a NaN found in place raises before anything is overwritten
    mm[:] = raw
    mm[n - 1, 3] = np.nan
    before = np.array(mm)
    with pytest.raises(ValueError, match=rf"column 3.*first rows \[{n - 1}\]"):
        s.transform(mm, out=mm, chunk_rows=chunk)
    np.testing.assert_array_equal(np.asarray(mm), before)
    mm[n - 1, 3] = raw[n - 1, 3]
    mm.flush()
    # into a second file, from a read-only map
    ro = np.load(path, mmap_mode="r")
    dst = np.lib.format.open_memmap(tmp_path / "scaled.npy", mode="w+", dtype=np.float32, shape=(n, f))
    assert s.transform(ro, out=dst) is dst


def test_bad_arguments_raise_naming_them():
    x = make_x()
    with pytest.raises(ValueError, match="train_rows must be a contiguous range"):
        ClippedZScore.fit(x, range(0, 700, 2))
    with pytest.raises(ValueError, match="train_rows must be a range, a slice or a boolean mask"):
        ClippedZScore.fit(x, np.ones(10, dtype=bool))
    with pytest.raises(ValueError, match="train_rows selects no rows"):
        ClippedZScore.fit(x, np.zeros(len(x), dtype=bool))
    with pytest.raises(ValueError, match=r"train_rows \[0, 5000\) must lie within"):
        ClippedZScore.fit(x, range(0, 5000))
    with pytest.raises(ValueError, match="x must be 2-D"):
        ClippedZScore.fit(x[:, 0], range(0, 10))
    with pytest.raises(ValueError, match="feature_names has 2 names"):
        ClippedZScore.fit(x, range(0, 10), feature_names=("a", "b"))
    s = ClippedZScore.fit(x, range(0, 700))
    with pytest.raises(ValueError, match="x has 3 columns"):
        s.transform(x[:, :3])
    with pytest.raises(ValueError, match="out must be a float32 array"):
        s.transform(x, out=np.empty(x.shape, dtype=np.float64))
    with pytest.raises(ValueError, match="out overlaps x"):
        s.transform(x[1:], out=x[:-1])
    ro = x.copy()
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="out is read-only"):
        s.transform(x, out=ro)
    with pytest.raises(ValueError, match="schema"):
        ClippedZScore.from_dict({**s.to_dict(), "schema": "other/9"})
    with pytest.raises(ValueError, match="std must be >= 0"):
        ClippedZScore(mean=np.zeros(2), std=np.array([1.0, -1.0]), n_fit_rows=3)
    with pytest.raises(ValueError, match="clip must be finite and > 0"):
        ClippedZScore(mean=np.zeros(2), std=np.ones(2), n_fit_rows=3, clip=0.0)
