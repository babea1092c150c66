"""Checkpoint and cache files that prove their integrity: a digest beside each file, a shape check on load.

A file that was truncated, overwritten, or written for another model is reported and its stage redone,
never fed to `load_state_dict` to fail deep inside it. Everything loads with `weights_only=True`.
"""

from __future__ import annotations

import errno
import hashlib
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from benchmarks.files import write_atomic

DIGEST_SUFFIX = ".sha256"
# A stage's files at their peak, in copies of the model's state: the checkpoint (model plus up to two optimizer
# moments) twice while the new one replaces the old, and the final model.
STATE_COPIES = 7
_MiB = 1 << 20


class UnusableFile(ValueError):
    """A checkpoint or cache file failed its digest, could not be read, or does not fit the model."""


def _digest_path(path: Path) -> Path:
    return path.with_name(path.name + DIGEST_SUFFIX)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save(path: Path, obj: Any) -> None:
    """torch.save `obj` to `path` atomically, with its SHA-256 beside it."""

    def write(tmp: Path) -> None:
        torch.save(obj, tmp)
        # The digest lands before the file: a crash between the two leaves a mismatch, which reads as unusable.
        digest = _sha256(tmp)
        write_atomic(_digest_path(path), lambda d: d.write_text(digest))

    write_atomic(path, write)


def remove(path: Path) -> None:
    """Delete a saved file and its digest."""
    path.unlink(missing_ok=True)
    _digest_path(path).unlink(missing_ok=True)


def load(path: Path) -> Any:
    """What `save` stored at `path`, on the CPU; UnusableFile when its digest does not match or it cannot be read."""
    digest_path = _digest_path(path)
    if not digest_path.exists():
        raise UnusableFile(f"{path} has no {DIGEST_SUFFIX} digest beside it (not written by lorita-bench)")
    if digest_path.read_text().strip() != _sha256(path):
        raise UnusableFile(f"{path} does not match its digest (truncated or changed since it was written)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means the same: the file is unusable
        raise UnusableFile(f"{path} cannot be read: {type(err).__name__}") from None


def check_state(model: nn.Module, state: Any, path: Path) -> None:
    """UnusableFile naming the first entry of `state` that does not fit `model` (missing, extra, or reshaped)."""
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UnusableFile(f"{path} does not hold a state dict")
    expected = model.state_dict()
    for key, tensor in expected.items():
        if key not in state:
            raise UnusableFile(f"{path} was written for another model: it lacks {key}")
        if state[key].shape != tensor.shape:
            raise UnusableFile(f"{path} was written for another model: {key} has shape "
                               f"{tuple(state[key].shape)}, this model {tuple(tensor.shape)}")
    extra = next((key for key in state if key not in expected), None)
    if extra is not None:
        raise UnusableFile(f"{path} was written for another model: it has {extra}, which this model lacks")


def load_state(path: Path, model: nn.Module) -> None:
    """Load the state dict saved at `path` into `model` after checking digest, keys and shapes."""
    state = load(path)
    check_state(model, state, path)
    model.load_state_dict(state)


def require_space(folder: Path, model: nn.Module) -> None:
    """OSError (ENOSPC) naming `folder` when it cannot hold the checkpoints of training `model`, before training."""
    state_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    need, free = STATE_COPIES * state_bytes + _MiB, shutil.disk_usage(folder).free
    if free < need:
        raise OSError(errno.ENOSPC, f"output directory {folder} has {free / _MiB:.1f} MiB free; this run's "
                                    f"checkpoints need about {need / _MiB:.1f} MiB")
