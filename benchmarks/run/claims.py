"""Claims: the one process that runs a config on a tracking store at a time, whatever its cache or working folder.

A claim is an OS file lock (released when its process ends or dies, so a dead run's claim expires) kept beside a
SQLite store, or for any other store in a folder named after its URI. Each run also records who runs it (host,
pid, process start time) in a tag, so that a run whose claim file was deleted is still recognised as alive.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

from benchmarks import tracking
from benchmarks.config import stable_hash
from benchmarks.run.environment import check_writable

# Where claims on a store that is no file of this machine (a tracking server) live; $LORITA_BENCH_CLAIMS overrides.
CLAIMS_ENV = "LORITA_BENCH_CLAIMS"
# How often a waiting claim looks again at a run that another process holds.
WAIT_POLL_S = 2.0


def folder(uri: str) -> Path:
    """The claims folder of the store at `uri`: beside a SQLite file, else one per URI under the user's cache."""
    db = tracking.sqlite_db(uri)
    if db is not None:
        return db.parent / f".{db.name}.claims"
    base = Path(os.environ.get(CLAIMS_ENV) or Path.home() / ".cache" / "lorita-bench" / "claims")
    return base / stable_hash(uri)


@contextmanager
def claimed(key: str, *, wait: bool) -> Iterator[bool]:
    """Hold the claim on `key` in the current store for the block; yields False when another process holds it.

    With `wait`, blocks until the holder ends (it may have finished the run: the caller looks at the store again).
    """
    lock = FileLock(str(check_writable(folder(tracking.tracking_uri())) / f"{key}.lock"))
    try:
        lock.acquire(timeout=-1 if wait else 0, poll_interval=WAIT_POLL_S)
    except Timeout:
        yield False
        return
    try:
        yield True
    finally:
        lock.release()


def _start_time(pid: int) -> str | None:
    # Field 22 of /proc/<pid>/stat: the start time in clock ticks after boot, which tells a reused pid apart.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rpartition(")")[2].split()[19]


def runner() -> str:
    """Who runs a run: host:pid:start time of this process (the runner tag)."""
    pid = os.getpid()
    return f"{socket.gethostname()}:{pid}:{_start_time(pid) or int(time.time())}"


def alive(runner_tag: str | None) -> bool:
    """Whether the process a runner tag names still runs on this host (False for unknown or other hosts)."""
    if not runner_tag:
        return False
    host, _, rest = runner_tag.partition(":")
    pid, _, started = rest.partition(":")
    if host != socket.gethostname() or not pid.isdigit() or int(pid) == os.getpid():
        return False
    return _start_time(int(pid)) == started
