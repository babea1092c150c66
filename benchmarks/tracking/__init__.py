"""The suite's one door to MLflow: the store and its queries, the delivery of every write, the outbox, the schema.

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
    log_series,
    log_state,
    log_text,
    set_tags,
    start_run,
    sync,
)
from benchmarks.tracking.store import (
    ARTIFACTS_DIR,
    DB_FILE,
    client,
    environment,
    find_run,
    get_or_create_experiment,
    is_http,
    load_json,
    load_state,
    load_text,
    metric_history,
    search_runs,
    serve_ui,
    sqlite_db,
    stale_runs,
    tracking_uri,
    ui_command,
)

__all__ = [
    "ARTIFACTS_DIR", "DB_FILE", "SyncResult", "client", "end_run", "ensure_store", "environment", "find_run",
    "flatten", "get_or_create_experiment", "is_http", "load_json", "load_state", "load_text", "log_history",
    "log_json", "log_metrics", "log_series", "log_state", "log_text", "metric_history", "search_runs", "serve_ui",
    "set_tags", "sqlite_db", "stale_runs", "start_run", "sync", "tracking_uri", "ui_command",
]
