"""What runs one run of a sweep in whichever process the executor chose: set up, execute, report the result.

A local worker (`--jobs N`) stops with its sweep: Ctrl-C, SIGTERM, the parent's stop flag, or the parent's death
(SIGKILL, OOM) each make the run finish its batch, checkpoint and be recorded KILLED. A worker whose parent died then
exits, so that it neither waits forever for work nor keeps its memory and its run's claim.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

from benchmarks import tracking
from benchmarks.config import RunConfig
from benchmarks.errors import one_line
from benchmarks.run import interrupts
from benchmarks.run.pipeline import RunResult, execute
from benchmarks.tracking import schema

T = TypeVar("T")

# How often a local worker looks whether its parent is still there and whether it asks the workers to stop.
WATCH_S = 0.2

# Set in a worker that was asked to stop: the runs already queued to it (which the parent can no longer cancel)
# are then not started. Only in a worker: a sweep run in this process ends with its interrupt, and the next one here
# (a notebook, a test) must run.
_interrupted = False
_in_worker = False
# Between run_one and the watch thread: either a run starts or the worker is told to stop, never both half-way.
_lock = threading.Lock()
_idle = threading.Event()  # set while no run is in execute(): a worker whose parent died may leave then
_idle.set()


@dataclass(frozen=True)
class Parent:
    """What a local worker watches: the sweep's process, its MLflow run, and the byte it sets to stop the workers."""

    pid: int
    run_id: str
    stopping: Any  # a multiprocessing RawValue: no lock, so a parent killed while setting it cannot block a worker


def init_worker(threads: int, parent: Parent | None = None) -> None:
    """Set up a worker process: its share of the threads, a stop finishing the batch, and given `parent` its watch.

    Without `parent` (a Ray task: Ray owns its workers' SIGTERM and lifetime) only Ctrl-C is handled, as before.
    """
    global _in_worker
    _in_worker = True
    torch.set_num_threads(threads)
    if parent is None:
        interrupts.install(signals=(signal.SIGINT,))
        return
    interrupts.install(_on_signal)
    threading.Thread(target=_watch, args=(parent,), name="watch-parent", daemon=True).start()


def worker_env(threads: int) -> dict[str, str]:
    """Environment of a worker process: no oversubscribed thread pools, no epoch bars fighting the sweep's bar."""
    return {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "TQDM_DISABLE": "1"}


def _on_signal(signum: int, frame: Any) -> None:
    global _interrupted
    _interrupted = True  # no further run starts here
    if not _idle.is_set():
        interrupts.handle(signum, frame)
    # Between runs the worker waits in the executor's code: nothing is unsaved, and an exception there would print
    # the executor's traceback and break the pool. The parent shuts the pool down, or the watch ends a lost worker.


def _stop(why: str) -> None:
    """Stop this worker as a first SIGTERM would: the run finishes its batch and checkpoints; no other starts."""
    global _interrupted
    with _lock:
        _interrupted = True
        if not _idle.is_set():
            interrupts.request(why)


def _watch(parent: Parent) -> None:
    """Until the parent is gone, pass on its stop flag; then stop the run, record the sweep KILLED and exit."""
    # getppid() changes when the parent dies (the orphan is given to init or a subreaper), including before this
    # thread started; the parent pid cannot come back as our parent.
    asked = False
    while os.getppid() == parent.pid:
        if not asked and parent.stopping.value:
            asked = True
            _stop("the sweep is stopping")
        time.sleep(WATCH_S)
    _stop("the sweep's process is gone")
    _idle.wait()  # the run records itself KILLED, with its checkpoint saved
    # Nobody else will end the sweep's run; a second worker ending it again changes nothing.
    with contextlib.suppress(Exception):
        tracking.end_run(parent.run_id, schema.STATUS_KILLED, error="the sweep's process died")
    sys.stdout.flush()
    sys.stderr.flush()
    # From this thread: the main thread sits in the executor's wait for work, which would never come.
    os._exit(128 + signal.SIGTERM)


def guarded(fn: Callable[..., T], *args: Any, stopped: T) -> T:
    """fn(*args), unless this worker was asked to stop: then `stopped`, and nothing starts."""
    global _interrupted
    with _lock:
        if _interrupted:
            return stopped
        _idle.clear()
    try:
        return fn(*args)
    except KeyboardInterrupt:
        _interrupted = _in_worker
        raise
    finally:
        _idle.set()


def run_one(cfg: RunConfig, parent_run_id: str, latency: bool) -> RunResult:
    """Execute one run of the sweep; its failure (recorded FAILED by execute) comes back as a FAILED result."""
    return guarded(_execute, cfg, parent_run_id, latency,
                   stopped=RunResult(cfg, None, schema.STATUS_KILLED, error="interrupted"))


def _execute(cfg: RunConfig, parent_run_id: str, latency: bool) -> RunResult:
    try:
        return execute(cfg, parent_run_id=parent_run_id, latency=latency, tags={schema.TAG_SWEEP: cfg.experiment})
    except ConnectionError:  # the tracking server is away: every further run would fail alike, so the sweep stops
        raise
    except Exception as err:  # noqa: BLE001 - one failed run must not stop the sweep
        # execute() does not return the id of the run it recorded FAILED: the newest such run is it.
        return RunResult(cfg, tracking.find_run(cfg.experiment, cfg.config_hash(), (schema.STATUS_FAILED,)),
                         schema.STATUS_FAILED, error=one_line(err, kind=True))
