"""The suite's one door to MLflow: every run, metric, tag and artifact goes through these functions.

Every call names its run id explicitly (``MlflowClient``, never MLflow's global active run), so several
runs, threads or processes can log side by side. Names come from ``benchmarks.schema``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import unquote

# A progress bar per downloaded artifact (each small JSON file) floods benchmark logs; users may opt back in.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
# Benchmarks often run offline; MLflow's usage telemetry would only add a background thread and failed calls.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import pandas as pd
import torch
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException

from benchmarks import outbox, schema

# MLflow retries a failed request for minutes by default, stalling training; records that still fail wait in
# the outbox, so giving up after seconds loses nothing. (MLflow reads these at each request.)
for _key, _value in {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                     "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}.items():
    os.environ.setdefault(_key, _value)

# Creating a store logs every schema migration at INFO (MLflow and alembic); warnings and errors still show.
for _noisy in ("alembic", "mlflow.store.db.utils"):
    logging.getLogger(_noisy).setLevel(logging.WARNING)

DB_FILE = "mlflow.db"
ARTIFACTS_DIR = "mlartifacts"
# MLflow's caps on one log_batch call (params and tags count together).
_MAX_PARAMS_TAGS_PER_BATCH = 100
_MAX_METRICS_PER_BATCH = 1000
_PAGE_SIZE = 1000
# The reachability probe of ensure_store: one try, a short timeout, instead of MLflow's minutes of retries.
_PROBE_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "3"}
_INFO_COLUMNS = ["run_id", "experiment_id", "status", "artifact_uri", "start_time", "end_time"]
# A server that stopped answering is not asked again for this long; meanwhile records wait in the outbox.
_AWAY_S = 30.0
_away_until: dict[str, float] = {}
_warned: set[str] = set()

_T = TypeVar("_T")


def tracking_uri() -> str:
    """MLFLOW_TRACKING_URI when set, else the SQLite file ./mlflow.db (absolute path)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / DB_FILE}"


def _client() -> MlflowClient:
    # Built per call so a changed MLFLOW_TRACKING_URI or cwd takes effect; MLflow caches the store per URI.
    return MlflowClient(tracking_uri())


def _sqlite_db(uri: str) -> Path | None:
    """The database file of a file-backed SQLite URI, else None."""
    if not uri.startswith("sqlite:///"):
        return None
    path = unquote(uri.removeprefix("sqlite:///").split("?", 1)[0])
    return None if path in ("", ":memory:") else Path(path).absolute()


