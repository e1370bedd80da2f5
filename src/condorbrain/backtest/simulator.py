"""Iron condor backtester over a history of option chains (issue 5, section 1).

:func:`backtest` walks the bars in time order. At each bar ``t`` it reads only the chain rows stamped exactly ``t``
(a dict of per-timestamp slices, built once; no later row is reachable from bar ``t``), then

1. manages the positions opened at earlier bars, in this order of precedence:

   * ``expiry``: ``t >= expiry``: settled at intrinsic value with the close of the first bar at or after the
     expiry (cash settlement, no commission; quotes are not needed);
   * ``stop``: closing debit - credit >= ``stop_loss * credit`` (the loss reaches k x the credit);
   * ``take_profit``: credit - closing debit >= ``take_profit * credit`` (max profit is the credit);
   * ``dte``: calendar days to expiry <= ``close_dte``;

   the closing debit is the price of the closing order at this bar's quotes (buy the shorts back at the ask, sell
   the longs at the bid, plus slippage; :mod:`~condorbrain.backtest.fills`), paid with the closing commission. A
   position whose four legs are not all quoted at ``t`` is not closed at ``t`` (only settled at expiry) and keeps
   its last mark;
2. opens new condors (at most ``max_open`` open at once, decisions in row order) from the policy's decisions at
   ``t`` or from the rule, on the expiry nearest ``target_dte`` among those with more than ``close_dte`` days left.
   Strikes are snapped to the strikes quoted at ``t`` for that expiry and right (:func:`~.condor.snap_strike`),
   long legs strictly outside the shorts. Sizing: ``contracts = floor(risk_budget / (max loss per share x
   multiplier))``. A decision that cannot be opened is recorded in ``BacktestResult.skipped`` with its reason,
   never dropped silently;
3. marks the equity: initial capital + realised P&L + for each open position ``(credit - mid debit) x multiplier x
   contracts - entry fees`` (mid of each leg's bid and ask; the last mark when a leg is not quoted).

A quote with a non-finite bid or ask, a negative bid or ask < bid is never used: a leg quoted that way counts as
not quoted at that bar (it is not snapped to, and cannot close a position).

Positions still open after the last bar are closed there at their last closing debit (reason ``end_of_data``).

Decisions, either
- a frame with ``ts`` and ``k_lower``, ``k_upper``, ``wing`` (fractions of the bar's close: short put at
  ``k_lower * S``, short call at ``k_upper * S``, wings ``wing * S`` wide; the policy's
  :func:`~condorbrain.main_job.condor_strikes`), or ``ts`` and ``put_strike``, ``call_strike``, ``width``
  (absolute, price units). Every decision ts must be a bar ts with chain rows, else :class:`MissingQuotesError`;
- or a :class:`RuleCondor`: a decision at every bar. Shorts at the strikes whose Black-Scholes delta (the row's
  ``iv``, T = calendar days / 365, the config's rate and dividend yield, spot = the bar's close) is nearest
  -``target_delta`` (put) and +``target_delta`` (call); wings ``wing * S`` wide. Bars without chain rows open
  nothing (recorded in ``skipped``).

Units: strikes, quotes, credit and debit per share (price units); fees, P&L, max loss and equity in currency
(x multiplier x contracts).
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from condorbrain.backtest.condor import (
    IronCondor,
    NoListedStrikeError,
    choose_expiry,
    condor_max_loss,
    epoch_us,
    settlement_value,
    snap_strike,
)
from condorbrain.backtest.fills import CLOSE_SIDES, FillConfig, close_fill, open_fill, order_fees
from condorbrain.features.options import black_scholes

__all__ = [
    "EXIT_REASONS",
    "BacktestConfig",
    "BacktestInputError",
    "BacktestResult",
    "MissingQuotesError",
    "RuleCondor",
    "backtest",
    "write_trade_log",
]

EXIT_REASONS = ("expiry", "stop", "take_profit", "dte", "end_of_data")
"""Exit reasons, in the order of precedence of the management rules."""

CHAIN_COLUMNS = ("ts", "expiry", "strike", "right", "bid", "ask")
BAR_COLUMNS = ("ts", "close")
_DAY_US = 86_400 * 1_000_000
_LEGS = ("put_long", "put_short", "call_short", "call_long")
_LEG_IS_CALL = (False, False, True, True)


class BacktestInputError(ValueError):
    """Malformed input: a missing column, duplicated or unordered rows, a bad value."""


class MissingQuotesError(BacktestInputError):
    """A policy decision at a time with no bar or no chain rows."""


@dataclass(frozen=True)
class RuleCondor:
    """The rule-based condor: delta-targeted shorts, fixed wings (a baseline strategy)."""

    target_delta: float = 0.16
    """|delta| of the short put and short call (0.16 ~ one standard deviation out)."""
    wing: float = 0.02
    """Wing width as a fraction of the close at entry, snapped to listed strikes."""

    def __post_init__(self) -> None:
        if not 0.0 < self.target_delta < 0.5:
            raise ValueError(f"target_delta must be in (0, 0.5), got {self.target_delta}")
        if not self.wing > 0:
            raise ValueError(f"wing must be > 0, got {self.wing}")


@dataclass(frozen=True)
class BacktestConfig:
    """Entry, management, sizing and costs of the backtest."""

    target_dte: float = 45.0
    """Entry on the expiry whose calendar days to expiry are nearest this."""
    take_profit: float | None = 0.5
    """Close once the profit reaches this fraction of the credit (max profit); None: never."""
    close_dte: float | None = 21.0
    """Close once calendar days to expiry <= this; None: never. Entries need more days left than this."""
    stop_loss: float | None = 2.0
    """Close once the loss reaches this multiple of the credit; None: never."""
    max_open: int = 1
    """Most positions open at once."""
    risk_budget: float = 10_000.0
    """Max loss allowed per position, currency units; contracts = floor(risk_budget / max loss per contract)."""
    initial_capital: float = 100_000.0
    """Equity before the first bar, currency units."""
    fills: FillConfig = field(default_factory=FillConfig)
    """Slippage, commission and contract multiplier."""
    rate: float = 0.02
    """Risk-free rate (annual, continuous) for the rule's Black-Scholes deltas."""
    div_yield: float = 0.018
    """Dividend yield (annual, continuous) for the rule's Black-Scholes deltas."""

    def __post_init__(self) -> None:
        if not (math.isfinite(self.target_dte) and self.target_dte > 0):
            raise ValueError(f"target_dte must be > 0, got {self.target_dte}")
        if self.take_profit is not None and not 0.0 < self.take_profit <= 1.0:
            raise ValueError(f"take_profit must be in (0, 1] or None, got {self.take_profit}")
        if self.close_dte is not None and not (math.isfinite(self.close_dte) and self.close_dte >= 0):
            raise ValueError(f"close_dte must be >= 0 or None, got {self.close_dte}")
        if self.stop_loss is not None and not (math.isfinite(self.stop_loss) and self.stop_loss > 0):
            raise ValueError(f"stop_loss must be > 0 or None, got {self.stop_loss}")
        if self.max_open < 1:
            raise ValueError(f"max_open must be >= 1, got {self.max_open}")
        if not (math.isfinite(self.risk_budget) and self.risk_budget > 0):
            raise ValueError(f"risk_budget must be > 0, got {self.risk_budget}")
        if not math.isfinite(self.initial_capital):
            raise ValueError(f"initial_capital must be finite, got {self.initial_capital}")


