"""Build a training dataset on disk: bars + quotes -> validate -> as-of join -> features, targets kept apart.

This module is the "dataset" step of the one-way flow data -> features -> dataset -> model: it composes
:mod:`condorbrain.data` (loaders, validation, the as-of join, lazy sequences) and :mod:`condorbrain.features` (the
24 CondorBrain inputs, the optional sets, the targets); neither of those imports it.

A dataset folder holds (:data:`DATASET_FILES`)::

    features.npy      (N, F) float32, C-order: CONDOR_FEATURES, then the optional sets asked for
    targets.npy       (N, T) float32: `target_frame` of the row's bar (the underlying's future); never an input
    valid.npy         (N,) bool: True where every feature of the row is finite
    segment_ids.npy   (N,) int32: the row's contract, a row of segments.parquet
    timestamps.npy    (N,) datetime64[us]: the bar's end time, UTC
    segments.parquet  segment_id, symbol, expiry, strike, right, first_row, rows
    metadata.json     feature names and units, targets, counts, time range, sources, provenance, config, versions

Rows. One row per (bar, listed contract) of :func:`~condorbrain.data.asof_join`, none dropped: a row whose quote is
stale or missing, whose iv does not solve, or that falls in an indicator's warm-up is kept with NaN where a value
cannot be computed and ``valid = False``; the counts are in the summary and the metadata. The rows are ORDERED
contract-major (symbol, expiry, strike, right, then ts ascending), not in the join's bar-major order, so that each
contract's rows are one contiguous run: the layout :class:`~condorbrain.data.LazySequenceDataset` windows need.
Feature values equal ``condor_features(asof_join(bars, quotes, max_staleness))`` (float32) on the same rows.

Streaming. Bar-level work (indicators, targets, forecaster set) is done once on the bars, which are small. The
joined rows, the large part, are produced by contract groups of about ``chunk_rows`` rows: the as-of join of a group
of contracts equals those contracts' rows of the whole join (a contract's rows depend on its own quotes and the
bars only), and every row-level feature depends on its row alone. Each group is joined, featurised and appended to
the files; only the ATM-iv candidates of each bar are kept across groups for ``ivr``, which a final pass over the
features file fills in. So memory holds the inputs plus one group, never the whole join or the whole feature array.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from numpy.typing import NDArray
from tqdm.auto import tqdm

from condorbrain import __version__
from condorbrain.data import (
    CONTRACT_KEY,
    SCHEMA_VERSION,
    asof_join,
    load_bars,
    load_quotes,
    validate_bars,
    validate_quotes,
)
from condorbrain.features import (
    CONDOR_BAR_FEATURES,
    CONDOR_FEATURE_UNITS,
    CONDOR_FEATURES,
    CONDOR_ROW_FEATURES,
    DEFAULT_HORIZONS,
    INTERACTION_FEATURES,
    MICROSTRUCTURE_FEATURES,
    FeatureConfig,
    ForecasterConfig,
    atm_candidates,
    atm_iv,
    bar_bvc_imbalance,
    condor_bar_features,
    condor_row_features,
    forecaster_features,
    interaction_features,
    microstructure_features,
    target_frame,
)

__all__ = [
    "DATASET_FILES",
    "DATASET_VERSION",
    "EXTRA_SETS",
    "BuildConfig",
    "BuildSummary",
    "DAILY_MAX_STALENESS",
    "build_dataset",
    "open_dataset",
    "read_metadata",
]

DATASET_VERSION = 1
"""Version of the folder layout above; written into metadata.json."""

DATASET_FILES: tuple[str, ...] = (
    "features.npy", "targets.npy", "valid.npy", "segment_ids.npy", "timestamps.npy", "segments.parquet",
    "metadata.json",
)  # fmt: skip
"""The files of a dataset folder."""

DAILY_MAX_STALENESS = dt.timedelta(days=4)
"""``max_staleness`` for daily bars (``condorbrain data build --embedded`` uses it). On daily bars the previous
session's quote is the latest one a bar may have (e.g. an end-of-day snapshot stamped after the 16:00 close is first
seen by the next day's bar), and the longest regular gap between two sessions' closes is 4 calendar days (Friday to
Tuesday over a Monday holiday). The 1-minute default (2 minutes) would call every such quote missing. The embedded
chains quote every listed contract at each bar's own end time, so for them the choice changes nothing."""

EXTRA_SETS: tuple[str, ...] = ("microstructure", "interaction", "forecaster")
"""Optional feature sets appended after the 24, in this order when asked for."""

_MICRO_UNITS = {"mid": "price units, (bid + ask) / 2", "microprice": "price units",
                "eff_spread": "fraction of mid", "imbalance": "-1..1 (quote sizes, else signed BVC proxy)"}
