"""Black-Scholes in torch: the differentiable, device-agnostic twin of `condorbrain.features.options.black_scholes`.

Same formulas, conventions and edge handling (vega per vol point, theta per calendar day of a 365-day year, rho per
1% of r; the sigma sqrt(T) -> 0 limit at expiry or zero vol), so a policy can price and hedge inside a training
graph, on the GPU, and back-propagate through prices and greeks. The numpy version is the reference this one is
tested against (values, and autograd dprice/dS, dprice/dsigma against the analytic delta and vega).

Gradients stay finite at the edges: every division or log that a masked-out branch would evaluate at a bad point is
fed a safe value first (the "double where" pattern), because torch.where back-propagates NaN from the unused branch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["TorchGreeks", "black_scholes_torch"]

_SQRT_2PI = math.sqrt(2.0 * math.pi)
# sigma sqrt(T) below this is priced at its limit, as in the numpy version. It is chosen so that the backward pass
# of x / tot (which has -x / tot^2) cannot overflow: 1e-150 in float64 (the numpy value), 1e-15 in float32/16.
_TINY_TOTAL_VOL = {torch.float64: 1e-150}
_TINY_TOTAL_VOL_LOW_PRECISION = 1e-15
_D_CLIP = 50.0
_SQRT1_2 = math.sqrt(0.5)


def _ndtr(z: Tensor) -> Tensor:
    """Standard normal CDF as 0.5 erfc(-z / sqrt 2), accurate to float precision in the lower tail.

    Not `torch.special.ndtr`: its CPU kernel (torch 2.13) evaluates 0.5 (1 + erf) and loses the lower tail, 0 at
    z = -9 in float64 where the value is 1.1e-19, and ~1e-10 relative already at z in [-5, -2] (measured against scipy's
    ndtr). erfc of a large positive argument keeps its relative precision, so a deep out-of-the-money leg is priced
    as the numpy reference prices it; for z > 0 this is 1 - 0.5 erfc(z / sqrt 2), exact to float rounding.
    """
    return 0.5 * torch.special.erfc(-z * _SQRT1_2)


@dataclass(frozen=True)
class TorchGreeks:
    """Black-Scholes value and greeks as tensors of the broadcast input shape (units as `options.Greeks`).

    price: price units. delta: per unit of spot. gamma: per unit of spot squared. vega: per vol point.
    theta: per calendar day (365-day years). rho: per 1% of r.
    """

    price: Tensor
    delta: Tensor
    gamma: Tensor
    vega: Tensor
    theta: Tensor
    rho: Tensor


def _tensor(name: str, value: Tensor | float, like: Tensor | None) -> Tensor:
    if isinstance(value, Tensor):
        if not (value.is_floating_point() or value.dtype == torch.bool):
            raise ValueError(f"{name} must be a floating-point tensor, got dtype {value.dtype}")
        return value
    if like is None:
        return torch.as_tensor(value, dtype=torch.get_default_dtype())
    return torch.as_tensor(value, dtype=like.dtype, device=like.device)


def black_scholes_torch(
    S: Tensor | float,
    K: Tensor | float,
    T: Tensor | float,
    r: Tensor | float,
    sigma: Tensor | float,
    is_call: Tensor | bool,
    q: Tensor | float = 0.0,
) -> TorchGreeks:
    """Black-Scholes-Merton value and greeks in torch (see `options.black_scholes` for formulas and edges).

    Args:
        S, K: spot and strike, > 0 (price units). T: years to expiry (365-day), >= 0. r, q: rate and dividend
        yield, annualised, continuous. sigma: annualised vol, >= 0. is_call: bool tensor. Tensors broadcast and
        share one floating dtype and device (python floats follow the first tensor); NaN marks a missing row.

    Returns:
        `TorchGreeks` on the inputs' device and dtype; differentiable in S, K, T, r, sigma and q.

    Raises:
        ValueError: naming the argument, for a non-floating tensor, +-inf, S <= 0, K <= 0, T < 0 or sigma < 0.
    """
    like = next((v for v in (S, K, T, r, sigma, q) if isinstance(v, Tensor)), None)
    S_, K_, T_, r_, sig, q_ = (
        _tensor(n, v, like) for n, v in (("S", S), ("K", K), ("T", T), ("r", r), ("sigma", sigma), ("q", q))
    )
    dtypes = {t.dtype for t in (S_, K_, T_, r_, sig, q_)}
    if len(dtypes) != 1:
        raise ValueError(f"S, K, T, r, sigma and q must share one dtype, got {sorted(map(str, dtypes))}")
    for name, t, lower in (("S", S_, "pos"), ("K", K_, "pos"), ("T", T_, "nonneg"), ("sigma", sig, "nonneg")):
        td = t.detach()
        if torch.isinf(td).any():
            raise ValueError(f"{name} must be finite (NaN marks a missing row)")
        if lower == "pos" and (td <= 0).any():
            raise ValueError(f"{name} must be > 0")
        if lower == "nonneg" and (td < 0).any():
            raise ValueError(f"{name} must be >= 0")
    for name, t in (("r", r_), ("q", q_)):
        if torch.isinf(t.detach()).any():
            raise ValueError(f"{name} must be finite (NaN marks a missing row)")
    call = torch.as_tensor(is_call, device=S_.device)
    if call.dtype != torch.bool:
        raise ValueError(f"is_call must be a bool tensor (True for a call), got dtype {call.dtype}")

    S_, K_, T_, r_, sig, q_, call = torch.broadcast_tensors(S_, K_, T_, r_, sig, q_, call)
    one = torch.ones_like(S_)
    zero = torch.zeros_like(S_)
    safe_T = torch.where(T_ > 0, T_, one)  # sqrt has an infinite gradient at 0
    sqrt_t = torch.where(T_ > 0, torch.sqrt(safe_T), zero)
    tot = sig * sqrt_t
    x = torch.log(S_ / K_) + (r_ - q_) * T_
    degenerate = tot < _TINY_TOTAL_VOL.get(tot.dtype, _TINY_TOTAL_VOL_LOW_PRECISION)
    safe_tot = torch.where(degenerate, one, tot)
    limit = torch.where(x > 0, one * _D_CLIP, torch.where(x < 0, -one * _D_CLIP, zero))
    d1 = torch.where(degenerate, limit, x / safe_tot + 0.5 * safe_tot).clamp(-_D_CLIP, _D_CLIP)
    d2 = torch.where(degenerate, limit, x / safe_tot - 0.5 * safe_tot).clamp(-_D_CLIP, _D_CLIP)
    df_q = torch.exp(-q_ * T_)
    df_r = torch.exp(-r_ * T_)
    sign = torch.where(call, one, -one)
    n1 = _ndtr(sign * d1)
    n2 = _ndtr(sign * d2)
    pdf1 = torch.exp(-0.5 * d1 * d1) / _SQRT_2PI

    price = torch.clamp_min(sign * (S_ * df_q * n1 - K_ * df_r * n2), 0.0)
    delta = sign * df_q * n1
    gamma = torch.where(degenerate, zero, df_q * pdf1 / (S_ * safe_tot))
    vega = S_ * df_q * pdf1 * sqrt_t / 100.0
    safe_sqrt_t = torch.where(degenerate, one, sqrt_t)
    decay = torch.where(degenerate, zero, S_ * df_q * pdf1 * sig / (2.0 * safe_sqrt_t))
    theta = (-decay + sign * (q_ * S_ * df_q * n1 - r_ * K_ * df_r * n2)) / 365.0
    rho = sign * K_ * T_ * df_r * n2 / 100.0
    return TorchGreeks(price=price, delta=delta, gamma=gamma, vega=vega, theta=theta, rho=rho)
