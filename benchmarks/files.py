"""Atomic file writes: a reader, a concurrent run or an interrupted one never sees a half-written file."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path


def write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    """Let `write` fill a temporary sibling of `path`, then rename it over `path` (removed again on failure).

    A missing folder is created; an OSError (a full disk, a read-only file) comes back naming `path`; the previous
    file stays intact.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        # A cache folder deleted under a running sweep is made again rather than failing every later write.
        path.parent.mkdir(parents=True, exist_ok=True)
        write(tmp)
        os.replace(tmp, path)
    except OSError as err:
        raise OSError(err.errno, f"cannot write {path}: {err.strerror or err}") from None
    finally:
        tmp.unlink(missing_ok=True)
