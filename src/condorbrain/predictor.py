"""Use a trained run folder: the policy for a window of bars, or bar by bar on a stream with carried state.

::

    from condorbrain.predictor import Predictor

    p = Predictor.from_run("runs/main-20260101-120000")
    pol = p.policy(window)            # window: (L, 24) raw CONDOR_FEATURES rows, oldest first -> Policy
    print(pol.k_lower_price, pol.k_upper_price, pol.pop)

    stream = p.stream()               # O(1) per bar: the SSM state is carried from bar to bar
    for row in rows:                  # row: (24,) raw features of the newest bar
        pol = stream.update(row)

Inputs are *unnormalised* feature rows in :data:`condorbrain.features.CONDOR_FEATURES` order (what
:func:`condorbrain.main_job.daily_policy_frame` computes); the predictor applies the scaler saved in the run's
checkpoint (fitted on the run's training period), never one fitted on the new data. The stream's policy after bars
x_0 .. x_t equals ``policy(x[0 : t + 1])``, the batch forward over every bar the stream has seen; the model was
trained on windows of ``lookback`` bars, and its SSM state forgets older bars at learned rates.

Strikes follow :func:`condorbrain.main_job.condor_strikes`, the rule the POP / ROI heads were trained on.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

from condorbrain.data import ClippedZScore
from condorbrain.features import CONDOR_FEATURES
from condorbrain.main_job import (
    PopCalibration,
    RunConfig,
    condor_strikes,
    daily_policy_frame,
    load_run,
)
from condorbrain.models import CondorBrain, PolicyOutput, check_table_keys, read_config_file
from condorbrain.ssm.graph import make_stepper

__all__ = ["REGIME_NAMES", "Policy", "PolicyStream", "PredictConfig", "Predictor", "predict_bars"]

REGIME_NAMES: tuple[str, ...] = ("low", "normal", "high")
"""Names of the volatility regimes (class indices 0, 1, 2 of the regime head)."""

_CLOSE = CONDOR_FEATURES.index("close")


@dataclass(frozen=True)
class Policy:
    """CondorBrain's proposal and forecasts at one decision bar. Fractions are of the spot at that bar, over the
    holding horizon (``hold_horizon`` bars) unless said otherwise."""

    spot: float
    """The decision bar's close (price units); the price-unit properties scale by it."""
    k_lower: float
    """Short put strike / spot (e.g. 0.95)."""
    k_upper: float
    """Short call strike / spot (e.g. 1.05)."""
    wing: float
    """Wing width / spot: the long put is at k_lower - wing, the long call at k_upper + wing."""
    pop: float
    """Probability of profit: the close at the horizon ends between the short strikes (0..1)."""
    expected_roi: float
    """Expected P&L of the condor at the horizon / its maximum loss (-1 = the full loss)."""
    regime_probs: Mapping[str, float]
    """Probabilities of the volatility regimes low / normal / high (sum 1)."""
    returns: Mapping[int, float]
    """Forecast simple return close_{t+h} / close_t - 1 for each horizon h (bars)."""
    vol: float
    """Forecast realized volatility over the holding horizon, sqrt(sum of squared one-bar log returns)."""
    max_drawdown: float
    """Forecast maximum drawdown of the path over the holding horizon (a fraction, > 0)."""
    hold_horizon: int
    """Holding horizon, bars."""

    @property
    def k_lower_price(self) -> float:
        """Short put strike, price units."""
        return self.spot * self.k_lower

    @property
    def k_upper_price(self) -> float:
        """Short call strike, price units."""
        return self.spot * self.k_upper

    @property
    def wing_price(self) -> float:
        """Wing width, price units."""
        return self.spot * self.wing

    @property
    def regime(self) -> str:
        """The most probable regime."""
        return max(self.regime_probs, key=lambda k: self.regime_probs[k])

    def to_row(self) -> dict[str, float]:
        """Flat columns for a table: the fields, the price-unit strikes, ``regime_<name>`` and ``ret_<h>``."""
        return {
            "spot": self.spot, "k_lower": self.k_lower, "k_upper": self.k_upper, "wing": self.wing,
            "k_lower_price": self.k_lower_price, "k_upper_price": self.k_upper_price, "wing_price": self.wing_price,
            "pop": self.pop, "expected_roi": self.expected_roi,
            **{f"regime_{k}": v for k, v in self.regime_probs.items()},
            **{f"ret_{h}": v for h, v in self.returns.items()},
            "vol": self.vol, "max_drawdown": self.max_drawdown,
        }  # fmt: skip

    def __str__(self) -> str:
        s = self.spot
        lines = [
            f"iron condor over {self.hold_horizon} bars at spot {s:.2f}:",
            (f"  long put {s * (self.k_lower - self.wing):.2f} / short put {self.k_lower_price:.2f}"
             f"  |  short call {self.k_upper_price:.2f} / long call {s * (self.k_upper + self.wing):.2f}"
             f"  (wing {self.wing_price:.2f})"),
            f"  POP {self.pop:.1%}, expected ROI {self.expected_roi:+.1%} of max loss",
            "  regime " + ", ".join(f"{k} {v:.0%}" for k, v in self.regime_probs.items()),
            "  returns " + ", ".join(f"{h} bars {v:+.2%}" for h, v in self.returns.items())
            + f"; vol {self.vol:.2%}, max drawdown {self.max_drawdown:.2%}",
        ]
        return "\n".join(lines)


