"""Streaming one step of a whole stack in a CUDA graph: the per-bar update replayed as one launch.

A streaming step through N layers is hundreds of small kernels; launched one by one from Python it costs
milliseconds whatever the batch (the anchors: 20 ms eager through 24 official Mamba-2 layers, 0.55 ms in a graph).
:class:`GraphedStep` records the step once and replays it::

    stepper = make_stepper(model, batch_size=1)        # GraphedStep on a CUDA device, EagerStep elsewhere
    for x_t in bars:                                   # x_t: (B, 1, n_inputs)
        out = stepper.step(x_t)                        # == model.forward(x[:, : t + 1]) at its last step
    stepper.reset()                                    # back to "no history", in place

``model`` is anything with the streaming interface of :class:`condorbrain.ssm.Backbone`:
``allocate_inference_cache(batch_size, max_seqlen, dtype=...)`` -> per-layer tuples of state tensors, and
``step(x_t, cache)`` -> a tensor or a (named) tuple of tensors, updating the cache in place. ``Backbone``,
``condorbrain.models.CondorBrain`` (embedding -> every layer's step -> heads) and a stack of ``mamba_ssm`` layers
with the same two methods all qualify. The step must be static: the same kernels every bar. The SSM mixers are; the
attention mixer's KV-cache step is not (it reads its length back to the host and grows), so a module holding one
takes the eager path.

:class:`EagerStep` is the same object without the graph (any device); :func:`streaming_path` names which of the
two :func:`make_stepper` picks, for a caller to report.

:class:`GraphedForward` does the same for a whole-window forward of a fixed shape (batch scoring: ``model(x)`` over
(B, L, n_inputs) windows, again and again): the forward's few hundred launches replayed as one.
"""

from __future__ import annotations

import contextlib
from typing import Any, Literal

import torch
import torch.nn as nn
from torch import Tensor

from condorbrain.ssm import casts
from condorbrain.ssm.blocks import CausalSelfAttention

__all__ = ["EagerStep", "GraphedForward", "GraphedStep", "graph_unavailable_reason", "make_stepper", "streaming_path"]

StreamingPath = Literal["cuda-graph", "eager"]


def graph_unavailable_reason(module: nn.Module | None, device: torch.device | str) -> str | None:
    """Why the step of ``module`` (None: any SSM stack) on ``device`` cannot be captured in a CUDA graph; None if it
    can."""
    device = torch.device(device)
    if device.type != "cuda":
        return f"CUDA graphs need a CUDA device, got device {str(device)!r}"
    if not torch.cuda.is_available():
        return ("CUDA graphs need a CUDA device, and torch.cuda.is_available() is False (no GPU visible, or a "
                f"CPU-only torch build: torch {torch.__version__})")
    if module is not None and any(isinstance(m, CausalSelfAttention) for m in module.modules()):
        return ("the attention mixer's KV-cache step is not static (it reads the filled length back to the host and "
                "attends over a growing cache), so it cannot be captured; it streams eagerly")
    return None


def streaming_path(device: torch.device | str, module: nn.Module | None = None) -> StreamingPath:
    """The path :func:`make_stepper` takes on ``device`` (for ``module``, if given): "cuda-graph" or "eager"."""
    return "eager" if graph_unavailable_reason(module, device) else "cuda-graph"


def _n_inputs(module: nn.Module) -> int:
    """Width of one step's input: the model's feature count, else the backbone's d_model."""
    config = getattr(module, "config", None)
    for name in ("n_features", "d_model"):
        value = getattr(config, name, None)
        if isinstance(value, int):
            return value
    raise ValueError(f"cannot tell the input width of {type(module).__name__} (no config.n_features or "
                     "config.d_model); pass n_inputs")


def _param_dtype(module: nn.Module) -> torch.dtype:
    return next(module.parameters()).dtype


def _state_tensors(cache: Any) -> list[Tensor]:
    """Every tensor of a per-layer cache (a list of tuples of tensors)."""
    return [t for layer in cache for t in layer]


