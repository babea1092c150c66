"""A SQLite tracking store made so that no process ever sees half of one, and checked before MLflow opens it.

MLflow creates a store by migrating the database file in place, without a lock and not in one transaction: two
processes doing it at once, or one killed half-way, leave a file every later command fails on. Here a new store is
made under an OS file lock beside it, in a temporary file in the same folder, and renamed into place once migrated;
a process that finds it absent waits on the lock, then finds it made. An existing file is checked first (an SQLite
file, not truncated, migrated to MLflow's head revision), so a broken store is named in one line before any training.
"""

from __future__ import annotations

import functools
import os
import sqlite3
from pathlib import Path
from urllib.parse import quote

from filelock import FileLock, Timeout

from benchmarks.errors import one_line

SQLITE_MAGIC = b"SQLite format 3\x00"
# Creating a store takes seconds; a lock held this long belongs to a process that hangs, not one that works.
_CREATE_WAIT_S = 300.0
_WAL_MODE = 2


class StoreError(ValueError):
    """A tracking store this suite cannot use; the message names it and what to do."""


def prepare(db: Path) -> None:
    """Make `db` a complete, fully migrated MLflow store: created when absent (or empty), else checked."""
    if check(db):
        return
    lock = db.with_name(f".{db.name}.lock")
    try:
        db.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(lock), timeout=_CREATE_WAIT_S):
            if not check(db):  # else another process made it while this one waited
                _create(db)
    except Timeout:
        raise StoreError(f"tracking store {db} is being created by a process that has held {lock} for over "
                         f"{_CREATE_WAIT_S:.0f} s: end that process, or delete the lock file if none runs") from None
    except StoreError:
        raise
    except Exception as exc:  # a full disk, a read-only folder; SQLAlchemy's errors carry SQLite's own words
        reason = one_line(getattr(exc, "orig", None) or exc)
        raise StoreError(f"tracking store {db} could not be created: {reason}") from None


def check(db: Path) -> bool:
    """True for a complete store, False when there is none yet (no file, or a database without tables); else a
    one-line StoreError saying what is wrong with it."""
    try:
        with db.open("rb") as f:
            header = f.read(100)
    except FileNotFoundError:
        return False
    except OSError as err:
        raise StoreError(f"tracking store {db} cannot be read: {err.strerror or err}") from None
    if not header:
        return False  # what opening a missing file with SQLite leaves: no store yet
    if not header.startswith(SQLITE_MAGIC):
        raise StoreError(f"tracking store {db} is not an SQLite database (file is not a database): move it aside, "
                         "or point MLFLOW_TRACKING_URI at another store")
    try:
        tables, revision = _read(db)
    except sqlite3.OperationalError as err:  # locked for longer than the timeout, no permission
        raise StoreError(f"tracking store {db} cannot be read: {err}") from None
    except sqlite3.DatabaseError as err:  # file is not a database, database disk image is malformed
        raise StoreError(f"tracking store {db} is damaged ({err}): restore it from a backup, or move it aside "
                         "and run again for a new store") from None
    if not tables:
        return False
    _check_migrated(db, tables, revision)
    return True


def _read(db: Path) -> tuple[list[str], str | None]:
    """(table names, alembic revision) of `db`; a truncated file raises sqlite3.DatabaseError."""
    # Read-write (mode=rw never creates a file): a writer killed mid-commit leaves a journal that SQLite rolls back
    # on the next read, which a read-only connection cannot do.
    connection = sqlite3.connect(f"file:{quote(str(db))}?mode=rw", uri=True, timeout=30)
    try:
        # A read transaction holds SQLite's shared lock: no writer commits while the header is compared with the
        # file's size below, so a commit that has grown the file but not yet written all its pages is never seen.
        connection.execute("BEGIN")
        tables = [row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        _check_size(db)
        revision = None
        if "alembic_version" in tables:
            row = connection.execute("SELECT version_num FROM alembic_version").fetchone()
            revision = row[0] if row else None
        return tables, revision
    finally:
        connection.close()


def _check_size(db: Path) -> None:
    """Raise sqlite3.DatabaseError when the file is shorter than the page count its header records."""
    with db.open("rb") as f:
        header = f.read(100)
        size = os.fstat(f.fileno()).st_size
    if len(header) < 100:
        raise sqlite3.DatabaseError(f"database disk image is malformed: truncated to {size} bytes")
    # SQLite's file format: page size at offset 16 (1 means 65536), page count at 28, valid while the "version
    # valid for" number at 92 equals the change counter at 24. A WAL store's pages may lie in the WAL: skipped.
    page_size = int.from_bytes(header[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    pages = int.from_bytes(header[28:32], "big")
    if header[18] != _WAL_MODE and header[92:96] == header[24:28] and size < pages * page_size:
        raise sqlite3.DatabaseError(f"database disk image is malformed: truncated to {size} of {pages * page_size} "
                                    "bytes")


def _check_migrated(db: Path, tables: list[str], revision: str | None) -> None:
    head, known = mlflow_revisions()
    leftovers = sorted(name for name in tables if name.startswith("_alembic_tmp_"))
    behind = revision != head and (revision is None or revision in known)
    if leftovers or behind:
        what = f"leftover table {', '.join(leftovers)}; " if leftovers else ""
        # A store an older MLflow made is behind too, and complete: MLflow's upgrade brings it to the head.
        older = f" (a store an older MLflow made: back it up, then mlflow db upgrade sqlite:///{db})" if behind else ""
        raise StoreError(f"tracking store {db} was left half-migrated ({what}alembic revision {revision or 'none'}, "
                         f"expected {head}): move it aside and run again, or restore it from a backup{older}")
    if revision != head:
        raise StoreError(f"tracking store {db} has schema revision {revision}, which this MLflow does not know "
                         "(a newer MLflow made it): upgrade mlflow, or use another store")


@functools.cache
def mlflow_revisions() -> tuple[str, frozenset[str]]:
    """(head revision, every revision) of the installed MLflow's schema migrations."""
    from alembic.script import ScriptDirectory

    # MLflow keeps its alembic configuration private; this module is the one place the suite reads it.
    from mlflow.store.db.utils import _get_alembic_config

    script = ScriptDirectory.from_config(_get_alembic_config(""))
    return script.get_current_head(), frozenset(rev.revision for rev in script.walk_revisions())


def _create(db: Path) -> None:
    """Migrate a new store in a temporary sibling and rename it to `db` (the caller holds the lock)."""
    from mlflow.store.tracking import DEFAULT_LOCAL_FILE_AND_ARTIFACT_PATH
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    # Holding the lock, any temporary file left here belongs to a process killed while it created the store.
    for stale in db.parent.glob(f".{db.name}.*.creating*"):
        stale.unlink(missing_ok=True)
    tmp = db.with_name(f".{db.name}.{os.getpid()}.creating")
    try:
        # The artifact root MLflow itself would give the Default experiment; ours choose their own location.
        store = SqlAlchemyStore(f"sqlite:///{tmp}", DEFAULT_LOCAL_FILE_AND_ARTIFACT_PATH)
        store.engine.dispose()
        os.replace(tmp, db)
        _sync_folder(db.parent)
    finally:
        for leftover in db.parent.glob(f"{tmp.name}*"):  # the file itself on failure, its journal
            leftover.unlink(missing_ok=True)


def _sync_folder(folder: Path) -> None:
    """Make a rename in `folder` durable (a power cut must not bring the temporary name back)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