class Predictor:
    """A trained CondorBrain with its saved scaler and run config; build with :meth:`from_run`.

    Args:
        model: the network (put in eval mode).
        scaler: the scaler of the run's training period, over CONDOR_FEATURES.
        config: the run's config (strike rule: ``pop_level``; horizons).
    """

    def __init__(self, model: CondorBrain, scaler: ClippedZScore, config: RunConfig,
                 pop_calibration: PopCalibration | None = None) -> None:
        if scaler.feature_names != tuple(CONDOR_FEATURES) or model.config.n_features != len(CONDOR_FEATURES):
            raise ValueError(f"scaler and model must read CONDOR_FEATURES ({len(CONDOR_FEATURES)} columns), got "
                             f"{scaler.feature_names} and n_features={model.config.n_features}")
        if model.config != config.model:
            raise ValueError("model.config differs from config.model")
        self.model, self.scaler, self.config = model.eval(), scaler, config
        self.pop_calibration = pop_calibration or PopCalibration()

    @classmethod
    def from_run(cls, run_dir: str | os.PathLike[str], *, device: str | torch.device = "cpu") -> Predictor:
        """Load a run folder (:func:`condorbrain.main_job.load_run`: config.json, the final checkpoint's EMA
        weights, the saved scaler; nothing is unpickled). Raises FileNotFoundError / CheckpointError naming the file.
        """
        run = load_run(run_dir, device=device)
        return cls(run.model, run.scaler, run.config, run.pop_calibration)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def policy(self, window: Any) -> Policy | list[Policy]:
        """The policy at the last bar of ``window``.

        Args:
            window: raw features, oldest bar first: (L, 24) -> one :class:`Policy`; (B, L, 24) -> a list of B. A
                numpy array, torch tensor, or a polars DataFrame with the CONDOR_FEATURES columns (2-D case).

        Raises:
            ValueError: naming ``window``: wrong shape or feature count, a missing column, NaN or inf.
        """
        raw = _features(window, "window", ndims=(2, 3), shape_text="(L, 24) or (B, L, 24)")
        batched = raw.ndim == 3
        raw = raw if batched else raw[None]  # (B, L, F)
        with torch.no_grad():
            out = self.model(self._scaled(raw))  # (B, ...)
        pols = self._policies(out, raw[:, -1, _CLOSE])
        return pols if batched else pols[0]

    def stream(self, n_streams: int = 1, max_len: int | None = None) -> PolicyStream:
        """A new stream (no history yet) of ``n_streams`` independent series; see :class:`PolicyStream`.

        ``max_len`` bounds the stream's length for the attention mixer's KV cache (default: ``lookback``); the SSM
        mixers carry a fixed-size state and take any length."""
        return PolicyStream(self, n_streams, max_len)

    # --- shared by policy() and the stream -------------------------------------------------------------------------
    def _scaled(self, raw: np.ndarray) -> torch.Tensor:
        """raw (..., F) -> float32 -> scaled tensor (..., F) on the model's device, exactly as the training data."""
        flat = self.scaler.transform(raw.reshape(-1, raw.shape[-1]).astype(np.float32))
        return torch.from_numpy(flat.reshape(raw.shape)).to(self.device)

    def _policies(self, out: PolicyOutput, spot: np.ndarray) -> list[Policy]:
        """PolicyOutput with (B, ...) fields -> B policies."""
        k = condor_strikes(out, self.config)
        pop = torch.from_numpy(self.pop_calibration.apply(out.pop_logit.detach().cpu()))  # calibrated on validation
        cols = {"k_lower": k.k_lower, "k_upper": k.k_upper, "wing": k.wing, "pop": pop, "roi": out.roi,
                "vol": out.vol, "max_dd": out.max_dd, "ret": out.ret, "regime": out.regime_probs}
        v = {name: t.detach().cpu().double().numpy() for name, t in cols.items()}
        names = REGIME_NAMES if self.config.model.n_regimes == len(REGIME_NAMES) else tuple(
            f"regime_{i}" for i in range(self.config.model.n_regimes))
        horizons = self.config.model.horizons
        return [Policy(spot=float(spot[b]), k_lower=float(v["k_lower"][b]), k_upper=float(v["k_upper"][b]),
                       wing=float(v["wing"][b]), pop=float(v["pop"][b]), expected_roi=float(v["roi"][b]),
                       regime_probs=dict(zip(names, v["regime"][b].tolist(), strict=True)),
                       returns=dict(zip(horizons, v["ret"][b].tolist(), strict=True)), vol=float(v["vol"][b]),
                       max_drawdown=float(v["max_dd"][b]), hold_horizon=self.config.model.hold_horizon)
                for b in range(len(spot))]


