"""The iron condor: payoff at expiry and max loss by hand on each side and in between, strike snapping, expiry
choice."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest

from condorbrain.backtest.condor import (
    IronCondor,
    NoListedStrikeError,
    choose_expiry,
    condor_max_loss,
    condor_payoff,
    settlement_value,
    snap_strike,
)

UTC = dt.UTC
EXP = dt.datetime(2024, 3, 15, 20, tzinfo=UTC)
# 90 / 95 / 105 / 110: both wings 5 wide, opened for a credit of 1.2 per share
CONDOR = IronCondor(90.0, 95.0, 105.0, 110.0, EXP)
CREDIT = 1.2


@pytest.mark.parametrize(("spot", "settle"), [
    (50.0, 5.0),    # far below the long put: the put spread is worth its width
    (90.0, 5.0),    # at the long put
    (92.0, 3.0),    # between the puts: 95 - 92
    (95.0, 0.0),    # at the short put
    (100.0, 0.0),   # between the shorts
    (105.0, 0.0),   # at the short call
    (107.5, 2.5),   # between the calls: 107.5 - 105
    (110.0, 5.0),   # at the long call
    (200.0, 5.0),   # far above
])
def test_settlement_and_payoff_by_hand(spot: float, settle: float) -> None:
    assert settlement_value(CONDOR, spot) == pytest.approx(settle, abs=1e-12)
    assert condor_payoff(CONDOR, CREDIT, spot) == pytest.approx(CREDIT - settle, abs=1e-12)


def test_payoff_broadcasts_and_is_bounded_by_max_loss() -> None:
    spots = np.linspace(50.0, 150.0, 1001)
    pay = condor_payoff(CONDOR, CREDIT, spots)
    assert pay.shape == spots.shape
    assert pay.max() == pytest.approx(CREDIT)  # max profit: the credit, between the shorts
    assert pay.min() == pytest.approx(-condor_max_loss(CONDOR, CREDIT))  # max loss: width - credit = 3.8
    assert condor_max_loss(CONDOR, CREDIT) == pytest.approx(3.8)


def test_max_loss_uses_the_wider_wing() -> None:
    c = IronCondor(85.0, 95.0, 105.0, 110.0, EXP)  # put wing 10, call wing 5
    assert (c.put_width, c.call_width, c.width) == (10.0, 5.0, 10.0)
    assert condor_max_loss(c, 2.0) == pytest.approx(8.0)
    assert condor_payoff(c, 2.0, 80.0) == pytest.approx(-8.0)  # below the put wing: 2 - 10
    assert condor_payoff(c, 2.0, 120.0) == pytest.approx(-3.0)  # above the call wing: 2 - 5


@pytest.mark.parametrize("strikes", [(95.0, 90.0, 105.0, 110.0), (90.0, 106.0, 105.0, 110.0),
                                     (90.0, 95.0, 105.0, 105.0), (-1.0, 95.0, 105.0, 110.0)])
def test_bad_strike_order_raises(strikes: tuple[float, float, float, float]) -> None:
    with pytest.raises(ValueError, match="strike"):
        IronCondor(*strikes, EXP)


def test_snap_strike_nearest_bounds_and_ties() -> None:
    listed = [90.0, 95.0, 100.0, 105.0, 110.0]
    assert snap_strike(listed, 96.0) == 95.0
    assert snap_strike(listed, 97.5) == 95.0  # tie without a bound: the lower
    assert snap_strike(listed, 97.5, above=90.0) == 100.0  # tie on a call wing: the higher (further OTM)
    assert snap_strike(listed, 94.0, below=95.0) == 90.0  # strictly below the short put
    assert snap_strike(listed, 200.0, above=105.0) == 110.0
    with pytest.raises(NoListedStrikeError):
        snap_strike(listed, 80.0, below=90.0)
    with pytest.raises(NoListedStrikeError):
        snap_strike([], 100.0)


def test_choose_expiry_by_target_dte() -> None:
    now = dt.datetime(2024, 1, 2, 21, tzinfo=UTC)
    exps = np.array([(now + dt.timedelta(days=d)).replace(tzinfo=None) for d in (-1, 3, 30, 44, 60)],
                    dtype="datetime64[us]")  # naive = UTC
    assert choose_expiry(exps, now, 45.0) == now + dt.timedelta(days=44)
    assert choose_expiry(exps, now, 0.0) == now + dt.timedelta(days=3)  # past expiries are never chosen
    assert choose_expiry(exps, now, 37.0) == now + dt.timedelta(days=30)  # tie 30 / 44: the earlier
    with pytest.raises(NoListedStrikeError):
        choose_expiry(exps[:1], now, 45.0)
