"""Ctrl-C during training: the current batch finishes, a checkpoint is saved there, then the run stops.

`install()` routes SIGINT here (the CLI and sweep workers call it; a library user keeps Python's default).
Inside `deferred()` a first SIGINT only raises a flag that the training loop checks after each batch; a
second one, or any SIGINT outside training, interrupts at once as usual.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from tqdm.auto import tqdm

_deferring = False
_requested = False


def _handle(signum: int, frame: object) -> None:
    global _requested
    if _deferring and not _requested:
        _requested = True
        tqdm.write("interrupt: finishing the current batch and saving a checkpoint (Ctrl-C again to stop now)")
        return
    raise KeyboardInterrupt


def install() -> Any:
    """Handle SIGINT as described above; returns the previous handler (None outside the main thread: no-op)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGINT, _handle)


@contextmanager
def installed() -> Iterator[None]:
    """`install()` for the duration of a `with` block, then the previous handler again."""
    previous = install()
    try:
        yield
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


@contextmanager
def deferred() -> Iterator[None]:
    """Within the block, a first SIGINT sets `requested()` instead of raising."""
    global _deferring, _requested
    outer, _deferring, _requested = _deferring, True, False
    try:
        yield
    finally:
        _deferring = outer


def requested() -> bool:
    """Whether a SIGINT arrived inside the current `deferred()` block."""
    return _requested
