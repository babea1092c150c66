"""Writing runs: params, metrics, tags, artifacts and ends, each delivered at once to a database store, or
through the outbox to a tracking server so that nothing is lost while it is away (`sync` sends what waits)."""

from __future__ import annotations

import json
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException

from benchmarks.errors import one_line
from benchmarks.tracking import outbox, schema
from benchmarks.tracking.store import (
    check_store,
    client,
    get_or_create_experiment,
    is_http,
    tracking_uri,
    with_mlflow_defaults,
)

# MLflow's caps on one log_batch call (params and tags count together).
_MAX_PARAMS_TAGS_PER_BATCH = 100
_MAX_METRICS_PER_BATCH = 1000
# A server that stopped answering is not asked again for this long; meanwhile records wait in the outbox.
_AWAY_S = 30.0
_away_until: dict[str, float] = {}
_warned: set[str] = set()

_T = TypeVar("_T")


def ensure_store(uri: str | None = None) -> None:
    """Create and migrate the store, or check that the tracking server answers; call before any worker."""
    uri = uri or tracking_uri()
    check_store(uri)
    # Records an earlier run kept while the server was away go first, so no finished run looks unfinished.
    if is_http(uri) and outbox.runs():
        sync()


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


@with_mlflow_defaults
def _send(uri: str, run_id: str, record: Mapping[str, Any]) -> None:
    """Deliver one record (see _deliver) to the store at `uri`."""
    mlc = MlflowClient(uri)
    op = record["op"]
    if op == "metrics":
        for chunk in _chunks([Metric(*entry) for entry in record["metrics"]], _MAX_METRICS_PER_BATCH):
            mlc.log_batch(run_id, metrics=chunk)
    elif op == "tags":
        for chunk in _chunks([RunTag(k, v) for k, v in record["tags"].items()], _MAX_PARAMS_TAGS_PER_BATCH):
            mlc.log_batch(run_id, tags=chunk)
    elif op == "text":
        mlc.log_text(run_id, record["text"], record["name"])
    elif op == "file":
        mlc.log_artifact(run_id, record["path"])
    elif op == "end":
        mlc.set_terminated(run_id, record["status"], end_time=record["end_time"])
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
                print(f"tracking server {uri} unreachable ({one_line(exc)[:160]}); run {run_id} goes on and "
                      f"keeps its records in {outbox.folder()} until the server answers (or: lorita-bench sync)",
                      file=sys.stderr, flush=True)
            return False
        outbox.replace(run_id, queue[i + 1 :])
    return True


def _deliver(run_id: str, record: dict[str, Any]) -> None:
    """Record something about a run; with a tracking server, through the outbox so that nothing is lost."""
    uri = tracking_uri()
    if not is_http(uri):
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
                result.refused.append(f"run {run_id}: {one_line(exc)}")
    return result


@with_mlflow_defaults
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
    mlc = client()
    experiment_id = get_or_create_experiment(experiment)
    # Tags go in with the run itself, so a lookup by config_hash never sees the run without them.
    run_id = mlc.create_run(experiment_id, tags=run_tags, run_name=run_name).info.run_id
    entries = [Param(key, value) for key, value in flatten(params).items()]
    for chunk in _chunks(entries, _MAX_PARAMS_TAGS_PER_BATCH):
        mlc.log_batch(run_id, params=chunk)
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


def log_state(run_id: str, state_dict: Mapping[str, Any], structure: Mapping[str, Any]) -> None:
    """Store the final state dict (model.pt) and what rebuilding the model needs (structure.json)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / schema.ARTIFACT_MODEL
        torch.save(state_dict, path)  # as given: a module's state dict carries _metadata (layer versions)
        _deliver(run_id, {"op": "file", "path": str(path)})
    log_json(run_id, schema.ARTIFACT_STRUCTURE, structure)


def end_run(run_id: str, status: str = schema.STATUS_FINISHED, error: str | None = None) -> None:
    """Terminate the run with `status`; a FAILED run (or any given `error`) gets the error tag."""
    if error is not None or status == schema.STATUS_FAILED:
        set_tags(run_id, {schema.TAG_ERROR: error or "unknown error"})
    _deliver(run_id, {"op": "end", "status": status, "end_time": int(time.time() * 1000)})


