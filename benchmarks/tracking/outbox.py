"""Tracking records kept on disk, in order, per run, until the tracking server has them.

While a tracking server is away, what a run measures lands here instead of being lost; `tracking` sends it
when the server answers again (or on `lorita-bench sync`). One JSON-lines file per run, plus a folder for
its artifact files; a lock per run keeps a sync and the run itself from sending the same record twice.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from filelock import FileLock

from benchmarks.config import DEFAULT_CACHE_DIR
from benchmarks.files import write_atomic

OUTBOX_ENV = "LORITA_BENCH_OUTBOX"
DEFAULT_FOLDER = Path(DEFAULT_CACHE_DIR) / "outbox"


def folder() -> Path:
    """$LORITA_BENCH_OUTBOX, else .cache/lorita-bench/outbox under the working directory (absolute)."""
    return Path(os.environ.get(OUTBOX_ENV) or DEFAULT_FOLDER).absolute()


def _records_file(run_id: str) -> Path:
    return folder() / f"{run_id}.jsonl"


def _files_dir(run_id: str) -> Path:
    return folder() / run_id


@contextmanager
def locked(run_id: str) -> Iterator[None]:
    """Hold the run's outbox lock (between processes) for the block."""
    folder().mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder() / f".{run_id}.lock")):
        yield


def keep(run_id: str, record: dict[str, Any]) -> None:
    """Append `record` to the run's queue (durably: it must survive the process)."""
    path = _records_file(run_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def keep_file(run_id: str, source: Path) -> str:
    """Copy `source` into the run's outbox folder (the original is temporary); returns the kept path."""
    target = _files_dir(run_id) / source.name
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    return str(target)


def records(run_id: str) -> list[dict[str, Any]]:
    """The run's queued records, oldest first."""
    path = _records_file(run_id)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def replace(run_id: str, remaining: list[dict[str, Any]]) -> None:
    """Keep only `remaining` in the run's queue; an empty queue removes the run from the outbox."""
    path = _records_file(run_id)
    if remaining:
        write_atomic(path, lambda tmp: tmp.write_text("".join(json.dumps(r) + "\n" for r in remaining)))
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
