"""`fit`: the one training loop, readable top to bottom.

What the loop needs from its caller (and nothing more):

- ``model(x) -> out``: any ``nn.Module``.
- ``loss_fn(out, targets) -> (total, parts)``: ``total`` a scalar tensor, the *mean* loss over the micro-batch's
  samples; ``parts`` a dict of scalar tensors, logged only.
- ``train_batches(epoch) -> iterable of (x, targets)``: the batch source. It must give the same batches in the same
  order whenever it is called with the same epoch, from its own seeded generator (never the global RNG), so that a
  resumed run can skip to where the killed one stopped: the loop calls ``train_batches(epoch)`` and drops the first
  ``batch_index`` items. ``x`` is a tensor whose first dimension is the sample count; ``targets`` a tensor or a
  (nested) dict / list / tuple of tensors. When ``cfg.max_steps`` is None the iterable must have a ``len`` (batches
  per epoch, the same every epoch). :class:`TensorBatches` is such a source over in-memory tensors.
- ``val_batches``: a re-iterable (a list, a DataLoader, a :class:`TensorBatches` epoch), or None.

One optimizer step, in order: for each micro-batch of the accumulation group, forward under autocast, check that the
loss is finite (else :class:`NonFiniteLossError`, before anything is touched), backward of ``total * n_samples``;
when the group is complete (``grad_accum_steps`` micro-batches, or fewer at the end of an epoch), divide the
gradients by the group's sample count (so the step sees the gradient of the group's sample-weighted mean loss: the
big-batch gradient, also for a short last group), clip the global norm (a non-finite norm also raises), set the
learning rate from the schedule, step AdamW, update the EMA. Then, when due: a training-metrics record, a validation
with the EMA weights (which feeds reduce-on-plateau, early stopping and the best-so-far), a checkpoint, the callbacks.

Outputs in ``run_dir``: ``checkpoints/step-NNNNNNNNN/`` (see :mod:`condorbrain.train.checkpoint`), ``metrics.jsonl``
(one JSON record per line: ``kind`` "train" or "eval"), ``tb/`` (TensorBoard event files).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import socket
import struct
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from condorbrain.train import checkpoint as ckpt
from condorbrain.train.config import RESUME_MAY_DIFFER, TrainConfig
from condorbrain.train.ema import EMA
from condorbrain.train.schedule import EarlyStopping, ReduceOnPlateau, cosine_with_warmup

__all__ = ["fit", "evaluate", "FitResult", "StepInfo", "NonFiniteLossError", "TensorBatches", "Batch", "BatchSource",
           "LossFn", "resolve_device", "runtime_mode", "enable_grad_checkpointing", "read_event_file"]

Batch = tuple[Any, Any]
"""(x, targets): x a tensor with the samples on dimension 0; targets a tensor or a nested dict / list of tensors."""
BatchSource = Callable[[int], Iterable[Batch]]
"""``train_batches(epoch)``: the batches of one epoch, the same for the same epoch (see the module docstring)."""
LossFn = Callable[[Any, Any], tuple[torch.Tensor, Mapping[str, torch.Tensor]]]
"""``loss_fn(out, targets) -> (total, parts)``."""


class NonFiniteLossError(FloatingPointError):
    """A loss or gradient norm was NaN or inf; no optimizer step was taken with it."""

    def __init__(self, message: str, *, step: int, epoch: int, batch_index: int) -> None:
        super().__init__(message)
        self.step = step
        """The optimizer step being computed, counted from 1 (``step - 1`` steps had completed)."""
        self.epoch = epoch
        self.batch_index = batch_index
        """Index of the offending micro-batch within its epoch (for a gradient: the group's last micro-batch)."""


@dataclass(frozen=True)
class StepInfo:
    """What the callbacks receive after every optimizer step."""

    step: int
    """Optimizer steps completed, including this one (1 after the first)."""
    epoch: int
    """Epoch of this step's batches."""
    batch_index: int
    """Index within the epoch of this step's last micro-batch."""
    loss: float
    """Sample-weighted mean training loss of this step's micro-batches."""
    lr: float
    """Learning rate this step used."""
    grad_norm: float
    """Global gradient norm before clipping."""
    val: Mapping[str, float] | None
    """Validation metrics, when this step was validated."""


@dataclass(frozen=True)
class FitResult:
    """What `fit` returns."""

    steps: int
    """Optimizer steps completed."""
    stopped: str
    """Why training ended: "max_steps", "epochs" or "early_stopping"."""
    train_loss: float | None
    """Mean training loss of the last step."""
    val: Mapping[str, float] | None
    """Metrics of the last validation (``val_loss`` and ``val/<part>``), or None without validation data."""
    best_val_loss: float | None
    """Lowest validation loss seen."""
    best_step: int | None
    """Step of the lowest validation loss."""
    checkpoint: Path
    """The final checkpoint folder."""
    metrics_path: Path
    """The metrics.jsonl file."""
    resumed_from: Path | None
    """The checkpoint a resumed run started from."""


# ====================================================================================================================
# The loop
# ====================================================================================================================

def fit(
    model: nn.Module,
    loss_fn: LossFn,
    train_batches: BatchSource,
    val_batches: Iterable[Batch] | None,
    cfg: TrainConfig,
    run_dir: str | os.PathLike[str],
    *,
    resume: bool = False,
    callbacks: Sequence[Callable[[StepInfo], None]] = (),
    run_info: ckpt.RunInfo | None = None,
) -> FitResult:
    """Train ``model`` (in place) and return a summary; see the module docstring for the contract and the order of
    operations.

    Args:
        model: the network; moved to ``cfg.device``.
        loss_fn: ``loss_fn(out, targets) -> (total, parts)``.
        train_batches: the batch source, ``train_batches(epoch) -> iterable of (x, targets)``.
        val_batches: a re-iterable of validation batches, or None (no validation: no early stopping, no plateau).
        cfg: the settings.
        run_dir: the run folder (created). Without ``resume`` it must not hold checkpoints yet.
        resume: continue from the newest complete checkpoint in ``run_dir`` (start fresh if there is none). The
            run then ends exactly where an uninterrupted run with the same config and data ends. Only the fields in
            :data:`condorbrain.train.config.RESUME_MAY_DIFFER` may differ from the checkpoint's config.
        callbacks: called with a :class:`StepInfo` after every optimizer step (after its checkpoint); an exception
            raised there stops training (and propagates).
        run_info: features, normalisation statistics, data range, model config: stored in every checkpoint.

    Raises:
        NonFiniteLossError: a NaN / inf training loss, gradient norm or validation loss; its message names the
            step, epoch and batch. The parameters are those of the last completed step.
        FileExistsError: ``run_dir`` already holds checkpoints and ``resume`` is False.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    device = resolve_device(cfg.device)
    if val_batches is not None and iter(val_batches) is val_batches:
        raise TypeError("val_batches must be re-iterable (a list, a DataLoader), not a one-shot iterator")
    previous = ckpt.latest_checkpoint(run_dir)
    if previous is not None and not resume:
        raise FileExistsError(f"{run_dir} already holds checkpoints (newest: {previous.name}); pass resume=True "
                              "to continue that run, or use a new run_dir")
    total_steps = _total_steps(cfg, train_batches)
    if cfg.warmup_steps >= total_steps:
        raise ValueError(f"warmup_steps ({cfg.warmup_steps}) must be below the run's {total_steps} steps")

    with runtime_mode(cfg, device):
        # --- set-up: model, optimizer, EMA, the decisions taken after validation ---------------------------------
        if previous is None:  # a fresh run; a resumed one restores the generators' states below
            _seed_everything(cfg.seed)
        model.to(device)
        model.train()
        if cfg.grad_checkpointing:
            enable_grad_checkpointing(model)
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = _adamw(model, cfg, device)
        ema = EMA(model, cfg.ema_decay) if cfg.ema_decay > 0 else None
        plateau = ReduceOnPlateau(cfg.plateau_patience, cfg.plateau_factor, cfg.plateau_threshold,
                                  cfg.plateau_min_scale) if cfg.plateau_patience is not None else None
        stopper = (EarlyStopping(cfg.early_stopping_patience, cfg.early_stopping_min_delta)
                   if cfg.early_stopping_patience is not None else None)
        use_bf16 = cfg.amp == "bf16" or (cfg.amp == "auto" and device.type == "cuda")
        autocast = functools.partial(torch.autocast, device.type, dtype=torch.bfloat16, enabled=use_bf16)
        state = _LoopState()

        # --- resume: everything the next step depends on, RNG last --------------------------------------------
        resumed_from = previous  # None for a fresh run (resume=False, or nothing saved yet)
        if resumed_from is not None:
            state = _restore(resumed_from, cfg, model, optimizer, ema, plateau, stopper)
        log = _MetricsLog(run_dir, resume_step=state.step if resumed_from is not None else None)
        bar = tqdm(total=total_steps, initial=state.step, disable=not cfg.progress, unit="step", dynamic_ncols=True)

        last_checkpoint = resumed_from
        step_loss: float | None = None
        done = state.step >= total_steps or (stopper is not None and stopper.should_stop)
        stopped = "early_stopping" if stopper is not None and stopper.should_stop else (
            "max_steps" if cfg.max_steps is not None else "epochs")
        try:
            while not done:
                # --- one epoch (or what is left of it after a resume) ----------------------------------------------
                seen = 0
                group_samples, group_loss = 0, 0.0
                for batch_index, batch, last_of_epoch in _indexed_with_last(train_batches(state.epoch),
                                                                             start=state.batch_index):
                    seen += 1
                    x, targets = _to_device(batch, device)
                    n = int(x.shape[0])
                    with autocast():
                        out = model(x)
                        total, parts = loss_fn(out, targets)
                    loss_value = float(total.detach())  # one sync per micro-batch, also needed for the logs
                    if not math.isfinite(loss_value):
                        raise NonFiniteLossError(
                            f"non-finite training loss {loss_value} in epoch {state.epoch}, batch {batch_index}, "
                            f"while computing optimizer step {state.step + 1}; parts: "
                            f"{ {k: float(v.detach()) for k, v in parts.items()} }. No step was taken with it: the "
                            f"parameters are those after step {state.step}. Check the data of that batch, or lower "
                            "the learning rate / clip_grad_norm and resume from the last checkpoint.",
                            step=state.step + 1, epoch=state.epoch, batch_index=batch_index)
                    (total * n).backward()  # summed over samples here; divided by the group's count below
                    group_samples += n
                    group_loss += loss_value * n
                    state.window_add(n, loss_value, parts)
                    if batch_index - state.batch_index + 1 < cfg.grad_accum_steps and not last_of_epoch:
                        continue

                    # --- the optimizer step: mean gradient, clip, schedule, AdamW, EMA ------------------------------
                    for p in params:
                        if p.grad is not None:
                            p.grad.div_(group_samples)
                    max_norm = cfg.clip_grad_norm if cfg.clip_grad_norm > 0 else math.inf
                    grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
                    if not math.isfinite(grad_norm):
                        raise NonFiniteLossError(
                            f"non-finite gradient norm {grad_norm} at optimizer step {state.step + 1} (epoch "
                            f"{state.epoch}, batches {state.batch_index}..{batch_index}) although the loss was "
                            f"finite; no step was taken: the parameters are those after step {state.step}.",
                            step=state.step + 1, epoch=state.epoch, batch_index=batch_index)
                    lr = cfg.lr * cosine_with_warmup(state.step, cfg.warmup_steps, total_steps, cfg.min_lr_ratio)
                    lr *= plateau.scale if plateau is not None else 1.0
                    for group in optimizer.param_groups:
                        group["lr"] = lr
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                    if ema is not None:
                        ema.update()
                    step_loss = group_loss / group_samples
                    group_samples, group_loss = 0, 0.0
                    step_epoch = state.epoch
                    state.step += 1
                    if last_of_epoch:
                        state.epoch, state.batch_index = state.epoch + 1, 0
                    else:
                        state.batch_index = batch_index + 1
                    done = state.step >= total_steps
                    bar.update(1)

                    # --- logs, validation, checkpoint, callbacks (each when due) ------------------------------------
                    if state.step % cfg.log_every == 0 or done:
                        record = state.window_record(lr, grad_norm)
                        log.write("train", state.step, step_epoch, record)
                        bar.set_postfix(loss=f"{record['loss']:.4g}", lr=f"{lr:.3g}",
                                        samples_s=f"{record['samples_per_s']:.4g}", refresh=False)
                    evaluate_now = (cfg.eval_every > 0 and state.step % cfg.eval_every == 0) or \
                        (cfg.eval_every == 0 and last_of_epoch) or done
                    val: dict[str, float] | None = None
                    if val_batches is not None and evaluate_now:
                        with ema.swapped_in() if ema is not None else nullcontext():
                            val = evaluate(model, loss_fn, val_batches, device, use_bf16, step=state.step)
                        state.last_val = val
                        if val["val_loss"] < (state.best_val_loss if state.best_val_loss is not None else math.inf):
                            state.best_val_loss, state.best_step = val["val_loss"], state.step
                        if plateau is not None:
                            plateau.update(val["val_loss"])
                        if stopper is not None and stopper.update(val["val_loss"]):
                            done, stopped = True, "early_stopping"
                        log.write("eval", state.step, step_epoch, {
                            **val, "best_val_loss": state.best_val_loss, "best_step": state.best_step,
                            "lr_scale": plateau.scale if plateau is not None else 1.0,
                            "weights": "ema" if ema is not None else "live"})
                    if done or (cfg.checkpoint_every > 0 and state.step % cfg.checkpoint_every == 0):
                        last_checkpoint = _save(run_dir, cfg, run_info, model, optimizer, ema, plateau, stopper,
                                                state)
                    for callback in callbacks:
                        callback(StepInfo(step=state.step, epoch=step_epoch, batch_index=batch_index,
                                          loss=step_loss, lr=lr, grad_norm=grad_norm, val=val))
                    if done:
                        break
                if seen == 0:
                    raise ValueError(f"train_batches({state.epoch}) gave no batches after index {state.batch_index}")
        finally:
            bar.close()
            log.close()

    assert last_checkpoint is not None  # the last step always saves; a resumed finished run has one
    return FitResult(steps=state.step, stopped=stopped, train_loss=step_loss, val=state.last_val,
                     best_val_loss=state.best_val_loss, best_step=state.best_step, checkpoint=last_checkpoint,
                     metrics_path=log.path, resumed_from=resumed_from)


@torch.no_grad()
def evaluate(model: nn.Module, loss_fn: LossFn, batches: Iterable[Batch], device: torch.device, bf16: bool,
             *, step: int = 0) -> dict[str, float]:
    """Sample-weighted mean of the loss and its parts over ``batches``, in eval mode (restored after).

    Returns ``{"val_loss": ..., "val/<part>": ...}``; raises :class:`NonFiniteLossError` on a NaN / inf loss.
    """
    was_training = model.training
    model.eval()
    sums: dict[str, float] = {}
    count = 0
    try:
        for batch_index, batch in enumerate(batches):
            x, targets = _to_device(batch, device)
            n = int(x.shape[0])
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                total, parts = loss_fn(model(x), targets)
            values = {"val_loss": float(total), **{f"val/{k}": float(v) for k, v in parts.items()}}
            if not math.isfinite(values["val_loss"]):
                raise NonFiniteLossError(f"non-finite validation loss {values['val_loss']} at batch {batch_index} "
                                         f"of the validation after step {step}", step=step, epoch=-1,
                                         batch_index=batch_index)
            for k, v in values.items():
                sums[k] = sums.get(k, 0.0) + v * n
            count += n
    finally:
        model.train(was_training)
    if count == 0:
        raise ValueError("val_batches gave no batches")
    return {k: v / count for k, v in sums.items()}


# ====================================================================================================================
# Set-up helpers
# ====================================================================================================================

def resolve_device(name: str) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; anything else -> ``torch.device(name)``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@contextmanager
def runtime_mode(cfg: TrainConfig, device: torch.device) -> Iterator[None]:
    """Deterministic mode, or benchmark mode with the H100 settings (seed 000 section 3) on CUDA only.

    deterministic: ``torch.use_deterministic_algorithms(True)``; on CUDA also ``cudnn.deterministic``, no
    ``cudnn.benchmark`` and ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` (cuBLAS needs it to be deterministic).
    benchmark (not deterministic) on CUDA: TF32 for fp32 matmuls and convolutions, ``cudnn.benchmark``, and
    ``expandable_segments:True`` for the caching allocator. On the CPU benchmark mode touches nothing.
    Flags are restored on exit; the allocator's ``expandable_segments`` stays on once set.
    """
    saved_det = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    saved_cudnn = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    cuda = device.type == "cuda"
    saved_tf32 = (torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision) if cuda \
        else None
    try:
        if cfg.deterministic:
            torch.use_deterministic_algorithms(True)
            if cuda:
                os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
                torch.backends.cudnn.deterministic = True
                torch.backends.cudnn.benchmark = False
        elif cuda:
            torch.backends.cuda.matmul.fp32_precision = "tf32"
            torch.backends.cudnn.conv.fp32_precision = "tf32"
            torch.backends.cudnn.benchmark = True
            _expandable_segments()
        yield
    finally:
        torch.use_deterministic_algorithms(saved_det[0], warn_only=saved_det[1])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved_cudnn
        if saved_tf32 is not None:
            torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision = saved_tf32


def _expandable_segments() -> None:
    setter = getattr(torch.cuda.memory, "_set_allocator_settings", None)
    if setter is not None:
        setter("expandable_segments:True")
    elif not torch.cuda.is_initialized():  # the environment variable is read when the allocator starts
        conf = os.environ.get("PYTORCH_CUDA_ALLOC_CONF", "")
        if "expandable_segments" not in conf:
            os.environ["PYTORCH_CUDA_ALLOC_CONF"] = ",".join(filter(None, [conf, "expandable_segments:True"]))


def _seed_everything(seed: int) -> None:
    import random
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def enable_grad_checkpointing(model: nn.Module) -> str:
    """Turn on gradient checkpointing; returns how ("model method" or "blocks").

    Contract: the model either has a method ``set_grad_checkpointing(enabled: bool)`` (used first), or an
    ``nn.ModuleList`` attribute ``blocks`` whose members are called one after another in ``forward``; each block's
    forward is then run under ``torch.utils.checkpoint.checkpoint(use_reentrant=False)`` (RNG state preserved, so
    dropout / stochastic depth recompute identically). Parameter names and the state_dict are unchanged.
    """
    method = getattr(model, "set_grad_checkpointing", None)
    if callable(method):
        method(True)
        return "model method"
    blocks = getattr(model, "blocks", None)
    if isinstance(blocks, nn.ModuleList) and len(blocks) > 0:
        for block in blocks:
            if "forward" not in vars(block):  # not already wrapped
                block.forward = _checkpointed(block.forward)
        return "blocks"
    raise ValueError(f"grad_checkpointing needs a model with a set_grad_checkpointing(enabled) method or an "
                     f"nn.ModuleList attribute 'blocks'; {type(model).__name__} has neither")


def _checkpointed(forward: Callable[..., Any]) -> Callable[..., Any]:
    def run(*args: Any, **kwargs: Any) -> Any:
        if not torch.is_grad_enabled():
            return forward(*args, **kwargs)
        return torch.utils.checkpoint.checkpoint(forward, *args, use_reentrant=False, **kwargs)
    return run


def _adamw(model: nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW with weight decay on >= 2-D parameters only; the fused kernel on CUDA and CPU."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    fused = device.type in ("cuda", "cpu") and all(p.is_floating_point() for p in decay + no_decay)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.adam_eps, fused=fused)


def _total_steps(cfg: TrainConfig, train_batches: BatchSource) -> int:
    if cfg.max_steps is not None:
        return cfg.max_steps
    first = train_batches(0)
    if not hasattr(first, "__len__"):
        raise TypeError("with max_steps=None the batches of an epoch must have a len(); set max_steps instead")
    n = len(first)  # type: ignore[arg-type]
    if n == 0:
        raise ValueError("train_batches(0) has no batches")
    return cfg.epochs * math.ceil(n / cfg.grad_accum_steps)


def _indexed_with_last(items: Iterable[Any], start: int) -> Iterator[tuple[int, Any, bool]]:
    """(index, item, is_last) for the items from index ``start`` on, looking one item ahead."""
    it = iter(items)
    for _ in range(start):
        if next(it, _END) is _END:
            return
    current = next(it, _END)
    index = start
    while current is not _END:
        following = next(it, _END)
        yield index, current, following is _END
        current, index = following, index + 1


_END = object()


def _to_device(obj: Any, device: torch.device) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=True)
    if isinstance(obj, Mapping):
        return {k: _to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_device(v, device) for v in obj)
    return obj


# ====================================================================================================================
# Loop state, checkpoints
# ====================================================================================================================

@dataclass
class _LoopState:
    """Where the loop is (what a checkpoint must hold besides tensors); all JSON-ready."""

    step: int = 0
    epoch: int = 0
    batch_index: int = 0  # next micro-batch of `epoch` to read
    best_val_loss: float | None = None
    best_step: int | None = None
    last_val: dict[str, float] | None = None
    # The training-metrics window since the last "train" record (a resumed run continues it).
    window_samples: int = 0
    window_loss: float = 0.0
    window_parts: dict[str, Any] = field(default_factory=dict)
    window_start: float = field(default_factory=time.perf_counter)

    def window_add(self, n: int, loss: float, parts: Mapping[str, torch.Tensor]) -> None:
        self.window_samples += n
        self.window_loss += loss * n
        for k, v in parts.items():  # kept as float64 tensors: no device sync per micro-batch
            self.window_parts[k] = self.window_parts.get(k, 0.0) + v.detach().double() * n

    def window_record(self, lr: float, grad_norm: float) -> dict[str, Any]:
        elapsed = max(time.perf_counter() - self.window_start, 1e-9)
        n = max(self.window_samples, 1)
        record = {"loss": self.window_loss / n, **{f"train/{k}": float(v) / n for k, v in self.window_parts.items()},
                  "lr": lr, "grad_norm": grad_norm, "samples_per_s": self.window_samples / elapsed}
        self.window_samples, self.window_loss, self.window_parts = 0, 0.0, {}
        self.window_start = time.perf_counter()
        return record

    def to_json(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "window_start"}
        d["window_parts"] = {k: float(v) for k, v in self.window_parts.items()}
        return d

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> _LoopState:
        s = cls(**{k: v for k, v in d.items() if k != "window_parts"})
        s.window_parts = {k: torch.tensor(v, dtype=torch.float64) for k, v in d["window_parts"].items()}
        return s


def _save(run_dir: Path, cfg: TrainConfig, run_info: ckpt.RunInfo | None, model: nn.Module,
          optimizer: torch.optim.Optimizer, ema: EMA | None, plateau: ReduceOnPlateau | None,
          stopper: EarlyStopping | None, state: _LoopState) -> Path:
    optim_tensors, optim_rest = ckpt.flatten_optimizer_state(optimizer.state_dict())
    rng_tensors, rng_rest = ckpt.capture_rng_state()
    meta = {
        "kind": "condorbrain.train",
        "config": cfg.to_dict(),
        "run": (run_info or ckpt.RunInfo()).to_dict(),
        "metrics": {"step": state.step, "val": state.last_val, "best_val_loss": state.best_val_loss,
                    "best_step": state.best_step},
        "loop": state.to_json(),
        "optimizer": optim_rest,
        "ema": {"num_updates": ema.num_updates} if ema is not None else None,
        "plateau": plateau.state_dict() if plateau is not None else None,
        "early_stopping": stopper.state_dict() if stopper is not None else None,
        "rng": rng_rest,
    }
    path = ckpt.save_checkpoint(ckpt.checkpoint_dir(run_dir, state.step), model_state=model.state_dict(),
                                meta=meta, ema_state=ema.model_state_dict(model) if ema is not None else None,
                                train_state={**optim_tensors, **rng_tensors})
    ckpt.prune_checkpoints(run_dir, cfg.keep_checkpoints)
    return path


def _restore(path: Path, cfg: TrainConfig, model: nn.Module, optimizer: torch.optim.Optimizer, ema: EMA | None,
             plateau: ReduceOnPlateau | None, stopper: EarlyStopping | None) -> _LoopState:
    loaded = ckpt.load_checkpoint(path)
    saved = loaded.meta["config"]
    now = cfg.to_dict()
    changed = sorted(k for k in set(saved) | set(now) if k not in RESUME_MAY_DIFFER and saved.get(k) != now.get(k))
    if changed:
        raise ValueError(f"cannot resume from {path}: the config differs in {changed} (saved "
                         f"{ {k: saved.get(k) for k in changed} }); only {sorted(RESUME_MAY_DIFFER)} may change")
    model.load_state_dict(loaded.model)
    optimizer.load_state_dict(ckpt.unflatten_optimizer_state(loaded.train_state, loaded.meta["optimizer"]))
    if ema is not None:
        assert loaded.ema is not None
        ema.load_state_dict({k: loaded.ema[k] for k in ema.shadow}, loaded.meta["ema"]["num_updates"])
    if plateau is not None:
        plateau.load_state_dict(loaded.meta["plateau"])
    if stopper is not None:
        stopper.load_state_dict(loaded.meta["early_stopping"])
    ckpt.restore_rng_state(loaded.train_state, loaded.meta["rng"])
    return _LoopState.from_json(loaded.meta["loop"])


# ====================================================================================================================
# Metrics: metrics.jsonl and TensorBoard event files
# ====================================================================================================================

class _MetricsLog:
    """Appends records to ``metrics.jsonl`` and scalars to TensorBoard event files in ``tb/``.

    A fresh run starts both afresh; a resumed run keeps the records up to its checkpoint's step (dropping those a
    killed run wrote after it, which the resumed run writes again) and tells TensorBoard to purge them too.
    """

    def __init__(self, run_dir: Path, resume_step: int | None) -> None:
        self.path = run_dir / "metrics.jsonl"
        tb_dir = run_dir / "tb"
        tb_dir.mkdir(exist_ok=True)
        if resume_step is None:
            self.path.write_text("")
            for old in tb_dir.glob("events.out.tfevents.*"):
                old.unlink()
        elif self.path.exists():
            kept = [line for line in self.path.read_text().splitlines()
                    if line.strip() and json.loads(line)["step"] <= resume_step]
            tmp = self.path.with_name(".metrics.jsonl.tmp")
            tmp.write_text("".join(line + "\n" for line in kept))
            os.replace(tmp, self.path)
        self._file = open(self.path, "a")
        # Steps up to the checkpoint are kept: TensorBoard purges those from resume_step + 1 on.
        self._tb = _tensorboard_writer(tb_dir, purge_step=None if resume_step is None else resume_step + 1)

    def write(self, kind: str, step: int, epoch: int, values: Mapping[str, Any]) -> None:
        record = {"kind": kind, "step": step, "epoch": epoch, "time": time.time(), **values}
        self._file.write(json.dumps(record, allow_nan=False, default=ckpt.finite_or_none) + "\n")
        self._file.flush()
        for k, v in values.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool) and v is not None:
                self._tb.add_scalar(k if "/" in k else f"{kind}/{k}", float(v), step)
        self._tb.flush()

    def close(self) -> None:
        self._file.close()
        self._tb.close()


def _tensorboard_writer(log_dir: Path, purge_step: int | None) -> Any:
    """``torch.utils.tensorboard.SummaryWriter`` when the ``tensorboard`` package is installed, else the minimal
    writer below (same file format, scalars only)."""
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return _EventFileWriter(log_dir, purge_step=purge_step)
    from torch.utils.tensorboard import SummaryWriter
    return SummaryWriter(str(log_dir), purge_step=purge_step)


def _crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for b in data:
        crc = _CRC32C_TABLE[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _make_crc32c_table() -> list[int]:
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1  # Castagnoli polynomial, reflected
        table.append(c)
    return table


_CRC32C_TABLE = _make_crc32c_table()


def _masked_crc(data: bytes) -> int:
    crc = _crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:  # length-delimited protobuf field (wire type 2)
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


class _EventFileWriter:
    """Writes TensorBoard event files (TFRecord framing of ``tensorflow.Event`` protos) for scalars, without the
    ``tensorboard`` package. Event: wall_time (1, double), step (2, int64), file_version (3, string), summary (5:
    value (1): tag (1, string), simple_value (2, float)), session_log (7: status (1) = START makes TensorBoard
    drop the events of this step and later ones read before it)."""

    def __init__(self, log_dir: Path, purge_step: int | None = None) -> None:
        name = f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}.0"
        self.path = Path(log_dir) / name
        self._f = open(self.path, "ab")
        self._record(self._event(step=0, extra=_field(3, b"brain.Event:2")))
        if purge_step is not None:
            self._record(self._event(step=purge_step, extra=_field(7, _varint(1 << 3 | 0) + _varint(1))))

    @staticmethod
    def _event(step: int, extra: bytes) -> bytes:
        return b"\x09" + struct.pack("<d", time.time()) + _varint(2 << 3 | 0) + _varint(step) + extra

    def _record(self, data: bytes) -> None:
        header = struct.pack("<Q", len(data))
        self._f.write(header + struct.pack("<I", _masked_crc(header)) + data + struct.pack("<I", _masked_crc(data)))

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        value_msg = _field(1, tag.encode()) + b"\x15" + struct.pack("<f", value)
        self._record(self._event(step=step, extra=_field(5, _field(1, value_msg))))

    def flush(self) -> None:
        self._f.flush()

    def close(self) -> None:
        self._f.close()


def read_event_file(path: str | os.PathLike[str]) -> list[tuple[str, int, float]]:
    """(tag, step, value) of every scalar in a TensorBoard event file, or in all event files of a folder (read in
    name order, i.e. by creation time), checking every record's CRC. A START session log (written by a resumed run)
    drops the scalars at or after its step read before it, as TensorBoard does.

    Raises:
        ValueError: a truncated record or a CRC mismatch, naming the file and byte offset.
    """
    path = Path(path)
    files = sorted(path.glob("*tfevents*")) if path.is_dir() else [path]
    out: list[tuple[str, int, float]] = []
    for file in files:
        data = file.read_bytes()
        pos = 0
        while pos < len(data):
            if pos + 12 > len(data):
                raise ValueError(f"{file}: truncated record header at byte {pos}")
            header = data[pos:pos + 8]
            (length,) = struct.unpack("<Q", header)
            if struct.unpack("<I", data[pos + 8:pos + 12])[0] != _masked_crc(header):
                raise ValueError(f"{file}: bad length CRC at byte {pos}")
            body = data[pos + 12:pos + 12 + length]
            if len(body) != length or pos + 16 + length > len(data):
                raise ValueError(f"{file}: truncated record at byte {pos}")
            if struct.unpack("<I", data[pos + 12 + length:pos + 16 + length])[0] != _masked_crc(body):
                raise ValueError(f"{file}: bad data CRC at byte {pos}")
            pos += 16 + length
            event = _parse_proto(body)
            step = int(event.get(2, [0])[0])
            for log in event.get(7, []):
                if _parse_proto(log).get(1, [0])[0] == 1:
                    out = [e for e in out if e[1] < step]
            for summary in event.get(5, []):
                for value in _parse_proto(summary).get(1, []):
                    v = _parse_proto(value)
                    if 2 in v:
                        out.append((v[1][0].decode(), step, struct.unpack("<f", v[2][0])[0]))
    return out


def _parse_proto(data: bytes) -> dict[int, list[Any]]:
    """Fields of a protobuf message: varints as ints, fixed64 / fixed32 / length-delimited as raw bytes."""
    fields: dict[int, list[Any]] = {}
    pos = 0

    def varint() -> int:
        nonlocal pos
        shift = result = 0
        while True:
            b = data[pos]
            pos += 1
            result |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                return result

    while pos < len(data):
        key = varint()
        number, wire = key >> 3, key & 7
        if wire == 0:
            value: Any = varint()
        elif wire == 1:
            value, pos = data[pos:pos + 8], pos + 8
        elif wire == 5:
            value, pos = data[pos:pos + 4], pos + 4
        elif wire == 2:
            n = varint()
            value, pos = data[pos:pos + n], pos + n
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        fields.setdefault(number, []).append(value)
    return fields


# ====================================================================================================================
# A batch source over in-memory tensors
# ====================================================================================================================

class TensorBatches:
    """A :data:`BatchSource` over in-memory tensors: a seeded shuffle per epoch, independent of the global RNG.

    ``TensorBatches(x, targets, batch_size, seed=s)(epoch)`` gives the batches of ``epoch`` in the order drawn by
    ``np.random.default_rng([s, epoch])`` (the same order every time); with ``shuffle=False`` in row order. The last
    batch of an epoch is short unless ``drop_last``. Calling the object returns a sized, re-iterable epoch, so
    ``TensorBatches(...)(0)`` can also serve as ``val_batches``.
    """

    def __init__(self, x: torch.Tensor, targets: Any, batch_size: int, *, shuffle: bool = True, seed: int = 0,
                 drop_last: bool = False) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.x, self.targets = x, targets
        self.n = int(x.shape[0])
        self.batch_size, self.shuffle, self.seed, self.drop_last = batch_size, shuffle, seed, drop_last
        if len(self) == 0:
            raise ValueError(f"{self.n} samples make no batch of {batch_size} (drop_last={drop_last})")

    def __len__(self) -> int:
        return self.n // self.batch_size if self.drop_last else math.ceil(self.n / self.batch_size)

    def __call__(self, epoch: int) -> _Epoch:
        if self.shuffle:
            order = torch.from_numpy(np.random.default_rng([self.seed, epoch]).permutation(self.n))
        else:
            order = torch.arange(self.n)
        return _Epoch(self, order)


@dataclass(frozen=True)
class _Epoch:
    source: TensorBatches
    order: torch.Tensor

    def __len__(self) -> int:
        return len(self.source)

    def __iter__(self) -> Iterator[Batch]:
        s = self.source
        for i in range(len(s)):
            rows = self.order[i * s.batch_size:(i + 1) * s.batch_size]
            yield s.x[rows], _index(s.targets, rows)


def _index(obj: Any, rows: torch.Tensor) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj[rows]
    if isinstance(obj, Mapping):
        return {k: _index(v, rows) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_index(v, rows) for v in obj)
    raise TypeError(f"targets must be tensors or dicts / lists / tuples of tensors, got {type(obj).__name__}")
