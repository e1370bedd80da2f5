"""LazySequenceDataset against brute-force window enumeration and naive gathers; samplers; augmentation."""

from __future__ import annotations

import datetime
import tracemalloc

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from condorbrain.data.sequences import (
    AugmentConfig,
    Batch,
    LazySequenceDataset,
    RandomBatchSampler,
    SequentialBatchSampler,
    StratifiedBatchSampler,
    augment,
    feature_dropout,
    gaussian_noise,
    magnitude_warp,
    mixup,
)


def make_data(n: int = 3000, f: int = 5, seed: int = 0):
    """Features, 2-column targets, 4 segments of uneven length, sessions of 390 minutes with overnight gaps.

    One clock runs through all rows, so timestamps are sorted within each segment (and overall).
    """
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, f)).astype(np.float32)
    y = rng.standard_normal((n, 2))
    seg = np.repeat(np.arange(4), [700, 1100, 50, n - 1850]).astype(np.int32)
    minute = np.arange(n) % 390
    day = np.arange(n) // 390
    ts = (np.datetime64("2024-01-02T14:31") + day * np.timedelta64(1, "D") + minute * np.timedelta64(1, "m"))
    session = day.astype(np.int64)
    return x, y, seg, session, ts.astype("datetime64[us]")


def brute_force_starts(n, L, seg=None, session=None, ts=None, max_gap=None, end_mask=None, row_mask=None):
    out = []
    for s in range(n - L + 1):
        rows = slice(s, s + L)
        if row_mask is not None and not row_mask[rows].all():
            continue
        if seg is not None and len(set(seg[rows].tolist())) != 1:
            continue
        if session is not None and len(set(session[rows].tolist())) != 1:
            continue
        if max_gap is not None and (np.diff(ts[rows]) > max_gap).any():
            continue
        if end_mask is not None and not end_mask[s + L - 1]:
            continue
        out.append(s)
    return np.array(out, dtype=np.int64)


@pytest.mark.parametrize("L", [1, 2, 30, 60])
@pytest.mark.parametrize("which", ["plain", "segments", "sessions", "gaps", "end_mask", "row_mask", "all"])
def test_valid_starts_equal_brute_force_and_windows_equal_slices(L, which):
    x, y, seg, session, ts = make_data()
    n = len(x)
    end_mask = np.random.default_rng(3).random(n) > 0.3
    row_mask = sparse_invalid_rows(n)
    kwargs = {
        "plain": {},
        "segments": {"segment_ids": seg},
        "sessions": {"segment_ids": seg, "session_ids": session},
        "gaps": {"segment_ids": seg, "timestamps": ts, "max_gap": datetime.timedelta(minutes=5)},
        "end_mask": {"segment_ids": seg, "end_mask": end_mask},
        "row_mask": {"segment_ids": seg, "row_mask": row_mask},
        "all": {"segment_ids": seg, "session_ids": session, "timestamps": ts,
                "max_gap": datetime.timedelta(minutes=5), "end_mask": end_mask, "row_mask": row_mask},
    }[which]
    ds = LazySequenceDataset(x, L, targets=y, **kwargs)
    ref = brute_force_starts(n, L, seg=kwargs.get("segment_ids"), session=kwargs.get("session_ids"), ts=ts,
                             max_gap=np.timedelta64(5, "m") if "max_gap" in kwargs else None,
                             end_mask=kwargs.get("end_mask"), row_mask=kwargs.get("row_mask"))
    np.testing.assert_array_equal(ds.start_rows(), ref)
    assert len(ds) == len(ref)
    for k in range(0, len(ds), 7):
        s = ref[k]
        w = ds.window(k)
        np.testing.assert_array_equal(w, x[s:s + L])
        assert np.shares_memory(w, x)  # a view, not a copy
        item = ds[k]
        np.testing.assert_array_equal(item.x.numpy(), x[s:s + L])
        np.testing.assert_array_equal(item.y.numpy(), y[s + L - 1])
        assert int(item.end_row) == s + L - 1


def sparse_invalid_rows(n: int, seed: int = 4) -> np.ndarray:
    """(n,) bool row mask: scattered False rows (1%) plus two blocks of False (a warm-up, a data hole)."""
    mask = np.random.default_rng(seed).random(n) > 0.01
    mask[:45] = False
    mask[1300:1340] = False
    return mask


