"""Each indicator against values worked out by hand (in the comments) or by a plain loop written here, plus the
look-ahead test: changing inputs after t leaves every output at or before t unchanged."""

from __future__ import annotations

import numpy as np
import pytest

from condorbrain.features import (
    adx,
    atr,
    bollinger,
    ema,
    iv_rank,
    macd,
    momentum,
    price_position,
    psar,
    psar_mark,
    roc,
    rolling_volatility,
    rsi,
    sma,
    stoch_k,
    true_range,
    wilder_smooth,
)

nan = np.nan

# Five bars used by the ATR / stochastic hand computations.
H5 = np.array([10.0, 10.5, 10.2, 11.0, 10.9])
L5 = np.array([9.0, 9.2, 9.8, 10.1, 10.0])
C5 = np.array([9.5, 10.0, 9.9, 10.8, 10.2])


def _walk(n: int = 300, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    c = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, n)))
    h = c * (1 + rng.uniform(0, 0.01, n))
    lo = c * (1 - rng.uniform(0, 0.01, n))
    return h, lo, c


def _loop_ema(x: np.ndarray, n: int, alpha: float) -> np.ndarray:
    """The textbook recursion, one value at a time: SMA seed at n-1, then y = a x + (1-a) y_prev."""
    out = [nan] * len(x)
    if len(x) >= n:
        y = sum(x[:n]) / n
        out[n - 1] = y
        for t in range(n, len(x)):
            y = alpha * x[t] + (1 - alpha) * y
            out[t] = y
    return np.array(out)


# ---------------------------------------------------------------- moving averages


def test_sma_by_hand() -> None:
    np.testing.assert_allclose(sma([1.0, 2.0, 3.0, 4.0, 5.0], 3), [nan, nan, 2.0, 3.0, 4.0])


def test_ema_by_hand() -> None:
    # n = 3 -> alpha = 0.5; seed = mean(2, 4, 6) = 4 at index 2; then 0.5*8 + 0.5*4 = 6; 0.5*12 + 0.5*6 = 9.
    np.testing.assert_allclose(ema([2.0, 4.0, 6.0, 8.0, 12.0], 3), [nan, nan, 4.0, 6.0, 9.0])


def test_ema_and_wilder_against_loop() -> None:
    x = _walk(200)[2]
    for n in (1, 2, 5, 14, 50):
        np.testing.assert_allclose(ema(x, n), _loop_ema(x, n, 2 / (n + 1)), rtol=1e-13)
        np.testing.assert_allclose(wilder_smooth(x, n), _loop_ema(x, n, 1 / n), rtol=1e-13)
    assert np.isnan(ema(x[:4], 5)).all()


# ---------------------------------------------------------------- Wilder's oscillators


def test_rsi_by_hand() -> None:
    # closes 10, 11, 10.5, 11.5, 12, 11 -> changes +1, -0.5, +1, +0.5, -1; n = 3.
    # t=3: gain = (1 + 0 + 1)/3 = 2/3, loss = 0.5/3 = 1/6 -> RSI = 100 (2/3)/(2/3 + 1/6) = 80.
    # t=4: gain = (2/3 * 2 + 0.5)/3 = 11/18, loss = (1/6 * 2 + 0)/3 = 2/18 -> 100 * 11/13.
    # t=5: gain = (11/18 * 2 + 0)/3 = 11/27, loss = (2/18 * 2 + 1)/3 = 11/27 -> 50.
    got = rsi([10.0, 11.0, 10.5, 11.5, 12.0, 11.0], 3)
    np.testing.assert_allclose(got, [nan, nan, nan, 80.0, 1100 / 13, 50.0], rtol=1e-13)


