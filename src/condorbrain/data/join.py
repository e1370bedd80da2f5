"""The leak-free as-of join of bars with option quotes (seed 001 §2.3), and its slow reference twin.

For every bar and every contract listed at that bar, attach the latest quote of that contract whose ts is <= the
bar's end time; a later quote is never used. A quote older than ``max_staleness`` counts as missing (null), it is
not carried forward. Built on polars ``join_asof`` (strategy "backward", by contract); no Python loops.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import numpy as np
import polars as pl

from condorbrain.data.schemas import CONTRACT_KEY, is_utc_datetime

__all__ = ["asof_join", "asof_join_reference"]

_UNITS = ("ms", "us", "ns")


def asof_join(bars: pl.DataFrame, quotes: pl.DataFrame, max_staleness: dt.timedelta) -> pl.DataFrame:
    """Attach to each (bar, contract) pair the latest quote with ``quote.ts <= bar.ts`` no older than max_staleness.

    Which contracts a bar gets: those of its symbol (``quotes.underlying == bars.symbol``) that are *listed* at the
    bar, i.e. quoted at least once at or before the bar's end time and not yet expired (``expiry >= bar.ts``).
    Both conditions use nothing after the bar, so the row set is as free of look-ahead as the values. A bar with no
    listed contract (no quote of its symbol yet, or all expired) has no row in the result.

    Rules:
        * a quote exactly at the bar's end (``quote.ts == bar.ts``) is used; a quote after it never is;
        * several quotes of one contract with the same ts: the last one in the input order wins;
        * the latest quote older than ``max_staleness`` (``bar.ts - quote.ts > max_staleness``) counts as
          missing: the row is kept, with null in every quote column and in ``quote_ts``.

    Args:
        bars: the bars schema (at least ``ts`` and ``symbol``, ts = bar END time, tz-aware UTC; no duplicate ts
            within a symbol). Any other columns are carried along.
        quotes: the quotes schema (at least ``ts`` and the contract key underlying, expiry, strike, right). Need not
            be sorted.
        max_staleness: the oldest quote still used, as a ``datetime.timedelta`` >= 0 (inclusive).

    Returns:
        One row per (bar, listed contract), ordered by (symbol, ts) of the bar then (expiry, strike, right): every
        bar column; the contract columns ``expiry``, ``strike``, ``right`` (``underlying`` is dropped, it equals
        ``symbol``); every other quote column (renamed ``quote_<name>`` where the name is also a bar column, e.g.
        ``quote_volume``); and ``quote_ts``, the ts of the quote used (null where missing).
    """
    _check(bars, quotes, max_staleness)
    unit = max((bars.schema["ts"].time_unit, quotes.schema["ts"].time_unit, quotes.schema["expiry"].time_unit),
               key=_UNITS.index)  # compare at the finest unit: widening is exact, truncation could leak
    t = pl.Datetime(unit, "UTC")

    bars = bars.sort("symbol", "ts", maintain_order=True)
    _check_unique(bars)
    bar_key = bars.select(pl.col("ts").cast(t).alias("_t"), "symbol").with_row_index("_bar")

    # One pass over the quotes: each contract's first quote time and its rows (to number every quote's contract).
    q = quotes.with_row_index("_q").with_columns(pl.col("ts").cast(t).alias("_t"))
    contracts = (
        q.group_by(CONTRACT_KEY).agg(pl.col("_t").min().alias("_first"), pl.col("_q"))
        .with_columns(pl.col("expiry").cast(t).alias("_exp"))
        .sort(CONTRACT_KEY).with_row_index("_cid")
    )
    members = contracts.select("_cid", "_q").explode("_q")
    quote_cid = np.empty(q.height, dtype=np.uint32)
    quote_cid[members.get_column("_q").to_numpy()] = members.get_column("_cid").to_numpy()
    contracts = contracts.drop("_q")

    # Listed range of each contract, as positions in `bars`: from the first bar ending at or after its first quote
    # to the last bar ending at or before its expiry.
    by = {"by_left": "underlying", "by_right": "symbol", "check_sortedness": False}
    bar_by_t = bar_key.sort("_t")
    contracts = (
        contracts.sort("_first")
        .join_asof(bar_by_t.rename({"_bar": "_lo"}), left_on="_first", right_on="_t", strategy="forward", **by)
        .sort("_exp")
        .join_asof(bar_by_t.rename({"_bar": "_hi"}), left_on="_exp", right_on="_t", strategy="backward", **by)
        .sort("_cid")
    )
    n_contracts = contracts.height
    grid = (
        contracts.filter(pl.col("_lo") <= pl.col("_hi"))  # null (no such bar) compares as null: dropped
        .select("_cid", pl.int_ranges("_lo", pl.col("_hi") + 1, dtype=pl.Int64).alias("_bar"))
        .explode("_bar")
        .sort(pl.col("_bar") * n_contracts + pl.col("_cid"))  # bar-major; within a contract ts still ascends
    )
    grid = grid.with_columns(bar_key.get_column("_t").gather(grid.get_column("_bar")).alias("_t"))

    payload = [c for c in quotes.columns if c not in (*CONTRACT_KEY, "ts")]
    rename = {c: f"quote_{c}" for c in payload if c in bars.columns}
    # join_asof needs each contract's quotes in time order; a stable sort on ts keeps the input order among equal
    # ts, so the join's pick among ties (the last) is the latest row of the input.
    right = (
        q.select(pl.Series("_cid", quote_cid), "_t", *payload, pl.col("ts").alias("quote_ts"))
        .sort("_t", maintain_order=True)
    )
    joined = grid.join_asof(right, on="_t", by="_cid", strategy="backward", tolerance=max_staleness,
                            check_sortedness=False)

    bar_idx = joined.get_column("_bar")
    cid_idx = joined.get_column("_cid")
    out = bars.select(pl.all().gather(bar_idx))
    contract_cols = contracts.select(pl.col("expiry", "strike", "right").gather(cid_idx))
    quote_cols = joined.select(*payload, "quote_ts").rename(rename)
    return pl.concat([out, contract_cols, quote_cols], how="horizontal")


def _check(bars: pl.DataFrame, quotes: pl.DataFrame, max_staleness: dt.timedelta) -> None:
    if not isinstance(bars, pl.DataFrame) or not isinstance(quotes, pl.DataFrame):
        raise TypeError("asof_join expects polars DataFrames for bars and quotes")
    if not isinstance(max_staleness, dt.timedelta) or max_staleness < dt.timedelta(0):
        raise ValueError(f"max_staleness must be a datetime.timedelta >= 0, got {max_staleness!r}")
    for name, df, cols in (("bars", bars, ("ts", "symbol")), ("quotes", quotes, ("ts", *CONTRACT_KEY))):
        missing = [c for c in cols if c not in df.columns]
        if missing:
            raise ValueError(f"{name}: missing column(s) {', '.join(missing)}")
        for c in ("ts", "expiry"):
            if c in cols and not is_utc_datetime(df.schema[c]):
                raise ValueError(f"{name}: column {c!r} must be a timezone-aware UTC datetime, got {df.schema[c]}")
        nulls = {c: n for c, n in zip(cols, df.select(pl.col(c).null_count() for c in cols).row(0)) if n}
        for c, n in nulls.items():
            rows = df.select(pl.arg_where(pl.col(c).is_null()).head(5)).to_series().to_list()
            raise ValueError(f"{name}: column {c!r} has {n} null value(s) (rows {rows}); the join needs every key")


def _check_unique(sorted_bars: pl.DataFrame) -> None:
    dup = sorted_bars.select(pl.arg_where((pl.col("ts").diff() == pl.duration()).over("symbol")).head(5)).to_series()
    if dup.len():
        where = sorted_bars[dup.to_list()].select("symbol", "ts").rows()
        raise ValueError(f"bars: column 'ts' has duplicate timestamps within a symbol, e.g. {where}")


def asof_join_reference(bars: pl.DataFrame, quotes: pl.DataFrame, max_staleness: dt.timedelta) -> pl.DataFrame:
    """The slow, obviously-correct twin of :func:`asof_join`: plain Python loops over rows, the same rules.

    For tests on small inputs only (cost ~ bars x contracts x quotes). Timestamps must be microseconds or coarser.
    """
    _check(bars, quotes, max_staleness)
    bar_rows = [r for _, r in sorted(enumerate(bars.iter_rows(named=True)),
                                     key=lambda ir: (ir[1]["symbol"], ir[1]["ts"], ir[0]))]
    quote_rows = quotes.iter_rows(named=True)
    by_contract: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for qr in quote_rows:  # input order kept within each contract
        by_contract.setdefault(tuple(qr[c] for c in CONTRACT_KEY), []).append(qr)
    payload = [c for c in quotes.columns if c not in (*CONTRACT_KEY, "ts")]
    rename = {c: (f"quote_{c}" if c in bars.columns else c) for c in payload}

    out = []
    for b in bar_rows:
        for key in sorted(k for k in by_contract if k[0] == b["symbol"]):
            rows = by_contract[key]
            first = min(r["ts"] for r in rows)
            if not first <= b["ts"] <= key[1]:  # not yet listed, or expired
                continue
            best = None
            for r in rows:
                if r["ts"] <= b["ts"] and (best is None or r["ts"] >= best["ts"]):  # >=: later row wins a tie
                    best = r
            if best is not None and b["ts"] - best["ts"] > max_staleness:
                best = None
            row = dict(b)
            row.update(expiry=key[1], strike=key[2], right=key[3])
            row.update({rename[c]: (best[c] if best else None) for c in payload})
            row["quote_ts"] = best["ts"] if best else None
            out.append(row)
    schema = dict(bars.schema)
    schema.update({c: quotes.schema[c] for c in ("expiry", "strike", "right")})
    schema.update({rename[c]: quotes.schema[c] for c in payload})
    schema["quote_ts"] = quotes.schema["ts"]
    return pl.DataFrame(out, schema=schema, orient="row")