def test_row_mask_equals_the_cumulative_sum_rule_and_keeps_intervals():
    """Every row of every window is True; the starts are those where the count of False rows in [s, s + L),
    a difference of cumulative sums, is 0; and the dataset still stores intervals, not rows."""
    x, y, seg, _, _ = make_data()
    n, L = len(x), 25
    row_mask = sparse_invalid_rows(n)
    ds = LazySequenceDataset(x, L, targets=y, segment_ids=seg, row_mask=row_mask)
    bad = np.concatenate(([0], np.cumsum(~row_mask)))
    s = np.arange(n - L + 1)
    same_segment = seg[s] == seg[s + L - 1]
    expected = s[same_segment & (bad[s + L] == bad[s])]
    starts = ds.start_rows()
    np.testing.assert_array_equal(starts, expected)
    assert all(row_mask[k:k + L].all() for k in starts)
    assert len(ds) < len(LazySequenceDataset(x, L, segment_ids=seg))
    runs = np.count_nonzero(np.diff(starts) != 1) + 1  # runs of consecutive starts
    assert ds.overhead_bytes == 8 * runs + 8 * (runs + 1)
    np.testing.assert_array_equal(ds.batch(np.arange(len(ds))).end_row.numpy(), starts + L - 1)


def test_row_mask_has_no_look_ahead():
    """Changing the mask (or the features) after row t leaves every window that ends at or before t unchanged."""
    x, _, seg, _, _ = make_data()
    n, L, t = len(x), 30, 1800
    row_mask = sparse_invalid_rows(n)
    later = row_mask.copy()
    later[t + 1:] = np.random.default_rng(9).random(n - t - 1) > 0.5
    x2 = x.copy()
    x2[t + 1:] += 100.0
    a = LazySequenceDataset(x, L, segment_ids=seg, row_mask=row_mask)
    b = LazySequenceDataset(x2, L, segment_ids=seg, row_mask=later)
    ends_a, ends_b = a.start_rows() + L - 1, b.start_rows() + L - 1
    np.testing.assert_array_equal(ends_a[ends_a <= t], ends_b[ends_b <= t])
    k = np.flatnonzero(ends_a <= t)
    np.testing.assert_array_equal(a.batch(k).x.numpy(), b.batch(k).x.numpy())
    assert not np.array_equal(ends_a[ends_a > t], ends_b[ends_b > t])  # the change does reach later windows


def test_sessions_and_gaps_both_stop_windows_at_the_overnight_gap():
    x, y, seg, session, ts = make_data()
    by_session = LazySequenceDataset(x, 30, segment_ids=seg, session_ids=session).start_rows()
    by_gap = LazySequenceDataset(x, 30, segment_ids=seg, timestamps=ts,
                                 max_gap=np.timedelta64(1, "h")).start_rows()
    np.testing.assert_array_equal(by_session, by_gap)
    day = session
    assert (day[by_session] == day[by_session + 29]).all()
    # without sessions some windows do cross the night
    free = LazySequenceDataset(x, 30, segment_ids=seg).start_rows()
    assert (day[free] != day[free + 29]).any()


def test_batch_equals_naive_loop_gather():
    x, y, seg, _, _ = make_data()
    L = 40
    ds = LazySequenceDataset(x, L, targets=y, segment_ids=seg)
    idx = np.random.default_rng(5).choice(len(ds), size=64, replace=False)
    b = ds.batch(idx)
    starts = ds.start_rows(idx)
    naive_x = np.stack([x[s:s + L] for s in starts])
    naive_y = np.stack([y[s + L - 1] for s in starts])
    assert b.x.shape == (64, L, 5) and b.x.dtype == torch.float32
    assert b.y.shape == (64, 2) and b.end_row.shape == (64,)
    np.testing.assert_array_equal(b.x.numpy(), naive_x)
    np.testing.assert_array_equal(b.y.numpy(), naive_y)
    np.testing.assert_array_equal(b.end_row.numpy(), starts + L - 1)
    again = ds[list(idx)]  # __getitem__ with a list is the same fast path
    np.testing.assert_array_equal(again.x.numpy(), naive_x)
    with pytest.raises(IndexError, match="out of range"):
        ds.batch([0, len(ds)])
    with pytest.raises(IndexError, match="out of range"):
        ds[-1]