TRADE_SCHEMA: dict[str, pl.DataType] = {
    "entry_ts": pl.Datetime("us", "UTC"), "exit_ts": pl.Datetime("us", "UTC"), "expiry": pl.Datetime("us", "UTC"),
    **{f"{leg}_strike": pl.Float64() for leg in _LEGS},
    **{f"{leg}_entry": pl.Float64() for leg in _LEGS},
    **{f"{leg}_exit": pl.Float64() for leg in _LEGS},
    "entry_spot": pl.Float64(), "exit_spot": pl.Float64(),
    "credit": pl.Float64(), "debit": pl.Float64(), "fees": pl.Float64(), "pnl": pl.Float64(),
    "max_loss": pl.Float64(), "contracts": pl.Int64(), "days_held": pl.Float64(), "exit_reason": pl.String(),
}
"""Trade log columns. ``*_strike``, ``*_entry``, ``*_exit`` (leg fill prices), ``credit``, ``debit`` are per share;
``fees`` (both orders), ``pnl`` ((credit - debit) x multiplier x contracts - fees) and ``max_loss`` ((width -
credit) x multiplier x contracts) are currency; ``days_held`` calendar days."""

EQUITY_SCHEMA: dict[str, pl.DataType] = {
    "ts": pl.Datetime("us", "UTC"), "equity": pl.Float64(), "realized": pl.Float64(), "unrealized": pl.Float64(),
    "open_positions": pl.Int64(),
}
SKIPPED_SCHEMA: dict[str, pl.DataType] = {"ts": pl.Datetime("us", "UTC"), "reason": pl.String()}


