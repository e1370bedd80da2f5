"""Checkpoints that are never unpickled: safetensors for tensors, JSON for everything else, a manifest last.

Layout of one checkpoint (``run_dir/checkpoints/step-000001200/``)::

    model.safetensors      the model's state_dict (live weights)
    ema.safetensors        the model's state_dict with the EMA shadow as parameters (only when EMA is on)
    train_state.safetensors  tensors needed to resume: optimizer moments and step counts ("optim.<i>.<key>"),
                           torch RNG states as uint8 ("rng.torch", "rng.cuda.<i>")
    meta.json              schema_version, config, run info (features, normalisation, data range, ...), code
                           version, metrics, loop position, optimizer / schedule / RNG scalars
    manifest.json          written last: size and sha256 of every other file

Every file is written to a temporary name in the same folder, flushed to disk and moved into place with
``os.replace``; the manifest comes last, so a folder without one is an interrupted save and is ignored by
:func:`latest_checkpoint`. :func:`load_checkpoint` checks every file's size and sha256 against the manifest before
parsing it, and reads tensors only with ``safetensors`` and metadata only with ``json``: neither ``pickle`` nor
``torch.load`` is ever called. Every failure raises :class:`CheckpointError` naming the file.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import re
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

import condorbrain

__all__ = ["SCHEMA_VERSION", "CheckpointError", "Checkpoint", "RunInfo", "save_checkpoint", "load_checkpoint",
           "latest_checkpoint", "list_checkpoints", "code_version", "flatten_optimizer_state",
           "unflatten_optimizer_state", "capture_rng_state", "restore_rng_state"]

SCHEMA_VERSION = 1
"""Version of the layout and of meta.json's keys; bumped on any incompatible change."""

MODEL_FILE = "model.safetensors"
EMA_FILE = "ema.safetensors"
TRAIN_STATE_FILE = "train_state.safetensors"
META_FILE = "meta.json"
MANIFEST_FILE = "manifest.json"
_STEP_DIR = re.compile(r"^step-(\d{9})$")


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, truncated, altered or unreadable; the message names the file."""


@dataclass(frozen=True)
class RunInfo:
    """What a checkpoint must carry to be reused on new data; every value JSON-ready."""

    features: tuple[str, ...] = ()
    """Input feature columns, in the order the model reads them."""
    normalization: Mapping[str, Any] | None = None
    """Scaler statistics, e.g. ``condorbrain.data.normalize.ClippedZScore.to_dict()``."""
    data_range: Mapping[str, Any] | None = None
    """Time ranges of the data, e.g. ``{"train": ["2010-01-04", "2019-12-31"], "val": [...]}``."""
    model_config: Mapping[str, Any] | None = None
    """The model's config as a dict, to rebuild the model before loading the weights."""
    extra: Mapping[str, Any] = field(default_factory=dict)
    """Anything else worth keeping (targets, horizons, dataset path, ...)."""

    def to_dict(self) -> dict[str, Any]:
        return {"features": list(self.features), "normalization": self.normalization,
                "data_range": self.data_range, "model_config": self.model_config, "extra": dict(self.extra)}


@dataclass(frozen=True)
class Checkpoint:
    """A loaded, verified checkpoint."""

    path: Path
    """The checkpoint folder."""
    meta: dict[str, Any]
    """Parsed meta.json."""
    model: dict[str, torch.Tensor]
    """The model's state_dict (live weights), on the CPU."""
    ema: dict[str, torch.Tensor] | None
    """The state_dict with EMA weights, or None when the run had no EMA."""
    train_state: dict[str, torch.Tensor]
    """Optimizer and RNG tensors (see the module docstring)."""

    @property
    def step(self) -> int:
        return int(self.meta["loop"]["step"])

    def weights(self, prefer_ema: bool = True) -> dict[str, torch.Tensor]:
        """The state_dict to evaluate or predict with: the EMA weights when present and asked for."""
        return self.ema if prefer_ema and self.ema is not None else self.model


# --- code version --------------------------------------------------------------------------------------------------

def code_version() -> dict[str, Any]:
    """``condorbrain.__version__``, the git commit of the source tree (None outside a git checkout) and torch's
    version."""
    commit = None
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(condorbrain.__file__).parent,
                             capture_output=True, text=True, timeout=5, check=False)
        if out.returncode == 0:
            commit = out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        pass
    return {"condorbrain": condorbrain.__version__, "git_commit": commit, "torch": torch.__version__}