def _is_http(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


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


def ensure_store(uri: str | None = None) -> None:
    """Create and migrate the store, or check that the tracking server answers; call before any worker."""
    uri = uri or tracking_uri()
    if not _is_http(uri):
        # Opening a SQL store creates its tables; done once here because MLflow's migrations race when
        # several processes open a fresh SQLite file at the same time.
        MlflowClient(uri).search_experiments(max_results=1)
        return
    with environment(_PROBE_ENV):
        try:
            MlflowClient(uri).search_experiments(max_results=1)
        except MlflowException as exc:
            raise ConnectionError(f"tracking server {uri} unreachable: {_one_line(exc)}") from None
    # Records an earlier run kept while the server was away go first, so no finished run looks unfinished.
    if outbox.runs():
        sync()


def _artifact_location(name: str) -> str | None:
    """A SQLite store keeps artifacts beside its file, a folder per experiment; others: server default."""
    db = _sqlite_db(tracking_uri())
    if db is None:
        return None
    # Only the folder name is derived from the experiment name: runs are told apart by their ids below it.
    return (db.parent / ARTIFACTS_DIR / re.sub(r"[^A-Za-z0-9_-]", "_", name)).as_uri()


def get_or_create_experiment(name: str) -> str:
    """Id of the experiment called `name`, created if missing."""
    client = _client()
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        try:
            return client.create_experiment(name, artifact_location=_artifact_location(name))
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            # Another process created it between our lookup and our create.
            experiment = client.get_experiment_by_name(name)
    if experiment.lifecycle_stage != "active":
        raise ValueError(f"experiment {name!r} is deleted: restore it (mlflow experiments restore) or rename")
    return experiment.experiment_id


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested mapping -> {'a.b.c': str(value)}; lists and tuples as JSON; what MLflow shows as params."""
    flat: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, name + schema.PARAM_KEY_SEP))
        elif isinstance(value, list | tuple):
            flat[name] = json.dumps(value, default=str)
        else:
            flat[name] = str(value)
    return flat


def _chunks(items: Sequence[_T], size: int) -> Iterator[Sequence[_T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _tag_value(value: Any) -> str:
    # Lower-case booleans match MLflow's own tags and keep filters simple: tags.cache_hit = 'true'.
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _tag_values(tags: Mapping[str, Any]) -> dict[str, str]:
    # A None value (e.g. no GPU) leaves the tag unset rather than writing the string "None".
    return {key: _tag_value(value) for key, value in tags.items() if value is not None}


def _unreachable(exc: BaseException) -> bool:
    """Whether `exc` means the server did not answer, as opposed to answering with an error."""
    text = str(exc)
    return isinstance(exc, OSError) or (
        isinstance(exc, MlflowException) and text.startswith("API request to") and " failed with " in text)


def _send(uri: str, run_id: str, record: Mapping[str, Any]) -> None:
    """Deliver one record (see _deliver) to the store at `uri`."""
    client = MlflowClient(uri)
    op = record["op"]
    if op == "metrics":
        for chunk in _chunks([Metric(*entry) for entry in record["metrics"]], _MAX_METRICS_PER_BATCH):
            client.log_batch(run_id, metrics=chunk)
    elif op == "tags":
        for chunk in _chunks([RunTag(k, v) for k, v in record["tags"].items()], _MAX_PARAMS_TAGS_PER_BATCH):
            client.log_batch(run_id, tags=chunk)
    elif op == "text":
        client.log_text(run_id, record["text"], record["name"])
    elif op == "file":
        client.log_artifact(run_id, record["path"])
    elif op == "end":
        client.set_terminated(run_id, record["status"], end_time=record["end_time"])
    else:
        raise ValueError(f"outbox record of unknown kind {op!r}")


def _flush(run_id: str) -> bool:
    """Send the run's queued records in order (caller holds its outbox lock); False when the server is away."""
    queue = outbox.records(run_id)
    for i, record in enumerate(queue):
        uri = record["uri"]
        if time.monotonic() < _away_until.get(uri, 0.0):
            return False
        try:
            _send(uri, run_id, record)
        except Exception as exc:
            if not _unreachable(exc):
                outbox.replace(run_id, queue[i + 1 :])  # the server refused it: sending it again cannot help
                raise
            _away_until[uri] = time.monotonic() + _AWAY_S
            if run_id not in _warned:
                _warned.add(run_id)
                print(f"tracking server {uri} unreachable ({_one_line(exc)[:160]}); run {run_id} goes on and "
                      f"keeps its records in {outbox.folder()} until the server answers (or: lorita-bench sync)",
                      file=sys.stderr, flush=True)
            return False
        outbox.replace(run_id, queue[i + 1 :])
    return True


def _deliver(run_id: str, record: dict[str, Any]) -> None:
    """Record something about a run; with a tracking server, through the outbox so that nothing is lost."""
    uri = tracking_uri()
    if not _is_http(uri):
        _send(uri, run_id, record)
        return
    if record["op"] == "file":  # the caller's file is temporary
        record = {**record, "path": outbox.keep_file(run_id, Path(record["path"]))}
    with outbox.locked(run_id):
        outbox.keep(run_id, {**record, "uri": uri})
        _flush(run_id)


@dataclass
class SyncResult:
    """What `sync` did: runs whose records all arrived, runs still waiting, and records a server refused."""

    sent: list[str]
    waiting: list[str]
    refused: list[str]


def sync() -> SyncResult:
    """Send every record the outbox holds to its tracking server (`lorita-bench sync`)."""
    _away_until.clear()
    result = SyncResult([], [], [])
    for run_id in outbox.runs():
        with outbox.locked(run_id):
            try:
                (result.sent if _flush(run_id) else result.waiting).append(run_id)
            except Exception as exc:  # noqa: BLE001 - one refused record must not keep other runs from syncing
                result.refused.append(f"run {run_id}: {_one_line(exc)}")
    return result


def start_run(
    experiment: str,
    run_name: str,
    *,
    params: Mapping[str, Any],
    tags: Mapping[str, Any],
    parent_run_id: str | None = None,
) -> str:
    """Create a RUNNING run in `experiment` with the flattened `params` and `tags`; return its id."""
    run_tags = _tag_values(tags)
    if parent_run_id is not None:
        run_tags[schema.TAG_PARENT_RUN_ID] = parent_run_id
    client = _client()
    experiment_id = get_or_create_experiment(experiment)
    # Tags go in with the run itself, so a lookup by config_hash never sees the run without them.
    run_id = client.create_run(experiment_id, tags=run_tags, run_name=run_name).info.run_id
    entries = [Param(key, value) for key, value in flatten(params).items()]
    for chunk in _chunks(entries, _MAX_PARAMS_TAGS_PER_BATCH):
        client.log_batch(run_id, params=chunk)
    return run_id


def _log_metric_entries(run_id: str, entries: list[Metric]) -> None:
    _deliver(run_id, {"op": "metrics", "metrics": [[m.key, m.value, m.timestamp, m.step] for m in entries]})


def log_metrics(run_id: str, metrics: Mapping[str, float], step: int | None = None) -> None:
    """Log several metrics at one step (an epoch; MLflow's step 0 when None)."""
    now = int(time.time() * 1000)
    _log_metric_entries(run_id, [Metric(key, float(value), now, step or 0) for key, value in metrics.items()])


def log_history(run_id: str, history: Sequence[Mapping[str, float]], first_step: int = 1) -> None:
    """Per-epoch metric dicts in one batch (step = first_step + index), e.g. a cached training's history."""
    now = int(time.time() * 1000)
    _log_metric_entries(run_id, [Metric(name, float(value), now, first_step + i) for i, metrics in
                                 enumerate(history) for name, value in metrics.items()])


def log_series(run_id: str, name: str, values: Mapping[int, float]) -> None:
    """Log one metric at many steps, e.g. acc_at_keep by percent kept."""
    now = int(time.time() * 1000)
    entries = [Metric(name, float(value), now, int(step)) for step, value in values.items()]
    _log_metric_entries(run_id, entries)


def set_tags(run_id: str, tags: Mapping[str, Any]) -> None:
    """Set tags (booleans as "true"/"false"; None values skipped)."""
    _deliver(run_id, {"op": "tags", "tags": _tag_values(tags)})


def log_text(run_id: str, name: str, text: str) -> None:
    """Store `text` as the artifact `name` (e.g. config.yaml)."""
    _deliver(run_id, {"op": "text", "name": name, "text": text})


def log_json(run_id: str, name: str, obj: Any) -> None:
    """Store `obj` as the JSON artifact `name`."""
    log_text(run_id, name, json.dumps(obj, indent=1))


def _download(run_id: str, name: str, into: str) -> Path:
    return Path(_client().download_artifacts(run_id, name, into))


def load_text(run_id: str, name: str) -> str:
    """The text artifact `name` of a run."""
    with tempfile.TemporaryDirectory() as tmp:
        return _download(run_id, name, tmp).read_text()


def load_json(run_id: str, name: str) -> Any:
    """The JSON artifact `name` of a run, parsed."""
    return json.loads(load_text(run_id, name))


def log_state(run_id: str, state_dict: Mapping[str, Any], structure: Mapping[str, Any]) -> None:
    """Store the final state dict (model.pt) and what rebuilding the model needs (structure.json)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / schema.ARTIFACT_MODEL
        torch.save(state_dict, path)  # as given: a module's state dict carries _metadata (layer versions)
        _deliver(run_id, {"op": "file", "path": str(path)})
    log_json(run_id, schema.ARTIFACT_STRUCTURE, structure)


def load_state(run_id: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(state dict on CPU, structure) as stored by log_state."""
    with tempfile.TemporaryDirectory() as tmp:
        # CPU, so a model trained on a GPU loads on any machine; the caller moves it.
        path = _download(run_id, schema.ARTIFACT_MODEL, tmp)
        state = torch.load(path, map_location="cpu", weights_only=True)
    return state, load_json(run_id, schema.ARTIFACT_STRUCTURE)


def end_run(run_id: str, status: str = schema.STATUS_FINISHED, error: str | None = None) -> None:
    """Terminate the run with `status`; a FAILED run (or any given `error`) gets the error tag."""
    if error is not None or status == schema.STATUS_FAILED:
        set_tags(run_id, {schema.TAG_ERROR: error or "unknown error"})
    _deliver(run_id, {"op": "end", "status": status, "end_time": int(time.time() * 1000)})


def find_run(
    experiment: str, config_hash: str, statuses: Sequence[str] = (schema.STATUS_FINISHED,)
) -> str | None:
    """Id of the newest run of `experiment` with this config hash and one of `statuses`, else None."""
    client = _client()
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return None
    # MLflow filters have no OR and allow IN only on run ids: one query per status, newest of the answers.
    newest = [
        run
        for status in statuses
        for run in client.search_runs(
            [found.experiment_id],
            f"tags.{schema.TAG_CONFIG_HASH} = '{config_hash}' AND attributes.status = '{status}'",
            max_results=1,
            order_by=["attributes.start_time DESC"],
        )
    ]
    return max(newest, key=lambda run: run.info.start_time).info.run_id if newest else None


def stale_runs(experiment: str, config_hash: str) -> list[str]:
    """RUNNING runs of this config with nothing waiting in the outbox: their process died without ending them."""
    client = _client()
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return []
    query = f"tags.{schema.TAG_CONFIG_HASH} = '{config_hash}' AND attributes.status = '{schema.STATUS_RUNNING}'"
    runs = _all_pages(lambda t: client.search_runs([found.experiment_id], query, page_token=t))
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


def search_runs(experiment: str | None = None, filter_string: str = "") -> pd.DataFrame:
    """Runs of `experiment` (all active experiments when None) as mlflow.search_runs' DataFrame."""
    client = _client()
    if experiment is None:
        ids = [e.experiment_id for e in _all_pages(lambda t: client.search_experiments(page_token=t))]
    else:
        found = client.get_experiment_by_name(experiment)
        ids = [] if found is None else [found.experiment_id]
    runs = (
        _all_pages(lambda t: client.search_runs(ids, filter_string, max_results=_PAGE_SIZE, page_token=t))
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


def metric_history(run_id: str, name: str) -> list[tuple[int, float]]:
    """Every (step, value) logged for metric `name`, by step."""
    history = _client().get_metric_history(run_id, name)
    return [(m.step, m.value) for m in sorted(history, key=lambda m: (m.step, m.timestamp))]


def ui_command(host: str = "127.0.0.1", port: int = 5000) -> list[str]:
    """The `mlflow ui` command line that serve_ui runs for tracking_uri()."""
    uri = tracking_uri()
    if _is_http(uri):
        raise ValueError(f"runs are tracked by the server {uri}: open its UI there")
    command = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri]
    # One worker serves one local user; MLflow's default of 4 makes start-up ~3x slower on a small machine.
    command += ["--host", host, "--port", str(port), "--workers", "1"]
    db = _sqlite_db(uri)
    if db is not None:
        # Experiments created from the UI keep their artifacts beside the database, as ours do.
        command += ["--artifacts-destination", str(db.parent / ARTIFACTS_DIR)]
    return command


def serve_ui(host: str = "127.0.0.1", port: int = 5000) -> None:
    """Serve the MLflow UI for tracking_uri() on host:port (local-only by default); blocks until it exits."""
    subprocess.run(ui_command(host, port), check=True)
