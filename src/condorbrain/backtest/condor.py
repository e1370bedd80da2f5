"""The iron condor: its four strikes, payoff at expiry, max loss, and how a proposal is snapped to a listed chain.

Legs (one expiry, one contract each per condor): long put ``put_long`` < short put ``put_short`` <= short call
``call_short`` < long call ``call_long``. The position is opened for a net credit (per share, price units). Its
value to the holder at expiry is ``credit - settlement_value(S)``, with

    settlement_value(S) = max(K_ps - S, 0) - max(K_pl - S, 0) + max(S - K_cs, 0) - max(S - K_cl, 0)

the intrinsic cost of buying the condor back, between 0 (S between the short strikes) and the wider wing's width.
Max loss per share = width - credit, with width = max(put wing, call wing) (after snapping the two wings can differ).
Prices here are per share; multiply by the contract multiplier (fills.FillConfig.multiplier) for currency.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = [
    "IronCondor",
    "NoListedStrikeError",
    "choose_expiry",
    "condor_max_loss",
    "condor_payoff",
    "epoch_us",
    "settlement_value",
    "snap_strike",
]

_DAY_US = 86_400 * 1_000_000


class NoListedStrikeError(ValueError):
    """No listed strike (or expiry) satisfies the request (e.g. no put strike below the short put for the wing)."""


@dataclass(frozen=True)
class IronCondor:
    """Four strikes (price units) on one expiry."""

    put_long: float
    """Strike of the long (bought) put, the lower wing."""
    put_short: float
    """Strike of the short (sold) put, K_lower."""
    call_short: float
    """Strike of the short (sold) call, K_upper."""
    call_long: float
    """Strike of the long (bought) call, the upper wing."""
    expiry: dt.datetime
    """Expiry instant (timezone-aware UTC)."""

    def __post_init__(self) -> None:
        k = (self.put_long, self.put_short, self.call_short, self.call_long)
        if not all(np.isfinite(k)) or min(k) <= 0:
            raise ValueError(f"strikes must be finite and > 0, got {k}")
        if not (self.put_long < self.put_short <= self.call_short < self.call_long):
            raise ValueError(f"strikes must satisfy put_long < put_short <= call_short < call_long, got {k}")

    @property
    def put_width(self) -> float:
        """put_short - put_long, price units."""
        return self.put_short - self.put_long

    @property
    def call_width(self) -> float:
        """call_long - call_short, price units."""
        return self.call_long - self.call_short

    @property
    def width(self) -> float:
        """The wider wing, price units: the most the condor can cost to buy back at expiry."""
        return max(self.put_width, self.call_width)


def settlement_value(condor: IronCondor, spot: ArrayLike) -> NDArray[np.float64]:
    """Intrinsic cost (per share) of buying the condor back at expiry with the underlying at ``spot`` (broadcasts)."""
    s = np.asarray(spot, dtype=np.float64)
    return (np.maximum(condor.put_short - s, 0.0) - np.maximum(condor.put_long - s, 0.0)
            + np.maximum(s - condor.call_short, 0.0) - np.maximum(s - condor.call_long, 0.0))


def condor_payoff(condor: IronCondor, credit: float, spot: ArrayLike) -> NDArray[np.float64]:
    """P&L per share at expiry of a condor opened for ``credit`` (per share): ``credit - settlement_value(spot)``."""
    return credit - settlement_value(condor, spot)


def condor_max_loss(condor: IronCondor, credit: float) -> float:
    """Max loss per share, ``width - credit`` (reached beyond a long strike on the wider wing's side)."""
    return condor.width - credit


def snap_strike(listed: ArrayLike, target: float, *, below: float | None = None,
                above: float | None = None) -> float:
    """The listed strike nearest ``target``, among those strictly below ``below`` / above ``above`` when given.

    Ties (target exactly between two strikes) go to the one further from the money side given by the bound: the
    lower strike when ``below`` is set (a put wing), the higher when ``above`` is set, else the lower one.

    Raises:
        NoListedStrikeError: when no listed strike satisfies the bounds.
    """
    k = np.unique(np.asarray(listed, dtype=np.float64))
    if below is not None:
        k = k[k < below]
    if above is not None:
        k = k[k > above]
    if k.size == 0:
        raise NoListedStrikeError(f"no listed strike near {target} (below={below}, above={above})")
    dist = np.abs(k - target)
    best = np.flatnonzero(dist == dist.min())
    return float(k[best[-1]] if above is not None else k[best[0]])


def choose_expiry(expiries: ArrayLike, ts: dt.datetime, target_dte: float) -> dt.datetime:
    """The listed expiry strictly after ``ts`` whose days to expiry (calendar days, fractional) are nearest
    ``target_dte``; ties go to the earlier one.

    Args:
        expiries: listed expiries, ``datetime64[us]`` values read as UTC (numpy has no time zones).
        ts: the decision time (timezone-aware UTC).

    Raises:
        NoListedStrikeError: when no expiry lies after ``ts``.
    """
    exp = np.unique(np.asarray(expiries, dtype="datetime64[us]").astype(np.int64))
    now = epoch_us(ts)
    exp = exp[exp > now]
    if exp.size == 0:
        raise NoListedStrikeError(f"no listed expiry after {ts}")
    dte = (exp - now) / _DAY_US
    dist = np.abs(dte - target_dte)
    return _from_us(int(exp[np.flatnonzero(dist == dist.min())[0]]))


def epoch_us(ts: dt.datetime) -> int:
    """Microseconds since the Unix epoch of a timezone-aware datetime (exact integer arithmetic)."""
    if ts.tzinfo is None:
        raise ValueError(f"timestamps must be timezone-aware (UTC), got naive {ts}")
    delta = ts - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _from_us(us: int) -> dt.datetime:
    return dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(microseconds=us)
