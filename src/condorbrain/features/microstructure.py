"""Quote microstructure (seed 002): microprice, effective spread, order imbalance; and the interaction features.

Seed 002's definitions need the sizes at the best bid and ask:

    microprice = (bid * ask_size + ask * bid_size) / (bid_size + ask_size)      price units
    eff_spread = (microprice - mid) / mid                                         fraction of mid
    imbalance  = (bid_size - ask_size) / (bid_size + ask_size)                    -1 .. 1

They are tied by an identity: microprice = mid + imbalance * (ask - bid) / 2. Option chains often come without
sizes; then `bvc_imbalance` supplies the imbalance from the underlying's bars instead (bulk volume classification,
Easley, Lopez de Prado & O'Hara 2012: the buy fraction of a bar's volume is Phi(r_t / sigma_r), so the signed
imbalance is 2 Phi(r_t / sigma_r) - 1), and the identity gives the microprice and effective spread.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.special import ndtr

from condorbrain.features.indicators import rolling_std

__all__ = ["bvc_imbalance", "interaction_terms", "quote_microstructure"]

Array = NDArray[np.float64]


def _float(name: str, x: ArrayLike) -> Array:
    arr = np.asarray(x, dtype=np.float64)
    if np.isinf(arr).any():
        raise ValueError(f"{name} must be finite (NaN marks a missing value)")
    return arr


def quote_microstructure(
    bid: ArrayLike, ask: ArrayLike, bid_size: ArrayLike | None = None, ask_size: ArrayLike | None = None,
    imbalance: ArrayLike | None = None,
) -> dict[str, Array]:
    """mid, microprice, eff_spread and imbalance of quotes (arrays that broadcast).

    Pass either the sizes (seed 002's formulas) or, when sizes are missing, an imbalance proxy in [-1, 1] (e.g.
    `bvc_imbalance` of the underlying). Rows with a non-positive mid, bid > ask or zero total size get NaN.

    Returns:
        {"mid": price units, "microprice": price units, "eff_spread": fraction of mid, "imbalance": -1..1}.

    Raises:
        ValueError: naming the argument, when both or neither of sizes / imbalance are given, or for inf.
    """
    b, a = _float("bid", bid), _float("ask", ask)
    if (bid_size is None) != (ask_size is None):
        raise ValueError("bid_size and ask_size must be given together")
    if (bid_size is None) == (imbalance is None):
        raise ValueError("give either bid_size and ask_size, or imbalance (the proxy used when sizes are missing)")
    mid = 0.5 * (b + a)
    ok = (mid > 0) & (a >= b)
    if bid_size is not None:
        bs, as_ = _float("bid_size", bid_size), _float("ask_size", ask_size)
        if ((bs < 0) | (as_ < 0)).any():
            raise ValueError("bid_size and ask_size must be >= 0")
        total = bs + as_
        ok = ok & (total > 0)
        safe = np.where(total > 0, total, 1.0)
        imb = np.where(ok, (bs - as_) / safe, np.nan)
    else:
        imb = _float("imbalance", imbalance)
        if (np.abs(imb) > 1).any():
            raise ValueError("imbalance must lie in [-1, 1]")
        imb = np.where(ok, imb, np.nan)
    micro = np.where(ok, mid + imb * 0.5 * (a - b), np.nan)
    eff = np.where(ok, (micro - mid) / np.where(ok, mid, 1.0), np.nan)
    mid = np.where(ok, mid, np.nan)
    return {"mid": mid, "microprice": micro, "eff_spread": eff, "imbalance": imb}


def bvc_imbalance(close: ArrayLike, n: int = 20) -> Array:
    """Bulk-volume-classification order imbalance of a bar series, -1..1: 2 Phi(r_t / sd_t) - 1.

    r_t = ln(c_t / c_{t-1}); sd_t = population std of the last n log returns (r_t included), so the value at t
    uses bars up to t only. First value at index n; a zero sd gives 0 (no classified flow).
    """
    c = np.asarray(close, dtype=np.float64)
    if c.ndim != 1 or not np.isfinite(c).all() or (c <= 0).any():
        raise ValueError("close must be a 1-D array of finite values > 0")
    out = np.full(c.shape, np.nan)
    if len(c) < 2:
        return out
    r = np.diff(np.log(c))
    sd = rolling_std(r, n, ddof=0)
    z = np.where(sd > 0, r / np.where(sd > 0, sd, 1.0), 0.0)
    z[np.isnan(sd)] = np.nan
    out[1:] = 2.0 * ndtr(z) - 1.0
    return out


def interaction_terms(S: ArrayLike, K: ArrayLike, T: ArrayLike, volume: ArrayLike) -> dict[str, Array]:
    """Seed 002's interaction features, with m = S / K (moneyness, dimensionless) and T in years (365-day).

    - ``moneyness_sqrt_t``   = m sqrt(T)                       (years^0.5)
    - ``log_m_log_t``        = ln(m) ln(T)                     (NaN at T == 0, where ln T is undefined)
    - ``sq_moneyness_t``     = (m - 1)^2 T                     (years)
    - ``log_volume_abs_log_m`` = ln(1 + volume) |ln m|          (the seed's ln(volume), shifted so volume 0 is 0)
    - ``atm_proximity``      = exp(-(ln m)^2) sqrt(T)          (years^0.5; 1 * sqrt(T) at the money)
    """
    S_, K_, T_, v = (_float(n, x) for n, x in (("S", S), ("K", K), ("T", T), ("volume", volume)))
    if (S_ <= 0).any() or (K_ <= 0).any():
        raise ValueError("S and K must be > 0")
    if (T_ < 0).any():
        raise ValueError("T must be >= 0")
    if (v < 0).any():
        raise ValueError("volume must be >= 0")
    m = S_ / K_
    lm = np.log(m)
    sqrt_t = np.sqrt(T_)
    log_t = np.log(np.where(T_ > 0, T_, 1.0))
    return {
        "moneyness_sqrt_t": m * sqrt_t,
        "log_m_log_t": np.where(T_ > 0, lm * log_t, np.nan),
        "sq_moneyness_t": (m - 1.0) ** 2 * T_,
        "log_volume_abs_log_m": np.log1p(v) * np.abs(lm),
        "atm_proximity": np.exp(-lm * lm) * sqrt_t,
    }
