"""build_dataset end to end on a small synthetic market: files equal the in-memory reference (asof_join then
condor_features / the optional sets / target_frame, reordered contract-major), nothing is dropped, invalid rows are
counted, no look-ahead, and bad input raises named errors."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from condorbrain.data import DataValidationError, MarketConfig, asof_join, synth_market
from condorbrain.dataset import (
    DATASET_FILES,
    BuildConfig,
    build_dataset,
    open_dataset,
    read_metadata,
)
from condorbrain.features import (
    CONDOR_FEATURE_UNITS,
    CONDOR_FEATURES,
    FeatureConfig,
    condor_features,
    forecaster_features,
    interaction_features,
    microstructure_features,
    target_frame,
)

ORDER = ["symbol", "expiry", "strike", "right", "ts"]
FEATURES = FeatureConfig(dtype="float32", ivr_window=60)  # a short IV-rank window, so 3 sessions have valid rows
CONFIG = BuildConfig(features=FEATURES, chunk_rows=4000, max_staleness=dt.timedelta(seconds=90))


@pytest.fixture(scope="module")
def market() -> tuple[pl.DataFrame, pl.DataFrame]:
    m = synth_market(MarketConfig(n_sessions=3, strikes_each_side=2, seed=7))  # 20 contracts a minute
    return m.bars, m.quotes


@pytest.fixture(scope="module")
def built(market, tmp_path_factory) -> tuple[Path, object]:
    bars, quotes = market
    out = tmp_path_factory.mktemp("ds") / "dataset"
    cfg = dataclasses.replace(CONFIG, extra_sets=("forecaster", "microstructure", "interaction"))
    return out, build_dataset(bars, quotes, out, cfg, source_names={"bars": "test bars"},
                              provenance={"bars": "synthetic test market"})


def _reference(bars: pl.DataFrame, quotes: pl.DataFrame, cfg: BuildConfig) -> pl.DataFrame:
    """The whole join in memory, with the feature sets computed on all of it, in the dataset's row order."""
    joined = asof_join(bars, quotes, cfg.max_staleness)
    parts = [joined, condor_features(joined, cfg.features).rename(lambda c: f"f_{c}")]
    parts.append(microstructure_features(joined, cfg.features).rename(lambda c: f"f_{c}"))
    parts.append(interaction_features(joined, cfg.features).rename(lambda c: f"f_{c}"))
    return pl.concat(parts, how="horizontal").sort(ORDER, maintain_order=True)


def test_files_equal_the_in_memory_reference(market, built) -> None:
    bars, quotes = market
    out, summary = built
    cfg = dataclasses.replace(CONFIG, extra_sets=("forecaster", "microstructure", "interaction"))
    ref = _reference(bars, quotes, cfg)
    names = cfg.feature_names()
    x = np.load(out / "features.npy", mmap_mode="r")
    assert x.dtype == np.float32 and x.flags.c_contiguous and x.shape == (ref.height, len(names))
    assert summary.rows == ref.height  # every joined row is there: nothing dropped

    # the 24 and the per-row sets: exactly the float32 values condor_features gives on the whole join
    per_row = [k for k in names if f"f_{k}" in ref.columns]
    assert per_row[:24] == list(CONDOR_FEATURES)
    want = ref.select([pl.col(f"f_{k}").cast(pl.Float32) for k in per_row]).to_numpy()
    got = np.asarray(x[:, [names.index(k) for k in per_row]])
    np.testing.assert_array_equal(got, want)

    # the forecaster set is per bar, broadcast to the bar's rows
    fc = forecaster_features(bars, cfg.forecaster, dtype="float32")
    fc_rows = ref.select("symbol", "ts").join(fc, on=["symbol", "ts"], how="left", maintain_order="left")
    fc_names = list(cfg.forecaster.names())
    np.testing.assert_array_equal(np.asarray(x[:, [names.index(k) for k in fc_names]]),
                                  fc_rows.select(fc_names).to_numpy())

    # targets: target_frame of the row's bar, float32, kept in their own file
    tf = target_frame(bars, cfg.horizons)
    t_rows = ref.select("symbol", "ts").join(tf, on=["symbol", "ts"], how="left", maintain_order="left")
    y = np.load(out / "targets.npy")
    np.testing.assert_array_equal(y, t_rows.select(cfg.target_names()).to_numpy().astype(np.float32))

    # row keys: timestamps and contracts
    ts = np.load(out / "timestamps.npy")
    assert ts.dtype == np.dtype("datetime64[us]")
    np.testing.assert_array_equal(ts, ref["ts"].dt.replace_time_zone(None).to_numpy())
    seg = np.load(out / "segment_ids.npy")
    segments = pl.read_parquet(out / "segments.parquet")
    row_contract = segments.select(ORDER[:-1])[seg.tolist()]
    assert row_contract.equals(ref.select(ORDER[:-1]))
    assert (np.diff(seg) >= 0).all() and segments["segment_id"].to_list() == list(range(segments.height))
    np.testing.assert_array_equal(segments["first_row"].to_numpy(),
                                  np.concatenate(([0], np.cumsum(segments["rows"].to_numpy())[:-1])))