class PolicyStream:
    """Bars one at a time with carried state (``CondorBrain.allocate_inference_cache`` + ``step``): O(1) per bar,
    captured in a CUDA graph on a GPU (:attr:`path`).

    After bars x_0 .. x_t, :meth:`update` returns what ``predictor.policy(x[0 : t + 1])`` returns."""

    def __init__(self, predictor: Predictor, n_streams: int = 1, max_len: int | None = None) -> None:
        if isinstance(n_streams, bool) or not isinstance(n_streams, int) or n_streams < 1:
            raise ValueError(f"n_streams must be a positive int, got {n_streams!r}")
        self.predictor, self.n_streams = predictor, n_streams
        self._stepper = make_stepper(predictor.model, n_streams, max_seqlen=max_len)
        self.cache = self._stepper.cache
        self.path = self._stepper.path
        """How each bar runs: ``"cuda-graph"`` (the whole step captured once and replayed: a model on a GPU with SSM
        mixers) or ``"eager"`` (:func:`condorbrain.ssm.graph.make_stepper`)."""
        self.steps = 0
        """Bars consumed so far."""

    def reset(self) -> None:
        """Forget every bar seen: the states back to zero, in place."""
        self._stepper.reset()
        self.steps = 0

    def update(self, features_row: Any) -> Policy | list[Policy]:
        """Consume the newest bar and return the policy at it.

        Args:
            features_row: raw features of the new bar: (24,) for a single stream -> one :class:`Policy`, or
                (n_streams, 24) -> a list of n_streams.

        Raises:
            ValueError: naming ``features_row``: wrong shape or feature count, NaN or inf. The state is unchanged.
        """
        shape = "(24,) or (n_streams, 24)" if self.n_streams == 1 else f"({self.n_streams}, 24)"
        raw = _features(features_row, "features_row", ndims=(1, 2), shape_text=shape)
        single = raw.ndim == 1
        raw = raw[None] if single else raw  # (B, F)
        if raw.shape[0] != self.n_streams:
            raise ValueError(f"features_row must have shape {shape} for this stream, got {raw.shape}")
        out = self._stepper.step(self.predictor._scaled(raw[:, None]))  # (B, ...); _policies copies it out
        self.steps += 1
        pols = self.predictor._policies(out, raw[:, _CLOSE])
        return pols[0] if single else pols


def _features(value: Any, name: str, ndims: tuple[int, ...], shape_text: str) -> np.ndarray:
    """Raw features as a float64 array, checked: ndim, 24 columns, all finite (also in float32)."""
    if isinstance(value, pl.DataFrame):
        missing = [c for c in CONDOR_FEATURES if c not in value.columns]
        if missing:
            raise ValueError(f"{name} lacks the feature column(s) {missing}")
        value = value.select(list(CONDOR_FEATURES)).to_numpy()
    elif isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    try:
        arr = np.asarray(value, dtype=np.float64)  # the model reads float32 (as in training); spot is kept exact
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name} must be numeric of shape {shape_text}, got {type(value).__name__} ({e})") from None
    n_feat = len(CONDOR_FEATURES)
    if arr.ndim not in ndims or arr.shape[-1] != n_feat or 0 in arr.shape:
        raise ValueError(f"{name} must have shape {shape_text} (the {n_feat} CONDOR_FEATURES, unnormalised), got "
                         f"{arr.shape}")
    bad = ~np.isfinite(arr.astype(np.float32))
    if bad.any():
        where = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(f"{name} has NaN or inf at index {where} (column {CONDOR_FEATURES[where[-1]]!r}); give "
                         "complete rows (the indicators need their warm-up bars)")
    return arr


