"""Sending records to the store: one record (`send`), a run's outbox queue in order (`flush`), and the process's
sender thread, which flushes queues in the background so that no training step ever waits on a tracking server.

A record is what `delivery` writes: {"op": "metrics" | "tags" | "text" | "file" | "model" | "end", ...}; queued ones
also carry the "uri" of their server.
"""

from __future__ import annotations

import math
import os
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from filelock import Timeout
from mlflow import MlflowClient
from mlflow.entities import Metric, RunTag

from benchmarks.errors import one_line
from benchmarks.tracking import models, outbox
from benchmarks.tracking.store import mlflow_settings, shown_uri, unreachable, with_mlflow_defaults

# MLflow's caps on one log_batch call (params and tags count together).
MAX_PARAMS_TAGS_PER_BATCH = 100
MAX_METRICS_PER_BATCH = 1000
# Settings of every call that sends a queued record, unless the user set them: a server that accepts and never
# answers costs one record seconds, not MLflow's minutes of retries; what is not sent stays queued, so a short
# timeout loses nothing. (Start-up of a run uses them too: it must reach the server before training starts.)
SEND_SETTINGS = {"MLFLOW_HTTP_REQUEST_TIMEOUT": "5", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
                 "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}
# A server that did not answer is not asked again for this long; meanwhile records wait in the outbox.
AWAY_S = 30.0
# Another process (`lorita-bench sync`) sends a run's records: look again after this long.
_BUSY_RETRY_S = 1.0
# How often a wait for a run's records looks at the outbox, which another process may empty.
_DRAIN_POLL_S = 0.5

_away_until: dict[str, float] = {}
_warned: set[str] = set()  # runs whose server's absence was reported
_stuck: set[str] = set()  # runs whose records could not be read or removed, reported
_T = TypeVar("_T")


def chunks(items: Sequence[_T], size: int) -> Iterator[Sequence[_T]]:
    """`items` in slices of at most `size`."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


@with_mlflow_defaults
def send(uri: str, run_id: str, record: Mapping[str, Any]) -> None:
    """Deliver one record to the store at `uri` now."""
    mlc = MlflowClient(uri)
    op = record["op"]
    if op == "metrics":
        for chunk in chunks([Metric(*entry) for entry in record["metrics"]], MAX_METRICS_PER_BATCH):
            mlc.log_batch(run_id, metrics=chunk)
    elif op == "tags":
        for chunk in chunks([RunTag(k, v) for k, v in record["tags"].items()], MAX_PARAMS_TAGS_PER_BATCH):
            mlc.log_batch(run_id, tags=chunk)
    elif op == "text":
        mlc.log_text(run_id, record["text"], record["name"])
    elif op == "file":
        mlc.log_artifact(run_id, record["path"])
    elif op == "model":
        models.log_program(uri, run_id, record)
    elif op == "end":
        mlc.set_terminated(run_id, record["status"], end_time=record["end_time"])
    else:
        raise ValueError(f"outbox record of unknown kind {op!r}")


class Refused(Exception):
    """The server answered a record with an error: the record is dropped, since sending it again cannot help."""


def _server_away(exc: BaseException) -> bool:
    # A kept file that is gone cannot arrive by asking again: a refusal, not an absence.
    return unreachable(exc) and not isinstance(exc, FileNotFoundError)


def flush(run_id: str) -> bool:
    """Send the run's queued records in order (caller holds its send lock); False when the server is away.

    A record the server refuses is dropped and Refused raised, with the server's error as its message.
    """
    while True:
        queue = outbox.records(run_id)
        if not queue:
            return True
        for record in queue:
            uri = record["uri"]
            if time.monotonic() < _away_until.get(uri, 0.0):
                return False
            try:
                with mlflow_settings(SEND_SETTINGS):
                    send(uri, run_id, record)
            except Exception as exc:
                if not _server_away(exc):
                    outbox.drop(run_id)
                    raise Refused(one_line(exc)) from exc
                _away_until[uri] = time.monotonic() + AWAY_S
                if run_id not in _warned:
                    _warned.add(run_id)
                    print(f"tracking server {shown_uri(uri)} unreachable ({one_line(exc)[:160]}); run {run_id} goes "
                          f"on and keeps its records in {outbox.folder()} until the server answers (or: lorita-bench "
                          "sync)", file=sys.stderr, flush=True)
                return False
            outbox.drop(run_id)
        # Records added while these travelled: the loop reads the queue again.


def forget_away(uris: set[str] | None = None) -> None:
    """Ask these servers (default: every one) again at the next record, though they did not answer lately."""
    if uris is None:
        _away_until.clear()
    for uri in uris or ():
        _away_until.pop(uri, None)


class _Sender:
    """The process's sender thread: a daemon, started on first use, which flushes the runs it is told of."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._due: dict[str, float] = {}  # run id -> when to flush it next (time.monotonic())
        self._folders: dict[str, Path] = {}  # run id -> the outbox its records were kept in
        self._away: Counter[str] = Counter()  # flushes of each run that found its server away
        self._pid: int | None = None

    def wake(self, run_id: str, *, now: bool = False) -> None:
        """Flush the run soon: at once, unless its server is away (then when it is asked again) and not `now`."""
        with self._cond:
            if self._pid != os.getpid():  # none started yet, or a forked child, which has no thread of its own
                self._pid = os.getpid()
                threading.Thread(target=self._loop, name="tracking-sender", daemon=True).start()
            at = time.monotonic()
            self._due[run_id] = at if now else self._due.get(run_id, at)
            self._folders[run_id] = outbox.folder()
            self._cond.notify_all()

    def wait_sent(self, run_id: str, limit_s: float) -> bool:
        """Wait up to `limit_s` for the run's queue to empty; False at once when its server does not answer."""
        deadline = time.monotonic() + limit_s
        with self._cond:
            away = self._away[run_id]
        # One more try now, though the server was away lately: it may be back for the end of the run.
        forget_away({record["uri"] for record in outbox.records(run_id)})
        self.wake(run_id, now=True)
        with self._cond:
            while outbox.pending(run_id):
                left = deadline - time.monotonic()
                if self._away[run_id] > away or left <= 0:
                    return False
                self._cond.wait(min(left, _DRAIN_POLL_S))
        return True

    def _next(self) -> tuple[str, Path]:
        with self._cond:
            while True:
                now = time.monotonic()
                run_id, at = min(self._due.items(), key=lambda item: item[1], default=(None, math.inf))
                if run_id is not None and at <= now:
                    del self._due[run_id]
                    return run_id, self._folders[run_id]
                self._cond.wait(None if run_id is None else at - now)

    def _loop(self) -> None:
        while True:
            run_id, folder = self._next()
            away, retry_s = False, None
            try:
                with outbox.at(folder), outbox.locked(run_id, timeout=0):
                    away = not flush(run_id)
                retry_s = AWAY_S if away else None
            except Timeout:
                retry_s = _BUSY_RETRY_S
            except Refused as exc:  # the run's other records still go
                print(f"lorita-bench: warning: the tracking server refused a record of run {run_id}, which is "
                      f"dropped: {str(exc)[:300]}", file=sys.stderr, flush=True)
                retry_s = 0.0
            except Exception as exc:  # noqa: BLE001 - e.g. a full disk: the thread must live on to send the rest
                if run_id not in _stuck:
                    _stuck.add(run_id)
                    print(f"lorita-bench: warning: cannot send the records of run {run_id} from {folder}: "
                          f"{one_line(exc)[:300]}", file=sys.stderr, flush=True)
                retry_s = _BUSY_RETRY_S
            with self._cond:
                if retry_s is not None:
                    self._due[run_id] = time.monotonic() + retry_s
                self._away[run_id] += away
                self._cond.notify_all()


_SENDER = _Sender()
# A child forked while the thread held its lock would inherit the lock held forever: start afresh there.
os.register_at_fork(after_in_child=_SENDER.__init__)


def wake(run_id: str) -> None:
    """Have the sender thread send the run's queued records soon; returns at once."""
    _SENDER.wake(run_id)


def wait_sent(run_id: str, limit_s: float) -> bool:
    """Whether the run's queued records all arrived within `limit_s` (False at once when its server is away)."""
    return _SENDER.wait_sent(run_id, limit_s)
