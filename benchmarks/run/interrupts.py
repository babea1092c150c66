"""Ctrl-C or SIGTERM during training: the current batch finishes, a checkpoint is saved there, then the run stops.

`install()` routes SIGINT and SIGTERM here (the CLI and sweep workers call it; a library user keeps Python's
defaults). Inside `deferred()` a first signal only raises a flag that the training loop checks after each batch; a
second one, or any signal outside training, interrupts at once with KeyboardInterrupt. `request()` asks for the
same stop from another thread (a sweep worker whose parent went away) and never escalates to stopping at once.
The process then exits with `exit_code()`: 128 + the signal, 130 for Ctrl-C and 143 for SIGTERM, as shells do.
"""

from __future__ import annotations

import _thread
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from tqdm.auto import tqdm

# The signals that ask a run to stop: Ctrl-C, and what `kill`, systemd, Slurm and Kubernetes send first.
SIGNALS = (signal.SIGINT, signal.SIGTERM)
# A signal this soon after one stopped the process at once is taken as the same request (a key held down, a
# supervisor signalling twice): it lets the clean-up that records the run KILLED, and the one-line exit, finish.
# One that comes later still stops a clean-up that hangs.
REPEAT_S = 1.0

Handler = Callable[[int, Any], None]

_deferring = False
_requested = False  # a stop was asked inside the current deferred() block
_signalled = False  # ... by a signal (a second one stops at once; a request() never does)
_received: int | None = None  # the first signal since install()
_raised_at = float("-inf")  # when a signal last interrupted at once


def _say(why: str) -> None:
    tqdm.write(f"{why}: finishing the current batch and saving a checkpoint (Ctrl-C again to stop now)")


def handle(signum: int, frame: object) -> None:
    """The signal handler `install()` sets: defer the first signal inside `deferred()`, else KeyboardInterrupt."""
    global _requested, _signalled, _received, _raised_at
    if _received is None:
        _received = signum
    if _deferring and not _signalled:
        _requested = _signalled = True
        _say("interrupt" if signum == signal.SIGINT else signal.Signals(signum).name)
        return
    now = time.monotonic()
    if now - _raised_at < REPEAT_S:
        return
    _raised_at = now
    raise KeyboardInterrupt


def install(handler: Handler = handle, signals: tuple[int, ...] = SIGNALS) -> dict[int, Any]:
    """Route `signals` to `handler` (by default `handle`); the previous handlers ({} outside the main thread: no-op)."""
    global _received, _raised_at
    if threading.current_thread() is not threading.main_thread():
        return {}
    _received, _raised_at = None, float("-inf")
    return {signum: signal.signal(signum, handler) for signum in signals}


def restore(previous: dict[int, Any]) -> None:
    """Put back the handlers `install()` returned."""
    for signum, old in previous.items():
        signal.signal(signum, old)


def ignore() -> None:
    """Ignore the stop signals from now on: for a process on its way out (SIGKILL still stops it)."""
    if threading.current_thread() is threading.main_thread():
        for signum in SIGNALS:
            signal.signal(signum, signal.SIG_IGN)


@contextmanager
def installed() -> Iterator[None]:
    """`install()` for the duration of a `with` block, then the previous handlers again."""
    previous = install()
    try:
        yield
    finally:
        restore(previous)


@contextmanager
def deferred() -> Iterator[None]:
    """Within the block, a first signal (or a `request()`) sets `requested()` instead of raising."""
    global _deferring, _requested, _signalled, _raised_at
    # Training again: whatever interrupted before was dealt with, so the next signal is a new one.
    outer, _deferring, _requested, _signalled, _raised_at = _deferring, True, False, False, float("-inf")
    try:
        yield
    except KeyboardInterrupt:
        # The run stops now (the batch done, or a second signal): a signal this soon is the same request, and must
        # not cut short the clean-up that records the run KILLED.
        _raised_at = time.monotonic()
        raise
    finally:
        _deferring = outer


def requested() -> bool:
    """Whether a stop was asked inside the current `deferred()` block."""
    return _requested


def request(why: str = "stopping") -> None:
    """From any thread: stop the main thread as a first SIGTERM would, batch finished and checkpointed if training.

    Unlike a signal it never counts as the second one that stops at once, so a process that also got the signal
    itself (Ctrl-C reaches a whole process group) still finishes its batch.
    """
    global _requested, _received
    if _deferring:
        if not _requested:
            _requested = True
            _say(why)
        if _received is None:
            _received = signal.SIGTERM
        return
    # Outside training nothing is lost by stopping now: the main thread gets KeyboardInterrupt from its handler.
    _thread.interrupt_main(signal.SIGTERM)


def received() -> int | None:
    """The first signal (SIGINT, SIGTERM) this process got since `install()`, or None."""
    return _received


def stopped_by() -> str:
    """How the stop by `received()` reads in a message: "interrupted" (Ctrl-C), "terminated (SIGTERM)"."""
    if _received in (None, signal.SIGINT):
        return "interrupted"
    return f"terminated ({signal.Signals(_received).name})"


def exit_code() -> int:
    """The exit status of a process stopped by `received()`: 128 + the signal (130 when none was recorded)."""
    return 128 + (_received or signal.SIGINT)