# ------------------------------------------------------------------------------------------------------------------
# condorbrain predict

@dataclass(frozen=True)
class PredictConfig:
    """Options of ``condorbrain predict`` (the ``[predict]`` table of a config file)."""

    bars: str | None = None
    """Daily bars file (CSV, Parquet or a directory of parts; the bars schema). None = ``embedded``."""
    embedded: str | None = None
    """"sp500" (with the real VIX) or "nasdaq": the daily bars shipped with arch. Used when ``bars`` is None;
    None there means "sp500"."""
    last: int | None = None
    """Stream only over the last N bars (their features still use the bars before); None = every complete bar."""
    out: str | None = None
    """Output table, .parquet or .csv; None = RUN_DIR/predict.parquet."""
    assume_tz: str | None = None
    """IANA zone of a bars file's timestamps that carry none (default: such timestamps are an error)."""

    def __post_init__(self) -> None:
        if self.bars is not None and self.embedded is not None:
            raise ValueError("give bars or embedded, not both")
        if self.embedded not in (None, "sp500", "nasdaq"):
            raise ValueError(f"embedded must be 'sp500' or 'nasdaq', got {self.embedded!r}")
        if self.last is not None and (isinstance(self.last, bool) or not isinstance(self.last, int) or self.last < 1):
            raise ValueError(f"last must be None or a positive int, got {self.last!r}")
        if self.out is not None and Path(self.out).suffix not in (".parquet", ".csv"):
            raise ValueError(f"out must end in .parquet or .csv, got {self.out!r}")

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], **overrides: Any) -> PredictConfig:
        """The ``[predict]`` table of a TOML / JSON config file (other tables are ignored), then ``overrides``."""
        table = dict(read_config_file(path).get("predict", {}))
        check_table_keys(path, "predict", table, (f.name for f in dataclasses.fields(cls)))
        return dataclasses.replace(cls(**table), **overrides)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def load_bars(self) -> tuple[pl.DataFrame, pl.DataFrame | None]:
        """The bars (and the VIX for embedded sp500) this config names."""
        from condorbrain.data import load_bars, load_nasdaq, load_sp500, load_vix

        if self.bars is not None:
            return load_bars(self.bars, assume_tz=self.assume_tz), None
        if self.embedded == "nasdaq":
            return load_nasdaq(), None
        return load_sp500(), load_vix()


def predict_bars(predictor: Predictor, bars: pl.DataFrame, vix: pl.DataFrame | None = None,
                 last: int | None = None) -> tuple[pl.DataFrame, Policy]:
    """Stream ``predictor`` over daily bars. Returns a table with one row per streamed bar (ts and
    :meth:`Policy.to_row`'s columns) and the policy at the last bar.

    The features come from :func:`condorbrain.main_job.daily_policy_frame` (the training data's path). The stream
    starts after the last bar with an incomplete feature row (the indicators' warm-up; said on stdout) or at the
    ``last``-th bar from the end, whichever is later; each row's policy equals ``predictor.policy`` over the raw
    feature rows from the stream's first bar to that row.
    """
    frame = daily_policy_frame(bars, vix, predictor.config)
    raw = frame.select(list(CONDOR_FEATURES)).to_numpy()  # (N, 24) float64; the predictor casts as training did
    incomplete = np.flatnonzero(~np.isfinite(raw.astype(np.float32)).all(axis=1))
    start = int(incomplete[-1]) + 1 if incomplete.size else 0
    if start >= len(raw):
        raise ValueError(f"bars: none of the {len(raw)} bars after the last incomplete one has complete features")
    if start:
        print(f"skipping the first {start} bars: bar {start - 1} is the last with an incomplete feature row "
              f"(indicator warm-up)")
    if last is not None:
        start = max(start, len(raw) - last)
    stream = predictor.stream(max_len=len(raw) - start)
    policies = [stream.update(r) for r in raw[start:]]
    table = frame.select("ts").slice(start).hstack(pl.DataFrame([p.to_row() for p in policies]))
    return table, policies[-1]