def test_invalid_rows_are_kept_marked_and_counted(market, built) -> None:
    bars, quotes = market
    out, summary = built
    x = np.load(out / "features.npy")
    valid = np.load(out / "valid.npy")
    np.testing.assert_array_equal(valid, np.isfinite(x).all(axis=1))
    assert summary.valid_rows == int(valid.sum())
    assert 0 < summary.valid_rows < summary.rows  # warm-up rows exist and are kept
    ref = asof_join(bars, quotes, CONFIG.max_staleness)
    assert summary.rows_without_quote == ref["quote_ts"].null_count() > 0  # stale quotes: kept, not carried
    names = [f["name"] for f in read_metadata(out)["features"]]
    assert summary.nan_by_feature == {k: int(c) for k, c in zip(names, np.isnan(x).sum(axis=0)) if c}
    y = np.load(out / "targets.npy")
    assert summary.rows_nan_target == int((~np.isfinite(y).all(axis=1)).sum()) > 0


def test_metadata_is_complete(market, built) -> None:
    bars, quotes = market
    out, summary = built
    assert sorted(p.name for p in out.iterdir()) == sorted(DATASET_FILES)
    meta = json.loads((out / "metadata.json").read_text())
    assert meta == read_metadata(out)
    assert meta["rows"] == summary.rows and meta["data_schema_version"] == 1 and meta["dataset_version"] == 1
    feats = meta["features"]
    assert [f["name"] for f in feats[:24]] == list(CONDOR_FEATURES)
    assert all(f["unit"] for f in feats) and feats[6]["unit"] == CONDOR_FEATURE_UNITS["delta"]
    assert [t["name"] for t in meta["targets"]][:5] == ["ret_1", "rv_1", "maxdd_1", "mae_long_1", "mae_short_1"]
    assert meta["symbols"] == ["SPY"]
    first, last = bars["ts"].min(), bars["ts"].max()
    assert meta["time_range_utc"] == {"first": first.strftime("%Y-%m-%dT%H:%M:%SZ"),
                                      "last": last.strftime("%Y-%m-%dT%H:%M:%SZ")}
    assert meta["sources"]["bars"] == {"frame": "test bars", "rows": bars.height}
    assert meta["sources"]["quotes"] == {"frame": "quotes frame", "rows": quotes.height}
    assert meta["synthetic"]["quotes_flagged_synthetic"] == quotes.height
    assert meta["synthetic"]["bar_columns_beyond_schema"] == ["regime", "true_vol"]
    assert meta["provenance"] == {"bars": "synthetic test market"}
    assert meta["config"]["max_staleness"] == 90.0 and meta["config"]["features"]["ivr_window"] == 60
    assert meta["counts"]["invalid_rows"] == summary.rows - summary.valid_rows
    assert meta["files"]["features.npy"] == {"shape": [summary.rows, len(feats)], "dtype": "float32"}