_INTERACTION_UNITS = {"moneyness_sqrt_t": "years^0.5", "log_m_log_t": "dimensionless",
                      "sq_moneyness_t": "years", "log_volume_abs_log_m": "dimensionless",
                      "atm_proximity": "years^0.5"}
_TARGET_UNITS = {"ret": "fraction, close_{t+h} / close_t - 1",
                 "rv": "fraction over the horizon, sqrt(sum of squared one-bar log returns t+1..t+h)",
                 "maxdd": "fraction, max peak-to-trough fall of close_t..close_{t+h}",
                 "mae_long": "fraction of close_t, max adverse excursion of a long held h bars",
                 "mae_short": "fraction of close_t, max adverse excursion of a short held h bars"}
_UNITS = ("ms", "us", "ns")
_STAGES = ("load + validate", "plan", "bar features + targets", "join + features", "ivr + valid mask",
           "write metadata")


@dataclass(frozen=True)
class BuildConfig:
    """How :func:`build_dataset` joins, featurises and writes."""

    max_staleness: dt.timedelta = dt.timedelta(minutes=2)
    """Oldest quote the as-of join still uses (inclusive); older counts as missing. Two 1-minute bars by default.
    For daily bars use a few calendar days, so that the previous session's quote still counts across a weekend or
    a holiday: :data:`DAILY_MAX_STALENESS` (4 days), which ``condorbrain data build --embedded`` uses."""
    features: FeatureConfig = field(default_factory=lambda: FeatureConfig(dtype="float32"))
    """Settings of the 24 and of the microstructure / interaction sets; the build computes them in float32."""
    extra_sets: tuple[str, ...] = ()
    """Optional sets appended after the 24: any of :data:`EXTRA_SETS` ("microstructure", "interaction",
    "forecaster"; the forecaster's per-bar set is broadcast to every contract row of the bar)."""
    forecaster: ForecasterConfig = field(default_factory=ForecasterConfig)
    """Settings of the forecaster set, when asked for."""
    horizons: tuple[int, ...] = DEFAULT_HORIZONS
    """Target horizons, in bars of the underlying."""
    chunk_rows: int = 1_000_000
    """Joined rows per contract group (contracts are never split, so a group may hold more); bounds memory."""

    def __post_init__(self) -> None:
        if not isinstance(self.max_staleness, dt.timedelta) or self.max_staleness < dt.timedelta(0):
            raise ValueError(f"max_staleness must be a datetime.timedelta >= 0, got {self.max_staleness!r}")
        if not isinstance(self.features, FeatureConfig):
            raise ValueError(f"features must be a FeatureConfig, got {type(self.features).__name__}")
        if self.features.dtype != "float32":
            raise ValueError("features.dtype must be 'float32': the dataset stores float32")
        unknown = [s for s in self.extra_sets if s not in EXTRA_SETS]
        if unknown or len(set(self.extra_sets)) != len(self.extra_sets):
            raise ValueError(f"extra_sets must be distinct names from {EXTRA_SETS}, got {self.extra_sets!r}")
        if not self.horizons or any(isinstance(h, bool) or not isinstance(h, int) or h < 1 for h in self.horizons):
            raise ValueError(f"horizons must be positive ints, got {self.horizons!r}")
        if len(set(self.horizons)) != len(self.horizons):
            raise ValueError(f"horizons must be distinct, got {self.horizons!r}")
        if isinstance(self.chunk_rows, bool) or not isinstance(self.chunk_rows, int) or self.chunk_rows < 1:
            raise ValueError(f"chunk_rows must be a positive int, got {self.chunk_rows!r}")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able form (timedeltas in seconds, times as ISO text); `from_dict` reads it back."""
        return _jsonable(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BuildConfig:
        """The config of `to_dict`'s form (e.g. a JSON config file); fields left out keep their defaults.

        Raises:
            ValueError: naming any unknown field, or a value the dataclasses reject.
        """
        d = dict(data)
        kw: dict[str, Any] = {}
        try:
            if "max_staleness" in d:
                kw["max_staleness"] = dt.timedelta(seconds=float(d.pop("max_staleness")))
            if "features" in d:
                f = dict(d.pop("features"))
                if "expiry_time" in f:
                    f["expiry_time"] = dt.time.fromisoformat(f["expiry_time"])
                kw["features"] = FeatureConfig(**{"dtype": "float32", **f})
            if "forecaster" in d:
                f = {k: tuple(v) if isinstance(v, list) else v for k, v in dict(d.pop("forecaster")).items()}
                kw["forecaster"] = ForecasterConfig(**f)
            for name in ("extra_sets", "horizons"):
                if name in d:
                    kw[name] = tuple(d.pop(name))
            if "chunk_rows" in d:
                kw["chunk_rows"] = d.pop("chunk_rows")
        except TypeError as e:  # an unknown field of FeatureConfig / ForecasterConfig
            raise ValueError(f"bad build config: {e}") from None
        if d:
            raise ValueError(f"bad build config: unknown field(s) {sorted(d)}; known: "
                             f"{[f.name for f in dataclasses.fields(cls)]}")
        return cls(**kw)

    def feature_names(self) -> tuple[str, ...]:
        """Columns of features.npy, in order."""
        names: list[str] = list(CONDOR_FEATURES)
        for s in EXTRA_SETS:  # fixed order whatever the order asked
            if s in self.extra_sets:
                names += {"microstructure": MICROSTRUCTURE_FEATURES, "interaction": INTERACTION_FEATURES,
                          "forecaster": self.forecaster.names()}[s]
        return tuple(names)

    def target_names(self) -> tuple[str, ...]:
        """Columns of targets.npy, in order (as `target_frame` names them)."""
        return tuple(f"{kind}_{h}" for h in self.horizons for kind in _TARGET_UNITS)


@dataclass(frozen=True)
class BuildSummary:
    """What :func:`build_dataset` wrote and how long each stage took."""

    out_dir: Path
    """The dataset folder."""
    rows: int
    """Joined rows written (N)."""
    valid_rows: int
    """Rows whose features are all finite."""
    rows_without_quote: int
    """Rows whose contract had no quote within max_staleness (kept, quote columns NaN)."""
    rows_nan_target: int
    """Rows with a NaN target (horizon past the symbol's last bar)."""
    nan_by_feature: dict[str, int]
    """NaN count per feature column (warm-up, no quote, no iv); only columns with at least one."""
    segments: int
    """Contracts with at least one row."""
    contracts_without_rows: int
    """Contracts quoted but never listed at a bar (quoted only after the last bar of their symbol, or expired
    before the first)."""
    bars: int
    """Bars given."""
    bars_with_rows: int
    """Bars with at least one listed contract (the series the bar-level indicators run on)."""
    quotes: int
    """Quotes given."""
    feature_bytes: int
    """Size of the (N, F) float32 feature array."""
    seconds: dict[str, float]
    """Wall-clock seconds per stage."""

    def table(self) -> str:
        """The summary as an aligned two-column text table."""
        pct = (lambda k: f" ({100.0 * k / self.rows:.2f}%)") if self.rows else (lambda k: "")
        rows = [
            ("dataset", str(self.out_dir)),
            ("bars (with rows)", f"{self.bars:,} ({self.bars_with_rows:,})"),
            ("quotes", f"{self.quotes:,}"),
            ("contracts (segments)", f"{self.segments:,} (+{self.contracts_without_rows:,} never listed)"),
            ("rows", f"{self.rows:,}"),
            ("valid rows", f"{self.valid_rows:,}{pct(self.valid_rows)}"),
            ("invalid rows (kept)", f"{self.rows - self.valid_rows:,}{pct(self.rows - self.valid_rows)}"),
            ("  of which no quote", f"{self.rows_without_quote:,}{pct(self.rows_without_quote)}"),
            ("rows with a NaN target", f"{self.rows_nan_target:,}{pct(self.rows_nan_target)}"),
            ("features.npy", f"{self.feature_bytes / 2**20:,.1f} MiB"),
        ]
        rows += [(f"  NaN in {k}", f"{v:,}") for k, v in self.nan_by_feature.items()]
        rows += [(f"seconds: {k}", f"{v:.2f}") for k, v in self.seconds.items()]
        rows.append(("seconds: total", f"{sum(self.seconds.values()):.2f}"))
        width = max(len(k) for k, _ in rows)
        return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


Source = pl.DataFrame | str | os.PathLike[str]


def build_dataset(
    bars: Source,
    quotes: Source,
    out_dir: str | os.PathLike[str],
    config: BuildConfig | None = None,
    *,
    source_names: Mapping[str, str] | None = None,
    provenance: Mapping[str, str] | None = None,
    overwrite: bool = False,
    progress: bool = False,
) -> BuildSummary:
    """Validate, join, featurise and write a dataset folder (layout in the module docstring).

    Args:
        bars: a bars frame, or a CSV / Parquet file or a directory of Parquet parts (read by
            :func:`~condorbrain.data.load_bars`, ts = bar END time).
        quotes: a quotes frame, or a file / directory read by :func:`~condorbrain.data.load_quotes`.
        out_dir: the folder to write; created. It must not exist unless ``overwrite``.
        config: join, feature and chunk settings.
        source_names: names recorded for frames given directly, keys "bars" / "quotes" (paths are recorded as
            given).
        provenance: free-text notes kept in metadata.json, e.g. ``{"bars": "real S&P 500 daily (arch)"}``; the
            build adds what it can count itself (quotes flagged ``synthetic``).
        overwrite: replace an existing folder.
        progress: show a progress bar per stage.

    Returns:
        The :class:`BuildSummary` (also written into metadata.json).

    Raises:
        DataValidationError: bars or quotes fail strict validation (names the source, column and rows).
        ValueError: a bad config, no joined row at all, or inputs the join / features reject (naming the column).
        FileExistsError: ``out_dir`` exists and ``overwrite`` is False.
    """
    cfg = config or BuildConfig()
    out = Path(out_dir)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out}: already exists; pass overwrite=True (CLI: --overwrite) to replace it")
    names = dict(source_names or {})
    seconds: dict[str, float] = {}
    clock = time.perf_counter()
    stages = tqdm(total=len(_STAGES), disable=not progress, desc="build", unit="stage", position=0)

    def stage(name: str, done: bool = True) -> None:
        nonlocal clock
        now = time.perf_counter()
        seconds[name] = seconds.get(name, 0.0) + now - clock
        clock = now
        if done:
            stages.update(1)
            stages.set_postfix_str(f"done: {name}")

    # 1. load and validate (strict: bad input raises DataValidationError naming file, column and rows)
    bars_df, bars_src = _load(bars, "bars", names)
    quotes_df, quotes_src = _load(quotes, "quotes", names)
    stage("load + validate")

    # 2. plan: contracts, which bars get rows, how many rows each contract gets, contract groups
    plan = _plan(bars_df, quotes_df, cfg.chunk_rows)
    n_rows = int(plan.contracts["rows"].sum())
    if n_rows == 0:
        raise ValueError("the as-of join gives no row: no contract is listed at any bar (quotes.underlying must "
                         "match bars.symbol, and quotes must start before the last bar and expire after the first)")
    stage("plan")

    # 3. bar-level work, once: indicators on the bars that get rows, targets and forecaster set on all bars
    fcfg = cfg.features
    present = bars_df.select("symbol", "ts", "high", "low", "close").with_row_index("_bar").filter(
        pl.Series(plan.bar_has_rows)).sort("symbol", "ts", maintain_order=True)
    bar_pos = np.full(bars_df.height, -1, dtype=np.int64)  # input bar -> position in `present`
    bar_pos[present["_bar"].to_numpy()] = np.arange(present.height)
    indicators = condor_bar_features(present, None, fcfg)
    bar_imbalance = None
    if "microstructure" in cfg.extra_sets:
        bar_imbalance = present.select("symbol", "ts").with_columns(
            pl.Series("imbalance", bar_bvc_imbalance(present, fcfg)))
    targets_bar = target_frame(bars_df, cfg.horizons).drop("symbol", "ts").to_numpy().astype(np.float32)
    forecaster_bar = None
    if "forecaster" in cfg.extra_sets:
        forecaster_bar = (forecaster_features(bars_df, cfg.forecaster, dtype="float32").drop("symbol", "ts")
                          .to_numpy().astype(np.float32))
    stage("bar features + targets")

    # 4. contract groups: join, row features, append to the files
    feature_names = cfg.feature_names()
    col = {k: i for i, k in enumerate(feature_names)}
    n_feat, n_tgt = len(feature_names), len(cfg.target_names())
    tmp = out.with_name(out.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    files = {
        "features": _NpyWriter(tmp / "features.npy", np.float32, (n_rows, n_feat)),
        "targets": _NpyWriter(tmp / "targets.npy", np.float32, (n_rows, n_tgt)),
        "segment_ids": _NpyWriter(tmp / "segment_ids.npy", np.int32, (n_rows,)),
        "timestamps": _NpyWriter(tmp / "timestamps.npy", np.dtype("datetime64[us]"), (n_rows,)),
    }
    row_pos = np.empty(n_rows, dtype=np.int32 if present.height < 2**31 else np.int64)  # row -> present bar
    candidates: list[pl.DataFrame] = []
    segments: list[pl.DataFrame] = []
    seen_bars = np.zeros(bars_df.height, dtype=bool)
    bars_keyed = bars_df.with_columns(pl.int_range(pl.len(), dtype=pl.Int64).alias("_bar"))
    sort_key = ["symbol", *CONTRACT_KEY[1:], "ts"]
    target_nan_bar = ~np.isfinite(targets_bar).all(axis=1)
    written = n_segments = rows_without_quote = rows_nan_target = 0
    ts_lo, ts_hi = np.datetime64("NaT", "us"), np.datetime64("NaT", "us")
    with tqdm(total=n_rows, disable=not progress, desc="join + features", unit="row", unit_scale=True,
              position=1, leave=False) as bar:
        for g, group in enumerate(plan.groups):
            q = quotes_df[group]
            joined = asof_join(bars_keyed, q, cfg.max_staleness).sort(sort_key, maintain_order=True)
            del q
            m = joined.height
            if m != plan.group_rows[g]:
                raise RuntimeError(f"contract group {g}: the join gave {m} rows, the plan {plan.group_rows[g]}; "
                                   "the listing rule of the plan and of asof_join disagree")
            bar_idx = joined["_bar"].to_numpy()
            seen_bars[bar_idx] = True
            pos = bar_pos[bar_idx]
            rows_without_quote += joined["quote_ts"].null_count()
            rows_nan_target += int(target_nan_bar[bar_idx].sum())

            block = np.empty((m, n_feat), dtype=np.float32)
            rf = condor_row_features(joined, fcfg)
            for k in CONDOR_ROW_FEATURES:
                block[:, col[k]] = rf.columns.pop(k)
            candidates.append(atm_candidates(pos, joined["strike"].to_numpy(), joined["close"].to_numpy(), rf.iv))
            del rf
            for k in CONDOR_BAR_FEATURES:
                if k != "ivr":  # filled at the end, from every group's ATM candidates
                    block[:, col[k]] = indicators[k][pos]
            block[:, col["ivr"]] = np.nan
            if "microstructure" in cfg.extra_sets:
                micro = microstructure_features(joined, fcfg, bar_imbalance=bar_imbalance)
                for k in MICROSTRUCTURE_FEATURES:
                    block[:, col[k]] = micro[k].to_numpy()
            if "interaction" in cfg.extra_sets:
                inter = interaction_features(joined, fcfg)
                for k in INTERACTION_FEATURES:
                    block[:, col[k]] = inter[k].to_numpy()
            if forecaster_bar is not None:
                lo = col[cfg.forecaster.names()[0]]
                block[:, lo : lo + forecaster_bar.shape[1]] = forecaster_bar[bar_idx]
            files["features"].append(block)
            del block
            files["targets"].append(targets_bar[bar_idx])

            seg = joined.group_by(sort_key[:-1], maintain_order=True).len("rows")
            seg_of_row = np.repeat(np.arange(n_segments, n_segments + seg.height, dtype=np.int32),
                                   seg["rows"].to_numpy())
            files["segment_ids"].append(seg_of_row)
            ts = _datetime64_us(joined["ts"])
            files["timestamps"].append(ts)
            ts_lo = ts.min() if np.isnat(ts_lo) else min(ts_lo, ts.min())
            ts_hi = ts.max() if np.isnat(ts_hi) else max(ts_hi, ts.max())
            segments.append(seg.with_columns(
                pl.int_range(n_segments, n_segments + seg.height, dtype=pl.Int32).alias("segment_id"),
                (written + pl.col("rows").cum_sum() - pl.col("rows")).cast(pl.Int64).alias("first_row")))
            row_pos[written : written + m] = pos
            written += m
            n_segments += seg.height
            bar.update(m)
            stage("join + features", done=False)
    for w in files.values():
        w.close()
    stage("join + features")
    if not np.array_equal(seen_bars, plan.bar_has_rows):
        raise RuntimeError("the bars that got rows differ from the plan's; the listing rules disagree")

    # 5. ivr from every row's ATM candidate, then the valid mask and NaN counts, by blocks of the features file
    atm = atm_iv(pl.concat(candidates), present.height)
    del candidates
    ivr = condor_bar_features(present, atm, fcfg)["ivr"]
    valid = np.empty(n_rows, dtype=bool)
    nan_counts = np.zeros(n_feat, dtype=np.int64)
    step, fw, i_ivr = max(cfg.chunk_rows, 1 << 16), files["features"], col["ivr"]
    # Plain reads and writes by blocks, not a memory map: the file's pages never count as this process's memory.
    with open(fw.path, "r+b") as f, tqdm(total=n_rows, disable=not progress, desc="ivr + valid mask", unit="row",
                                          unit_scale=True, position=1, leave=False) as bar:  # fmt: skip
        for lo in range(0, n_rows, step):
            hi = min(lo + step, n_rows)
            f.seek(fw.offset + lo * n_feat * 4)
            block = np.fromfile(f, dtype=np.float32, count=(hi - lo) * n_feat).reshape(hi - lo, n_feat)
            block[:, i_ivr] = ivr[row_pos[lo:hi]]
            f.seek(fw.offset + lo * n_feat * 4)
            block.tofile(f)
            finite = np.isfinite(block)
            valid[lo:hi] = finite.all(axis=1)
            nan_counts += (~finite).sum(axis=0)
            bar.update(hi - lo)
    np.save(tmp / "valid.npy", valid)
    stage("ivr + valid mask")

    # 6. segments table and metadata, then move the folder into place
    seg_table = pl.concat(segments).select(
        "segment_id", "symbol", *CONTRACT_KEY[1:], "first_row", pl.col("rows").cast(pl.Int64))
    seg_table.write_parquet(tmp / "segments.parquet")
    ts_range = (f"{np.datetime_as_string(ts_lo, unit='s')}Z", f"{np.datetime_as_string(ts_hi, unit='s')}Z")
    summary = BuildSummary(
        out_dir=out, rows=n_rows, valid_rows=int(valid.sum()), rows_without_quote=int(rows_without_quote),
        rows_nan_target=rows_nan_target,
        nan_by_feature={k: int(c) for k, c in zip(feature_names, nan_counts, strict=True) if c},
        segments=n_segments, contracts_without_rows=int((plan.contracts["rows"] == 0).sum()),
        bars=bars_df.height, bars_with_rows=present.height, quotes=quotes_df.height,
        feature_bytes=n_rows * n_feat * 4, seconds=seconds)
    stage("write metadata")
    meta = _metadata(cfg, summary, feature_names, bars_df, quotes_df, bars_src, quotes_src, provenance, ts_range)
    (tmp / "metadata.json").write_text(json.dumps(meta, indent=2) + "\n")
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    stages.close()
    return summary


def read_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """metadata.json of a dataset folder, as a dict; ValueError if the folder is not a dataset of this version."""
    p = Path(path) / "metadata.json"
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such file; is {path} a dataset folder written by build_dataset?")
    meta = json.loads(p.read_text())
    if meta.get("format") != "condorbrain-dataset" or meta.get("dataset_version") != DATASET_VERSION:
        raise ValueError(f"{p}: not a condorbrain dataset of version {DATASET_VERSION} "
                         f"(format {meta.get('format')!r}, version {meta.get('dataset_version')!r})")
    return meta


def open_dataset(path: str | os.PathLike[str], seq_len: int, *, max_gap: dt.timedelta | None = None,
                 valid_ends_only: bool = True,
                 valid_windows_only: bool = True):  # -> LazySequenceDataset (torch imported on use)
    """A :class:`~condorbrain.data.LazySequenceDataset` on a dataset folder, every array memory-mapped.

    Windows stay inside one contract (``segment_ids``); with ``max_gap`` they also stop at larger time steps (e.g.
    ``timedelta(minutes=1)`` for 1-minute bars stops them at overnight gaps). Which windows are kept:

    * ``valid_windows_only`` (default True): every row of the window is valid (``valid.npy``: all its features
      finite), so no window feeds a NaN (indicator warm-up, a missing or stale quote, an iv that does not solve) to
      the model. Set it False only for a model whose input layer imputes NaN; windows may then hold invalid rows
      before their last one.
    * ``valid_ends_only`` (default True): the window's last row is valid and its targets are all finite (its label
      exists). The targets of earlier rows are never used, so they may be NaN.

    Both are masks on rows, applied without copying or materialising the windows; the dataset keeps its valid
    starts as intervals. ``valid.npy`` (one byte a row) is read into memory while the intervals are computed.
    """
    from condorbrain.data import LazySequenceDataset

    root = Path(path)
    read_metadata(root)
    load = lambda name: np.load(root / name, mmap_mode="r")  # noqa: E731
    targets = load("targets.npy")
    valid = np.array(load("valid.npy")) if valid_ends_only or valid_windows_only else None
    end_mask = None
    if valid_ends_only:
        end_mask = valid.copy()
        step = 1 << 20
        for lo in range(0, len(end_mask), step):
            end_mask[lo : lo + step] &= np.isfinite(targets[lo : lo + step]).all(axis=1)
    return LazySequenceDataset(load("features.npy"), seq_len, targets=targets, segment_ids=load("segment_ids.npy"),
                               timestamps=load("timestamps.npy"), max_gap=max_gap,
                               row_mask=valid if valid_windows_only else None, end_mask=end_mask)


# ------------------------------------------------------------------------------------------------------------------


def _load(src: Source, kind: str, names: Mapping[str, str]) -> tuple[pl.DataFrame, dict[str, Any]]:
    if isinstance(src, pl.DataFrame):
        name = names.get(kind, f"{kind} frame")
        (validate_bars if kind == "bars" else validate_quotes)(src, source=name, strict=True)
        return src, {"frame": name, "rows": src.height}
    path = Path(src)
    df = load_bars(path) if kind == "bars" else load_quotes(path)
    files = sorted(path.glob("*.parquet")) if path.is_dir() else [path]
    return df, {"path": str(path), "rows": df.height, "files": len(files),
                "bytes": sum(f.stat().st_size for f in files)}


@dataclass(frozen=True)
class _Plan:
    contracts: pl.DataFrame  # CONTRACT_KEY, rows (joined rows it will get), _rows (its quotes' row numbers)
    bar_has_rows: NDArray[np.bool_]  # (bars,) in input order
    groups: list[pl.Series]  # quote row numbers of each contract group, ascending (input order kept)
    group_rows: NDArray[np.int64]  # joined rows of each group


def _plan(bars: pl.DataFrame, quotes: pl.DataFrame, chunk_rows: int) -> _Plan:
    """Which joined rows the as-of join will give, counted from the listing rule alone (asof_join's docstring): a
    contract is listed at a bar of its symbol when its first quote ts <= bar ts <= its expiry. The build checks
    these counts against the join's actual output."""
    unit = max((bars.schema["ts"].time_unit, quotes.schema["ts"].time_unit, quotes.schema["expiry"].time_unit),
               key=_UNITS.index)
    t = pl.Datetime(unit, "UTC")
    contracts = (
        quotes.select(*CONTRACT_KEY, pl.col("ts").cast(t)).with_row_index("_q")
        .group_by(CONTRACT_KEY).agg(pl.col("ts").min().alias("_first"), pl.col("_q").alias("_rows"))
        .with_columns(pl.col("expiry").cast(t).alias("_exp"))
        .sort(CONTRACT_KEY)
    )
    bar_t = bars.select("symbol", pl.col("ts").cast(t).dt.epoch(unit).alias("_t")).with_row_index("_bar")
    bar_has_rows = np.zeros(bars.height, dtype=bool)
    rows = np.zeros(contracts.height, dtype=np.int64)
    first = contracts["_first"].dt.epoch(unit).to_numpy()
    expiry = contracts["_exp"].dt.epoch(unit).to_numpy()
    under = contracts["underlying"]
    for sym, part in bar_t.group_by("symbol"):
        order = np.argsort(part["_t"].to_numpy(), kind="stable")
        ts = part["_t"].to_numpy()[order]
        idx = part["_bar"].to_numpy()[order]
        mine = np.flatnonzero((under == sym[0]).to_numpy())
        lo = np.searchsorted(ts, first[mine], side="left")  # first bar ending at or after the first quote
        hi = np.searchsorted(ts, expiry[mine], side="right")  # one past the last bar ending at or before expiry
        rows[mine] = np.maximum(hi - lo, 0)
        # a bar is covered when some contract's [lo, hi) holds it: a difference array over bar positions
        cover = np.zeros(len(ts) + 1, dtype=np.int64)
        np.add.at(cover, lo, 1)
        np.add.at(cover, hi, -1)
        bar_has_rows[idx[np.cumsum(cover[:-1]) > 0]] = True
    contracts = contracts.with_columns(pl.Series("rows", rows)).drop("_first", "_exp")
    group_of = np.zeros(contracts.height, dtype=np.int64)
    acc = g = 0
    for i, r in enumerate(rows.tolist()):  # one step per contract (thousands), not per row
        if acc and acc + r > chunk_rows:
            g, acc = g + 1, 0
        group_of[i] = g
        acc += r
    contracts = contracts.with_columns(pl.Series("_group", group_of))
    groups, group_rows = [], []
    for _, part in contracts.filter(pl.col("rows") > 0).group_by("_group", maintain_order=True):
        groups.append(part["_rows"].explode().sort())
        group_rows.append(int(part["rows"].sum()))
    return _Plan(contracts.drop("_group"), bar_has_rows, groups, np.asarray(group_rows, dtype=np.int64))


class _NpyWriter:
    """Appends row blocks to a .npy file of a known final shape with plain file writes (no memory map, so the
    written pages stay in the page cache, not in this process's resident memory)."""

    def __init__(self, path: Path, dtype: np.dtype | type, shape: tuple[int, ...]) -> None:
        self.path, self.dtype, self.shape = path, np.dtype(dtype), shape
        self.rows = 0
        self.f = open(path, "wb")  # noqa: SIM115 -- closed by close()
        np.lib.format.write_array_header_1_0(self.f, {"descr": np.lib.format.dtype_to_descr(self.dtype),
                                                      "fortran_order": False, "shape": shape})
        self.offset = self.f.tell()  # bytes of the header: row r starts at offset + r * row bytes

    def append(self, block: np.ndarray) -> None:
        block = np.ascontiguousarray(block, dtype=self.dtype)
        if block.shape[1:] != self.shape[1:] or self.rows + block.shape[0] > self.shape[0]:
            raise RuntimeError(f"{self.path.name}: block {block.shape} does not fit {self.shape} at row {self.rows}")
        block.tofile(self.f)
        self.rows += block.shape[0]

    def close(self) -> None:
        self.f.close()
        if self.rows != self.shape[0]:
            raise RuntimeError(f"{self.path.name}: wrote {self.rows} rows, expected {self.shape[0]}")


def _datetime64_us(ts: pl.Series) -> NDArray[np.datetime64]:
    return ts.dt.convert_time_zone("UTC").dt.replace_time_zone(None).dt.cast_time_unit("us").to_numpy()


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, (dt.time, dt.date)):
        return value.isoformat()
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return value


