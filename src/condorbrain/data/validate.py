"""Data-quality checks for bars and quotes (seed 004's ``validate_data_quality``, extended).

Each check is a vectorised polars expression over the whole frame. A :class:`ValidationReport` lists every problem
with its count and the first offending rows (0-based positions in the frame as given, header excluded for files).
Validation never changes the data: nothing is dropped, filled or reordered. ``strict=True`` raises a
:class:`DataValidationError` naming the source (file), the column and the rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from condorbrain.data.schemas import CONTRACT_KEY, RIGHTS, Column, TableKind, columns_of, dtype_matches

__all__ = ["Problem", "ValidationReport", "DataValidationError", "validate_bars", "validate_quotes", "validate"]


@dataclass(frozen=True)
class Problem:
    """One kind of defect found in a frame."""

    check: str
    """Short name of the failed check, e.g. ``"high_below_low"``."""
    column: str | None
    """The column(s) involved (comma-separated), or None for whole-frame checks such as ``too_few_rows``."""
    count: int
    """Number of offending rows (0 for ``missing_column``; the row count for ``too_few_rows``)."""
    rows: tuple[int, ...]
    """The first offending rows, 0-based positions in the frame (at most ``max_rows_listed``)."""
    message: str
    """What is wrong, in words."""

    def describe(self) -> str:
        """One line: column, message, count and the first rows."""
        where = f"column {self.column!r}: " if self.column else ""
        rows = ""
        if self.rows:
            more = ", ..." if self.count > len(self.rows) else ""
            rows = f" (rows {', '.join(map(str, self.rows))}{more})"
        count = f", {self.count} row(s)" if self.rows else ""
        return f"{where}{self.message} [{self.check}{count}]{rows}"


@dataclass(frozen=True)
class ValidationReport:
    """Result of validating one frame."""

    source: str
    """Where the frame came from (a file path, or a name such as ``"bars"``)."""
    kind: TableKind
    """``"bars"`` or ``"quotes"``."""
    n_rows: int
    """Rows in the frame."""
    problems: tuple[Problem, ...]
    """Every problem found; empty when the frame is valid."""

    @property
    def ok(self) -> bool:
        """True when no problem was found."""
        return not self.problems

    def __str__(self) -> str:
        head = f"{self.source} ({self.kind}, {self.n_rows} rows): "
        if self.ok:
            return head + "no problems"
        lines = [head + f"{len(self.problems)} problem(s):"]
        lines += [f"  - {p.describe()}" for p in self.problems]
        return "\n".join(lines)

    def raise_if_problems(self) -> None:
        """Raise :class:`DataValidationError` if any problem was found."""
        if not self.ok:
            raise DataValidationError(self)


class DataValidationError(ValueError):
    """Bad input data; the message names the source, each column and the first offending rows."""

    def __init__(self, report: ValidationReport) -> None:
        super().__init__(str(report))
        self.report = report


@dataclass(frozen=True)
class _Check:
    check: str
    column: str
    mask: pl.Expr  # True on offending rows (null counts as not offending)
    message: str


def validate_bars(
    df: pl.DataFrame,
    *,
    source: str = "bars",
    strict: bool = False,
    min_rows: int = 2,
    max_rows_listed: int = 5,
) -> ValidationReport:
    """Check a bars frame against :data:`~condorbrain.data.schemas.BAR_COLUMNS`.

    Checks: missing columns; wrong types (including timestamps that are not timezone-aware UTC); nulls in required
    columns; NaN / inf; non-positive prices; negative volume; high < low; open or close outside [low, high];
    timestamps unsorted or duplicated within a symbol; fewer than ``min_rows`` rows; a symbol whose close never
    varies.

    Args:
        df: the frame, unchanged by this call.
        source: the file or name reported in messages.
        strict: raise :class:`DataValidationError` on any problem instead of returning the report.
        min_rows: fewest rows accepted.
        max_rows_listed: how many offending rows each problem lists.
    """
    return validate(df, "bars", source=source, strict=strict, min_rows=min_rows, max_rows_listed=max_rows_listed)


def validate_quotes(
    df: pl.DataFrame,
    *,
    source: str = "quotes",
    strict: bool = False,
    min_rows: int = 2,
    max_rows_listed: int = 5,
) -> ValidationReport:
    """Check an option-quotes frame against :data:`~condorbrain.data.schemas.QUOTE_COLUMNS`.

    Checks: missing columns; wrong types; nulls in required columns; NaN / inf in any float column; non-positive
    strike or ask, negative bid; bid > ask; right not 'C' / 'P'; expiry before ts; timestamps unsorted or duplicated
    within a contract (rows of different contracts may share a ts and interleave); fewer than ``min_rows`` rows;
    bid and ask that never vary. Arguments as in :func:`validate_bars`.
    """
    return validate(df, "quotes", source=source, strict=strict, min_rows=min_rows, max_rows_listed=max_rows_listed)


def validate(
    df: pl.DataFrame,
    kind: TableKind,
    *,
    source: str | None = None,
    strict: bool = False,
    min_rows: int = 2,
    max_rows_listed: int = 5,
) -> ValidationReport:
    """Validate ``df`` as ``kind`` ("bars" or "quotes"); see :func:`validate_bars` and :func:`validate_quotes`."""
    if not isinstance(df, pl.DataFrame):
        raise TypeError(f"expected a polars DataFrame, got {type(df).__name__}")
    schema = columns_of(kind)
    source = source or kind
    problems: list[Problem] = []
    n = df.height
    if n < min_rows:
        problems.append(Problem("too_few_rows", None, n, (), f"{n} rows, at least {min_rows} required"))

    usable: set[str] = set()  # present, of the right type: value checks may run on them
    for col in schema:
        if col.name not in df.columns:
            if col.required:
                problems.append(Problem("missing_column", col.name, 0, (),
                                        f"required column is missing ({col.description})"))
            continue
        if dtype_matches(col.kind, df.schema[col.name]):
            usable.add(col.name)
        else:
            problems.append(_wrong_type(df, col, max_rows_listed))

    checks = _value_checks(kind, schema, usable, df)
    if checks and n:
        problems += _run_checks(df, checks, max_rows_listed)
    if n:
        problems += _no_variance(df, kind, usable, max_rows_listed)

    report = ValidationReport(source=source, kind=kind, n_rows=n, problems=tuple(problems))
    if strict:
        report.raise_if_problems()
    return report


def _wrong_type(df: pl.DataFrame, col: Column, k: int) -> Problem:
    dtype = df.schema[col.name]
    s = df.get_column(col.name)
    if col.kind == "timestamp" and isinstance(dtype, pl.Datetime):
        zone = "no time zone" if dtype.time_zone is None else f"time zone {dtype.time_zone!r}"
        msg = (f"timestamps have {zone}; they must be timezone-aware UTC (loaders: pass assume_tz=... for naive "
               f"times, or convert with .dt.convert_time_zone('UTC'))")
        bad = s.is_not_null()
    elif col.kind == "float" and dtype == pl.String:
        bad = s.is_not_null() & s.str.strip_chars().cast(pl.Float64, strict=False).is_null()
        msg = f"values are text, expected numbers ({col.description})"
    elif col.kind == "timestamp" and dtype == pl.String:
        bad = s.is_not_null() & s.str.to_datetime(time_unit="us", strict=False).is_null()
        msg = "values are text, expected timezone-aware UTC datetimes"
    else:
        bad = s.is_not_null()
        msg = f"dtype {dtype} does not hold {col.kind} values ({col.description})"
    count = int(bad.sum())
    if count == 0:  # e.g. numbers stored as text that all parse: still the wrong type, every row is affected
        bad = pl.Series([True] * df.height)
        count = df.height
    rows = tuple(int(i) for i in bad.arg_true().head(k))
    return Problem("wrong_type", col.name, count, rows, msg)


def _value_checks(kind: TableKind, schema: tuple[Column, ...], ok: set[str], df: pl.DataFrame) -> list[_Check]:
    c = pl.col
    checks: list[_Check] = []
    for col in schema:
        if col.name not in ok:
            continue
        if col.required:
            checks.append(_Check("null", col.name, c(col.name).is_null(), "missing (null) values"))
        if col.kind == "float" and df.schema[col.name].is_float():
            checks.append(_Check("nan", col.name, c(col.name).is_nan(), "NaN values (use null for missing)"))
            checks.append(_Check("inf", col.name, c(col.name).is_infinite(), "infinite values"))

    def have(*names: str) -> bool:
        return all(x in ok for x in names)

    if kind == "bars":
        for p in ("open", "high", "low", "close"):
            if have(p):
                checks.append(_Check("non_positive", p, c(p) <= 0, "prices <= 0"))
        if have("volume"):
            checks.append(_Check("negative", "volume", c("volume") < 0, "negative volume"))
        if have("high", "low"):
            checks.append(_Check("high_below_low", "high,low", c("high") < c("low"), "high < low"))
        for p in ("open", "close"):
            if have(p, "high", "low"):
                checks.append(_Check("outside_range", f"{p},high,low", (c(p) > c("high")) | (c(p) < c("low")),
                                     f"{p} outside [low, high]"))
        if have("ts", "symbol"):
            step = c("ts").diff().over("symbol")
            checks.append(_Check("unsorted", "ts", step < pl.duration(), "timestamps go backwards within a symbol"))
            checks.append(_Check("duplicate", "ts", step == pl.duration(), "duplicate timestamps within a symbol"))
    else:
        if have("strike"):
            checks.append(_Check("non_positive", "strike", c("strike") <= 0, "strike <= 0"))
        if have("ask"):
            checks.append(_Check("non_positive", "ask", c("ask") <= 0, "ask <= 0"))
        if have("bid"):
            checks.append(_Check("negative", "bid", c("bid") < 0, "bid < 0"))
        if have("bid", "ask"):
            checks.append(_Check("bid_above_ask", "bid,ask", c("bid") > c("ask"), "bid > ask"))
        if have("right"):
            checks.append(_Check("bad_right", "right", ~c("right").is_in(list(RIGHTS)),
                                 f"right not one of {', '.join(RIGHTS)}"))
        if have("ts", "expiry"):
            checks.append(_Check("expiry_before_ts", "expiry,ts", c("expiry") < c("ts"), "expiry before the quote ts"))
        if have("ts", *CONTRACT_KEY):
            step = c("ts").diff().over(CONTRACT_KEY)
            checks.append(_Check("unsorted", "ts", step < pl.duration(), "timestamps go backwards within a contract"))
            checks.append(_Check("duplicate", "ts", step == pl.duration(), "duplicate timestamps within a contract"))
    return checks


def _run_checks(df: pl.DataFrame, checks: list[_Check], k: int) -> list[Problem]:
    # One pass for all counts, then one pass per failing check for its first rows.
    counts = df.select([ch.mask.fill_null(False).sum().alias(str(i)) for i, ch in enumerate(checks)]).row(0)
    out = []
    for ch, count in zip(checks, counts, strict=True):
        if count:
            rows = df.select(pl.arg_where(ch.mask.fill_null(False)).head(k)).to_series()
            out.append(Problem(ch.check, ch.column, int(count), tuple(int(r) for r in rows), ch.message))
    return out


def _no_variance(df: pl.DataFrame, kind: TableKind, ok: set[str], k: int) -> list[Problem]:
    if kind == "bars":
        if not {"close", "symbol"} <= ok:
            return []
        flat = (
            df.select("symbol", "close").with_row_index("_row")
            .group_by("symbol", maintain_order=True)
            .agg(pl.col("close").n_unique().alias("_nu"), pl.len().alias("_n"), pl.col("_row").head(k))
            .filter((pl.col("_nu") <= 1) & (pl.col("_n") >= 2))
        )
        return [Problem("no_variance", "close", int(r["_n"]), tuple(r["_row"]),
                        f"close never varies for symbol {r['symbol']!r}") for r in flat.iter_rows(named=True)]
    if not {"bid", "ask"} <= ok or df.height < 2:
        return []
    nu = df.select(pl.col("bid").n_unique(), pl.col("ask").n_unique()).row(0)
    if max(nu) <= 1:
        return [Problem("no_variance", "bid,ask", df.height, tuple(range(min(k, df.height))),
                        "bid and ask never vary")]
    return []