def test_rsi_edges() -> None:
    np.testing.assert_allclose(rsi([1.0, 2.0, 3.0, 4.0], 2), [nan, nan, 100.0, 100.0])  # only gains
    np.testing.assert_allclose(rsi([4.0, 3.0, 2.0, 1.0], 2), [nan, nan, 0.0, 0.0])  # only losses
    np.testing.assert_allclose(rsi([5.0, 5.0, 5.0, 5.0], 2), [nan, nan, 50.0, 50.0])  # flat: neutral 50
    assert np.isnan(rsi([1.0, 2.0], 2)).all()


def test_true_range_and_atr_by_hand() -> None:
    # TR_1 = max(1.3, |10.5-9.5|, |9.2-9.5|) = 1.3; TR_2 = max(0.4, 0.2, 0.2) = 0.4;
    # TR_3 = max(0.9, |11-9.9| = 1.1, 0.2) = 1.1; TR_4 = max(0.9, 0.1, 0.8) = 0.9.
    np.testing.assert_allclose(true_range(H5, L5, C5), [1.0, 1.3, 0.4, 1.1, 0.9], rtol=1e-13)
    # ATR(3): index 3 = (1.3 + 0.4 + 1.1)/3 = 0.9333..; index 4 = (0.9333.. * 2 + 0.9)/3 = 0.92222..
    np.testing.assert_allclose(atr(H5, L5, C5, 3), [nan, nan, nan, 2.8 / 3, (2.8 / 3 * 2 + 0.9) / 3], rtol=1e-13)


def _loop_adx(h: np.ndarray, lo: np.ndarray, c: np.ndarray, n: int) -> np.ndarray:
    """Wilder's book, with his running *sums*: TR14 = sum of the first 14, then TR14 - TR14/14 + TR (and the same for
    +DM14, -DM14); DI from the sums; ADX = mean of the first 14 DX, then (ADX * 13 + DX) / 14."""
    out = [nan] * len(h)
    trs, pdms, mdms = [], [], []
    for t in range(1, len(h)):
        trs.append(max(h[t] - lo[t], abs(h[t] - c[t - 1]), abs(lo[t] - c[t - 1])))
        up, down = h[t] - h[t - 1], lo[t - 1] - lo[t]
        pdms.append(up if (up > down and up > 0) else 0.0)
        mdms.append(down if (down > up and down > 0) else 0.0)
    dxs = []
    tr_s = p_s = m_s = 0.0
    for k in range(len(trs)):  # k = bar t - 1
        if k < n - 1:
            continue
        if k == n - 1:
            tr_s, p_s, m_s = sum(trs[:n]), sum(pdms[:n]), sum(mdms[:n])
        else:
            tr_s, p_s, m_s = tr_s - tr_s / n + trs[k], p_s - p_s / n + pdms[k], m_s - m_s / n + mdms[k]
        pdi, mdi = 100 * p_s / tr_s, 100 * m_s / tr_s
        dxs.append(100 * abs(pdi - mdi) / (pdi + mdi))
        if len(dxs) == n:
            a = sum(dxs) / n
            out[k + 1] = a
        elif len(dxs) > n:
            a = (a * (n - 1) + dxs[-1]) / n
            out[k + 1] = a
    return np.array(out)


def test_adx_against_wilders_loop() -> None:
    h, lo, c = _walk(120, seed=4)
    for n in (3, 5, 14):
        got = adx(h, lo, c, n)
        np.testing.assert_allclose(got, _loop_adx(h, lo, c, n), rtol=1e-11)
        assert np.isnan(got[: 2 * n - 1]).all() and np.isfinite(got[2 * n - 1 :]).all()
    assert ((adx(h, lo, c) >= 0) & (adx(h, lo, c) <= 100))[27:].all()


def test_stoch_k_by_hand() -> None:
    # n = 3. t=2: HH = 10.5, LL = 9.0 -> 100 (9.9 - 9)/1.5 = 60; t=3: HH = 11, LL = 9.2 -> 100 (1.6/1.8);
    # t=4: HH = 11, LL = 9.8 -> 100 (0.4/1.2).
    np.testing.assert_allclose(stoch_k(H5, L5, C5, 3), [nan, nan, 60.0, 1600 / 18, 100 / 3], rtol=1e-13)
    flat = np.full(4, 5.0)
    np.testing.assert_allclose(stoch_k(flat, flat, flat, 2), [nan, 50.0, 50.0, 50.0])


