"""Training: one readable loop (`fit`), its config, the learning-rate schedule, EMA weights and checkpoints.

    from condorbrain.train import TrainConfig, TensorBatches, fit

    cfg = TrainConfig(lr=1e-3, max_steps=2_000, grad_accum_steps=4, ema_decay=0.999, checkpoint_every=200)
    result = fit(model, loss_fn, TensorBatches(x, y, cfg.batch_size, seed=cfg.seed), val, cfg, "runs/first")
    # killed? the same call with resume=True ends exactly where the uninterrupted run would have.

The loop relies only on ``model(x) -> out`` and ``loss_fn(out, targets) -> (total, parts)``; see
:mod:`condorbrain.train.loop` for the batch-source contract and :mod:`condorbrain.train.checkpoint` for the
checkpoint layout.
"""

from condorbrain.train.checkpoint import (SCHEMA_VERSION, Checkpoint, CheckpointError, RunInfo, latest_checkpoint,
                                          load_checkpoint, save_checkpoint)
from condorbrain.train.config import TrainConfig
from condorbrain.train.ema import EMA
from condorbrain.train.loop import (Batch, BatchSource, FitResult, LossFn, NonFiniteLossError, StepInfo,
                                    TensorBatches, enable_grad_checkpointing, evaluate, fit, read_event_file,
                                    resolve_device, runtime_mode)
from condorbrain.train.schedule import EarlyStopping, ReduceOnPlateau, cosine_with_warmup

__all__ = ["fit", "evaluate", "FitResult", "StepInfo", "NonFiniteLossError", "TensorBatches", "Batch", "BatchSource",
           "LossFn", "TrainConfig", "EMA", "cosine_with_warmup", "ReduceOnPlateau", "EarlyStopping",
           "SCHEMA_VERSION", "Checkpoint", "CheckpointError", "RunInfo", "save_checkpoint", "load_checkpoint",
           "latest_checkpoint", "enable_grad_checkpointing", "resolve_device", "runtime_mode", "read_event_file"]