@dataclass(frozen=True)
class BacktestResult:
    """What a backtest produced."""

    trades: pl.DataFrame
    """One row per closed position, in exit order (:data:`TRADE_SCHEMA`)."""
    equity: pl.DataFrame
    """One row per bar: ``ts``, ``equity`` (marked to mid), ``realized``, ``unrealized``, ``open_positions``."""
    skipped: pl.DataFrame
    """Decisions not opened: ``ts`` and ``reason`` (ruined, capacity, no_expiry, no_strike, crossed_strikes,
    no_credit, no_risk, budget, no_chain). ``ruined``: the equity was <= 0, and a ruined account opens nothing more
    (its open positions are still managed to their exits)."""
    config: BacktestConfig


@dataclass
class _Position:
    condor: IronCondor
    exp_us: int
    entry_ts: dt.datetime
    entry_spot: float
    entry_px: np.ndarray
    credit: float
    contracts: int
    entry_fees: float
    close_px: np.ndarray  # last closing fill prices seen (per leg)
    close_debit: float  # last closing debit seen (per share)
    mid_debit: float  # last mid mark (per share)


class _Slice:
    """The chain rows of one timestamp as numpy arrays, with a leg lookup."""

    def __init__(self, frame: pl.DataFrame) -> None:
        self.exp = frame.get_column("_exp_us").to_numpy()
        self.strike = frame.get_column("strike").to_numpy()
        self.is_call = frame.get_column("_is_call").to_numpy()
        self.bid = frame.get_column("bid").to_numpy()
        self.ask = frame.get_column("ask").to_numpy()
        self.iv = frame.get_column("iv").to_numpy() if "iv" in frame.columns else None
        self._index: dict[tuple[int, float, bool], int] | None = None

    def legs(self, exp_us: int, strikes: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray] | None:
        """(bid, ask) of the four legs, or None when one is not quoted."""
        if self._index is None:
            self._index = {(int(e), float(k), bool(c)): i
                           for i, (e, k, c) in enumerate(zip(self.exp, self.strike, self.is_call))}
        rows = [self._index.get((exp_us, float(k), c)) for k, c in zip(strikes, _LEG_IS_CALL)]
        if any(r is None for r in rows):
            return None
        idx = np.array(rows)
        return self.bid[idx], self.ask[idx]