# ---------------------------------------------------------------- bands and MACD


def test_bollinger_by_hand() -> None:
    # Window (1, 2, 3): mean 2, population std sqrt(2/3); k = 2.
    lo, mid, up = bollinger([1.0, 2.0, 3.0, 4.0, 5.0], 3, 2.0)
    sd = np.sqrt(2 / 3)
    np.testing.assert_allclose(mid, [nan, nan, 2.0, 3.0, 4.0])
    np.testing.assert_allclose(lo, [nan, nan, 2 - 2 * sd, 3 - 2 * sd, 4 - 2 * sd], rtol=1e-13)
    np.testing.assert_allclose(up, [nan, nan, 2 + 2 * sd, 3 + 2 * sd, 4 + 2 * sd], rtol=1e-13)


def test_macd_against_loop() -> None:
    x = _walk(80, seed=5)[2]
    line, sig, hist = macd(x, 3, 6, 4)
    want_line = _loop_ema(x, 3, 2 / 4) - _loop_ema(x, 6, 2 / 7)
    np.testing.assert_allclose(line, want_line, rtol=1e-12)
    # signal: the EMA(4) of the line, seeded with the mean of its first 4 defined values (indices 5..8).
    want_sig = np.full(len(x), nan)
    want_sig[5:] = _loop_ema(want_line[5:], 4, 2 / 5)
    np.testing.assert_allclose(sig, want_sig, rtol=1e-12)
    np.testing.assert_allclose(hist, want_line - want_sig, rtol=1e-12, atol=1e-15)
    assert np.isnan(sig[:8]).all() and np.isfinite(sig[8:]).all()
    with pytest.raises(ValueError, match="^fast"):
        macd(x, 26, 12, 9)


# ---------------------------------------------------------------- Parabolic SAR


def test_psar_by_hand() -> None:
    h = np.array([10.0, 11.0, 12.0, 11.5, 10.0, 9.5, 12.5])
    lo = np.array([9.0, 10.0, 11.0, 10.0, 8.5, 8.0, 9.0])
    # Start: down move l0 - l1 = -1 is not > 0 -> long; SAR = l0 = 9, EP = h1 = 11, AF = 0.02.
    # t=1: no penetration (10 > 9): out 9; next = 9 + .02 (11 - 9) = 9.04, capped by min(l0, l1) = 9 -> 9.
    # t=2: out 9; new high 12 -> EP 12, AF .04; next = 9 + .04 * 3 = 9.12 (below lows 10, 11).
    # t=3: out 9.12; next = 9.12 + .04 (12 - 9.12) = 9.2352.
    # t=4: low 8.5 <= 9.2352 -> reverse to short: SAR = max(EP 12, h3 11.5, h4 10) = 12; out 12; EP = 8.5,
    #      AF = .02; next = 12 + .02 (8.5 - 12) = 11.93 (above highs 11.5, 10).
    # t=5: high 9.5 < 11.93: out 11.93; new low 8 -> EP 8, AF .04; next = 11.93 + .04 (8 - 11.93) = 11.7728.
    # t=6: high 12.5 >= 11.7728 -> reverse to long: SAR = min(EP 8, l5 8, l6 9) = 8; out 8.
    np.testing.assert_allclose(psar(h, lo), [nan, 9.0, 9.0, 9.12, 12.0, 11.93, 8.0], rtol=1e-13)
    c = np.array([9.5, 10.5, 11.5, 10.5, 9.0, 8.5, 12.0])
    np.testing.assert_array_equal(psar_mark(c, psar(h, lo)), [nan, 1.0, 1.0, 1.0, -1.0, -1.0, 1.0])


