"""The backtester on hand-made chains: each exit rule, sizing, marking, max_open, bad input, look-ahead, and one
integration run of the rule-based condor on synthetic chains over ~300 days of the S&P 500."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from condorbrain.backtest.fills import FillConfig
from condorbrain.backtest.simulator import (
    EXIT_REASONS,
    BacktestConfig,
    BacktestInputError,
    MissingQuotesError,
    RuleCondor,
    backtest,
    write_trade_log,
)
from condorbrain.data.chains import synth_chains
from condorbrain.data.embedded import load_sp500, load_vix
from condorbrain.features.options import black_scholes

UTC = dt.UTC
T0 = dt.datetime(2024, 1, 2, 21, tzinfo=UTC)
EXP = T0 + dt.timedelta(days=30)
LEGS = ((90.0, "P"), (95.0, "P"), (105.0, "C"), (110.0, "C"))  # put_long, put_short, call_short, call_long
# Entry quotes (bid, ask) per leg: credit without slippage = 1.0 + 1.0 - 0.5 - 0.5 = 1.0 per share,
# max loss = 5 - 1 = 4 per share = 400 per contract -> risk_budget 1000 buys 2 contracts; fees 1 x 4 legs x 2 = 8.
ENTRY = ((0.4, 0.5), (1.0, 1.1), (1.0, 1.1), (0.4, 0.5))
CFG = {"target_dte": 30.0, "risk_budget": 1_000.0, "initial_capital": 10_000.0,
           "fills": FillConfig(slippage=0.0, commission=1.0)}


def _chain(days: list[float], quotes: list[tuple[tuple[float, float], ...]], extra_strikes: bool = True
           ) -> pl.DataFrame:
    """One expiry (EXP); at T0 + days[i] the four legs quoted ``quotes[i]`` (plus two unused strikes)."""
    rows = []
    for d, q in zip(days, quotes):
        ts = T0 + dt.timedelta(days=d)
        for (k, right), (bid, ask) in zip(LEGS, q):
            rows.append((ts, EXP, k, right, bid, ask, 0.2))
        if extra_strikes:
            rows += [(ts, EXP, 85.0, "P", 0.1, 0.2, 0.2), (ts, EXP, 115.0, "C", 0.1, 0.2, 0.2)]
    return pl.DataFrame(rows, schema={"ts": pl.Datetime("us", "UTC"), "expiry": pl.Datetime("us", "UTC"),
                                      "strike": pl.Float64, "right": pl.String, "bid": pl.Float64,
                                      "ask": pl.Float64, "iv": pl.Float64}, orient="row")


def _bars(days: list[float], closes: list[float]) -> pl.DataFrame:
    return pl.DataFrame({"ts": [T0 + dt.timedelta(days=d) for d in days], "close": closes}).with_columns(
        pl.col("ts").cast(pl.Datetime("us", "UTC")))


def _decision(put: float = 95.0, call: float = 105.0, width: float = 5.0, n: int = 1) -> pl.DataFrame:
    return pl.DataFrame({"ts": [T0] * n, "put_strike": [put] * n, "call_strike": [call] * n,
                         "width": [width] * n}).with_columns(pl.col("ts").cast(pl.Datetime("us", "UTC")))


def _one_trade(days: list[float], quotes: list, closes: list[float], **kw: object) -> dict[str, object]:
    res = backtest(_chain(days, quotes), _bars(days, closes), _decision(), BacktestConfig(**{**CFG, **kw}))
    assert res.trades.height == 1
    return res.trades.row(0, named=True)


def test_take_profit_by_hand() -> None:
    # day 1: close debit 0.45 (profit 0.55 < 0.6); day 2: debit 0.3 + 0.3 - 0.1 - 0.1 = 0.4, profit 0.6 >= 0.6
    t = _one_trade([0, 1, 2], [ENTRY, ((0.1, 0.2), (0.3, 0.35), (0.3, 0.3), (0.1, 0.2)),
                               ((0.1, 0.2), (0.2, 0.3), (0.2, 0.3), (0.1, 0.2))],
                   [100.0, 100.0, 100.0], take_profit=0.6, close_dte=None, stop_loss=None)
    assert t["exit_reason"] == "take_profit" and t["exit_ts"] == T0 + dt.timedelta(days=2)
    assert (t["credit"], t["debit"], t["contracts"]) == (pytest.approx(1.0), pytest.approx(0.4), 2)
    assert (t["put_long_exit"], t["put_short_exit"], t["call_short_exit"], t["call_long_exit"]) == (
        0.1, 0.3, 0.3, 0.1)  # sell the longs at the bid, buy the shorts back at the ask
    assert t["fees"] == pytest.approx(16.0)  # 8 to open, 8 to close
    assert t["pnl"] == pytest.approx((1.0 - 0.4) * 100 * 2 - 16.0)  # 104
    assert t["max_loss"] == pytest.approx(800.0)
    assert t["days_held"] == pytest.approx(2.0)


def test_stop_by_hand() -> None:
    # debit 2.0 + 2.0 - 0.5 - 0.5 = 3.0: loss 2.0 = 2 x credit
    t = _one_trade([0, 1], [ENTRY, ((0.5, 0.6), (1.9, 2.0), (1.9, 2.0), (0.5, 0.6))], [100.0, 100.0],
                   stop_loss=2.0, close_dte=None)
    assert t["exit_reason"] == "stop"
    assert t["pnl"] == pytest.approx((1.0 - 3.0) * 200 - 16.0)  # -416


def test_stop_not_fired_below_k_times_credit() -> None:
    quotes = [ENTRY, ((0.5, 0.6), (1.9, 1.95), (1.9, 1.95), (0.5, 0.6))]  # debit 2.9: loss 1.9 < 2
    t = _one_trade([0, 1, 30], quotes + [ENTRY], [100.0, 100.0, 100.0], stop_loss=2.0, close_dte=None)
    assert t["exit_reason"] == "expiry"


def test_dte_close_by_hand() -> None:
    # day 5: 25 days left > 21, nothing fires; day 9: 21 days left -> closed at debit 1.1 + 1.1 - 0.4 - 0.4 = 1.4
    t = _one_trade([0, 5, 9], [ENTRY, ENTRY, ENTRY], [100.0] * 3, close_dte=21.0)
    assert t["exit_reason"] == "dte" and t["exit_ts"] == T0 + dt.timedelta(days=9)
    assert t["debit"] == pytest.approx(1.4)
    assert t["pnl"] == pytest.approx((1.0 - 1.4) * 200 - 16.0)


def test_expiry_settlement_at_intrinsic() -> None:
    # no management; at the expiry bar the close is 93: the short put is worth 2, the rest 0; no exit commission
    t = _one_trade([0, 5, 30], [ENTRY, ENTRY, ENTRY], [100.0, 99.0, 93.0],
                   take_profit=None, close_dte=None, stop_loss=None)
    assert t["exit_reason"] == "expiry" and t["exit_ts"] == EXP
    assert (t["put_long_exit"], t["put_short_exit"], t["call_short_exit"], t["call_long_exit"]) == (
        0.0, 2.0, 0.0, 0.0)
    assert t["debit"] == pytest.approx(2.0) and t["fees"] == pytest.approx(8.0)
    assert t["pnl"] == pytest.approx((1.0 - 2.0) * 200 - 8.0)  # -208
    assert t["exit_spot"] == 93.0


def test_expiry_settles_even_without_quotes() -> None:
    days = [0, 5, 30]
    chain = _chain(days[:2], [ENTRY, ENTRY])  # nothing quoted at the expiry bar
    res = backtest(chain, _bars(days, [100.0, 99.0, 120.0]), _decision(),
                   BacktestConfig(**CFG, take_profit=None, close_dte=None, stop_loss=None))
    t = res.trades.row(0, named=True)
    assert t["exit_reason"] == "expiry" and t["debit"] == pytest.approx(5.0)  # beyond the call wing


def test_equity_marked_to_mid() -> None:
    days = [0, 1]
    res = backtest(_chain(days, [ENTRY, ENTRY]), _bars(days, [100.0, 100.0]), _decision(),
                   BacktestConfig(**CFG, close_dte=None))
    eq = res.equity
    # mid debit = 1.05 + 1.05 - 0.45 - 0.45 = 1.2: unrealized (1.0 - 1.2) x 200 - 8 = -48
    assert eq.get_column("unrealized").to_list() == pytest.approx([-48.0, -48.0])
    assert eq.get_column("equity").to_list() == pytest.approx([10_000.0 - 48.0] * 2)
    assert eq.get_column("open_positions").to_list() == [1, 1]
    # still open after the last bar: closed at its last closing debit 1.4 with the closing fees
    t = res.trades.row(0, named=True)
    assert t["exit_reason"] == "end_of_data" and t["pnl"] == pytest.approx(-0.4 * 200 - 16.0)


def test_snapping_fraction_decisions_and_sizing() -> None:
    days = [0, 30]
    chain, bars = _chain(days, [ENTRY, ENTRY]), _bars(days, [100.0, 100.0])
    frac = pl.DataFrame({"ts": [T0], "k_lower": [0.96], "k_upper": [1.04], "wing": [0.06]}).with_columns(
        pl.col("ts").cast(pl.Datetime("us", "UTC")))
    cfg = BacktestConfig(**{**CFG, "risk_budget": 799.0})  # 799 // 400 = 1 contract
    by_frac = backtest(chain, bars, frac, cfg).trades
    by_abs = backtest(chain, bars, _decision(96.0, 104.0, 6.0), cfg).trades
    assert by_frac.equals(by_abs)
    t = by_frac.row(0, named=True)  # 96 -> 95, 104 -> 105, wings 95 - 6 = 89 -> 90, 105 + 6 = 111 -> 110
    assert (t["put_long_strike"], t["put_short_strike"], t["call_short_strike"], t["call_long_strike"]) == (
        90.0, 95.0, 105.0, 110.0)
    assert t["contracts"] == 1
    small = backtest(chain, bars, _decision(), BacktestConfig(**{**CFG, "risk_budget": 399.0}))
    assert small.trades.height == 0 and small.skipped.get_column("reason").to_list() == ["budget"]


def test_max_open() -> None:
    days = [0, 30]
    chain, bars = _chain(days, [ENTRY, ENTRY]), _bars(days, [100.0, 100.0])
    one = backtest(chain, bars, _decision(n=2), BacktestConfig(**CFG, max_open=1))
    assert one.trades.height == 1 and one.skipped.get_column("reason").to_list() == ["capacity"]
    two = backtest(chain, bars, _decision(n=2), BacktestConfig(**CFG, max_open=2))
    assert two.trades.height == 2 and two.skipped.height == 0
    assert two.equity.get_column("open_positions").to_list() == [2, 0]


def test_a_ruined_account_opens_nothing_more() -> None:
    # capital 300; the stop on day 1 loses 416 -> equity -116: the decisions of days 1 and 2 are not opened
    days = [0, 1, 2]
    chain = _chain(days, [ENTRY, ((0.5, 0.6), (1.9, 2.0), (1.9, 2.0), (0.5, 0.6)), ENTRY])
    decisions = pl.concat([_decision().with_columns(pl.lit(T0 + dt.timedelta(days=d)).dt.cast_time_unit("us")
                                                    .dt.replace_time_zone("UTC").alias("ts")) for d in days])
    res = backtest(chain, _bars(days, [100.0] * 3), decisions,
                   BacktestConfig(**{**CFG, "initial_capital": 300.0}, stop_loss=2.0, close_dte=None))
    assert res.trades.get_column("exit_reason").to_list() == ["stop"]
    assert res.skipped.get_column("reason").to_list() == ["ruined", "ruined"]
    assert res.equity.get_column("equity").to_list()[1:] == [pytest.approx(300.0 - 416.0)] * 2


def test_trade_log_round_trips(tmp_path: Path) -> None:
    days = [0, 1, 2]
    trades = backtest(_chain(days, [ENTRY] * 3), _bars(days, [100.0] * 3), _decision(),
                      BacktestConfig(**CFG)).trades
    assert pl.read_parquet(write_trade_log(trades, tmp_path / "t.parquet")).equals(trades)
    csv = pl.read_csv(write_trade_log(trades, tmp_path / "t.csv"), try_parse_dates=True)
    assert csv.columns == trades.columns and csv.get_column("pnl").to_list() == trades.get_column("pnl").to_list()
    with pytest.raises(ValueError, match="parquet or .csv"):
        write_trade_log(trades, tmp_path / "t.json")


# ------------------------------------------------------------------------------------------------ bad input


def test_missing_columns_raise() -> None:
    days = [0, 1]
    chain, bars = _chain(days, [ENTRY, ENTRY]), _bars(days, [100.0, 100.0])
    with pytest.raises(BacktestInputError, match="chain: missing column"):
        backtest(chain.drop("bid"), bars, _decision())
    with pytest.raises(BacktestInputError, match="chain: missing column.*iv"):
        backtest(chain.drop("iv"), bars, RuleCondor())
    with pytest.raises(BacktestInputError, match="bars: missing column"):
        backtest(chain, bars.drop("close"), _decision())
    with pytest.raises(BacktestInputError, match="decisions: need"):
        backtest(chain, bars, _decision().drop("width"))


def test_decisions_without_chain_rows_raise() -> None:
    days = [0, 1, 2]
    chain, bars = _chain([1, 2], [ENTRY, ENTRY]), _bars(days, [100.0] * 3)
    with pytest.raises(MissingQuotesError, match="no chain rows"):
        backtest(chain, bars, _decision())
    late = _decision().with_columns(pl.col("ts") + pl.duration(hours=1))
    with pytest.raises(MissingQuotesError, match="not a bar"):
        backtest(_chain(days, [ENTRY] * 3), bars, late)


def test_malformed_input_raises() -> None:
    days = [0, 1]
    chain, bars = _chain(days, [ENTRY, ENTRY]), _bars(days, [100.0, 100.0])
    with pytest.raises(BacktestInputError, match="duplicate"):
        backtest(pl.concat([chain, chain.head(1)]), bars, _decision())
    with pytest.raises(BacktestInputError, match="strictly increasing"):
        backtest(chain, bars.reverse(), _decision())
    with pytest.raises(BacktestInputError, match="'right'"):
        backtest(chain.with_columns(pl.lit("X").alias("right")), bars, _decision())
    with pytest.raises(BacktestInputError, match="UTC"):
        backtest(chain, bars.with_columns(pl.col("ts").dt.replace_time_zone(None)), _decision())
    with pytest.raises(BacktestInputError, match="finite and > 0"):
        backtest(chain, bars, _decision(put=-1.0))


@pytest.mark.parametrize("kw", [{"take_profit": 0.0}, {"close_dte": -1.0}, {"stop_loss": 0.0}, {"max_open": 0},
                                {"risk_budget": 0.0}, {"target_dte": 0.0}])
def test_bad_config_raises(kw: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        BacktestConfig(**kw)


# ------------------------------------------------------------------------------------ synthetic chains, look-ahead


@pytest.fixture(scope="module")
def sp500() -> tuple[pl.DataFrame, pl.DataFrame]:
    bars = load_sp500().tail(300)
    return bars, synth_chains(bars, vix=load_vix())


def test_rule_condor_on_synthetic_chains(sp500: tuple[pl.DataFrame, pl.DataFrame]) -> None:
    bars, chain = sp500
    cfg = BacktestConfig(max_open=2)
    res = backtest(chain, bars, RuleCondor(), cfg)
    tr = res.trades
    assert tr.height >= 10
    assert set(tr.get_column("exit_reason").unique()) <= set(EXIT_REASONS)
    assert (tr["put_long_strike"] < tr["put_short_strike"]).all()
    assert (tr["put_short_strike"] < tr["entry_spot"]).all() and (tr["entry_spot"] < tr["call_short_strike"]).all()
    assert (tr["call_short_strike"] < tr["call_long_strike"]).all()
    assert (tr["credit"] > 0).all() and (tr["max_loss"] <= cfg.risk_budget).all() and (tr["contracts"] >= 1).all()
    pnl = (tr["credit"] - tr["debit"]) * 100 * tr["contracts"] - tr["fees"]
    np.testing.assert_allclose(tr["pnl"].to_numpy(), pnl.to_numpy())
    assert (tr["pnl"] >= -tr["max_loss"] - tr["fees"] - 1e-9).all()  # a loss never exceeds max loss + fees
    assert (res.equity.get_column("open_positions") <= 2).all()
    assert res.equity.height == bars.height
    # everything realised in the curve + what was closed at the end = the trade log's total
    eod = tr.filter(pl.col("exit_reason") == "end_of_data").get_column("pnl").sum()
    assert res.equity.get_column("realized")[-1] + eod == pytest.approx(tr.get_column("pnl").sum())
    # the short put of the first trade is the ~16-delta strike of the entry chain (Black-Scholes with the row iv)
    first = tr.row(0, named=True)
    rows = chain.filter((pl.col("ts") == first["entry_ts"]) & (pl.col("expiry") == first["expiry"])
                        & (pl.col("right") == "P"))
    T = (first["expiry"] - first["entry_ts"]).total_seconds() / (365 * 86_400)
    delta = black_scholes(first["entry_spot"], rows["strike"].to_numpy(), T, cfg.rate, rows["iv"].to_numpy(),
                          False, cfg.div_yield).delta
    best = rows["strike"].to_numpy()[np.argmin(np.abs(delta + 0.16))]
    assert first["put_short_strike"] == best


def test_no_look_ahead(sp500: tuple[pl.DataFrame, pl.DataFrame]) -> None:
    """Perturbing every chain row and bar after t changes nothing in the trades closed and the equity up to t."""
    bars, chain = sp500
    t = bars.get_column("ts")[150]
    rng = np.random.default_rng(0)
    factor = pl.Series(rng.uniform(0.3, 3.0, chain.height))
    later = pl.col("ts") > t
    chain2 = chain.with_columns(pl.when(later).then(pl.col(c) * factor).otherwise(pl.col(c)).alias(c)
                                for c in ("bid", "ask", "iv")).with_columns(
        pl.max_horizontal("bid", "ask").alias("ask"), pl.min_horizontal("bid", "ask").alias("bid"))
    bars2 = bars.with_columns(pl.when(later).then(pl.col("close") * 1.2).otherwise(pl.col("close")).alias("close"))
    cfg = BacktestConfig(max_open=2)
    a, b = backtest(chain, bars, RuleCondor(), cfg), backtest(chain2, bars2, RuleCondor(), cfg)
    assert not a.trades.equals(b.trades)  # the perturbation does reach the later trades
    done = pl.col("exit_ts") <= t
    assert a.trades.filter(done).height > 0
    assert a.trades.filter(done).equals(b.trades.filter(done))
    assert a.equity.filter(pl.col("ts") <= t).equals(b.equity.filter(pl.col("ts") <= t))
    # and the same holds when the data simply ends at t (nothing after t is needed to decide up to t)
    c = backtest(chain.filter(~later), bars.filter(pl.col("ts") <= t), RuleCondor(), cfg)
    assert c.equity.equals(a.equity.filter(pl.col("ts") <= t))
    closed = done & (pl.col("exit_reason") != "end_of_data")  # the truncated run also closes what is open at t
    assert c.trades.filter(closed).equals(a.trades.filter(done))


def test_rule_condor_on_a_hand_made_chain() -> None:
    """iv 0.2, S 100, 30 days: the put nearest -0.16 delta is 95 (-0.18; 90 is -0.04), the call nearest +0.16 is
    105 (0.21; 110 is 0.05); 5% wings give 90 / 110: the same condor as the absolute decision 95 / 105 / 5."""
    days = [0, 1, 30]
    chain, bars = _chain([0, 30], [ENTRY, ENTRY]), _bars(days, [100.0, 100.0, 100.0])
    cfg = BacktestConfig(**CFG, max_open=2, close_dte=None)
    rule = backtest(chain, bars, RuleCondor(target_delta=0.16, wing=0.05), cfg)
    assert rule.trades.equals(backtest(chain, bars, _decision(), cfg).trades)
    # day 1: no chain; day 30: the only expiry is not after the bar
    assert rule.skipped.get_column("reason").to_list() == ["no_chain", "no_expiry"]


def test_crossed_strikes() -> None:
    days = [0, 30]
    chain, bars = _chain(days, [ENTRY, ENTRY]), _bars(days, [100.0, 100.0])
    with pytest.raises(BacktestInputError, match="put_strike must be <= call_strike"):
        backtest(chain, bars, _decision(put=106.0, call=94.0))
    # valid targets whose nearest listed strikes cross (a put listed at 104, a call at 96) are skipped
    extra = chain.head(2).with_columns(pl.Series("strike", [104.0, 96.0]), pl.Series("right", ["P", "C"]))
    res = backtest(pl.concat([chain, extra]), bars, _decision(put=100.0, call=100.2))
    assert res.trades.height == 0 and res.skipped.get_column("reason").to_list() == ["crossed_strikes"]


def test_invalid_quote_counts_as_unquoted() -> None:
    cheap = ((0.1, 0.2), (0.2, 0.3), (0.2, 0.3), (0.1, 0.2))  # debit 0.4: take profit at 50%
    broken = ((0.3, 0.2), *cheap[1:])  # ask < bid on the long put
    t = _one_trade([0, 1, 2], [ENTRY, broken, cheap], [100.0] * 3, close_dte=None)
    assert t["exit_reason"] == "take_profit" and t["exit_ts"] == T0 + dt.timedelta(days=2)
