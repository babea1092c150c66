"""Tracking records kept on disk, in order, per run, until the tracking server has them.

Every record for a tracking server lands here first, so that nothing is lost while the server is away and no
training step waits on it; `tracking` sends it in the background (or on `lorita-bench sync`). One JSON-lines file
per run, plus a folder for its artifact files. Two locks per run, between processes and threads: the send lock
keeps a sync and the run itself from sending the same record twice, and is held while records travel; the queue
lock is held only for the moment a record is added or removed, so that adding one never waits on the network.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from filelock import FileLock

from benchmarks.config import DEFAULT_CACHE_DIR
from benchmarks.files import write_atomic

OUTBOX_ENV = "LORITA_BENCH_OUTBOX"
DEFAULT_FOLDER = Path(DEFAULT_CACHE_DIR) / "outbox"
_thread = threading.local()


def folder() -> Path:
    """This thread's outbox (see `at`), else $LORITA_BENCH_OUTBOX, else .cache/lorita-bench/outbox under the working
    directory (absolute)."""
    return getattr(_thread, "folder", None) or Path(os.environ.get(OUTBOX_ENV) or DEFAULT_FOLDER).absolute()


@contextmanager
def at(path: Path) -> Iterator[None]:
    """Use the outbox at `path` in this thread for the block: the sender thread serves each run from the outbox its
    records went to, though the environment or working directory may have changed since."""
    saved = getattr(_thread, "folder", None)
    _thread.folder = path
    try:
        yield
    finally:
        _thread.folder = saved


def _records_file(run_id: str) -> Path:
    return folder() / f"{run_id}.jsonl"


def _files_dir(run_id: str) -> Path:
    return folder() / run_id


@contextmanager
def locked(run_id: str, timeout: float = -1) -> Iterator[None]:
    """Hold the run's send lock (between processes and threads) for the block; filelock.Timeout when another holds
    it for longer than `timeout` seconds (default: wait)."""
    folder().mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder() / f".{run_id}.lock"), timeout=timeout):
        yield


@contextmanager
def _queue_locked(run_id: str) -> Iterator[None]:
    folder().mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder() / f".{run_id}.queue.lock")):
        yield


def keep(run_id: str, record: dict[str, Any], file: Path | None = None) -> None:
    """Append `record` to the run's queue (durably: it must survive the process); `file`, a temporary file the
    record stands for, is copied into the run's outbox folder first and named by the record's "path"."""
    path = _records_file(run_id)
    with _queue_locked(run_id):  # with the copy: removing the run's last record must not remove a file just kept
        if file is not None:
            target = _files_dir(run_id) / file.name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(file, target)
            record = {**record, "path": str(target)}
        with path.open("a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())


def records(run_id: str) -> list[dict[str, Any]]:
    """The run's queued records, oldest first."""
    path = _records_file(run_id)
    if not path.exists():
        return []
    with _queue_locked(run_id):  # a record being appended is read whole or not at all
        text = path.read_text() if path.exists() else ""
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def drop(run_id: str, count: int = 1) -> None:
    """Remove the run's `count` oldest records (sent, or refused); an empty queue removes the run from the outbox.

    Only the holder of the send lock removes records and others only append, so the oldest are the ones it sent.
    """
    path = _records_file(run_id)
    with _queue_locked(run_id):
        lines = [line for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
        remaining = lines[count:]
        if remaining:
            write_atomic(path, lambda tmp: tmp.write_text("".join(line + "\n" for line in remaining)))
            return
        path.unlink(missing_ok=True)
        shutil.rmtree(_files_dir(run_id), ignore_errors=True)


def runs() -> list[str]:
    """Ids of the runs with queued records."""
    if not folder().exists():
        return []
    return sorted(p.stem for p in folder().glob("*.jsonl"))


def pending(run_id: str) -> bool:
    """Whether the run has records the tracking server has not received yet."""
    return _records_file(run_id).exists()
