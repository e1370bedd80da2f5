"""The main job's settings: one frozen config per table of a preset file.

``[model]`` -> :class:`~condorbrain.models.CondorBrainConfig`, ``[train]`` -> :class:`~condorbrain.train.TrainConfig`,
``[run]`` -> :class:`RunConfig` itself (data, split, pricing), ``[walk_forward]`` -> :class:`WalkForwardConfig`
(absent: one chronological split), ``[backtest]`` (with ``[backtest.fills]``) ->
:class:`~condorbrain.backtest.BacktestConfig`, ``[policy]`` -> :class:`PolicyFilter`. A ``[predict]`` table may sit
beside them (:class:`condorbrain.predictor.PredictConfig` reads it). A run folder's ``config.json`` is such a file.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
import math
import os
from dataclasses import dataclass, field
from typing import Any, Literal

from condorbrain.backtest import BacktestConfig, FillConfig
from condorbrain.models import CondorBrainConfig, check_table_keys, read_config_file
from condorbrain.train import TrainConfig

__all__ = ["PolicyFilter", "RunConfig", "WalkForwardConfig", "add_months"]

_TABLES = ("model", "train", "walk_forward", "backtest", "policy")
"""RunConfig fields that are tables of their own in a preset file (the rest form ``[run]``)."""


def _iso_date(name: str, value: str) -> dt.date:
    try:
        return dt.date.fromisoformat(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be an ISO date (YYYY-MM-DD), got {value!r}") from None


def _positive_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def add_months(day: dt.date, months: int) -> dt.date:
    """``day`` moved by ``months`` calendar months (day of month clipped to the target month's length)."""
    y, m = divmod(day.year * 12 + day.month - 1 + months, 12)
    m += 1
    last = (dt.date(y + m // 12, m % 12 + 1, 1) - dt.timedelta(days=1)).day
    return dt.date(y, m, min(day.day, last))


@dataclass(frozen=True)
class WalkForwardConfig:
    """Walk-forward evaluation: a fresh model per window, each trained on the past only.

    Window k tests on ``[first_test + k * test_months, first_test + (k + 1) * test_months)`` (the last one cut by the
    end of the data). Before each test period lies its validation period of ``val_months`` (early stopping, POP
    calibration), and before that the training period: every earlier bar (``expanding``) or the last ``train_months``
    (``sliding``). Each window refits the z-score scaler and the regime edges on its own training rows, and the
    baselines that are fitted (GARCH, HAR) refit on the same window's past. The run's purge (``hold_horizon`` bars)
    and ``embargo`` apply at both boundaries of every window.
    """

    first_test: str = "2011-01-01"
    """First day of the first test window (UTC date)."""
    test_months: int = 24
    """Length of each test window, calendar months; windows follow each other without gap or overlap."""
    val_months: int = 24
    """Length of the validation period before each test window, calendar months."""
    mode: Literal["expanding", "sliding"] = "expanding"
    """``expanding``: train on all earlier bars; ``sliding``: on the last ``train_months`` before validation."""
    train_months: int | None = None
    """Training length in months for ``sliding`` (required there, ignored for ``expanding``)."""
    max_windows: int | None = None
    """Stop after this many windows (None: until the data ends)."""

    def __post_init__(self) -> None:
        _iso_date("walk_forward.first_test", self.first_test)
        for name in ("test_months", "val_months"):
            _positive_int(f"walk_forward.{name}", getattr(self, name))
        if self.mode not in ("expanding", "sliding"):
            raise ValueError(f"walk_forward.mode must be 'expanding' or 'sliding', got {self.mode!r}")
        if self.mode == "sliding":
            if self.train_months is None:
                raise ValueError("walk_forward.train_months is required when mode = 'sliding'")
            _positive_int("walk_forward.train_months", self.train_months)
        if self.max_windows is not None:
            _positive_int("walk_forward.max_windows", self.max_windows)

    def windows(self, last_day: dt.date) -> list[dict[str, str | None]]:
        """The windows up to ``last_day`` (the data's last day): dicts of ``train_start`` (None: from the first
        bar), ``val_start``, ``test_start``, ``test_end`` (exclusive), ISO dates."""
        out: list[dict[str, str | None]] = []
        test_start = _iso_date("walk_forward.first_test", self.first_test)
        while test_start <= last_day and (self.max_windows is None or len(out) < self.max_windows):
            val_start = add_months(test_start, -self.val_months)
            train_start = (add_months(val_start, -self.train_months)
                           if self.mode == "sliding" and self.train_months is not None else None)
            test_end = add_months(test_start, self.test_months)
            out.append({"train_start": None if train_start is None else train_start.isoformat(),
                        "val_start": val_start.isoformat(), "test_start": test_start.isoformat(),
                        "test_end": test_end.isoformat()})
            test_start = test_end
        if not out:
            raise ValueError(f"walk_forward.first_test {self.first_test} is after the data's last day {last_day}")
        return out


@dataclass(frozen=True)
class PolicyFilter:
    """When the policy does not enter: its proposal at a bar is dropped (counted in the backtest summary as
    ``filtered``) unless every set threshold holds. Both off (None) by default: the policy proposes at every bar."""

    min_pop: float | None = None
    """Enter only when the calibrated probability of profit is >= this."""
    min_roi: float | None = None
    """Enter only when the predicted return on max risk (ROI head, before costs) is >= this."""

    def __post_init__(self) -> None:
        if self.min_pop is not None and not 0.0 <= self.min_pop <= 1.0:
            raise ValueError(f"policy.min_pop must be in [0, 1] or None, got {self.min_pop}")
        if self.min_roi is not None and not math.isfinite(self.min_roi):
            raise ValueError(f"policy.min_roi must be finite or None, got {self.min_roi}")


@dataclass(frozen=True)
class RunConfig:
    """Settings of the main job besides the model's and the training loop's."""

    model: CondorBrainConfig = field(default_factory=CondorBrainConfig)
    """The network (``[model]`` of a preset file)."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """The training loop (``[train]`` of a preset file)."""
    target_dte: int = 45
    """Calendar days to expiry of the representative contract (and of the condors the POP / ROI heads price)."""
    val_start: str = "2012-01-01"
    """First day of the validation period (UTC date)."""
    test_start: str = "2015-01-01"
    """First day of the held-out test period (UTC date); everything after it is never seen in training."""
    test_end: str | None = None
    """Day after the test period's last (UTC date, exclusive); None: to the end of the data."""
    train_start: str | None = None
    """First day of the training period (UTC date); None: from the first bar (indicator warm-up excepted)."""
    embargo: int = 5
    """Bars dropped at each boundary beyond the purge of ``hold_horizon`` bars (serial correlation of the inputs)."""
    pop_level: float = 0.9
    """Excursion quantile level that sets the short strikes of the condor the POP / ROI heads are trained on."""
    rate: float = 0.02
    """Risk-free rate for pricing (per year, continuous), as the synthetic chains use."""
    dividend_yield: float = 0.018
    """Dividend yield for pricing (per year, continuous), as the synthetic chains use."""
    vol_window: int = 22
    """Window (bars) of the trailing realized-vol baseline and of the regime label."""
    garch_refit_every: int = 21
    """GARCH(1,1) baseline: refit on the expanding past every this many bars of the test period."""
    max_staleness_days: int = 5
    """A quote older than this many days counts as missing (weekends and holidays fit inside)."""
    max_bars: int | None = None
    """Keep only the last this many daily bars of the embedded S&P 500 (quick runs and tests); None = all of them."""
    walk_forward: WalkForwardConfig | None = None
    """``[walk_forward]``: retrain per window (:mod:`condorbrain.walk_forward`); None: the one split above."""
    backtest: BacktestConfig | None = None
    """``[backtest]``: entry, management, sizing, costs; None: BacktestConfig's defaults with this run's
    ``target_dte``, ``rate`` and ``dividend_yield`` (:meth:`backtest_config`)."""
    policy: PolicyFilter = field(default_factory=PolicyFilter)
    """``[policy]``: when the trained policy does not enter."""

    def __post_init__(self) -> None:
        days = {name: _iso_date(name, getattr(self, name)) for name in ("val_start", "test_start")}
        for name in ("test_end", "train_start"):
            if getattr(self, name) is not None:
                days[name] = _iso_date(name, getattr(self, name))
        order = [n for n in ("train_start", "val_start", "test_start", "test_end") if n in days]
        for a, b in itertools.pairwise(order):
            if not days[a] < days[b]:
                raise ValueError(f"{a} ({getattr(self, a)}) must be before {b} ({getattr(self, b)})")
        if not 0.5 < self.pop_level < 1.0:
            raise ValueError(f"pop_level must be in (0.5, 1), got {self.pop_level}")
        if self.pop_level not in self.model.quantiles:
            raise ValueError(f"pop_level {self.pop_level} must be one of model.quantiles {self.model.quantiles}")
        for name in ("target_dte", "vol_window", "garch_refit_every", "max_staleness_days"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if isinstance(self.embargo, bool) or not isinstance(self.embargo, int) or self.embargo < 0:
            raise ValueError(f"embargo must be an int >= 0, got {self.embargo!r}")
        if self.max_bars is not None:
            _positive_int("max_bars", self.max_bars)

    def backtest_config(self, **overrides: Any) -> BacktestConfig:
        """The backtest's config: ``backtest`` if set, else BacktestConfig's defaults with the run's condor
        (``target_dte``, ``rate``, ``dividend_yield``); then ``overrides`` (BacktestConfig fields)."""
        base = self.backtest or BacktestConfig(target_dte=float(self.target_dte), rate=self.rate,
                                               div_yield=self.dividend_yield)
        return dataclasses.replace(base, **overrides)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], **overrides: Any) -> RunConfig:
        """Read a preset file (module docstring for its tables); ``overrides`` replace fields after reading."""
        raw = read_config_file(path)
        known = ("model", "train", "run", "walk_forward", "backtest", "policy", "predict")
        unknown = sorted(set(raw) - set(known))
        if unknown:
            raise ValueError(f"{path}: unknown table(s) {unknown}; expected {', '.join(f'[{k}]' for k in known)}")
        run = dict(raw.get("run", {}))
        check_table_keys(path, "run", run, (f.name for f in dataclasses.fields(cls) if f.name not in _TABLES))
        cfg = cls(model=CondorBrainConfig.from_dict(raw.get("model", {})),
                  train=TrainConfig.from_dict(raw.get("train", {})),
                  walk_forward=_table(path, "walk_forward", WalkForwardConfig, raw.get("walk_forward")),
                  policy=_table(path, "policy", PolicyFilter, raw.get("policy", {})), **run)
        if raw.get("backtest") is not None:
            table = dict(raw["backtest"])
            fills = _table(path, "backtest.fills", FillConfig, table.pop("fills", {}))
            defaults = dataclasses.asdict(cfg.backtest_config())
            defaults.pop("fills")
            cfg = dataclasses.replace(cfg, backtest=_table(path, "backtest", BacktestConfig,
                                                           {**defaults, **table, "fills": fills}))
        return dataclasses.replace(cfg, **overrides)

    def to_dict(self) -> dict[str, Any]:
        """The tables of a preset file, as :meth:`from_file` reads them back."""
        out: dict[str, Any] = {"model": self.model.to_dict(), "train": self.train.to_dict(),
                               "run": {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                                       if f.name not in _TABLES}}
        for name in ("walk_forward", "backtest", "policy"):
            value = getattr(self, name)
            if value is not None:
                out[name] = dataclasses.asdict(value)
        return out


def _table(path: str | os.PathLike[str], name: str, cls: type, table: dict[str, Any] | None) -> Any:
    """``cls(**table)`` with unknown keys named (None stays None)."""
    if table is None:
        return None
    if not isinstance(table, dict):
        raise ValueError(f"{path}: [{name}] must be a table, got {table!r}")  # noqa: TRY004 (a config error)
    check_table_keys(path, name, table, (f.name for f in dataclasses.fields(cls)))
    try:
        return cls(**table)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: [{name}]: {e}") from None