def backtest(chain: pl.DataFrame, bars: pl.DataFrame, decisions: pl.DataFrame | RuleCondor,
             config: BacktestConfig | None = None) -> BacktestResult:
    """Simulate iron condors opened by ``decisions`` on ``chain``, managed and marked at every bar of ``bars``.

    Args:
        chain: option quotes of one underlying: ``ts``, ``expiry`` (UTC datetimes), ``strike``, ``right`` ("C" /
            "P"), ``bid``, ``ask`` (per share), and ``iv`` (annualised) for the rule. Only rows whose ts is a bar's
            ts are ever read.
        bars: ``ts`` (UTC, strictly increasing) and ``close`` of the underlying (the spot for sizing strikes and
            for settlement).
        decisions: the policy's frame or a :class:`RuleCondor` (module docstring).
        config: entry, management and costs; defaults to ``BacktestConfig()``.

    Returns:
        :class:`BacktestResult`.

    Raises:
        BacktestInputError: missing columns, non-UTC times, unordered bars, duplicated quotes, rights other
            than C / P, bad decision values.
        MissingQuotesError: a decision at a ts with no bar or no chain rows.
    """
    cfg = config or BacktestConfig()
    fc = cfg.fills
    bars_ts, close = _check_bars(bars)
    slices = _slices(chain, need_iv=isinstance(decisions, RuleCondor))
    by_ts = None if isinstance(decisions, RuleCondor) else _decisions_by_ts(decisions, set(bars_ts), slices)

    open_: list[_Position] = []
    trades: list[dict[str, object]] = []
    skipped: list[tuple[int, str]] = []
    equity_rows: list[tuple[int, float, float, float, int]] = []
    realized = 0.0
    for t_us, spot in zip(bars_ts, close):  # time order; only slices[t_us] is read at bar t
        now = _dt(t_us)
        q = slices.get(t_us)
        # 1. manage positions opened earlier
        still: list[_Position] = []
        for p in open_:
            exit_ = _manage(p, t_us, spot, q, cfg)
            if exit_ is None:
                still.append(p)
                continue
            reason, px, debit, fees = exit_
            trades.append(_trade_row(p, now, spot, px, debit, fees, reason, fc))
            realized += trades[-1]["pnl"]  # type: ignore[operator]
        open_ = still
        # 2. open new positions (none once the account is ruined: equity marked to mid <= 0)
        wanted = [None] if by_ts is None else by_ts.get(t_us, [])
        marked = cfg.initial_capital + realized + sum(
            (p.credit - p.mid_debit) * fc.multiplier * p.contracts - p.entry_fees for p in open_)
        for d in wanted:
            if marked <= 0:
                skipped.append((t_us, "ruined"))
                continue
            if len(open_) >= cfg.max_open:
                skipped.append((t_us, "capacity"))
                continue
            if q is None:
                skipped.append((t_us, "no_chain"))
                continue
            pos = _open(q, t_us, now, spot, d, decisions, cfg)
            if isinstance(pos, str):
                skipped.append((t_us, pos))
            else:
                open_.append(pos)
        # 3. mark to market
        unreal = sum((p.credit - p.mid_debit) * fc.multiplier * p.contracts - p.entry_fees for p in open_)
        equity_rows.append((t_us, cfg.initial_capital + realized + unreal, realized, unreal, len(open_)))

    if bars_ts:
        last_ts, last_spot = _dt(bars_ts[-1]), float(close[-1])
        for p in open_:
            trades.append(_trade_row(p, last_ts, last_spot, p.close_px, p.close_debit,
                                     order_fees(p.contracts, fc), "end_of_data", fc))
    return BacktestResult(
        trades=pl.DataFrame(trades, schema=TRADE_SCHEMA) if trades
        else pl.DataFrame(schema=TRADE_SCHEMA),
        equity=_us_frame(equity_rows, EQUITY_SCHEMA),
        skipped=_us_frame(skipped, SKIPPED_SCHEMA),
        config=cfg,
    )


def write_trade_log(trades: pl.DataFrame, path: str | Path) -> Path:
    """Write the trade log to ``path``: Parquet for a ``.parquet`` suffix, CSV for ``.csv``."""
    path = Path(path)
    if path.suffix == ".parquet":
        trades.write_parquet(path)
    elif path.suffix == ".csv":
        trades.write_csv(path)
    else:
        raise ValueError(f"trade log path must end in .parquet or .csv, got {path}")
    return path


# --------------------------------------------------------------------------------------------------- internals


