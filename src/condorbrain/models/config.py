"""CondorBrain's model configuration: one frozen, typed dataclass, and the preset files it is read from.

A preset file (``configs/*.toml`` or ``.json``) has a ``[model]`` table with :class:`CondorBrainConfig`'s fields
(any field left out keeps its default) and, beside it, a ``[train]`` table that :mod:`condorbrain.train` reads;
:meth:`CondorBrainConfig.from_file` reads the ``model`` table only. A file without a ``model`` table is read as the
model table itself, which is what :meth:`CondorBrainConfig.to_dict` writes (e.g. into a checkpoint's metadata)::

    [model]
    d_model = 64
    n_layer = 4
    horizons = [1, 5, 10, 30]

    [train]
    batch_size = 32

Overrides on top of a preset: ``dataclasses.replace(cfg, d_model=128)`` (validated again).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from condorbrain.ssm import BackboneConfig

__all__ = ["CondorBrainConfig", "MixerKind"]

MixerKind = Literal["mamba2", "mamba", "attention"]

_INT_FIELDS = ("n_features", "d_model", "n_layer", "d_state", "headdim", "expand", "d_conv", "ngroups", "chunk_size",
               "n_heads", "lookback", "hold_horizon", "n_regimes", "n_experts")


@dataclass(frozen=True)
class CondorBrainConfig:
    """Everything that fixes CondorBrain's architecture and the units of its outputs (not how it is trained).

    Frozen (hashable, so sweep trials can key on it); every field is checked in ``__post_init__`` and an error names
    the field. The backbone part is handed to :class:`condorbrain.ssm.BackboneConfig` (:meth:`backbone_config`).
    """

    # --- input ---------------------------------------------------------------------------------------------------
    n_features: int = 24
    """Features per time step F (``condorbrain.features.CONDOR_FEATURES`` has 24), already normalised (z-scores)."""
    lookback: int = 120
    """Window length L the model is trained on, in steps (bars); also the attention KV cache's default length."""

    # --- backbone ------------------------------------------------------------------------------------------------
    d_model: int = 64
    """Width D of the embedding and of every backbone block."""
    n_layer: int = 4
    """Number of backbone blocks."""
    mixer: MixerKind = "mamba2"
    """Sequence mixer: "mamba2" (SSD, the default), "mamba" (S6) or "attention" (the Transformer baseline)."""
    d_state: int = 16
    """SSM state size N per channel (Mamba) or per head (Mamba-2). Ignored by attention."""
    headdim: int = 16
    """Mamba-2 channels per head; must divide expand * d_model."""
    expand: int = 2
    """SSM inner width = expand * d_model."""
    d_conv: int = 4
    """Width of the SSMs' causal depthwise convolution, in steps."""
    ngroups: int = 1
    """Mamba-2 groups of B / C; must divide the number of heads expand * d_model / headdim."""
    chunk_size: int = 64
    """Mamba-2 SSD chunk length, in steps (speed and memory only; the output does not depend on it)."""
    n_heads: int = 4
    """Attention heads (mixer "attention"); d_model / n_heads must be even (rotary embeddings)."""
    d_intermediate: int = 0
    """Hidden width of a gated MLP after each mixer; 0 = none (mamba_ssm's default for Mamba blocks)."""
    rope_base: float = 10000.0
    """Base of the attention mixer's rotary frequencies."""
    norm_eps: float = 1e-5
    """Epsilon of every RMSNorm and of the embedding's LayerNorm."""

    # --- decoder -------------------------------------------------------------------------------------------------
    horizons: tuple[int, ...] = (1, 5, 10, 30)
    """Forward-return horizons of the price head, in steps, strictly increasing (``features.DEFAULT_HORIZONS``)."""
    hold_horizon: int = 30
    """Holding horizon of the condor, in steps: the horizon of the vol, excursion, wing, POP, ROI and drawdown heads."""
    quantiles: tuple[float, ...] = (0.1, 0.25, 0.5, 0.75, 0.9)
    """Levels tau of the upside / downside excursion quantiles, strictly increasing in (0, 1)."""
    n_regimes: int = 3
    """Volatility regimes of the RegimeDetector: low, normal, high (class indices 0, 1, 2)."""
    n_experts: int = 3
    """Expert decoders: n_regimes (one per regime, gated by the RegimeDetector) or 1 (no mixture, an ablation)."""
    d_expert: int | None = None
    """Hidden width of each expert decoder and of the RegimeDetector; None = d_model."""
    step_vol: float = 0.01
    """Typical one-step return std, a fraction of spot (~0.01 for daily S&P 500 bars, ~0.001 for 5-minute bars).

    It sets the output units: the heads in price units (ret, vol, excursions, wing, max_dd) are
    step_vol * sqrt(horizon) times an O(1) network output, so a fresh model already predicts moves of the right
    size, and :meth:`target_scales` gives the loss the same scales. Set it from the training period."""

    # --- regularisation ------------------------------------------------------------------------------------------
    drop_path: float = 0.0
    """Stochastic depth: in training, block i drops its residual branches with probability
    drop_path * i / (n_layer - 1)."""
    dropout: float = 0.0
    """Dropout probability on the embedding, in the expert decoders and in the RegimeDetector (training only)."""

    def __post_init__(self) -> None:
        for name in _INT_FIELDS:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.mixer not in ("mamba2", "mamba", "attention"):
            raise ValueError(f"mixer must be 'mamba2', 'mamba' or 'attention', got {self.mixer!r}")
        if not isinstance(self.d_intermediate, int) or isinstance(self.d_intermediate, bool) or self.d_intermediate < 0:
            raise ValueError(f"d_intermediate must be an int >= 0, got {self.d_intermediate!r}")
        if self.d_expert is not None and (not isinstance(self.d_expert, int) or isinstance(self.d_expert, bool)
                                          or self.d_expert < 1):
            raise ValueError(f"d_expert must be None or a positive int, got {self.d_expert!r}")
        if (not isinstance(self.horizons, tuple) or not self.horizons
                or any(not isinstance(h, int) or isinstance(h, bool) or h < 1 for h in self.horizons)
                or any(a >= b for a, b in zip(self.horizons, self.horizons[1:]))):
            raise ValueError(f"horizons must be a non-empty tuple of strictly increasing positive ints, "
                             f"got {self.horizons!r}")
        if (not isinstance(self.quantiles, tuple) or not self.quantiles
                or any(not _is_real(q) or not 0.0 < q < 1.0 for q in self.quantiles)
                or any(a >= b for a, b in zip(self.quantiles, self.quantiles[1:]))):
            raise ValueError(f"quantiles must be a non-empty tuple of strictly increasing levels in (0, 1), "
                             f"got {self.quantiles!r}")
        if self.n_experts not in (1, self.n_regimes):
            raise ValueError(f"n_experts must be 1 or n_regimes={self.n_regimes} (the RegimeDetector is the gate), "
                             f"got {self.n_experts}")
        for name in ("step_vol", "rope_base", "norm_eps"):
            value = getattr(self, name)
            if not _is_real(value) or not math.isfinite(value) or value <= 0:
                raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
        for name in ("drop_path", "dropout"):
            value = getattr(self, name)
            if not _is_real(value) or not 0.0 <= value < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {value!r}")
        self.backbone_config()  # the backbone's own checks (headdim | expand * d_model, ...); they name the field

    # --- derived -------------------------------------------------------------------------------------------------
    @property
    def n_horizons(self) -> int:
        """Number of return horizons H."""
        return len(self.horizons)

    @property
    def n_quantiles(self) -> int:
        """Number of excursion quantile levels Q."""
        return len(self.quantiles)

    @property
    def expert_width(self) -> int:
        """Hidden width of the expert decoders and the RegimeDetector (``d_expert`` or ``d_model``)."""
        return self.d_model if self.d_expert is None else self.d_expert

    def target_scales(self) -> dict[str, float | tuple[float, ...]]:
        """Typical size of each regression target, in its unit (what :func:`condorbrain.models.condor_loss` divides
        the errors by, and the output units of the heads): ret: one per horizon, step_vol * sqrt(h); vol, up, down,
        wing, max_dd: step_vol * sqrt(hold_horizon) (fractions of spot); roi: 1 (a fraction of the maximum risk)."""
        s = self.step_vol * math.sqrt(self.hold_horizon)
        return {"ret": tuple(self.step_vol * math.sqrt(h) for h in self.horizons), "vol": s, "up": s, "down": s,
                "wing": s, "max_dd": s, "roi": 1.0}

    def backbone_config(self) -> BackboneConfig:
        """The :class:`condorbrain.ssm.BackboneConfig` of this model's backbone."""
        return BackboneConfig(
            d_model=self.d_model, n_layer=self.n_layer, mixer=self.mixer, d_state=self.d_state,
            d_conv=self.d_conv, expand=self.expand, headdim=self.headdim, ngroups=self.ngroups,
            chunk_size=self.chunk_size, n_heads=self.n_heads, rope_base=self.rope_base,
            d_intermediate=self.d_intermediate, drop_path=self.drop_path, norm_eps=self.norm_eps,
        )  # fmt: skip

    # --- files ---------------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """All fields as a JSON / TOML-ready dict (tuples as lists); ``from_dict(to_dict())`` gives back ``self``."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CondorBrainConfig:
        """Build from a mapping of field names (lists allowed for the tuple fields; ints allowed for float fields).

        Raises
        ------
        ValueError
            On an unknown key (naming it and the known ones) or an invalid value (naming the field).
        """
        if not isinstance(data, dict):
            raise ValueError(f"a model config must be a table / mapping, got {type(data).__name__}")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise ValueError(f"unknown model config key(s) {unknown}; known keys: {sorted(fields)}")
        kwargs: dict[str, Any] = {}
        for key, value in data.items():
            if key in ("horizons", "quantiles") and isinstance(value, list):
                value = tuple(value)
            if key == "quantiles" and isinstance(value, tuple):
                value = tuple(float(q) if _is_real(q) else q for q in value)
            if key in ("step_vol", "rope_base", "norm_eps", "drop_path", "dropout") and _is_real(value):
                value = float(value)
            kwargs[key] = value
        return cls(**kwargs)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> CondorBrainConfig:
        """Read a preset: a ``.toml`` or ``.json`` file; its ``model`` table if it has one, else the whole file.

        Other tables (``train``, ...) are left to their readers. Raises ValueError naming the file on a bad suffix
        or unparsable content, and as :meth:`from_dict` on bad keys or values.
        """
        path = Path(path)
        data = read_config_file(path)
        if isinstance(data, dict) and "model" in data:
            data = data["model"]
        try:
            return cls.from_dict(data)
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from err


def read_config_file(path: str | os.PathLike[str]) -> Any:
    """The parsed content of a ``.toml`` or ``.json`` config file (every preset reader goes through here).

    Raises FileNotFoundError for a missing file and ValueError naming the file for a bad suffix or content that does
    not parse.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    suffix = path.suffix.lower()
    try:
        if suffix == ".toml":
            return tomllib.loads(path.read_text(encoding="utf-8"))
        if suffix == ".json":
            return json.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"config file {path} does not parse: {err}") from err
    raise ValueError(f"config file {path} must end in .toml or .json")


def check_table_keys(path: str | os.PathLike[str], table: str, keys: Iterable[str], known: Iterable[str]) -> None:
    """ValueError naming the file, the ``[table]`` and its unknown keys (a misspelt key would otherwise be ignored
    silently) with the known ones."""
    known = set(known)
    bad = sorted(set(keys) - known)
    if bad:
        raise ValueError(f"{path}: unknown [{table}] key(s) {bad}; known: {sorted(known)}")


def _is_real(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