def test_memmap_is_used_never_copied(tmp_path):
    x, y, seg, _, _ = make_data(n=20_000, f=24)
    path = tmp_path / "x.npy"
    np.save(path, x)
    ds = LazySequenceDataset.from_npy(path, 120, targets=y, segment_ids=np.repeat(np.arange(4), 5000))
    assert isinstance(ds.features, np.memmap)
    assert str(ds.features.filename) == str(path.resolve())
    w = ds.window(123)
    assert np.shares_memory(w, ds.features)
    base = w
    while base.base is not None and not isinstance(base, np.memmap):
        base = base.base
    assert isinstance(base, np.memmap)
    np.testing.assert_array_equal(ds.batch(np.arange(10)).x.numpy()[3], x[3:123])
    # a given in-memory array is kept as is too
    ds2 = LazySequenceDataset(x, 120)
    assert ds2.features is x


def test_memory_overhead_under_five_percent(tmp_path):
    n, f, L = 1_000_000, 24, 120
    path = tmp_path / "big.npy"
    mm = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, f))
    mm[:] = 1.0
    mm.flush()
    del mm
    seg = np.repeat(np.arange(40, dtype=np.int32), n // 40)  # 40 contracts
    ts = np.repeat(np.arange(n // 40, dtype=np.int64)[None], 40, axis=0).ravel() * 60
    x = np.load(path, mmap_mode="r")
    tracemalloc.start()
    try:
        ds = LazySequenceDataset(x, L, segment_ids=seg, timestamps=ts, max_gap=60)
        _, peak = tracemalloc.get_traced_memory()
        held, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        b = ds.batch(np.arange(0, len(ds), len(ds) // 1024)[:1024])
        _, batch_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    array_bytes = n * f * 4
    assert len(ds) == n - 40 * (L - 1)
    assert peak < 0.05 * array_bytes  # temporaries while building (a few bytes per row)
    assert held < 0.001 * array_bytes and ds.overhead_bytes < 1000
    assert batch_peak < 1.1 * b.x.numpy().nbytes + 100_000  # one copy of the batch, nothing of the array's size


def test_dataloader_fast_path_and_samplers():
    x, y, seg, _, _ = make_data()
    ds = LazySequenceDataset(x, 30, targets=y, segment_ids=seg)
    sampler = RandomBatchSampler(len(ds), 32, num_batches=5, seed=1)
    batches = list(DataLoader(ds, sampler=sampler, batch_size=None))
    assert len(batches) == 5
    for b in batches:
        assert isinstance(b, Batch) and b.x.shape == (32, 30, 5) and b.y.shape == (32, 2)
    # seeded: epoch e replays exactly; the next epoch differs
    s1, s2 = RandomBatchSampler(len(ds), 32, num_batches=3, seed=7), RandomBatchSampler(len(ds), 32, num_batches=3,
                                                                                        seed=7)
    e0 = list(s1)
    np.testing.assert_array_equal(np.stack(e0), np.stack(list(s2)))
    e1 = list(s1)
    assert not np.array_equal(np.stack(e0), np.stack(e1))
    s1.set_epoch(0)
    np.testing.assert_array_equal(np.stack(list(s1)), np.stack(e0))
    for idx in e0:
        assert len(np.unique(idx)) == 32 and idx.min() >= 0 and idx.max() < len(ds)
    seq = list(SequentialBatchSampler(len(ds), 100))
    assert len(seq) == len(SequentialBatchSampler(len(ds), 100))
    np.testing.assert_array_equal(np.concatenate(seq), np.arange(len(ds)))


def test_stratified_sampler_draws_each_decile_equally():
    rng = np.random.default_rng(11)
    # skewed values with heavy ties at 0 (e.g. flat-minute returns)
    values = np.where(rng.random(20_000) < 0.15, 0.0, rng.standard_t(3, 20_000))
    sampler = StratifiedBatchSampler(values, 200, num_batches=20, seed=3)
    edges = np.quantile(values, np.arange(1, 10) / 10)
    np.testing.assert_array_equal(sampler.edges, edges)
    bins = np.searchsorted(edges, values, side="right")
    np.testing.assert_array_equal(sampler.bin_sizes, np.bincount(bins, minlength=10))
    seen = []
    for idx in sampler:
        assert idx.dtype == np.int64 and len(np.unique(idx)) == 200
        np.testing.assert_array_equal(np.bincount(bins[idx], minlength=10), np.full(10, 20))
        seen.append(idx)
    # the plain sampler is far from balanced on the same skewed values (the bins differ in size)
    assert sampler.bin_sizes.max() > 1.3 * sampler.bin_sizes.min()
    # a batch size not divisible by the bins: counts differ by at most one
    for idx in StratifiedBatchSampler(values, 205, num_batches=5, seed=3):
        c = np.bincount(bins[idx], minlength=10)
        assert c.sum() == 205 and set(c.tolist()) == {20, 21}
    again = StratifiedBatchSampler(values, 200, num_batches=20, seed=3)
    np.testing.assert_array_equal(np.stack(list(again)), np.stack(seen))


def test_stratified_sampler_on_dataset_targets_and_errors():
    x, y, seg, _, _ = make_data()
    ds = LazySequenceDataset(x, 30, targets=y, segment_ids=seg)
    vals = ds.sample_targets(column=1)
    np.testing.assert_array_equal(vals, y[ds.start_rows() + 29, 1])
    sampler = StratifiedBatchSampler(vals, 50, num_batches=2)
    b = ds.batch(next(iter(sampler)))
    assert b.y.shape == (50, 2)
    with pytest.raises(ValueError, match="column must be in"):
        ds.sample_targets()
    with pytest.raises(ValueError, match="values has 1 non-finite entries, first at samples \\[4\\]"):
        StratifiedBatchSampler(np.where(np.arange(100) == 4, np.nan, 1.0), 10)
    with pytest.raises(ValueError, match="bin 0 of 10 holds 0 samples"):
        StratifiedBatchSampler(np.r_[np.zeros(95), np.arange(5.0)], 10)


def test_bad_inputs_raise_naming_the_argument():
    x, y, seg, _, ts = make_data()
    with pytest.raises(ValueError, match="features must be float32"):
        LazySequenceDataset(x.astype(np.float64), 10)
    with pytest.raises(ValueError, match="features must be C-contiguous"):
        LazySequenceDataset(np.asfortranarray(x), 10)
    with pytest.raises(ValueError, match="seq_len must be an integer >= 1"):
        LazySequenceDataset(x, 0)
    with pytest.raises(ValueError, match="fewer than seq_len"):
        LazySequenceDataset(x[:5], 10)
    with pytest.raises(ValueError, match="targets must be"):
        LazySequenceDataset(x, 10, targets=y[:-1])
    with pytest.raises(ValueError, match=r"segment_ids must have shape \(3000,\)"):
        LazySequenceDataset(x, 10, segment_ids=seg[:-1])
    with pytest.raises(ValueError, match="segment_ids must hold integer or string codes"):
        LazySequenceDataset(x, 10, segment_ids=seg.astype(float))
    shuffled = seg.copy()
    shuffled[100] = 3  # segments 0 and 3 now appear in two runs each: rows are not grouped
    with pytest.raises(ValueError, match=r"segment 0 appears in 2 separate runs starting at rows \[0, 101\]"):
        LazySequenceDataset(x, 10, segment_ids=shuffled)
    back = ts.copy()
    back[200] = back[10]
    with pytest.raises(ValueError, match=r"timestamps go backwards inside a segment at rows \[200\]"):
        LazySequenceDataset(x, 10, segment_ids=seg, timestamps=back)
    with pytest.raises(ValueError, match="max_gap needs timestamps"):
        LazySequenceDataset(x, 10, max_gap=datetime.timedelta(minutes=1))
    with pytest.raises(ValueError, match="max_gap must be a timedelta"):
        LazySequenceDataset(x, 10, timestamps=ts, max_gap=5)
    with pytest.raises(ValueError, match="end_mask must be boolean"):
        LazySequenceDataset(x, 10, end_mask=np.ones(len(x)))
    with pytest.raises(ValueError, match="no window of seq_len=10 fits"):
        LazySequenceDataset(x, 10, end_mask=np.zeros(len(x), dtype=bool))
    with pytest.raises(ValueError, match="row_mask must be boolean"):
        LazySequenceDataset(x, 10, row_mask=np.ones(len(x)))
    with pytest.raises(ValueError, match=r"row_mask must have shape \(3000,\)"):
        LazySequenceDataset(x, 10, row_mask=np.ones(len(x) - 1, dtype=bool))
    alternating = np.arange(len(x)) % 10 != 0  # True runs of 9 rows: no window of 10 fits
    with pytest.raises(ValueError, match="no window of seq_len=10 fits"):
        LazySequenceDataset(x, 10, row_mask=alternating)
    assert len(LazySequenceDataset(x, 9, row_mask=alternating)) == 300  # runs 1..9, 11..19, ..., 2991..2999
    # timestamps may restart at a segment boundary (each contract has its own clock)
    restart = np.concatenate([np.arange(1500), np.arange(1500)]).astype(np.int64)
    two = np.repeat([0, 1], 1500)
    assert len(LazySequenceDataset(x, 10, segment_ids=two, timestamps=restart, max_gap=1)) == 3000 - 2 * 9


def batch_for_augment(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((16, 20, 6), generator=g)
    return Batch(x, x[:, -1, 0].clone(), torch.arange(16))


def test_augmentations_deterministic_with_a_seed_and_off_in_eval():
    cfg = AugmentConfig(noise_std=0.1, warp_sigma=0.2, dropout_p=0.2, mixup_alpha=0.4)
    b = batch_for_augment()
    a1 = augment(b, cfg, torch.Generator().manual_seed(42), training=True)
    a2 = augment(b, cfg, torch.Generator().manual_seed(42), training=True)
    a3 = augment(b, cfg, torch.Generator().manual_seed(43), training=True)
    torch.testing.assert_close(a1.x, a2.x, rtol=0, atol=0)
    torch.testing.assert_close(a1.y, a2.y, rtol=0, atol=0)
    assert not torch.equal(a1.x, a3.x)
    assert not torch.equal(a1.x, b.x)
    g = torch.Generator().manual_seed(42)
    state = g.get_state()
    assert augment(b, cfg, g, training=False) is b
    assert torch.equal(g.get_state(), state)  # eval draws nothing
    assert augment(b, AugmentConfig(), g, training=True).x is b.x  # all off: nothing applied


def test_each_augmentation_does_what_it_says():
    b = batch_for_augment()
    x = b.x
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    noisy = gaussian_noise(x, 0.5, g())
    assert (noisy - x).std().item() == pytest.approx(0.5, rel=0.1)
    assert torch.equal(magnitude_warp(x, 0.0, g()), x)
    warped = magnitude_warp(x, 0.3, g(), n_knots=3)
    ratio = warped / x  # (B, L, F): one piecewise-linear curve per (sample, feature)
    second_diff = ratio[:, 2:] - 2 * ratio[:, 1:-1] + ratio[:, :-2]
    kink = (20 - 1) / 2  # the middle knot sits at step 9.5 of 0..19: straight everywhere except around it
    straight = [t for t in range(1, 19) if abs(t - kink) > 1]
    torch.testing.assert_close(second_diff[:, [t - 1 for t in straight]], torch.zeros(16, len(straight), 6),
                               atol=1e-4, rtol=0)
    dropped = feature_dropout(x, 0.5, g())
    zero_series = (dropped == 0).all(dim=1)  # (B, F): whole-window features
    assert zero_series.any() and (~zero_series).any()
    kept = ~zero_series[:, None, :].expand_as(x)
    assert torch.equal(dropped[kept], x[kept])
    xm, ym = mixup(x, b.y, 0.4, g())
    # the target is a linear function of the window (y = x[:, -1, 0]), and mixup keeps it so
    torch.testing.assert_close(ym, xm[:, -1, 0])
    assert xm.shape == x.shape and not torch.equal(xm, x)
    with pytest.raises(ValueError, match="mixup_alpha > 0 needs a batch with targets"):
        augment(Batch(x, None, b.end_row), AugmentConfig(mixup_alpha=0.2), g(), training=True)
    with pytest.raises(ValueError, match="dropout_p must be in"):
        AugmentConfig(dropout_p=1.0)
    with pytest.raises(ValueError, match="x must be a floating"):
        gaussian_noise(x[0], 0.1, g())