def _manage(p: _Position, t_us: int, spot: float, q: _Slice | None, cfg: BacktestConfig
            ) -> tuple[str, np.ndarray, float, float] | None:
    """(reason, exit leg prices, debit per share, closing fees) if the position exits at this bar, else None;
    updates the position's marks."""
    c = p.condor
    if t_us >= p.exp_us:
        px = np.array([max(c.put_long - spot, 0.0), max(c.put_short - spot, 0.0),
                       max(spot - c.call_short, 0.0), max(spot - c.call_long, 0.0)])
        return "expiry", px, float(settlement_value(c, spot)), 0.0
    quotes = None if q is None else q.legs(p.exp_us, (c.put_long, c.put_short, c.call_short, c.call_long))
    if quotes is None or not _valid(*quotes):
        return None
    bid, ask = quotes
    p.close_px, p.close_debit = close_fill(bid, ask, cfg.fills)
    p.mid_debit = float((CLOSE_SIDES * (bid + ask) / 2.0).sum())
    profit = p.credit - p.close_debit
    if cfg.stop_loss is not None and -profit >= cfg.stop_loss * p.credit:
        reason = "stop"
    elif cfg.take_profit is not None and profit >= cfg.take_profit * p.credit:
        reason = "take_profit"
    elif cfg.close_dte is not None and (p.exp_us - t_us) / _DAY_US <= cfg.close_dte:
        reason = "dte"
    else:
        return None
    return reason, p.close_px, p.close_debit, order_fees(p.contracts, cfg.fills)