# --- writing -------------------------------------------------------------------------------------------------------

def _atomic_write(path: Path, data: bytes) -> dict[str, Any]:
    """Write ``data`` to ``path`` through a temporary file + fsync + os.replace; return its size and sha256."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def _json_bytes(obj: Any) -> bytes:
    # allow_nan=False: NaN / inf are not JSON; callers store them as None.
    return (json.dumps(obj, indent=1, sort_keys=True, allow_nan=False) + "\n").encode()


def _cpu_copies(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # Copies, so tied (shared-storage) weights are saved once per name instead of failing safetensors' check.
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in tensors.items()}


def save_checkpoint(directory: str | os.PathLike[str], *, model_state: Mapping[str, torch.Tensor],
                    meta: Mapping[str, Any], ema_state: Mapping[str, torch.Tensor] | None = None,
                    train_state: Mapping[str, torch.Tensor] | None = None) -> Path:
    """Write one checkpoint folder (layout in the module docstring) and return its path.

    Args:
        directory: the checkpoint folder; created if missing. Files of an earlier save there are replaced.
        model_state: the model's state_dict.
        meta: JSON-ready metadata; ``schema_version`` and ``code`` are added.
        ema_state: the state_dict with EMA weights, or None.
        train_state: the tensors needed to resume (optimizer, RNG), or None.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / MANIFEST_FILE).unlink(missing_ok=True)  # an overwritten folder is incomplete until the end
    files: dict[str, Any] = {}
    files[MODEL_FILE] = _atomic_write(directory / MODEL_FILE, st_save(_cpu_copies(model_state)))
    if ema_state is not None:
        files[EMA_FILE] = _atomic_write(directory / EMA_FILE, st_save(_cpu_copies(ema_state)))
    if train_state is not None:
        files[TRAIN_STATE_FILE] = _atomic_write(directory / TRAIN_STATE_FILE, st_save(_cpu_copies(train_state)))
    full_meta = {**meta, "schema_version": SCHEMA_VERSION, "code": meta.get("code", code_version())}
    files[META_FILE] = _atomic_write(directory / META_FILE, _json_bytes(full_meta))
    _atomic_write(directory / MANIFEST_FILE, _json_bytes({"schema_version": SCHEMA_VERSION, "files": files}))
    return directory


# --- reading -------------------------------------------------------------------------------------------------------

def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_bytes().decode())
    except FileNotFoundError:
        raise CheckpointError(f"{path}: file is missing") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e}); the file is truncated or damaged") from None


def _read_verified(path: Path, expected: Mapping[str, Any]) -> bytes:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"{path}: file is missing (listed in {MANIFEST_FILE})") from None
    if len(data) != expected["bytes"]:
        raise CheckpointError(f"{path}: {len(data)} bytes, the manifest records {expected['bytes']}; "
                              "the file is truncated or was replaced")
    if hashlib.sha256(data).hexdigest() != expected["sha256"]:
        raise CheckpointError(f"{path}: sha256 differs from the manifest; the file was altered or damaged")
    return data