def test_psar_starts_short_on_a_down_move() -> None:
    # Bars 0 -> 1: down move l0 - l1 = 2 > up move h1 - h0 = -1 -> short: SAR_1 = h0 = 12.
    h = np.array([12.0, 11.0, 10.5])
    lo = np.array([11.0, 9.0, 8.0])
    # t=1: out 12; EP = l1 = 9 (no new low at t=1 beyond EP); next = 12 + .02 (9 - 12) = 11.94, >= h0, h1 -> 12.
    # t=2: out 12.
    np.testing.assert_allclose(psar(h, lo), [nan, 12.0, 12.0])


def test_psar_stays_outside_the_bars() -> None:
    h, lo, _ = _walk(2000, seed=6)
    sar = psar(h, lo)
    # Wilder's rule: the SAR of a bar is never inside it -- at or below its low in an uptrend (else the trend would
    # have reversed), at or above its high in a downtrend; a reversal bar gets the old extreme, outside it too.
    assert np.isfinite(sar[1:]).all()
    assert ((sar[1:] <= lo[1:]) | (sar[1:] >= h[1:])).all()
    up = sar[1:] <= lo[1:]
    assert 0.2 < up.mean() < 0.8  # both trends occur on a random walk


# ---------------------------------------------------------------- the rest


def test_rolling_volatility_against_loop() -> None:
    c = _walk(60, seed=7)[2]
    r = np.diff(np.log(c))
    want = np.full(len(c), nan)
    for t in range(10, len(c)):
        want[t] = np.std(r[t - 10 : t], ddof=1)  # the 10 returns ending at bar t
    np.testing.assert_allclose(rolling_volatility(c, 10), want, rtol=1e-12)
    np.testing.assert_allclose(rolling_volatility(c, 10, periods_per_year=252), want * np.sqrt(252), rtol=1e-12)


def test_momentum_roc_price_position_by_hand() -> None:
    x = np.array([1.0, 3.0, 2.0, 5.0, 4.0])
    np.testing.assert_allclose(momentum(x, 2), [nan, nan, 1.0, 2.0, 2.0])
    np.testing.assert_allclose(roc(x, 2), [nan, nan, 100.0, 100 * (5 / 3 - 1), 100.0])
    # windows (1,3,2): (2-1)/2 = .5; (3,2,5): 1; (2,5,4): (4-2)/3.
    np.testing.assert_allclose(price_position(x, 3), [nan, nan, 0.5, 1.0, 2 / 3])


def test_iv_rank_by_hand() -> None:
    iv = np.array([0.2, 0.3, nan, 0.1, 0.25, 0.4])
    # n = 3, min_periods 2: t0 one value -> NaN; t1 (.2,.3) -> 100; t2 iv NaN -> NaN;
    # t3 (.3, -, .1) -> 0; t4 (-, .1, .25) -> 100; t5 (.1, .25, .4) -> 100.
    np.testing.assert_allclose(iv_rank(iv, 3, min_periods=2), [nan, 100.0, nan, 0.0, 100.0, 100.0])
    # full windows only (default): t5 is the first with 3 valid values.
    np.testing.assert_allclose(iv_rank(iv, 3), [nan, nan, nan, nan, nan, 100.0])
    iv2 = np.array([0.2, 0.4, 0.3, 0.3])
    # t2: (.2,.4,.3) -> 50; t3: (.4,.3,.3) -> 0.
    np.testing.assert_allclose(iv_rank(iv2, 3), [nan, nan, 50.0, 0.0])