def test_chunk_size_does_not_change_the_files(market, tmp_path) -> None:
    bars, quotes = market
    one = build_dataset(bars, quotes, tmp_path / "one", dataclasses.replace(CONFIG, chunk_rows=10**9))
    many = build_dataset(bars, quotes, tmp_path / "many", dataclasses.replace(CONFIG, chunk_rows=1))
    assert one.segments == many.segments == 20  # two weekly expiries x 5 strikes x 2 rights
    for name in ("features.npy", "targets.npy", "valid.npy", "segment_ids.npy", "timestamps.npy"):
        np.testing.assert_array_equal(np.load(tmp_path / "one" / name), np.load(tmp_path / "many" / name))


def test_files_from_parquet_match_frames(market, tmp_path) -> None:
    bars, quotes = market
    bars.write_parquet(tmp_path / "bars.parquet")
    quotes.write_parquet(tmp_path / "quotes.parquet")
    build_dataset(tmp_path / "bars.parquet", tmp_path / "quotes.parquet", tmp_path / "a", CONFIG)
    build_dataset(bars, quotes, tmp_path / "b", CONFIG)
    np.testing.assert_array_equal(np.load(tmp_path / "a" / "features.npy"), np.load(tmp_path / "b" / "features.npy"))
    src = read_metadata(tmp_path / "a")["sources"]["bars"]
    assert src["path"] == str(tmp_path / "bars.parquet") and src["rows"] == bars.height and src["bytes"] > 0


def _keyed(out: Path) -> pl.DataFrame:
    segments = pl.read_parquet(out / "segments.parquet")
    keys = segments.select(ORDER[:-1])[np.load(out / "segment_ids.npy").tolist()]
    x = np.load(out / "features.npy")
    return pl.concat([keys.with_columns(pl.Series("ts", np.load(out / "timestamps.npy"))),
                      pl.DataFrame(x, schema=[f"f_{k}" for k in CONDOR_FEATURES])], how="horizontal")


