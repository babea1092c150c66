"""The suite's one door to MLflow: the store and its queries, the delivery of every write, the outbox and its sender
thread, the safe making of a SQLite store, the schema.

`from benchmarks import tracking` then `tracking.start_run(...)`, `tracking.log_metrics(...)`, `tracking.find_run(...)`.
"""

from benchmarks.tracking.delivery import (
    SyncResult,
    end_run,
    ensure_store,
    flatten,
    log_history,
    log_json,
    log_metrics,
    log_model,
    log_series,
    log_state,
    log_text,
    recorded,
    set_tags,
    start_run,
    sync,
)
from benchmarks.tracking.models import LOGGED_MODEL, checked_program
from benchmarks.tracking.sqlite_store import StoreError
from benchmarks.tracking.store import (
    ARTIFACTS_DIR,
    DB_FILE,
    MissingArtifact,
    client,
    delete_run,
    environment,
    experiment_names,
    find_run,
    get_or_create_experiment,
    has_metric,
    is_http,
    load_json,
    load_state,
    load_text,
    metric_history,
    run_metrics,
    run_record,
    running_runs,
    search_runs,
    sqlite_db,
    tracking_uri,
    ui_command,
    ui_page,
)

__all__ = [
    "ARTIFACTS_DIR", "DB_FILE", "LOGGED_MODEL", "MissingArtifact", "StoreError", "SyncResult", "client", "delete_run",
    "checked_program", "end_run", "ensure_store", "environment", "experiment_names", "find_run", "flatten",
    "get_or_create_experiment", "has_metric", "is_http", "load_json", "load_state", "load_text", "log_history",
    "log_json", "log_metrics", "log_model", "log_series", "log_state", "log_text", "metric_history", "recorded",
    "run_metrics", "run_record", "running_runs", "search_runs", "set_tags",
    "sqlite_db", "start_run", "sync", "tracking_uri", "ui_command", "ui_page",
]
