"""The tracking store: where runs live (URI, client, experiments), and every query that reads runs back.

Every call names its run id explicitly (``MlflowClient``, never MLflow's global active run), so several
runs, threads or processes can log side by side. Names come from ``benchmarks.tracking.schema``.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit, urlunsplit

import pandas as pd
import torch
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST, ErrorCode
from mlflow.utils.validation import MAX_EXPERIMENT_NAME_LENGTH
from sqlalchemy.exc import SQLAlchemyError

from benchmarks.errors import one_line
from benchmarks.tracking import outbox, schema, sqlite_store
from benchmarks.tracking.sqlite_store import StoreError

# MLflow settings the suite's calls use unless the user set them (MLflow reads them at each request, so they are
# applied around our calls, never to the process at import). A failed request is retried for minutes by default;
# queries give up sooner, and records sent to a server use the sender's still shorter settings (sender.py). A
# progress bar per downloaded artifact (each small JSON file) floods benchmark logs.
MLFLOW_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                   "MLFLOW_HTTP_REQUEST_TIMEOUT": "30", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}

# Creating a store logs every schema migration at INFO (MLflow and alembic); warnings and errors still show.
for _noisy in ("alembic", "mlflow.store.db.utils"):
    logging.getLogger(_noisy).setLevel(logging.WARNING)

# Every experiment the suite creates or opens: the MLflow UI (3.x) then opens it on its runs table, not on the GenAI
# overview it shows an experiment without a kind.
EXPERIMENT_TAGS = {schema.TAG_EXPERIMENT_KIND: schema.EXPERIMENT_KIND}

DB_FILE = "mlflow.db"
ARTIFACTS_DIR = "mlartifacts"
_PAGE_SIZE = 1000
# The reachability probe of check_store: one try, a short timeout, instead of MLflow's minutes of retries.
_PROBE_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "3"}
# How much of a third party's error message a one-line error quotes.
_REASON_CHARS = 300
_T = TypeVar("_T")
_INFO_COLUMNS = ["run_id", "experiment_id", "status", "artifact_uri", "start_time", "end_time"]
# MLflow reads its settings from the environment, which is the whole process's: a thread that changes them for its
# calls holds this lock until those calls return, so another thread's calls never run under its values. Reentrant:
# a call made with settings may call another that applies them again.
_SETTINGS_LOCK = threading.RLock()


def _new_settings_lock() -> None:
    global _SETTINGS_LOCK
    _SETTINGS_LOCK = threading.RLock()


# A child forked while another thread (the sender) held the lock would wait on it forever: it starts with its own.
os.register_at_fork(after_in_child=_new_settings_lock)


class MissingArtifact(ValueError):
    """A run's artifact file is not in the store (its artifact folder was deleted, or it never arrived)."""

    def __init__(self, run_id: str, name: str, uri: str) -> None:
        super().__init__(f"run {run_id} has no artifact {name} in the tracking store {shown_uri(uri)}: its artifacts "
                         "were deleted or never arrived")
        self.run_id = run_id
        self.name = name


def tracking_uri() -> str:
    """MLFLOW_TRACKING_URI when set, else the SQLite file ./mlflow.db (absolute path)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / DB_FILE}"


def client(uri: str | None = None) -> MlflowClient:
    """A client of `uri` (default tracking_uri()); built per call so a changed URI or cwd takes effect."""
    return MlflowClient(uri or tracking_uri())


def sqlite_db(uri: str) -> Path | None:
    """The database file of a file-backed SQLite URI, else None."""
    if not uri.startswith("sqlite:///"):
        return None
    path = unquote(uri.removeprefix("sqlite:///").split("?", 1)[0])
    return None if path in ("", ":memory:") else Path(path).absolute()


def is_http(uri: str) -> bool:
    """Whether `uri` names a tracking server (as opposed to a database or folder this process opens)."""
    return uri.startswith(("http://", "https://"))


@contextmanager
def environment(values: Mapping[str, str]) -> Iterator[None]:
    """Set environment variables for the duration of a `with` block, then restore them."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, old in saved.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old


@contextmanager
def mlflow_settings(defaults: Mapping[str, str] = MLFLOW_DEFAULTS, *,
                    overrides: Mapping[str, str] | None = None) -> Iterator[None]:
    """MLflow's environment settings for the MLflow calls of a `with` block: `defaults` where the environment sets
    none (the user's, or an enclosing block's, win), `overrides` always; one thread at a time."""
    values = {key: value for key, value in defaults.items() if key not in os.environ}
    with _SETTINGS_LOCK, environment({**values, **(overrides or {})}):
        yield


