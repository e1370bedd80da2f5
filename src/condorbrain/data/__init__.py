"""Market data: schemas, loaders, validation, embedded real data, synthetic sources and the leak-free as-of join.

Real data a user brings::

    bars = load_bars("spy_1min.csv", stamped="start", bar_interval=timedelta(minutes=1))
    quotes = load_quotes("spy_chains.parquet")
    joined = asof_join(bars, quotes, max_staleness=timedelta(minutes=5))

Real data shipped with ``arch`` (:func:`load_sp500`, :func:`load_nasdaq`, :func:`load_vix`) with synthetic chains
priced on it (:func:`synth_chains`), and a synthetic intraday market with known regimes (:func:`synth_market`,
:func:`write_synth_market`). Timestamps are timezone-aware UTC; a bar's ``ts`` is its END time.
"""

from condorbrain.data.chains import ChainConfig, synth_chains
from condorbrain.data.embedded import load_nasdaq, load_sp500, load_vix
from condorbrain.data.io import load_bars, load_quotes, write_parquet
from condorbrain.data.join import asof_join, asof_join_reference
from condorbrain.data.schemas import (
    BAR_COLUMNS,
    CONTRACT_KEY,
    QUOTE_COLUMNS,
    SCHEMA_VERSION,
    TIMESTAMP_DTYPE,
    Column,
    canonical_schema,
)
from condorbrain.data.synthetic import (
    REGIMES,
    MarketConfig,
    SyntheticMarket,
    WrittenMarket,
    iter_synth_sessions,
    synth_market,
    write_synth_market,
)
from condorbrain.data.normalize import ClippedZScore
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
from condorbrain.data.splits import ChronologicalSplit, Fold, check_timestamps, chronological_split, purged_kfold, walk_forward
from condorbrain.data.validate import DataValidationError, Problem, ValidationReport, validate_bars, validate_quotes

__all__ = [
    # schemas
    "BAR_COLUMNS", "QUOTE_COLUMNS", "CONTRACT_KEY", "SCHEMA_VERSION", "TIMESTAMP_DTYPE", "Column", "canonical_schema",
    # loaders and writers
    "load_bars", "load_quotes", "write_parquet",
    # validation
    "validate_bars", "validate_quotes", "ValidationReport", "Problem", "DataValidationError",
    # embedded real data
    "load_sp500", "load_nasdaq", "load_vix",
    # synthetic sources
    "ChainConfig", "synth_chains", "MarketConfig", "SyntheticMarket", "WrittenMarket", "REGIMES", "synth_market",
    "iter_synth_sessions", "write_synth_market",
    # the as-of join
    "asof_join", "asof_join_reference",
    # normalisation, lazy sequences, splits
    "ClippedZScore", "LazySequenceDataset", "Batch", "RandomBatchSampler", "SequentialBatchSampler",
    "StratifiedBatchSampler", "AugmentConfig", "augment", "gaussian_noise", "magnitude_warp", "mixup", "feature_dropout",
    "ChronologicalSplit", "Fold", "check_timestamps", "chronological_split", "walk_forward", "purged_kfold",
]