def test_iv_rank_against_loop() -> None:
    rng = np.random.default_rng(8)
    iv = rng.uniform(0.1, 0.5, 400)
    iv[rng.random(400) < 0.2] = nan
    n, mp = 37, 20
    want = np.full(len(iv), nan)
    for t in range(len(iv)):
        w = iv[max(0, t - n + 1) : t + 1]
        w = w[~np.isnan(w)]
        if np.isnan(iv[t]) or len(w) < mp:
            continue
        want[t] = 50.0 if w.max() == w.min() else 100 * (iv[t] - w.min()) / (w.max() - w.min())
    np.testing.assert_allclose(iv_rank(iv, n, min_periods=mp), want, rtol=1e-13)


# ---------------------------------------------------------------- contracts


INDICATORS = {
    "sma": lambda h, lo, c: sma(c, 7),
    "ema": lambda h, lo, c: ema(c, 7),
    "rsi": lambda h, lo, c: rsi(c, 14),
    "atr": lambda h, lo, c: atr(h, lo, c, 14),
    "adx": lambda h, lo, c: adx(h, lo, c, 14),
    "stoch_k": lambda h, lo, c: stoch_k(h, lo, c, 14),
    "bollinger": lambda h, lo, c: np.stack(bollinger(c, 20, 2.0)),
    "macd": lambda h, lo, c: np.stack(macd(c)),
    "psar": lambda h, lo, c: psar(h, lo),
    "psar_mark": lambda h, lo, c: psar_mark(c, psar(h, lo)),
    "rolling_volatility": lambda h, lo, c: rolling_volatility(c, 20),
    "momentum": lambda h, lo, c: momentum(c, 10),
    "roc": lambda h, lo, c: roc(c, 10),
    "price_position": lambda h, lo, c: price_position(c, 30),
    "iv_rank": lambda h, lo, c: iv_rank(c / 500, 50, min_periods=10),
}


@pytest.mark.parametrize("name", sorted(INDICATORS))
def test_no_look_ahead(name: str) -> None:
    f = INDICATORS[name]
    h, lo, c = _walk(400, seed=9)
    full = f(h, lo, c)
    assert full.shape[-1] == len(c)
    rng = np.random.default_rng(10)
    for t in (0, 1, 50, 250, 398):
        h2, lo2, c2 = h.copy(), lo.copy(), c.copy()
        shock = np.exp(rng.normal(0, 0.05, len(c) - t - 1))
        h2[t + 1 :] *= shock * 1.01
        lo2[t + 1 :] *= shock * 0.99
        c2[t + 1 :] *= shock
        changed = f(h2, lo2, c2)
        np.testing.assert_array_equal(changed[..., : t + 1], full[..., : t + 1])
        # Streaming equals batch: the prefix alone gives the same values.
        np.testing.assert_array_equal(f(h[: t + 1], lo[: t + 1], c[: t + 1]), full[..., : t + 1])


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: sma(np.ones(5), 0), "^n "),
        (lambda: sma(np.ones((2, 2)), 2), "^x "),
        (lambda: ema([1.0, np.nan, 2.0], 2), "^x "),
        (lambda: rsi([1.0, np.inf], 2), "^close "),
        (lambda: atr(np.ones(5), np.ones(4), np.ones(5)), "one length"),
        (lambda: bollinger(np.ones(5), 3, -1.0), "^k "),
        (lambda: psar(np.ones(5), np.ones(5), step=0.0), "^step "),
        (lambda: roc(np.array([1.0, 0.0, 2.0]), 1), "^x "),
        (lambda: iv_rank(np.ones(5), 3, min_periods=4), "^min_periods "),
        (lambda: rolling_volatility(np.ones(5), 1), "^n "),
        (lambda: sma(np.ones(5), 2.5), "^n "),
    ],
)
def test_bad_input_named(call, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        call()


def test_short_series_are_all_nan() -> None:
    h, lo, c = _walk(5, seed=11)
    for f in INDICATORS.values():
        out = f(h, lo, c)
        assert out.shape[-1] == 5
    assert np.isnan(adx(h, lo, c, 14)).all() and np.isnan(sma(c, 20)).all() and np.isnan(macd(c)[1]).all()
