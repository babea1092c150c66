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
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import unquote

import pandas as pd
import torch
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from benchmarks.errors import one_line
from benchmarks.tracking import outbox, schema

# MLflow settings the suite's calls use unless the user set them (MLflow reads them at each request, so they are
# applied around our calls, never to the process at import). A failed request is retried for minutes by default,
# stalling training; records that still fail wait in the outbox, so giving up after seconds loses nothing. A
# progress bar per downloaded artifact (each small JSON file) floods benchmark logs.
MLFLOW_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                   "MLFLOW_HTTP_REQUEST_TIMEOUT": "30", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}

# Creating a store logs every schema migration at INFO (MLflow and alembic); warnings and errors still show.
for _noisy in ("alembic", "mlflow.store.db.utils"):
    logging.getLogger(_noisy).setLevel(logging.WARNING)

DB_FILE = "mlflow.db"
ARTIFACTS_DIR = "mlartifacts"
_PAGE_SIZE = 1000
# The reachability probe of check_store: one try, a short timeout, instead of MLflow's minutes of retries.
_PROBE_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "3"}
_T = TypeVar("_T")
_INFO_COLUMNS = ["run_id", "experiment_id", "status", "artifact_uri", "start_time", "end_time"]


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


def with_mlflow_defaults(fn: Callable[..., _T]) -> Callable[..., _T]:
    """`fn` run with MLFLOW_DEFAULTS set, except those the user's environment sets."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> _T:
        with environment({key: value for key, value in MLFLOW_DEFAULTS.items() if key not in os.environ}):
            return fn(*args, **kwargs)

    return wrapper


def check_store(uri: str) -> None:
    """Create and migrate a database store, or check that a tracking server answers (one-line ConnectionError)."""
    if not is_http(uri):
        # Opening a SQL store creates its tables; done once by the driver because MLflow's migrations race when
        # several processes open a fresh SQLite file at the same time.
        MlflowClient(uri).search_experiments(max_results=1)
        return
    with environment(_PROBE_ENV):
        try:
            MlflowClient(uri).search_experiments(max_results=1)
        except MlflowException as exc:
            raise ConnectionError(f"tracking server {uri} unreachable: {one_line(exc)}") from None


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
    mlc = client()
    experiment = mlc.get_experiment_by_name(name)
    if experiment is None:
        try:
            return mlc.create_experiment(name, artifact_location=_artifact_location(name))
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            # Another process created it between our lookup and our create.
            experiment = mlc.get_experiment_by_name(name)
    if experiment.lifecycle_stage != "active":
        raise ValueError(f"experiment {name!r} is deleted: restore it (mlflow experiments restore) or rename")
    return experiment.experiment_id


@with_mlflow_defaults
def _download(run_id: str, name: str, into: str) -> Path:
    return Path(client().download_artifacts(run_id, name, into))


def load_text(run_id: str, name: str) -> str:
    """The text artifact `name` of a run."""
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
def stale_runs(experiment: str, config_hash: str, *, data_fingerprint: str | None = None) -> list[str]:
    """RUNNING runs of this config (and data) with nothing waiting in the outbox: the caller holds the config's
    claim, so their process died without ending them."""
    mlc = client()
    found = mlc.get_experiment_by_name(experiment)
    if found is None:
        return []
    query = f"{_identity_filter(config_hash, data_fingerprint)} AND attributes.status = '{schema.STATUS_RUNNING}'"
    runs = _all_pages(lambda t: mlc.search_runs([found.experiment_id], query, page_token=t))
    return [run.info.run_id for run in runs if not outbox.pending(run.info.run_id)]


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
def metric_history(run_id: str, name: str) -> list[tuple[int, float]]:
    """Every (step, value) logged for metric `name`, by step."""
    history = client().get_metric_history(run_id, name)
    return [(m.step, m.value) for m in sorted(history, key=lambda m: (m.step, m.timestamp))]


def ui_command(host: str = "127.0.0.1", port: int = 5000) -> list[str]:
    """The `mlflow ui` command line that serve_ui runs for tracking_uri()."""
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


def serve_ui(host: str = "127.0.0.1", port: int = 5000) -> None:
    """Serve the MLflow UI for tracking_uri() on host:port (local-only by default); blocks until it exits."""
    subprocess.run(ui_command(host, port), check=True)
