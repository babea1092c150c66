"""Where the Optuna studies live: their own database beside the tracking store, created once under a lock.

Never the MLflow database itself: both keep an `alembic_version` table, and each would read the other's
revision as its own. A fresh Optuna database races like a fresh MLflow store (two processes creating its tables
at once), so the driver creates and migrates it under an OS file lock before any worker opens it.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import optuna
from filelock import FileLock

from benchmarks import tracking
from benchmarks.config import ConfigError, stable_hash
from benchmarks.errors import one_line
from benchmarks.run.claims import folder as claims_folder

JOURNAL_SUFFIXES = (".log", ".journal")
POSTGRES = ("postgresql://", "postgresql+")
# SQLite makes a writer wait this long for another process's transaction before "database is locked".
_SQLITE_TIMEOUT_S = 60
# Optuna announces every study and trial on stderr; the sweep's own progress says what happens.
optuna.logging.set_verbosity(logging.WARNING)


def _journal(storage: str) -> bool:
    return "://" not in storage and storage.endswith(JOURNAL_SUFFIXES)


def storage_url(storage: str | None, uri: str | None = None) -> str:
    """The Optuna storage of a tuning block (`storage`, else a SQLite file beside a SQLite tracking store at `uri`).

    A one-line ConfigError when there is no sane default (a tracking server: the trials of every machine must meet
    in one database) or the storage named is the MLflow database.
    """
    uri = uri or tracking.tracking_uri()
    db = tracking.sqlite_db(uri)
    if storage is None:
        if db is None:
            raise ConfigError(f"sweep: tuning.storage must name a PostgreSQL URL (postgresql://...) or a journal file "
                              f"on a filesystem every worker shares (*.log) when the tracking store is {uri}")
        return f"sqlite:///{db.with_name(f'{db.stem}-optuna.db')}"
    if storage.startswith(POSTGRES):
        return storage
    if _journal(storage):
        return str(Path(storage).expanduser().absolute())  # workers may run in another working directory
    if storage.startswith("sqlite:///") and not tracking.is_http(uri):
        own = tracking.sqlite_db(storage)
        if own is not None and db is not None and own == db:
            raise ConfigError(f"sweep: tuning.storage is the MLflow database {db}; name another file (both keep an "
                              "alembic_version table)")
        return storage
    raise ConfigError("sweep: tuning.storage must be a postgresql:// URL or a journal file (*.log)"
                      + ("" if tracking.is_http(uri) else ", or a sqlite:/// file") + f"; got {storage!r}")


def _lock(url: str) -> FileLock:
    db = tracking.sqlite_db(url)
    if db is not None:
        return FileLock(str(db.with_name(f".{db.name}.lock")))
    return FileLock(str(claims_folder(tracking.tracking_uri()) / f"optuna-{stable_hash(url)}.lock"))


def prepare(url: str) -> None:
    """Create and migrate the storage at `url` once, under a file lock (a one-line ConfigError when it cannot be)."""
    db = tracking.sqlite_db(url)
    if db is not None:
        db.parent.mkdir(parents=True, exist_ok=True)
    elif _journal(url):
        Path(url).absolute().parent.mkdir(parents=True, exist_ok=True)
    try:
        with _lock(url):
            open_storage(url)
    except Exception as err:  # SQLAlchemy's errors carry the database's own words in .orig
        raise ConfigError(f"sweep: the Optuna storage {url} cannot be opened: "
                          f"{one_line(getattr(err, 'orig', None) or err)}") from None


@functools.cache
def open_storage(url: str) -> optuna.storages.BaseStorage:
    """The storage at `url`, opened once per process."""
    if _journal(url):
        backend = optuna.storages.journal.JournalFileBackend(str(Path(url).absolute()))
        return optuna.storages.JournalStorage(backend)
    kwargs = {"connect_args": {"timeout": _SQLITE_TIMEOUT_S}} if url.startswith("sqlite") else {}
    return optuna.storages.RDBStorage(url, engine_kwargs=kwargs)
