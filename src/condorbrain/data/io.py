"""Read bars and quotes from CSV or Parquet, write Parquet. Timestamps come out timezone-aware UTC.

Loaders change representation only, never values: text is parsed, integer prices become Float64, timestamps with
an offset or another zone are converted to the same instant in UTC, ms / s units are widened to us. A column that
does not parse is left as it is so that validation reports it with its rows. By default the loaded frame is
validated strictly, so bad input raises :class:`~condorbrain.data.validate.DataValidationError` naming the file,
the column and the rows.
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path
from typing import Literal

import polars as pl
import pyarrow.parquet as pq

from condorbrain.data.schemas import SCHEMA_VERSION, TableKind, columns_of
from condorbrain.data.validate import validate

__all__ = ["load_bars", "load_quotes", "write_parquet", "read_table"]

PathLike = str | os.PathLike[str]
_BOOL_TEXT = {"true": True, "false": False, "1": True, "0": False, "t": True, "f": False}


def load_bars(
    path: PathLike,
    *,
    stamped: Literal["end", "start"] = "end",
    bar_interval: dt.timedelta | None = None,
    assume_tz: str | None = None,
    validate: bool = True,
) -> pl.DataFrame:
    """Load spot bars from a CSV file, a Parquet file or a directory of Parquet parts (read in name order).

    Args:
        path: the file or directory.
        stamped: ``"end"`` if each row's ``ts`` is the bar's end time (the schema's convention); ``"start"`` if it
            is the start time, in which case ``bar_interval`` is added to every ts.
        bar_interval: length of one bar; required with ``stamped="start"``.
        assume_tz: IANA zone (e.g. ``"America/New_York"``) of timestamps that carry no zone; without it such
            timestamps are an error. Timestamps with an offset or zone are converted to UTC either way.
        validate: run :func:`~condorbrain.data.validate_bars` in strict mode (raises on any problem).

    Returns:
        The rows in file order, columns as in the file with ``ts`` as Datetime(UTC) and prices as Float64.
    """
    if stamped not in ("end", "start"):
        raise ValueError(f"stamped must be 'end' or 'start', got {stamped!r}")
    if stamped == "start":
        if not isinstance(bar_interval, dt.timedelta) or bar_interval <= dt.timedelta(0):
            raise ValueError("stamped='start' needs bar_interval, a positive datetime.timedelta (e.g. 1 minute)")
    elif bar_interval is not None:
        raise ValueError("bar_interval is only used with stamped='start'")
    df = read_table(path, "bars", assume_tz=assume_tz)
    if stamped == "start" and "ts" in df.columns and df.schema["ts"] != pl.String:
        df = df.with_columns(pl.col("ts") + bar_interval)
    if validate:
        _validate(df, "bars", path)
    return df


def load_quotes(path: PathLike, *, assume_tz: str | None = None, validate: bool = True) -> pl.DataFrame:
    """Load option quotes from a CSV file, a Parquet file or a directory of Parquet parts.

    ``ts`` and ``expiry`` come out as Datetime(UTC); see :func:`load_bars` for ``assume_tz`` and ``validate``
    (here :func:`~condorbrain.data.validate_quotes`). Rows stay in file order.
    """
    df = read_table(path, "quotes", assume_tz=assume_tz)
    if validate:
        _validate(df, "quotes", path)
    return df


def read_table(path: PathLike, kind: TableKind, *, assume_tz: str | None = None) -> pl.DataFrame:
    """Read ``path`` and normalise the schema columns of ``kind`` (no validation); used by the loaders."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or directory")
    if path.is_dir():
        parts = sorted(p for p in path.iterdir() if p.suffix == ".parquet")
        if not parts:
            raise ValueError(f"{path}: directory holds no .parquet files")
        df = pl.read_parquet(parts)
    elif path.suffix in (".parquet", ".pq"):
        df = pl.read_parquet(path)
    elif path.name.endswith((".csv", ".csv.gz")):
        df = pl.read_csv(path, infer_schema=False)  # all text; parsed below so bad cells are reported, not guessed
    else:
        raise ValueError(f"{path}: unsupported file type; expected .csv, .csv.gz, .parquet or a directory of parts")
    return _normalise(df, kind, assume_tz)


