"""Writing runs: params, metrics, tags, artifacts and ends, each delivered at once to a database store, or through
the outbox to a tracking server: the caller only queues the record, the process's sender thread delivers it (see
`sender`), so that nothing is lost while the server is away and no training step waits on it (`sync` sends what
still waits)."""

from __future__ import annotations

import json
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from mlflow.entities import Metric, Param
from mlflow.exceptions import MlflowException

from benchmarks.errors import one_line
from benchmarks.tracking import models, outbox, schema, sender
from benchmarks.tracking.sender import MAX_PARAMS_TAGS_PER_BATCH, SEND_SETTINGS, chunks
from benchmarks.tracking.store import (
    check_store,
    client,
    get_or_create_experiment,
    is_http,
    mlflow_settings,
    shown_uri,
    tracking_uri,
    unreachable,
)

# How long ending a run waits for its records to reach a tracking server that answers (a server that does not
# answer ends the wait at once); what is still queued then stays in the outbox for `sync` or the next run.
END_WAIT_S = 20.0


def ensure_store(uri: str | None = None) -> None:
    """Create and migrate the store, or check that the tracking server answers; call before any worker.

    A store this suite cannot use is named in one line: StoreError (a ValueError), or ConnectionError for a server.
    """
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


def _tag_value(value: Any) -> str:
    # Lower-case booleans match MLflow's own tags and keep filters simple: tags.cache_hit = 'true'.
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _tag_values(tags: Mapping[str, Any]) -> dict[str, str]:
    # A None value (e.g. no GPU) leaves the tag unset rather than writing the string "None".
    return {key: _tag_value(value) for key, value in tags.items() if value is not None}


def _deliver(run_id: str, record: dict[str, Any]) -> None:
    """Record something about a run; with a tracking server, queued in the outbox for the sender thread."""
    uri = tracking_uri()
    if not is_http(uri):
        sender.send(uri, run_id, record)
        return
    file = Path(record["path"]) if record["op"] in ("file", "model") else None  # the caller's is temporary: kept
    outbox.keep(run_id, {**record, "uri": uri}, file=file)
    sender.wake(run_id)


@dataclass
class SyncResult:
    """What `sync` did: runs whose records all arrived, runs still waiting, and records a server refused."""

    sent: list[str]
    waiting: list[str]
    refused: list[str]


def sync() -> SyncResult:
    """Send every record the outbox holds to its tracking server (`lorita-bench sync`)."""
    sender.forget_away()
    result = SyncResult([], [], [])
    for run_id in outbox.runs():
        with outbox.locked(run_id):
            try:
                (result.sent if sender.flush(run_id) else result.waiting).append(run_id)
            except Exception as exc:  # noqa: BLE001 - one refused record must not keep other runs from syncing
                result.refused.append(f"run {run_id}: {one_line(exc)}")
    return result


def start_run(
    experiment: str,
    run_name: str,
    *,
    params: Mapping[str, Any],
    tags: Mapping[str, Any],
    parent_run_id: str | None = None,
) -> str:
    """Create a RUNNING run in `experiment` with the flattened `params` and `tags`; return its id.

    The run's id comes from the store, so this waits for it: a tracking server that does not answer within
    sender.SEND_SETTINGS' timeout is a one-line ConnectionError.
    """
    uri = tracking_uri()
    try:
        with mlflow_settings(SEND_SETTINGS if is_http(uri) else {}):
            return _create_run(experiment, run_name, params, tags, parent_run_id)
    except MlflowException as exc:
        if not (is_http(uri) and unreachable(exc)):
            raise
        raise ConnectionError(f"tracking server {shown_uri(uri)} did not answer while starting run {run_name!r} of "
                              f"experiment {experiment!r}: {one_line(exc)[:300]}") from None


def _create_run(experiment: str, run_name: str, params: Mapping[str, Any], tags: Mapping[str, Any],
                parent_run_id: str | None) -> str:
    run_tags = _tag_values(tags)
    if parent_run_id is not None:
        run_tags[schema.TAG_PARENT_RUN_ID] = parent_run_id
    with mlflow_settings():
        mlc = client()
        experiment_id = get_or_create_experiment(experiment)
        # Tags go in with the run itself, so a lookup by config_hash never sees the run without them.
        run_id = mlc.create_run(experiment_id, tags=run_tags, run_name=run_name).info.run_id
        entries = [Param(key, value) for key, value in flatten(params).items()]
        for chunk in chunks(entries, MAX_PARAMS_TAGS_PER_BATCH):
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


def log_model(run_id: str, program: torch.export.ExportedProgram, example: torch.Tensor,
              metadata: Mapping[str, Any] | None = None) -> None:
    """Log the run's compressed model (a torch.export program) as its MLflow model, pt2-serialized with a signature
    and `example` (a small batch) as input example; queued in the outbox like every record while a server is away."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.pt2"
        torch.export.save(program, path)
        _deliver(run_id, {"op": "model", "path": str(path), "name": models.LOGGED_MODEL,
                          "example": example.cpu().tolist(), "metadata": dict(metadata or {})})


def end_run(run_id: str, status: str = schema.STATUS_FINISHED, error: str | None = None) -> None:
    """Terminate the run with `status`; a FAILED run (or any given `error`) gets the error tag.

    With a tracking server, waits up to END_WAIT_S for the run's records to arrive; what has not is named in a
    one-line warning and stays in the outbox.
    """
    if error is not None or status == schema.STATUS_FAILED:
        set_tags(run_id, {schema.TAG_ERROR: error or "unknown error"})
    _deliver(run_id, {"op": "end", "status": status, "end_time": int(time.time() * 1000)})
    uri = tracking_uri()
    if is_http(uri) and not sender.wait_sent(run_id, END_WAIT_S):
        waiting = len(outbox.records(run_id))
        print(f"lorita-bench: warning: run {run_id} ended with {waiting} record(s) the tracking server "
              f"{shown_uri(uri)} has not received; they wait in {outbox.folder()} (lorita-bench sync sends them, "
              "as does the next run)", file=sys.stderr, flush=True)


@contextmanager
def recorded(run_id: str) -> Iterator[None]:
    """End the run as the block ends: FINISHED, KILLED on Ctrl-C ("interrupted"), else FAILED with the error's line.

    Whatever ended the block is raised on: a run is never left RUNNING by the process that runs it.
    """
    try:
        yield
    except KeyboardInterrupt:
        end_run(run_id, schema.STATUS_KILLED, error="interrupted")
        raise
    except BaseException as err:
        end_run(run_id, schema.STATUS_FAILED, error=one_line(err, kind=True))
        raise
    end_run(run_id, schema.STATUS_FINISHED)
