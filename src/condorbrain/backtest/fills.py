"""Fills and costs of a four-leg iron condor order.

Model (per leg, per share, price units): a sell fills at ``bid - slippage * (ask - bid)`` (floored at 0), a buy at
``ask + slippage * (ask - bid)``: the quoted side of the book plus a configurable extra fraction of that leg's
bid-ask width. ``slippage = 0`` is a plain fill at bid / ask; the default 0.5 follows the practitioners' rule of
thumb of about half the width lost per leg on a 4-leg order, here charged on top of crossing the spread, so the
default is deliberately conservative (lower it to model better execution). A commission of ``commission`` currency
units is paid per contract per leg on every traded leg (opening and closing trades; cash settlement at expiry pays
none). One contract controls ``multiplier`` shares (100 for US index and equity options).

Legs are always ordered ``(put_long, put_short, call_short, call_long)``. Opening buys the longs and sells the
shorts; closing does the reverse.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = ["CLOSE_SIDES", "OPEN_SIDES", "FillConfig", "close_fill", "fill_prices", "open_fill", "order_fees"]

OPEN_SIDES = np.array([1.0, -1.0, -1.0, 1.0])
"""+1 buy, -1 sell for the legs (put_long, put_short, call_short, call_long) when opening."""
CLOSE_SIDES = -OPEN_SIDES
"""The reverse trade that closes the condor."""


@dataclass(frozen=True)
class FillConfig:
    """Execution costs."""

    slippage: float = 0.5
    """Extra fraction of each leg's bid-ask width paid beyond bid (sell) / ask (buy); >= 0."""
    commission: float = 0.65
    """Currency units per contract per leg traded; >= 0."""
    multiplier: float = 100.0
    """Shares per contract; > 0."""

    def __post_init__(self) -> None:
        if not (np.isfinite(self.slippage) and self.slippage >= 0):
            raise ValueError(f"slippage must be finite and >= 0, got {self.slippage}")
        if not (np.isfinite(self.commission) and self.commission >= 0):
            raise ValueError(f"commission must be finite and >= 0, got {self.commission}")
        if not (np.isfinite(self.multiplier) and self.multiplier > 0):
            raise ValueError(f"multiplier must be finite and > 0, got {self.multiplier}")


def fill_prices(bid: ArrayLike, ask: ArrayLike, sides: ArrayLike, slippage: float) -> NDArray[np.float64]:
    """Per-share fill price of each leg: buys (+1) at ``ask + slippage * (ask - bid)``, sells (-1) at
    ``max(bid - slippage * (ask - bid), 0)``.

    Raises:
        ValueError: for a non-finite quote, a negative bid or ask < bid.
    """
    b, a = np.asarray(bid, dtype=np.float64), np.asarray(ask, dtype=np.float64)
    s = np.asarray(sides, dtype=np.float64)
    if not (np.isfinite(b).all() and np.isfinite(a).all()):
        raise ValueError("bid and ask must be finite")
    if (b < 0).any() or (a < b).any():
        raise ValueError(f"need 0 <= bid <= ask, got bid={b}, ask={a}")
    spread = a - b
    return np.where(s > 0, a + slippage * spread, np.maximum(b - slippage * spread, 0.0))


def open_fill(bid: ArrayLike, ask: ArrayLike, config: FillConfig) -> tuple[NDArray[np.float64], float]:
    """Fill prices (4,) of opening the condor and its net credit per share (sells minus buys)."""
    px = fill_prices(bid, ask, OPEN_SIDES, config.slippage)
    return px, float(-(OPEN_SIDES * px).sum())


def close_fill(bid: ArrayLike, ask: ArrayLike, config: FillConfig) -> tuple[NDArray[np.float64], float]:
    """Fill prices (4,) of closing the condor and its net debit per share (buys minus sells)."""
    px = fill_prices(bid, ask, CLOSE_SIDES, config.slippage)
    return px, float((CLOSE_SIDES * px).sum())


def order_fees(contracts: int, config: FillConfig, legs: int = 4) -> float:
    """Commission of one order, currency units: ``commission * legs * contracts``."""
    return config.commission * legs * contracts