def _normalise(df: pl.DataFrame, kind: TableKind, assume_tz: str | None) -> pl.DataFrame:
    exprs = []
    for col in columns_of(kind):
        if col.name not in df.columns:
            continue
        dtype = df.schema[col.name]
        c = pl.col(col.name)
        if col.kind == "timestamp":
            exprs.append(_to_utc(df.get_column(col.name), assume_tz).alias(col.name))
        elif col.kind == "float":
            if dtype == pl.String:
                parsed = c.str.strip_chars().cast(pl.Float64, strict=False)
                ok = df.select((c.is_null() | c.str.strip_chars().eq("") | parsed.is_not_null()).all()).item()
                if ok:  # an empty cell is a missing value
                    exprs.append(parsed)
            elif dtype.is_numeric():
                exprs.append(c.cast(pl.Float64))
        elif col.kind == "bool" and dtype == pl.String:
            parsed = c.str.strip_chars().str.to_lowercase().replace_strict(_BOOL_TEXT, default=None,
                                                                            return_dtype=pl.Boolean)
            if df.select((c.is_null() | parsed.is_not_null()).all()).item():
                exprs.append(parsed)
        elif col.kind == "string" and dtype == pl.String:
            exprs.append(c.str.strip_chars())
    return df.with_columns(exprs) if exprs else df


def _to_utc(s: pl.Series, assume_tz: str | None) -> pl.Expr:
    """Expression giving ``s`` as a UTC datetime (same instants), or ``s`` unchanged if it cannot be parsed."""
    if s.dtype == pl.String:
        parsed = s.str.strip_chars().str.to_datetime(time_unit="us", strict=False)
        if int((s.is_not_null() & parsed.is_null()).sum()):
            return pl.lit(s)  # leave the text; validation names the rows that do not parse
        s = parsed
    if s.dtype == pl.Date:
        return pl.lit(s)  # a date is not an instant: reported as the wrong type
    if not isinstance(s.dtype, pl.Datetime):
        return pl.lit(s)
    if s.dtype.time_unit == "ms":
        s = s.dt.cast_time_unit("us")
    if s.dtype.time_zone is None:
        if assume_tz is None:
            return pl.lit(s)  # reported by validation: naive timestamps need assume_tz
        s = s.dt.replace_time_zone(assume_tz, ambiguous="raise", non_existent="raise")
    return pl.lit(s.dt.convert_time_zone("UTC"))


def _validate(df: pl.DataFrame, kind: TableKind, path: PathLike) -> None:
    validate(df, kind, source=str(path), strict=True)


def write_parquet(df: pl.DataFrame, path: PathLike, *, kind: TableKind, validate: bool = True) -> Path:
    """Write ``df`` to one Parquet file (zstd), after strict validation as ``kind`` ("bars" or "quotes").

    The file is written to a temporary name and renamed into place, so a reader never sees half a file, and it
    records ``condorbrain.kind`` and ``condorbrain.schema_version`` in its key-value metadata. Parent directories
    are created. Returns the path written.
    """
    path = Path(path)
    if path.suffix not in (".parquet", ".pq"):
        raise ValueError(f"{path}: write_parquet writes .parquet files")
    if validate:
        _validate(df, kind, path)
    path.parent.mkdir(parents=True, exist_ok=True)
    table = df.to_arrow()
    meta = dict(table.schema.metadata or {})
    meta.update({b"condorbrain.kind": kind.encode(), b"condorbrain.schema_version": str(SCHEMA_VERSION).encode()})
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(table.replace_schema_metadata(meta), tmp, compression="zstd")
    os.replace(tmp, path)
    return path