def _check_step_input(x: Tensor, shape: tuple[int, ...], name: str = "x_t",
                      layout: str = "(batch, 1, n_inputs)") -> None:
    """Shape and dtype only (host metadata, no device sync); finiteness where x is on the CPU (free)."""
    if not isinstance(x, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of shape {shape}, got {type(x).__name__}")
    if tuple(x.shape) != shape:
        raise ValueError(f"{name} must have shape {shape} {layout}, got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating tensor, got {x.dtype}")
    if x.device.type == "cpu" and not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains NaN or inf")


def _check_capturable(who: str, module: nn.Module, device: torch.device, instead: str) -> None:
    """Raise (naming ``who`` and what to use ``instead``) where nothing can be captured on ``device``, or where
    ``module`` is in training mode (its dropout / drop-path would be frozen into the graph)."""
    no_cuda = graph_unavailable_reason(None, device)
    if no_cuda is not None:
        raise RuntimeError(f"{who}: {no_cuda}; {instead}")
    if module.training:
        raise ValueError(f"{who}: the module is in training mode (dropout / drop-path would be frozen into the "
                         "graph); call module.eval() first")


def _capture(device: torch.device, warmup: int, run: Any,
             context: Any = contextlib.nullcontext) -> tuple[Any, Any, list]:
    """(graph, static output, cast entries) of ``run()`` under no_grad and ``context()``: first ``warmup`` calls on
    a side stream (the allocator and library handles settle, the weights' inference casts are made:
    :mod:`condorbrain.ssm.casts`), then one captured (the input checks skip their host reads meanwhile,
    ``_checks.capturing``). The cast entries are those the graph reads: ``casts.refresh(entries)`` before each
    replay remakes, in place, any whose parameters changed."""
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side), torch.no_grad(), context():
        for _ in range(warmup):
            run()
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.no_grad(), context(), casts.recording() as entries, torch.cuda.graph(graph):
        out = run()
    return graph, out, entries


class EagerStep:
    """One step of ``module`` per call with the state carried, run op by op (any device). See the module docstring.

    Parameters
    ----------
    module : nn.Module
        With ``allocate_inference_cache`` and ``step`` (put in eval mode by the caller: dropout would draw anew).
    batch_size : int
        Number of independent streams B.
    device, dtype
        Of the states; default the module's parameters'.
    max_seqlen : int or None
        Passed to ``allocate_inference_cache`` (the attention mixer's KV-cache length; ignored by the SSMs).
    n_inputs : int or None
        Width of x_t; default ``module.config.n_features``, else ``module.config.d_model``.
    """

    path: StreamingPath = "eager"

    def __init__(self, module: nn.Module, batch_size: int, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None, max_seqlen: int | None = None,
                 n_inputs: int | None = None) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        self.module = module
        self.batch_size = batch_size
        self.dtype = _param_dtype(module) if dtype is None else dtype
        self.device = next(module.parameters()).device if device is None else torch.device(device)
        self.input_shape = (batch_size, 1, _n_inputs(module) if n_inputs is None else n_inputs)
        self.cache = module.allocate_inference_cache(batch_size, max_seqlen, dtype=self.dtype)
        self.steps = 0
        """Steps taken since the last reset."""

    @torch.no_grad()
    def step(self, x_t: Tensor) -> Any:
        """x_t (B, 1, n_inputs) -> the module's step output for the new bar; the state advances in place."""
        _check_step_input(x_t, self.input_shape)
        out = self.module.step(x_t.to(self.device, self.dtype), self.cache)
        self.steps += 1
        return out

    @torch.no_grad()
    def reset(self) -> None:
        """Zero every state in place (every stream back to "no history")."""
        for t in _state_tensors(self.cache):
            t.zero_()
        self.steps = 0


class GraphedStep(EagerStep):
    """:class:`EagerStep` captured once in a ``torch.cuda.CUDAGraph`` and replayed every bar.

    At construction: static input and state buffers, a few warm-up steps on a side stream (allocator and library
    handles settle), the capture of one full step (``module.step`` on the static buffers), then the states are zeroed
    (the warm-up advanced them). :meth:`step` copies x_t into the static input and replays.

    The output of :meth:`step` is the graph's static output, overwritten by the next step: copy (``.clone()``,
    ``.cpu()``) what you keep. The finiteness of x_t is checked only where x_t is on the CPU (on the GPU the check
    would cost the host sync the graph avoids). The module's parameters are read in place: updating them (a new
    checkpoint loaded with ``load_state_dict``) is seen by the next replay; re-creating them is not.

    Raises
    ------
    RuntimeError
        Without a CUDA device (naming why): use :class:`EagerStep` or :func:`make_stepper`.
    ValueError
        For a module in training mode or one whose step cannot be captured (the attention mixer).
    """

    path: StreamingPath = "cuda-graph"

    def __init__(self, module: nn.Module, batch_size: int, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None, max_seqlen: int | None = None, n_inputs: int | None = None,
                 warmup: int = 3) -> None:
        device = torch.device(next(module.parameters()).device if device is None else device)
        instead = "stream with EagerStep (make_stepper picks it)"
        _check_capturable("GraphedStep", module, device, instead)
        not_static = graph_unavailable_reason(module, device)
        if not_static is not None:
            raise ValueError(f"GraphedStep: {not_static}; {instead}")
        super().__init__(module, batch_size, device, dtype, max_seqlen, n_inputs)
        self.static_input = torch.randn(self.input_shape, device=device, dtype=self.dtype)  # never all-zero
        self.graph, self.static_output, self._casts = _capture(device, warmup,
                                                               lambda: module.step(self.static_input, self.cache))
        self.reset()

    def step(self, x_t: Tensor) -> Any:
        """x_t (B, 1, n_inputs) -> the module's step output (static buffers, see the class docstring)."""
        _check_step_input(x_t, self.input_shape)
        self.static_input.copy_(x_t, non_blocking=True)
        if self._casts:  # none for the SSM steps, whose kernels read the weights as they are
            casts.refresh(self._casts)
        self.graph.replay()
        self.steps += 1
        return self.static_output