@pytest.mark.parametrize("change", ["truncate", "perturb"])
def test_no_look_ahead(market, tmp_path, change: str) -> None:
    """Changing bars and quotes after t leaves every feature row with ts <= t unchanged (bit for bit)."""
    bars, quotes = market
    t = bars["ts"][bars.height // 2]
    if change == "truncate":
        bars2, quotes2 = bars.filter(pl.col("ts") <= t), quotes.filter(pl.col("ts") <= t)
    else:
        late = pl.col("ts") > t
        bars2 = bars.with_columns(pl.when(late).then(pl.col(c) * 1.07).otherwise(pl.col(c)).alias(c)
                                  for c in ("open", "high", "low", "close"))
        quotes2 = quotes.with_columns(pl.when(late).then(pl.col(c) * 1.3).otherwise(pl.col(c)).alias(c)
                                      for c in ("bid", "ask", "iv"))
    build_dataset(bars, quotes, tmp_path / "a", CONFIG)
    build_dataset(bars2, quotes2, tmp_path / "b", CONFIG)
    t_naive = np.datetime64(t.replace(tzinfo=None), "us")
    a = _keyed(tmp_path / "a").filter(pl.col("ts") <= t_naive)
    b = _keyed(tmp_path / "b").filter(pl.col("ts") <= t_naive)
    assert a.height > 1000
    assert a.equals(b, null_equal=True)
    if change == "perturb":  # and the change does reach the rows after t
        after_a = _keyed(tmp_path / "a").filter(pl.col("ts") > t_naive)
        after_b = _keyed(tmp_path / "b").filter(pl.col("ts") > t_naive)
        assert not np.allclose(after_a["f_close"].to_numpy(), after_b["f_close"].to_numpy())


def test_lazy_dataset_on_the_folder(built) -> None:
    out, summary = built
    ds = open_dataset(out, 30)
    x = np.load(out / "features.npy", mmap_mode="r")
    valid, y = np.load(out / "valid.npy"), np.load(out / "targets.npy")
    seg = np.load(out / "segment_ids.npy")
    idx = np.arange(0, len(ds), 97)
    batch = ds.batch(idx)
    starts = ds.start_rows(idx)
    for k, s in enumerate(starts[:20]):
        np.testing.assert_array_equal(batch.x[k].numpy(), x[s : s + 30])
        assert seg[s] == seg[s + 29] and valid[s : s + 30].all() and np.isfinite(y[s + 29]).all()
    assert np.isfinite(batch.x.numpy()).all()  # by default no window holds an invalid row
    assert len(ds) <= summary.valid_rows


@pytest.mark.parametrize("windows_only", [True, False])
@pytest.mark.parametrize("ends_only", [True, False])
def test_open_dataset_windows_equal_brute_force(built, windows_only: bool, ends_only: bool) -> None:
    """The windows open_dataset keeps are those a loop over every start row finds by its documented rules."""
    out, _ = built
    L = 30
    valid, y = np.load(out / "valid.npy"), np.load(out / "targets.npy")
    seg = np.load(out / "segment_ids.npy")
    ds = open_dataset(out, L, valid_windows_only=windows_only, valid_ends_only=ends_only)
    expected = [s for s in range(len(seg) - L + 1)
                if seg[s] == seg[s + L - 1]
                and (not windows_only or valid[s : s + L].all())
                and (not ends_only or (valid[s + L - 1] and np.isfinite(y[s + L - 1]).all()))]
    np.testing.assert_array_equal(ds.start_rows(), expected)
    if not windows_only:  # the fixture does have windows with an invalid row before a valid end (warm-up, stale)
        assert len(ds) > len(open_dataset(out, L, valid_windows_only=True, valid_ends_only=ends_only))


def test_bad_input_raises_named_errors(market, tmp_path) -> None:
    bars, quotes = market
    bad_bars = bars.with_columns(pl.when(pl.int_range(pl.len()) == 5).then(pl.col("low") * 0.5)
                                 .otherwise(pl.col("high")).alias("high"))
    with pytest.raises(DataValidationError, match=r"(?s)bad bars.*high < low.*rows 5"):
        build_dataset(bad_bars, quotes, tmp_path / "x", CONFIG, source_names={"bars": "bad bars"})
    bad_quotes = quotes.with_columns(pl.when(pl.int_range(pl.len()) == 3).then(pl.col("ask") + 1)
                                     .otherwise(pl.col("bid")).alias("bid"))
    with pytest.raises(DataValidationError, match=r"(?s)quotes.*bid > ask.*rows 3"):
        build_dataset(bars, bad_quotes, tmp_path / "x", CONFIG)
    with pytest.raises(DataValidationError, match="'strike'.*missing"):
        build_dataset(bars, quotes.drop("strike"), tmp_path / "x", CONFIG)
    with pytest.raises(FileNotFoundError, match="nope.parquet"):
        build_dataset(tmp_path / "nope.parquet", quotes, tmp_path / "x", CONFIG)
    with pytest.raises(ValueError, match="no row"):
        build_dataset(bars, quotes.with_columns(pl.lit("QQQ").alias("underlying")), tmp_path / "x", CONFIG)
    assert not (tmp_path / "x").exists()
    (tmp_path / "taken").mkdir()
    with pytest.raises(FileExistsError, match="overwrite"):
        build_dataset(bars, quotes, tmp_path / "taken", CONFIG)
    with pytest.raises(ValueError, match="not a condorbrain dataset"):
        (tmp_path / "taken" / "metadata.json").write_text("{}")
        read_metadata(tmp_path / "taken")


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"max_staleness": 5}, "max_staleness"),
    ({"max_staleness": dt.timedelta(seconds=-1)}, "max_staleness"),
    ({"features": FeatureConfig()}, "float32"),
    ({"extra_sets": ("greeks",)}, "extra_sets"),
    ({"extra_sets": ("interaction", "interaction")}, "extra_sets"),
    ({"horizons": ()}, "horizons"),
    ({"horizons": (1, 1)}, "horizons"),
    ({"chunk_rows": 0}, "chunk_rows"),
])  # fmt: skip
def test_config_validation(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        BuildConfig(**kwargs)


def test_config_round_trips_through_a_dict() -> None:
    cfg = BuildConfig(max_staleness=dt.timedelta(seconds=45), extra_sets=("interaction",), horizons=(2, 7),
                      features=FeatureConfig(dtype="float32", ivr_window=30, expiry_time=dt.time(15, 15)),
                      chunk_rows=1234)
    assert BuildConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['horizon'\]"):
        BuildConfig.from_dict({"horizon": [1]})
    with pytest.raises(ValueError, match="bad build config"):
        BuildConfig.from_dict({"features": {"rsi": 3}})
