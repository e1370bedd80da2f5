"""Fills at bid / ask plus slippage, and commissions, by hand."""

from __future__ import annotations

import numpy as np
import pytest

from condorbrain.backtest.fills import FillConfig, close_fill, fill_prices, open_fill, order_fees

# legs (put_long, put_short, call_short, call_long)
BID = np.array([0.40, 1.00, 1.20, 0.30])
ASK = np.array([0.50, 1.20, 1.30, 0.40])


def test_open_fill_at_bid_ask_without_slippage() -> None:
    px, credit = open_fill(BID, ASK, FillConfig(slippage=0.0))
    np.testing.assert_allclose(px, [0.50, 1.00, 1.20, 0.40])  # buy longs at the ask, sell shorts at the bid
    assert credit == pytest.approx(1.00 + 1.20 - 0.50 - 0.40)  # 1.30


def test_open_and_close_fill_with_slippage() -> None:
    cfg = FillConfig(slippage=0.5)
    px, credit = open_fill(BID, ASK, cfg)
    # widths 0.10, 0.20, 0.10, 0.10: buys at ask + 0.05 / sells at bid - half the width
    np.testing.assert_allclose(px, [0.55, 0.90, 1.15, 0.45])
    assert credit == pytest.approx(0.90 + 1.15 - 0.55 - 0.45)  # 1.05
    px, debit = close_fill(BID, ASK, cfg)
    np.testing.assert_allclose(px, [0.35, 1.30, 1.35, 0.25])  # sell longs at bid - , buy shorts at ask +
    assert debit == pytest.approx(1.30 + 1.35 - 0.35 - 0.25)  # 2.05


def test_sell_price_is_floored_at_zero() -> None:
    px = fill_prices([0.0, 0.05], [0.10, 0.10], [-1, -1], slippage=1.0)
    np.testing.assert_allclose(px, [0.0, 0.0])


def test_fees_per_contract_per_leg() -> None:
    assert order_fees(3, FillConfig(commission=0.65)) == pytest.approx(0.65 * 4 * 3)
    assert order_fees(0, FillConfig()) == 0.0
    assert FillConfig().multiplier == 100.0


@pytest.mark.parametrize(("bid", "ask"), [([1.0], [0.9]), ([-0.1], [0.1]), ([np.nan], [1.0])])
def test_bad_quotes_raise(bid: list[float], ask: list[float]) -> None:
    with pytest.raises(ValueError, match="bid"):
        fill_prices(bid, ask, [1], 0.5)


@pytest.mark.parametrize("kw", [{"slippage": -0.1}, {"commission": -1.0}, {"multiplier": 0.0}])
def test_bad_config_raises(kw: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        FillConfig(**kw)