def _metadata(cfg: BuildConfig, summary: BuildSummary, feature_names: Sequence[str], bars: pl.DataFrame,
              quotes: pl.DataFrame, bars_src: dict[str, Any], quotes_src: dict[str, Any],
              provenance: Mapping[str, str] | None, ts_range: tuple[str, str]) -> dict[str, Any]:  # fmt: skip
    units: dict[str, str] = {**CONDOR_FEATURE_UNITS, **_MICRO_UNITS, **_INTERACTION_UNITS}
    sets = {k: "condor" for k in CONDOR_FEATURES}
    sets.update({k: "microstructure" for k in MICROSTRUCTURE_FEATURES})
    sets.update({k: "interaction" for k in INTERACTION_FEATURES})
    fc = cfg.forecaster
    fc_units = {"norm_price": "close / first close", "ret": "fraction", "log_ret": "log fraction",
                f"volatility_{fc.vol_window}": "per-bar std of log returns", f"momentum_{fc.momentum_window}":
                "price units", f"roc_{fc.momentum_window}": "percent", f"rsi_{fc.rsi_window}": "0..100",
                "bb_position": "0..1 within the Bollinger bands", "macd": "price units", "macd_signal": "price units",
                "macd_hist": "price units", f"price_position_{fc.range_window}": "0..1"}
    fc_units.update({f"sma_{w}": "price units" for w in fc.windows})
    fc_units.update({f"ema_{w}": "price units" for w in fc.windows})
    if "forecaster" in cfg.extra_sets:
        units.update(fc_units)
        sets.update({k: "forecaster (per bar, broadcast to the bar's rows)" for k in fc.names()})
    synthetic_quotes = int(quotes["synthetic"].sum()) if "synthetic" in quotes.columns else 0
    s = summary
    return {
        "format": "condorbrain-dataset",
        "dataset_version": DATASET_VERSION,
        "data_schema_version": SCHEMA_VERSION,
        "condorbrain_version": __version__,
        "created_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "rows": s.rows,
        "row_order": "contract-major: symbol, expiry, strike, right, then ts ascending (one run per segment)",
        "time_range_utc": {"first": ts_range[0], "last": ts_range[1]},
        "symbols": sorted(bars["symbol"].unique().to_list()),
        "features": [{"name": k, "unit": units[k], "set": sets[k]} for k in feature_names],
        "targets": [{"name": k, "unit": _TARGET_UNITS[k.rsplit("_", 1)[0]], "horizon_bars": int(k.rsplit("_", 1)[1])}
                    for k in cfg.target_names()],
        "files": {
            "features.npy": {"shape": [s.rows, len(feature_names)], "dtype": "float32"},
            "targets.npy": {"shape": [s.rows, len(cfg.target_names())], "dtype": "float32"},
            "valid.npy": {"shape": [s.rows], "dtype": "bool", "meaning": "every feature of the row is finite"},
            "segment_ids.npy": {"shape": [s.rows], "dtype": "int32", "meaning": "row of segments.parquet"},
            "timestamps.npy": {"shape": [s.rows], "dtype": "datetime64[us]", "meaning": "bar end time, UTC"},
            "segments.parquet": {"rows": s.segments},
        },
        "counts": {
            "bars": s.bars, "bars_with_rows": s.bars_with_rows, "quotes": s.quotes, "segments": s.segments,
            "contracts_without_rows": s.contracts_without_rows, "valid_rows": s.valid_rows,
            "invalid_rows": s.rows - s.valid_rows, "rows_without_quote": s.rows_without_quote,
            "rows_nan_target": s.rows_nan_target, "nan_by_feature": s.nan_by_feature,
        },
        "sources": {"bars": bars_src, "quotes": quotes_src},
        "synthetic": {
            "quotes_flagged_synthetic": synthetic_quotes,
            "quotes_total": quotes.height,
            "bar_columns_beyond_schema": [c for c in bars.columns
                                          if c not in ("ts", "symbol", "open", "high", "low", "close", "volume")],
        },
        "provenance": dict(provenance or {}),
        "config": _jsonable(cfg),
        "seconds": {k: round(v, 3) for k, v in s.seconds.items()},
    }