def _load_tensors(path: Path, data: bytes) -> dict[str, torch.Tensor]:
    try:
        return st_load(data)
    except (SafetensorError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from None


def load_checkpoint(directory: str | os.PathLike[str]) -> Checkpoint:
    """Read and verify a checkpoint folder written by :func:`save_checkpoint`.

    Raises:
        CheckpointError: the folder or a file is missing, a file's size or sha256 differs from the manifest, a file
            does not parse, or the schema version is not :data:`SCHEMA_VERSION`. The message names the file.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: checkpoint folder does not exist")
    manifest_path = directory / MANIFEST_FILE
    if not manifest_path.exists():
        raise CheckpointError(f"{manifest_path}: file is missing; the save was interrupted (the manifest is "
                              "written last) or this is not a checkpoint folder")
    manifest = _read_json(manifest_path)
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict) or MODEL_FILE not in files or META_FILE not in files or not all(
            isinstance(v, dict) and isinstance(v.get("bytes"), int) and isinstance(v.get("sha256"), str)
            for v in files.values()):
        raise CheckpointError(f"{manifest_path}: malformed manifest (needs files.{MODEL_FILE} and files.{META_FILE}"
                              " with bytes and sha256)")
    if manifest.get("schema_version") != SCHEMA_VERSION:
        raise CheckpointError(f"{manifest_path}: schema_version {manifest.get('schema_version')!r}, this code "
                              f"reads {SCHEMA_VERSION}")
    blobs = {name: _read_verified(directory / name, spec) for name, spec in files.items()}
    try:
        meta = json.loads(blobs[META_FILE].decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{directory / META_FILE}: not valid JSON ({e})") from None
    if meta.get("schema_version") != SCHEMA_VERSION:
        raise CheckpointError(f"{directory / META_FILE}: schema_version {meta.get('schema_version')!r}, this code "
                              f"reads {SCHEMA_VERSION}")

    def tensors(name: str) -> dict[str, torch.Tensor] | None:
        return _load_tensors(directory / name, blobs[name]) if name in blobs else None

    return Checkpoint(path=directory, meta=meta, model=tensors(MODEL_FILE) or {}, ema=tensors(EMA_FILE),
                      train_state=tensors(TRAIN_STATE_FILE) or {})


def list_checkpoints(run_dir: str | os.PathLike[str]) -> list[Path]:
    """Complete checkpoints (those with a manifest) under ``run_dir/checkpoints``, oldest first."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if _STEP_DIR.match(p.name) and (p / MANIFEST_FILE).exists()]
    return sorted(found, key=lambda p: p.name)


def latest_checkpoint(run_dir: str | os.PathLike[str]) -> Path | None:
    """The newest complete checkpoint under ``run_dir/checkpoints``, or None."""
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def checkpoint_dir(run_dir: str | os.PathLike[str], step: int) -> Path:
    """Where the checkpoint of optimizer step ``step`` goes."""
    return Path(run_dir) / "checkpoints" / f"step-{step:09d}"


def prune_checkpoints(run_dir: str | os.PathLike[str], keep: int) -> None:
    """Delete all but the newest ``keep`` complete checkpoints, and interrupted saves older than the newest."""
    complete = list_checkpoints(run_dir)
    for old in complete[:-keep]:
        shutil.rmtree(old)
    root = Path(run_dir) / "checkpoints"
    if complete and root.is_dir():
        for p in root.iterdir():
            if _STEP_DIR.match(p.name) and not (p / MANIFEST_FILE).exists() and p.name < complete[-1].name:
                shutil.rmtree(p)


# --- optimizer and RNG state as (tensors, JSON) --------------------------------------------------------------------

def flatten_optimizer_state(state: Mapping[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split ``optimizer.state_dict()`` into tensors ("optim.<param index>.<key>") and a JSON-ready rest."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, per_param in state["state"].items():
        for key, value in per_param.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{index}.{key}"] = value
            else:
                scalars.setdefault(str(index), {})[key] = value
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in state["param_groups"]]
    return tensors, {"param_groups": groups, "scalars": scalars}


def unflatten_optimizer_state(tensors: Mapping[str, torch.Tensor], rest: Mapping[str, Any]) -> dict[str, Any]:
    """Inverse of :func:`flatten_optimizer_state`: a dict for ``optimizer.load_state_dict``."""
    state: dict[int, dict[str, Any]] = {}
    for name, t in tensors.items():
        if name.startswith("optim."):
            _, index, key = name.split(".", 2)
            state.setdefault(int(index), {})[key] = t
    for index, values in rest["scalars"].items():
        state.setdefault(int(index), {}).update(values)
    groups = [{k: (tuple(v) if k == "betas" else v) for k, v in g.items()} for g in rest["param_groups"]]
    return {"state": state, "param_groups": groups}


def capture_rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The states of torch's CPU and CUDA generators (tensors) and of Python's and NumPy's (JSON-ready)."""
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    rest = {"python": [version, list(internal), gauss],
            "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)]}
    return tensors, rest


def restore_rng_state(tensors: Mapping[str, torch.Tensor], rest: Mapping[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    torch.set_rng_state(tensors["rng.torch"])
    cuda = [tensors[k] for k in sorted((k for k in tensors if k.startswith("rng.cuda.")),
                                       key=lambda k: int(k.rsplit(".", 1)[1]))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    version, internal, gauss = rest["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = rest["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))


def finite_or_none(x: float | None) -> float | None:
    """JSON has no inf / NaN: store them as None."""
    return None if x is None or not math.isfinite(x) else float(x)