def make_stepper(module: nn.Module, batch_size: int, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None, max_seqlen: int | None = None,
                 n_inputs: int | None = None) -> EagerStep:
    """A :class:`GraphedStep` where the step can be captured (CUDA, SSM mixers), else an :class:`EagerStep`;
    ``stepper.path`` says which ("cuda-graph" or "eager"). The module must be in eval mode for the graph."""
    device = next(module.parameters()).device if device is None else torch.device(device)
    if streaming_path(device, module) == "cuda-graph":
        return GraphedStep(module, batch_size, device, dtype, max_seqlen, n_inputs)
    return EagerStep(module, batch_size, device, dtype, max_seqlen, n_inputs)


class GraphedForward:
    """``module(x)`` for inputs of one fixed shape, captured once in a ``torch.cuda.CUDAGraph`` and replayed.

    A whole-window forward through N layers is a few hundred kernel launches (353 for the seed's 24-layer network);
    launched from Python, the host's time between them is device time lost: 0.85 ms of a 44.6 ms forward at batch
    1024 on an H100 (``benchmarks/results/h100-2026-11-26``); a larger share at small batches, where the kernels are
    short (not measured). At construction: a static input buffer, a few warm-up forwards on a side stream, the
    capture of one (under ``autocast_dtype`` autocast, if given, as the caller's eager forward would run). Each call copies x into the static input and
    replays. The checks the forward makes on its input are skipped inside a capture (``_checks.capturing``), so
    :meth:`__call__` checks x's shape and dtype, and its finiteness where x is on the CPU (on the GPU that check
    would cost the host sync the graph avoids).

    The output is the graph's static output, overwritten by the next call: copy what you keep. Parameters are read
    in place, as :class:`GraphedStep`'s: updated values are seen by the next replay, re-created tensors are not
    (the weights' inference casts the graph reads, :mod:`condorbrain.ssm.casts`, are remade in place first where
    their parameters changed).
    Memory: the forward's activations stay allocated between calls (the graph's private pool).

    Raises
    ------
    RuntimeError
        Without a CUDA device (naming why): call the module itself.
    ValueError
        For a module in training mode, or a bad ``input_shape``.
    """

    def __init__(self, module: nn.Module, input_shape: tuple[int, ...], device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None, autocast_dtype: torch.dtype | None = None,
                 warmup: int = 2) -> None:
        device = torch.device(next(module.parameters()).device if device is None else device)
        _check_capturable("GraphedForward", module, device, "call the module itself")
        if not input_shape or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in input_shape):
            raise ValueError(f"input_shape must be positive ints, got {input_shape!r}")
        self.module = module
        self.input_shape = tuple(input_shape)
        self.dtype = _param_dtype(module) if dtype is None else dtype
        self.autocast_dtype = autocast_dtype
        self.static_input = torch.randn(self.input_shape, device=device, dtype=self.dtype)  # never all-zero
        self.graph, self.static_output, self._casts = _capture(device, warmup, lambda: module(self.static_input),
                                                               self._autocast)

    def _autocast(self) -> Any:
        return torch.autocast("cuda", dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None)

    def __call__(self, x: Tensor) -> Any:
        """x (the construction's input shape) -> the module's output (static buffers, see the class docstring)."""
        _check_step_input(x, self.input_shape, name="x", layout="(the shape captured)")
        self.static_input.copy_(x, non_blocking=True)
        casts.refresh(self._casts)  # the weights' inference casts the graph reads, remade where they changed
        self.graph.replay()
        return self.static_output