def with_mlflow_defaults(fn: Callable[..., _T]) -> Callable[..., _T]:
    """`fn` run with MLFLOW_DEFAULTS set, except those the user's environment sets."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> _T:
        with mlflow_settings():
            return fn(*args, **kwargs)

    return wrapper


def shown_uri(uri: str) -> str:
    """`uri` as an error message shows it: without a password (mysql://user:secret@host -> mysql://user:***@host)."""
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    return urlunsplit(parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@", 1)))


def _reason(exc: BaseException) -> str:
    """What went wrong, on one line: a database error's own words, without SQLAlchemy's statement and links."""
    return one_line(getattr(exc, "orig", None) or exc)[:_REASON_CHARS]


def unreachable(exc: BaseException) -> bool:
    """Whether `exc` means the server did not answer, as opposed to answering with an error."""
    text = str(exc)
    return isinstance(exc, OSError) or (
        isinstance(exc, MlflowException) and text.startswith("API request to") and " failed with " in text)


def check_store(uri: str) -> None:
    """Create and migrate a database store, or check that a tracking server answers: a store this suite cannot use
    is named in one line (StoreError, a ValueError; ConnectionError for a server), before any run starts."""
    if is_http(uri):
        _probe_server(uri)
        return
    shown = shown_uri(uri)
    db = sqlite_db(uri)
    if db is not None:
        # MLflow would create and migrate the file in place, racing other processes: see sqlite_store.
        sqlite_store.prepare(db)
    try:
        with mlflow_settings():
            MlflowClient(uri).search_experiments(max_results=1)
    except ImportError as exc:  # mysql://, postgresql://, mssql:// without their driver
        raise StoreError(f"tracking store {shown} needs the database driver {exc.name or exc}, which is not "
                         "installed") from None
    except (MlflowException, SQLAlchemyError, OSError, ValueError) as exc:
        if urlsplit(uri).scheme in ("", "file"):
            # A bare path is a folder store too; MLflow 3 refuses those unless MLFLOW_ALLOW_FILE_STORE is set.
            raise StoreError(f"tracking URI {shown} names a folder store, which MLflow refuses unless "
                             "MLFLOW_ALLOW_FILE_STORE=true: use sqlite:///<path>/mlflow.db or http://<host>:<port>"
                             ) from None
        raise StoreError(f"tracking store {shown} cannot be used: {_reason(exc)}") from None


def _probe_server(uri: str) -> None:
    with mlflow_settings(overrides=_PROBE_ENV):
        try:
            MlflowClient(uri).search_experiments(max_results=1)
        except (MlflowException, ValueError, OSError) as exc:
            text = _reason(exc)
            if unreachable(exc) and "BadStatusLine" not in text:
                raise ConnectionError(f"tracking server {shown_uri(uri)} unreachable: {text}") from None
            # It answered, but not as MLflow does: another service, a proxy's error page, a wrong port.
            raise ConnectionError(f"tracking server {shown_uri(uri)} did not answer as an MLflow server (is the URI "
                                  f"right?): {text}") from None


def _artifact_location(name: str) -> str | None:
    """A SQLite store keeps artifacts beside its file, a folder per experiment; others: server default."""
    db = sqlite_db(tracking_uri())
    if db is None:
        return None
    # Only the folder name is derived from the experiment name: runs are told apart by their ids below it.
    return (db.parent / ARTIFACTS_DIR / re.sub(r"[^A-Za-z0-9_-]", "_", name)).as_uri()


@with_mlflow_defaults
def get_or_create_experiment(name: str) -> str:
    """Id of the experiment called `name`, created if missing."""
    if not name or len(name) > MAX_EXPERIMENT_NAME_LENGTH:
        # MLflow's own refusal comes only from the create call, as a multi-line error.
        raise StoreError(f"experiment name {name[:40]!r}{'...' if len(name) > 40 else ''} has {len(name)} "
                         f"characters: MLflow takes 1 to {MAX_EXPERIMENT_NAME_LENGTH} (tracking store "
                         f"{shown_uri(tracking_uri())})")
    mlc = client()
    experiment = mlc.get_experiment_by_name(name)
    if experiment is None:
        try:
            return mlc.create_experiment(name, artifact_location=_artifact_location(name), tags=EXPERIMENT_TAGS)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            # Another process created it between our lookup and our create.
            experiment = mlc.get_experiment_by_name(name)
    if experiment.lifecycle_stage != "active":
        raise ValueError(f"experiment {name!r} is deleted: restore it (mlflow experiments restore) or rename")
    # An experiment made before (by an older version, or by MLflow itself) gets the tags when the suite opens it.
    for key, value in EXPERIMENT_TAGS.items():
        if experiment.tags.get(key) != value:
            mlc.set_experiment_tag(experiment.experiment_id, key, value)
    return experiment.experiment_id


@with_mlflow_defaults
def _download(run_id: str, name: str, into: str) -> Path:
    try:
        return Path(client().download_artifacts(run_id, name, into))
    except MlflowException as exc:
        if exc.error_code != ErrorCode.Name(RESOURCE_DOES_NOT_EXIST):
            raise
    except FileNotFoundError:
        pass
    raise MissingArtifact(run_id, name, tracking_uri())


def load_text(run_id: str, name: str) -> str:
    """The text artifact `name` of a run (MissingArtifact when the store does not have it)."""
    with tempfile.TemporaryDirectory() as tmp:
        return _download(run_id, name, tmp).read_text()


def load_json(run_id: str, name: str) -> Any:
    """The JSON artifact `name` of a run, parsed."""
    return json.loads(load_text(run_id, name))


def load_state(run_id: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(state dict on CPU, structure) as stored by log_state."""
    with tempfile.TemporaryDirectory() as tmp:
        # CPU, so a model trained on a GPU loads on any machine; the caller moves it.
        path = _download(run_id, schema.ARTIFACT_MODEL, tmp)
        state = torch.load(path, map_location="cpu", weights_only=True)
    return state, load_json(run_id, schema.ARTIFACT_STRUCTURE)


def _identity_filter(config_hash: str, data_fingerprint: str | None) -> str:
    query = f"tags.{schema.TAG_CONFIG_HASH} = '{config_hash}'"
    if data_fingerprint is not None:
        query += f" AND tags.{schema.TAG_DATA_FINGERPRINT} = '{data_fingerprint}'"
    return query


@with_mlflow_defaults
def find_run(
    experiment: str, config_hash: str, statuses: Sequence[str] = (schema.STATUS_FINISHED,), *,
    data_fingerprint: str | None = None,
) -> str | None:
    """Id of the newest run of `experiment` with this config hash (and data) and one of `statuses`, else None."""
    mlc = client()
    found = mlc.get_experiment_by_name(experiment)
    if found is None:
        return None
    identity = _identity_filter(config_hash, data_fingerprint)
    # MLflow filters have no OR and allow IN only on run ids: one query per status, newest of the answers.
    newest = [
        run
        for status in statuses
        for run in mlc.search_runs(
            [found.experiment_id],
            f"{identity} AND attributes.status = '{status}'",
            max_results=1,
            order_by=["attributes.start_time DESC"],
        )
    ]
    return max(newest, key=lambda run: run.info.start_time).info.run_id if newest else None


@with_mlflow_defaults
def running_runs(experiment: str, config_hash: str, *, data_fingerprint: str | None = None) -> dict[str, str | None]:
    """{run id: its runner tag} of the RUNNING runs of this config (and data) with nothing waiting in the outbox."""
    mlc = client()
    found = mlc.get_experiment_by_name(experiment)
    if found is None:
        return {}
    query = f"{_identity_filter(config_hash, data_fingerprint)} AND attributes.status = '{schema.STATUS_RUNNING}'"
    runs = _all_pages(lambda t: mlc.search_runs([found.experiment_id], query, page_token=t))
    return {run.info.run_id: run.data.tags.get(schema.TAG_RUNNER) for run in runs
            if not outbox.pending(run.info.run_id)}


@with_mlflow_defaults
def has_metric(run_id: str, name: str) -> bool:
    """Whether the run has logged metric `name` (read from the store now, not from an earlier search)."""
    return name in client().get_run(run_id).data.metrics


def _all_pages(search: Callable[[str | None], Any]) -> list:
    items: list = []
    token = None
    while True:
        page = search(token)
        items.extend(page)
        token = page.token
        if not token:
            return items


@with_mlflow_defaults
def search_runs(experiment: str | None = None, filter_string: str = "") -> pd.DataFrame:
    """Runs of `experiment` (all active experiments when None) as mlflow.search_runs' DataFrame."""
    mlc = client()
    if experiment is None:
        ids = [e.experiment_id for e in _all_pages(lambda t: mlc.search_experiments(page_token=t))]
    else:
        found = mlc.get_experiment_by_name(experiment)
        ids = [] if found is None else [found.experiment_id]
    runs = (
        _all_pages(lambda t: mlc.search_runs(ids, filter_string, max_results=_PAGE_SIZE, page_token=t))
        if ids
        else []
    )
    rows = []
    for run in runs:
        row: dict[str, Any] = {
            "run_id": run.info.run_id,
            "experiment_id": run.info.experiment_id,
            "status": run.info.status,
            "artifact_uri": run.info.artifact_uri,
            "start_time": pd.to_datetime(run.info.start_time, unit="ms", utc=True),
            "end_time": pd.to_datetime(run.info.end_time, unit="ms", utc=True),
        }
        row.update({f"metrics.{key}": value for key, value in run.data.metrics.items()})
        row.update({f"params.{key}": value for key, value in run.data.params.items()})
        row.update({f"tags.{key}": value for key, value in run.data.tags.items()})
        rows.append(row)
    frame = pd.DataFrame(rows, columns=None if rows else _INFO_COLUMNS)
    # MLflow's column order: run info, then metrics, params and tags (each sorted here, for stable reports).
    kinds = ("metrics.", "params.", "tags.")
    return frame[_INFO_COLUMNS + [c for kind in kinds for c in sorted(frame.columns) if c.startswith(kind)]]


@with_mlflow_defaults
def run_metrics(run_id: str) -> dict[str, float]:
    """The latest value of every metric the run logged."""
    return dict(client().get_run(run_id).data.metrics)


@with_mlflow_defaults
def run_record(run_id: str) -> dict[str, Any]:
    """A run's id, status, experiment name, params, metrics and tags; a one-line ValueError for an unknown id."""
    mlc = client()
    try:
        run = mlc.get_run(run_id)
    except MlflowException as exc:
        if exc.error_code != ErrorCode.Name(RESOURCE_DOES_NOT_EXIST):
            raise
        raise ValueError(f"no run {run_id!r} in the tracking store {shown_uri(tracking_uri())}") from None
    return {"run_id": run.info.run_id, "status": run.info.status,
            "experiment": mlc.get_experiment(run.info.experiment_id).name, "params": dict(run.data.params),
            "metrics": dict(run.data.metrics), "tags": dict(run.data.tags)}


@with_mlflow_defaults
def experiment_names() -> list[str]:
    """Names of the store's active experiments."""
    mlc = client()
    return [e.name for e in _all_pages(lambda t: mlc.search_experiments(page_token=t))]


@with_mlflow_defaults
def delete_run(run_id: str) -> None:
    """MLflow's soft delete: the run leaves searches and the UI, and `mlflow gc` or a restore decides its fate."""
    client().delete_run(run_id)


@with_mlflow_defaults
def metric_history(run_id: str, name: str) -> list[tuple[int, float]]:
    """Every (step, value) logged for metric `name`, by step."""
    history = client().get_metric_history(run_id, name)
    return [(m.step, m.value) for m in sorted(history, key=lambda m: (m.step, m.timestamp))]


# The MLflow UI (3.17) shows every experiment as a GenAI one (traces, no runs table) until its "Model training" toggle
# is set, whatever the experiment's kind tag: a page opened with this query shows the runs.
UI_VIEW = "workflowType=machine_learning"


def ui_page(base: str, path: str = "experiments") -> str:
    """The address of a page of the MLflow UI at `base` (http://host:port) in its model-training view, e.g. path
    experiments/1/runs/<run id>."""
    return f"{base.rstrip('/')}/#/{path}?{UI_VIEW}"


def ui_command(host: str = "127.0.0.1", port: int = 5000) -> list[str]:
    """The `mlflow ui` command line that `lorita-bench ui` runs (and stops with its children) for tracking_uri()."""
    uri = tracking_uri()
    if is_http(uri):
        raise ValueError(f"runs are tracked by the server {uri}: open its UI there")
    command = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri]
    # One worker serves one local user; MLflow's default of 4 makes start-up ~3x slower on a small machine.
    command += ["--host", host, "--port", str(port), "--workers", "1"]
    db = sqlite_db(uri)
    if db is not None:
        # Experiments created from the UI keep their artifacts beside the database, as ours do.
        command += ["--artifacts-destination", str(db.parent / ARTIFACTS_DIR)]
    return command

