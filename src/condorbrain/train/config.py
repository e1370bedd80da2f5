"""`TrainConfig`: every setting of :func:`condorbrain.train.fit`, typed, frozen and validated.

Frozen so that sweep trials are hashable and a checkpoint's config can be compared field by field on resume. A
setting that can be switched off says how (``0`` or ``None``) in its docstring.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Literal, Mapping

__all__ = ["TrainConfig", "AMP_MODES", "RESUME_MAY_DIFFER"]

AMP_MODES = ("auto", "bf16", "fp32")
"""Accepted values of :attr:`TrainConfig.amp`."""

RESUME_MAY_DIFFER = frozenset({"device", "log_every", "progress", "checkpoint_every", "keep_checkpoints"})
"""Fields that may change between a killed run and its resumption: they do not change what is computed."""


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


@dataclass(frozen=True)
class TrainConfig:
    """Settings of one training run (see :func:`condorbrain.train.fit` for the order in which they act)."""

    # --- optimiser (AdamW) ---------------------------------------------------------------------------------------
    lr: float = 3e-4
    """Peak learning rate, reached at the end of the warm-up."""
    min_lr_ratio: float = 0.1
    """The cosine decays to ``lr * min_lr_ratio`` at ``total_steps``; in [0, 1]."""
    weight_decay: float = 0.01
    """AdamW decoupled weight decay, applied to parameters with 2 or more dimensions (weight matrices, embeddings);
    biases and normalisation gains (1-D) are not decayed."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW (beta1, beta2), each in [0, 1)."""
    adam_eps: float = 1e-8
    """AdamW epsilon added to the denominator."""

    # --- length and batching -----------------------------------------------------------------------------------
    warmup_steps: int = 100
    """Optimizer steps of linear warm-up (0: none). Must be below the run's total steps."""
    max_steps: int | None = None
    """If set, train exactly this many optimizer steps, passing over the data as often as needed (``epochs`` is then
    ignored). If None, train ``epochs`` epochs; the batch source must then have a length."""
    epochs: int = 10
    """Passes over the training batches when ``max_steps`` is None."""
    batch_size: int = 64
    """Samples per micro-batch. The loop does not batch: it is read by whatever builds the batch source (for example
    :class:`condorbrain.train.TensorBatches`), and recorded in checkpoints."""
    grad_accum_steps: int = 1
    """Micro-batches whose gradients are summed before one optimizer step; effective batch = batch_size x this."""
    clip_grad_norm: float = 1.0
    """Clip the global L2 norm of the gradients to this value before each step (0: no clipping; the norm is still
    computed and checked for inf / NaN)."""

    # --- weights used for evaluation ------------------------------------------------------------------------------
    ema_decay: float = 0.999
    """Decay beta of the exponential moving average of the weights, ``shadow = beta shadow + (1 - beta) param`` after
    every optimizer step; validation uses the shadow weights. 0: no EMA, validation uses the live weights."""

    # --- numerics and speed ---------------------------------------------------------------------------------------
    amp: Literal["auto", "bf16", "fp32"] = "auto"
    """Mixed precision: "auto" = bf16 autocast on CUDA and fp32 elsewhere; "bf16" = bf16 autocast on any device;
    "fp32" = none. Weights, gradients and optimizer state stay fp32. (fp16 is not offered: bf16 needs no loss
    scaling.)"""
    grad_checkpointing: bool = False
    """Recompute activations in the backward pass to save memory. The model must either have a method
    ``set_grad_checkpointing(enabled: bool)`` or an ``nn.ModuleList`` attribute ``blocks`` (each block is then run
    under ``torch.utils.checkpoint``); otherwise `fit` raises."""
    deterministic: bool = False
    """True: ``torch.use_deterministic_algorithms(True)`` (+ cuDNN deterministic and a fixed cuBLAS workspace on
    CUDA) so a run repeats bit for bit. False: benchmark mode, which on CUDA only turns on the H100 settings (TF32
    matmuls and convolutions, ``cudnn.benchmark``, ``expandable_segments``); on the CPU it changes nothing. Either
    way the global flags are restored when `fit` returns."""
    seed: int = 0
    """Seeds Python's ``random``, NumPy's global generator and torch (CPU and CUDA) at the start of a fresh run; a
    resumed run restores the generators' saved states instead."""

    # --- evaluation, stopping, plateau ----------------------------------------------------------------------------
    eval_every: int = 0
    """Validate every this many optimizer steps; 0: at the end of every epoch. The last step is always validated."""
    early_stopping_patience: int | None = None
    """Stop after this many validations in a row without improving on the best validation loss by more than
    ``early_stopping_min_delta``. None: never stop early."""
    early_stopping_min_delta: float = 0.0
    """Absolute improvement of the validation loss that counts as an improvement for early stopping."""
    plateau_patience: int | None = None
    """Reduce-on-plateau: after more than this many validations in a row without a relative improvement of
    ``plateau_threshold``, multiply the learning-rate scale by ``plateau_factor`` (torch ``ReduceLROnPlateau``
    semantics, mode "min", threshold mode "rel"). The scale multiplies the cosine schedule:
    ``lr(step) = lr * cosine_with_warmup(step) * scale``. None: off."""
    plateau_factor: float = 0.5
    """Multiplier of the learning-rate scale at each plateau; in (0, 1)."""
    plateau_threshold: float = 1e-4
    """Relative improvement that resets the plateau counter: ``loss < best * (1 - threshold)``."""
    plateau_min_scale: float = 1e-3
    """The plateau scale never goes below this."""

    # --- output ---------------------------------------------------------------------------------------------------
    log_every: int = 10
    """Write a training-metrics record (mean loss, lr, samples/s) every this many optimizer steps."""
    checkpoint_every: int = 0
    """Save a checkpoint every this many optimizer steps (0: only at the end). The end is always saved."""
    keep_checkpoints: int = 2
    """Keep the newest this many checkpoints in ``run_dir/checkpoints`` (older ones are deleted); >= 1."""
    progress: bool = True
    """Show a tqdm progress bar (loss, lr, samples/s) on stderr."""
    device: str = "auto"
    """"auto" (CUDA if available, else CPU), or a torch device string such as "cpu", "cuda", "cuda:1"."""

    def __post_init__(self) -> None:
        def positive_float(name: str, allow_zero: bool = False) -> None:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) \
                    or (v < 0 if allow_zero else v <= 0):
                raise ValueError(f"{name} must be a finite number {'>= 0' if allow_zero else '> 0'}, got {v!r}")

        def count(name: str, minimum: int, optional: bool = False) -> None:
            v = getattr(self, name)
            if optional and v is None:
                return
            if not _is_int(v) or v < minimum:
                raise ValueError(f"{name} must be an int >= {minimum}{' or None' if optional else ''}, got {v!r}")

        positive_float("lr")
        positive_float("weight_decay", allow_zero=True)
        positive_float("adam_eps")
        positive_float("clip_grad_norm", allow_zero=True)
        positive_float("early_stopping_min_delta", allow_zero=True)
        positive_float("plateau_threshold", allow_zero=True)
        positive_float("plateau_min_scale")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio!r}")
        if len(self.betas) != 2 or not all(isinstance(b, (int, float)) and 0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {self.betas!r}")
        object.__setattr__(self, "betas", (float(self.betas[0]), float(self.betas[1])))
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1) (0 = off), got {self.ema_decay!r}")
        if not 0.0 < self.plateau_factor < 1.0:
            raise ValueError(f"plateau_factor must be in (0, 1), got {self.plateau_factor!r}")
        count("warmup_steps", 0)
        count("max_steps", 1, optional=True)
        count("epochs", 1)
        count("batch_size", 1)
        count("grad_accum_steps", 1)
        count("eval_every", 0)
        count("early_stopping_patience", 1, optional=True)
        count("plateau_patience", 0, optional=True)
        count("log_every", 1)
        count("checkpoint_every", 0)
        count("keep_checkpoints", 1)
        count("seed", 0)
        if self.max_steps is not None and self.warmup_steps >= self.max_steps:
            raise ValueError(f"warmup_steps ({self.warmup_steps}) must be below max_steps ({self.max_steps})")
        if self.amp not in AMP_MODES:
            raise ValueError(f"amp must be one of {AMP_MODES}, got {self.amp!r}")
        for name in ("grad_checkpointing", "deterministic", "progress"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a bool, got {getattr(self, name)!r}")
        if not isinstance(self.device, str) or not self.device:
            raise ValueError(f"device must be a non-empty string, got {self.device!r}")

    # --- conversion -----------------------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The fields as a JSON-ready dict (tuples become lists)."""
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v)
                for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TrainConfig:
        """Build from a mapping such as a parsed JSON / YAML file; unknown keys are an error (they are typos)."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown TrainConfig field(s) {unknown}; known: {sorted(names)}")
        kwargs = dict(d)
        if "betas" in kwargs:
            kwargs["betas"] = tuple(kwargs["betas"])
        return cls(**kwargs)

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)