def _open(q: _Slice, t_us: int, now: dt.datetime, spot: float, d: dict[str, float] | None,
          decisions: pl.DataFrame | RuleCondor, cfg: BacktestConfig) -> _Position | str:
    """A new position, or the reason it was skipped."""
    ok = _valid_rows(q)
    min_dte = cfg.close_dte if cfg.close_dte is not None else 0.0
    far = ok & ((q.exp - t_us) / _DAY_US > min_dte)
    if not far.any():
        return "no_expiry"
    expiry = choose_expiry(q.exp[far].astype("datetime64[us]"), now, cfg.target_dte)
    exp_us = epoch_us(expiry)
    on_exp = ok & (q.exp == exp_us)
    puts, calls = q.strike[on_exp & ~q.is_call], q.strike[on_exp & q.is_call]
    try:
        if isinstance(decisions, RuleCondor):
            ps, cs = _delta_strikes(q, on_exp, exp_us - t_us, spot, decisions.target_delta, cfg)
            width = decisions.wing * spot
        elif d is not None and "k_lower" in d:
            ps, cs = snap_strike(puts, d["k_lower"] * spot), snap_strike(calls, d["k_upper"] * spot)
            width = d["wing"] * spot
        else:
            assert d is not None
            ps, cs = snap_strike(puts, d["put_strike"]), snap_strike(calls, d["call_strike"])
            width = d["width"]
        if ps > cs:
            return "crossed_strikes"
        pl_ = snap_strike(puts, ps - width, below=ps)
        cl = snap_strike(calls, cs + width, above=cs)
    except NoListedStrikeError:
        return "no_strike"
    condor = IronCondor(pl_, ps, cs, cl, expiry)
    quotes = q.legs(exp_us, (pl_, ps, cs, cl))
    assert quotes is not None  # every strike above was taken from the quoted rows of this expiry
    bid, ask = quotes
    px, credit = open_fill(bid, ask, cfg.fills)
    if credit <= 0:
        return "no_credit"
    loss = condor_max_loss(condor, credit)
    if loss <= 0:
        return "no_risk"
    contracts = int(cfg.risk_budget // (loss * cfg.fills.multiplier))
    if contracts < 1:
        return "budget"
    close_px, close_debit = close_fill(bid, ask, cfg.fills)
    return _Position(condor=condor, exp_us=exp_us, entry_ts=now, entry_spot=float(spot), entry_px=px,
                     credit=credit, contracts=contracts, entry_fees=order_fees(contracts, cfg.fills),
                     close_px=close_px, close_debit=close_debit,
                     mid_debit=float((CLOSE_SIDES * (bid + ask) / 2.0).sum()))


def _delta_strikes(q: _Slice, on_exp: np.ndarray, dt_us: int, spot: float, target: float,
                   cfg: BacktestConfig) -> tuple[float, float]:
    """Short put / call strikes whose Black-Scholes delta is nearest -target / +target (ties: further OTM)."""
    assert q.iv is not None
    T = dt_us / (365.0 * _DAY_US)
    out = []
    for is_call, sign in ((False, -1.0), (True, 1.0)):
        m = on_exp & (q.is_call == is_call) & np.isfinite(q.iv) & (q.iv > 0)
        if not m.any():
            raise NoListedStrikeError("no quoted strike with a valid iv")
        k = q.strike[m]
        delta = black_scholes(spot, k, T, cfg.rate, q.iv[m], is_call, cfg.div_yield).delta
        dist = np.abs(delta - sign * target)
        best = np.flatnonzero(dist == dist.min())
        out.append(float(k[best].max() if is_call else k[best].min()))
    return out[0], out[1]


def _trade_row(p: _Position, exit_ts: dt.datetime, exit_spot: float, px: np.ndarray, debit: float, exit_fees: float,
               reason: str, fc: FillConfig) -> dict[str, object]:
    c = p.condor
    fees = p.entry_fees + exit_fees
    row: dict[str, object] = {"entry_ts": p.entry_ts, "exit_ts": exit_ts, "expiry": c.expiry}
    row.update({f"{leg}_strike": k for leg, k in zip(_LEGS, (c.put_long, c.put_short, c.call_short, c.call_long))})
    row.update({f"{leg}_entry": float(v) for leg, v in zip(_LEGS, p.entry_px)})
    row.update({f"{leg}_exit": float(v) for leg, v in zip(_LEGS, px)})
    row.update({
        "entry_spot": p.entry_spot, "exit_spot": float(exit_spot), "credit": p.credit, "debit": float(debit),
        "fees": fees, "pnl": (p.credit - debit) * fc.multiplier * p.contracts - fees,
        "max_loss": condor_max_loss(c, p.credit) * fc.multiplier * p.contracts, "contracts": p.contracts,
        "days_held": (exit_ts - p.entry_ts).total_seconds() / 86_400.0, "exit_reason": reason,
    })
    return row


def _valid(bid: np.ndarray, ask: np.ndarray) -> bool:
    return bool(np.isfinite(bid).all() and np.isfinite(ask).all() and (bid >= 0).all() and (ask >= bid).all())


def _valid_rows(q: _Slice) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        return np.isfinite(q.bid) & np.isfinite(q.ask) & (q.bid >= 0) & (q.ask >= q.bid)


def _dt(us: int) -> dt.datetime:
    return dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(microseconds=us)


def _us_frame(rows: list[tuple], schema: dict[str, pl.DataType]) -> pl.DataFrame:
    names = list(schema)
    cols = list(zip(*rows)) if rows else [[] for _ in names]
    data = {n: pl.Series(n, list(v), dtype=pl.Int64 if i == 0 else schema[n]) for i, (n, v) in
            enumerate(zip(names, cols))}
    frame = pl.DataFrame(data)
    return frame.with_columns(pl.col(names[0]).cast(pl.Datetime("us")).dt.replace_time_zone("UTC"))


def _require(frame: pl.DataFrame, cols: tuple[str, ...], what: str) -> None:
    missing = [c for c in cols if c not in frame.columns]
    if missing:
        raise BacktestInputError(f"{what}: missing column(s) {missing}")
    ts = frame.schema["ts"]
    if not (isinstance(ts, pl.Datetime) and ts.time_zone == "UTC"):
        raise BacktestInputError(f"{what}: 'ts' must be a UTC datetime, got {ts}")


def _ts_us(frame: pl.DataFrame, col: str = "ts") -> pl.Expr:
    return pl.col(col).dt.cast_time_unit("us").dt.epoch("us")


def _check_bars(bars: pl.DataFrame) -> tuple[list[int], np.ndarray]:
    _require(bars, BAR_COLUMNS, "bars")
    ts = bars.select(_ts_us(bars)).to_series().to_numpy()
    close = bars.get_column("close").cast(pl.Float64).to_numpy()
    if ts.size > 1 and not (np.diff(ts) > 0).all():
        raise BacktestInputError("bars: 'ts' must be strictly increasing (one underlying, time order)")
    if not (np.isfinite(close).all() and (close > 0).all()):
        raise BacktestInputError("bars: 'close' must be finite and > 0")
    return [int(v) for v in ts], close


def _slices(chain: pl.DataFrame, *, need_iv: bool) -> dict[int, _Slice]:
    """Per-timestamp views of the chain, keyed by ts (us since epoch)."""
    _require(chain, CHAIN_COLUMNS + (("iv",) if need_iv else ()), "chain")
    exp = chain.schema["expiry"]
    if not (isinstance(exp, pl.Datetime) and exp.time_zone == "UTC"):
        raise BacktestInputError(f"chain: 'expiry' must be a UTC datetime, got {exp}")
    if "underlying" in chain.columns and chain.get_column("underlying").n_unique() > 1:
        raise BacktestInputError("chain: holds several underlyings; pass one")
    bad = chain.filter(~pl.col("right").is_in(["C", "P"])).height
    if bad:
        raise BacktestInputError(f"chain: 'right' must be 'C' or 'P' ({bad} rows are not)")
    frame = chain.select(
        _ts_us(chain).alias("_ts_us"), _ts_us(chain, "expiry").alias("_exp_us"),
        pl.col("strike").cast(pl.Float64), (pl.col("right") == "C").alias("_is_call"),
        pl.col("bid").cast(pl.Float64), pl.col("ask").cast(pl.Float64),
        *([pl.col("iv").cast(pl.Float64)] if "iv" in chain.columns else []),
    )
    dup = frame.select("_ts_us", "_exp_us", "strike", "_is_call").is_duplicated()
    if dup.any():
        raise BacktestInputError(f"chain: {int(dup.sum())} rows duplicate a (ts, expiry, strike, right) quote")
    return {int(k[0]): _Slice(part) for k, part in frame.partition_by("_ts_us", as_dict=True).items()}


def _decisions_by_ts(decisions: pl.DataFrame, bar_ts: set[int], slices: dict[int, _Slice]
                     ) -> dict[int, list[dict[str, float]]]:
    frac, absolute = ("k_lower", "k_upper", "wing"), ("put_strike", "call_strike", "width")
    if all(c in decisions.columns for c in frac):
        cols = frac
    elif all(c in decisions.columns for c in absolute):
        cols = absolute
    else:
        raise BacktestInputError(f"decisions: need ts and either {list(frac)} (fractions of spot) or "
                                 f"{list(absolute)} (price units); got {decisions.columns}")
    _require(decisions, ("ts",), "decisions")
    frame = decisions.select(_ts_us(decisions).alias("_ts"), *[pl.col(c).cast(pl.Float64) for c in cols])
    values = frame.select(cols).to_numpy()
    if not (np.isfinite(values).all() and (values > 0).all()):
        raise BacktestInputError(f"decisions: {list(cols)} must be finite and > 0")
    if (values[:, 0] > values[:, 1]).any():
        raise BacktestInputError(f"decisions: {cols[0]} must be <= {cols[1]} (the short put below the short call)")
    out: dict[int, list[dict[str, float]]] = {}
    for t, row in zip(frame.get_column("_ts").to_list(), values):
        if t not in bar_ts:
            raise MissingQuotesError(f"decision at {_dt(t)} is not a bar's ts")
        if t not in slices:
            raise MissingQuotesError(f"decision at {_dt(t)} has no chain rows at that ts")
        out.setdefault(t, []).append(dict(zip(cols, map(float, row))))
    return out
