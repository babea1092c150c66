"""The tracking store under faults provoked for real: processes racing to create it, one killed while it does,
half-migrated, corrupt and truncated files, URIs MLflow cannot use, a server that answers junk or never answers, and
a run whose artifacts are gone. Each is named in one line, or survived."""

import contextlib
import multiprocessing
import os
import shutil
import signal
import socket
import sqlite3
import threading
import time
from importlib.util import find_spec
from pathlib import Path

import pytest

from benchmarks import tracking
from benchmarks.cli import main
from benchmarks.config import make_config
from benchmarks.run.pipeline import execute
from benchmarks.tracking import outbox, schema, sqlite_store
from reports.build import build_report

# Forked processes start at once with MLflow already imported: the race is as tight as it gets, and cheap.
FORK = multiprocessing.get_context("fork")
# Migrating a new store writes about 1 MB; past this much the migrations are well under way.
MID_MIGRATION_BYTES = 256 * 1024


def _fresh(tmp_path: Path) -> tuple[Path, str]:
    db = tmp_path / "new" / tracking.DB_FILE
    return db, f"sqlite:///{db}"


def _ensure_in_child(uri: str, barrier=None) -> None:
    """A process's whole part: wait for the others, create (or find) the store, record a run in it."""
    if barrier is not None:
        barrier.wait()
    tracking.ensure_store(uri)
    os.environ["MLFLOW_TRACKING_URI"] = uri
    tracking.end_run(tracking.start_run("race", f"from-{os.getpid()}", params={}, tags={}))


def test_processes_creating_one_fresh_store_at_once_all_succeed(store, tmp_path):
    # `store` only warms this process (MLflow's migration modules imported once, before the fork).
    db, uri = _fresh(tmp_path)
    barrier = FORK.Barrier(4)
    children = [FORK.Process(target=_ensure_in_child, args=(uri, barrier)) for _ in range(4)]
    for child in children:
        child.start()
    for child in children:
        child.join(timeout=120)
    assert [child.exitcode for child in children] == [0, 0, 0, 0]
    runs = tracking.client(uri).search_runs([tracking.client(uri).get_experiment_by_name("race").experiment_id])
    assert sorted(run.info.run_name for run in runs) == sorted(f"from-{child.pid}" for child in children)
    assert sqlite_store.check(db)
    assert not list(db.parent.glob(f".{db.name}.*.creating*"))  # no temporary file left


def test_a_process_killed_while_creating_the_store_leaves_none_half_made(tmp_path, monkeypatch):
    db, uri = _fresh(tmp_path)
    child = FORK.Process(target=tracking.ensure_store, args=(uri,))
    child.start()
    deadline = time.monotonic() + 60
    while True:
        making = list(db.parent.glob(f".{db.name}.*.creating")) if db.parent.exists() else []
        with contextlib.suppress(FileNotFoundError):
            if making and making[0].stat().st_size >= MID_MIGRATION_BYTES:
                break
        assert child.exitcode is None, "the store was made before it could be killed"
        assert time.monotonic() < deadline, "no migration started within 60 s"
        child.join(timeout=0.002)  # the poll interval
    os.kill(child.pid, signal.SIGKILL)
    child.join()
    assert child.exitcode == -signal.SIGKILL
    assert not db.exists()  # the half-made store lies under its temporary name only
    assert making[0].exists()

    tracking.ensure_store(uri)  # the next command: makes the store afresh
    assert sqlite_store.check(db) and not making[0].exists()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    run_id = tracking.start_run("after-kill", "r", params={"a": 1}, tags={})
    tracking.end_run(run_id)
    assert list(tracking.search_runs("after-kill")["status"]) == [schema.STATUS_FINISHED]


def _copy(store: Path, tmp_path: Path) -> Path:
    """A copy of the module's complete store, to break."""
    target = tmp_path / tracking.DB_FILE
    shutil.copyfile(store / tracking.DB_FILE, target)
    return target


def _sql(db: Path, statement: str, *args) -> None:
    with contextlib.closing(sqlite3.connect(db)) as connection:
        connection.execute(statement, args)
        connection.commit()


def _one_line_error(uri: str, kind: type[BaseException] = tracking.StoreError) -> str:
    with pytest.raises(kind) as caught:
        tracking.ensure_store(uri)
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_a_half_migrated_store_is_named_in_one_line(store, tmp_path):
    head, known = sqlite_store.mlflow_revisions()
    older = sorted(known - {head})[0]
    db = _copy(store, tmp_path)
    _sql(db, "UPDATE alembic_version SET version_num = ?", older)
    assert _one_line_error(f"sqlite:///{db}") == (
        f"tracking store {db} was left half-migrated (alembic revision {older}, expected {head}): move it aside and "
        f"run again, or restore it from a backup (a store an older MLflow made: back it up, then mlflow db upgrade "
        f"sqlite:///{db})")

    db = _copy(store, tmp_path)
    _sql(db, "CREATE TABLE _alembic_tmp_tags (key VARCHAR(250))")  # what a migration killed mid-table leaves
    assert _one_line_error(f"sqlite:///{db}") == (
        f"tracking store {db} was left half-migrated (leftover table _alembic_tmp_tags; alembic revision {head}, "
        f"expected {head}): move it aside and run again, or restore it from a backup")

    db = _copy(store, tmp_path)
    _sql(db, "UPDATE alembic_version SET version_num = 'f00dfeedbeef'")
    assert "has schema revision f00dfeedbeef, which this MLflow does not know" in _one_line_error(f"sqlite:///{db}")


def test_the_command_line_names_a_broken_store_before_any_run(store, tmp_path, monkeypatch, capsys):
    db = _copy(store, tmp_path)
    _sql(db, "CREATE TABLE _alembic_tmp_tags (key VARCHAR(250))")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
    assert main(["run", "--method", "dense", "--model", "fcn", "--dataset", "digits", "--device", "cpu",
                 "--experiment", "never", "--cache-dir", str(tmp_path / "cache")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"lorita-bench: error: tracking store {db} was left half-migrated") and err.count("\n") == 1


def test_corrupt_and_truncated_stores_are_named_in_one_line(store, tmp_path):
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"not a database at all, but long enough to look like a header " * 4)
    assert _one_line_error(f"sqlite:///{garbage}") == (
        f"tracking store {garbage} is not an SQLite database (file is not a database): move it aside, or point "
        "MLFLOW_TRACKING_URI at another store")
    for keep in (0.5, 0.95):
        db = _copy(store, tmp_path)
        with db.open("r+b") as f:
            f.truncate(int(db.stat().st_size * keep))
        message = _one_line_error(f"sqlite:///{db}")
        assert message.startswith(f"tracking store {db} is damaged (database disk image is malformed")
        assert message.endswith("): restore it from a backup, or move it aside and run again for a new store")


@pytest.mark.parametrize("uri", ["file:", "file:///tmp/lorita-bench-folder-store", "relative/folder-store"])
def test_a_folder_store_uri_is_named_in_one_line(uri, monkeypatch):
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    assert _one_line_error(uri) == (f"tracking URI {uri} names a folder store, which MLflow refuses unless "
                                    "MLFLOW_ALLOW_FILE_STORE=true: use sqlite:///<path>/mlflow.db or "
                                    "http://<host>:<port>")


@pytest.mark.skipif(find_spec("MySQLdb") is not None, reason="the MySQL driver is installed here")
def test_a_database_uri_without_its_driver_is_named_without_its_password():
    assert _one_line_error("mysql://bench:secret@127.0.0.1:9/runs") == (
        "tracking store mysql://bench:***@127.0.0.1:9/runs needs the database driver MySQLdb, which is not installed")


@contextlib.contextmanager
def _server(reply: bytes | None):
    """A TCP server on 127.0.0.1 that answers each connection's first bytes with `reply` and closes it, or (None)
    accepts every connection and never answers; its http:// URI."""
    listener = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:  # the listener was shut down
                return
            if reply is None:
                held.append(conn)
                continue
            with conn:
                conn.recv(65536)
                conn.sendall(reply)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        listener.shutdown(socket.SHUT_RDWR)
        listener.close()
        thread.join(timeout=5)
        for conn in held:
            conn.close()


@pytest.mark.parametrize("reply", [b"SSH-2.0-OpenSSH_9.6\r\n",
                                   b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 19\r\n\r\n"
                                   b"<html>hello!</html>"], ids=["not-http", "not-mlflow"])
def test_a_server_answering_junk_is_named_in_one_line(reply):
    with _server(reply) as uri:
        started = time.monotonic()
        message = _one_line_error(uri, ConnectionError)
        assert time.monotonic() - started < 5
    assert message.startswith(f"tracking server {uri} did not answer as an MLflow server (is the URI right?): ")


def test_an_experiment_name_over_mlflows_limit_is_named_in_one_line(store):
    name = "e" * 501
    for first_call in (lambda: tracking.get_or_create_experiment(name),
                       lambda: tracking.start_run(name, "r", params={}, tags={})):
        with pytest.raises(ValueError) as caught:
            first_call()
        assert str(caught.value) == (f"experiment name {'e' * 40!r}... has 501 characters: MLflow takes 1 to 500 "
                                     f"(tracking store {tracking.tracking_uri()})")
    assert tracking.client().get_experiment_by_name(name[:500]) is None


def test_logging_never_waits_on_a_server_that_never_answers(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(outbox.OUTBOX_ENV, str(tmp_path / "outbox"))
    # The user's settings win over the sender's own (5 s, one retry): a 1 s try keeps this test short.
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "1")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    run_id = "0123456789abcdef0123456789abcdef"
    with _server(None) as uri:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        calls = []
        for step in range(20):
            started = time.monotonic()
            tracking.log_metrics(run_id, {schema.TRAIN_LOSS: 1 / (step + 1)}, step=step)
            calls.append(time.monotonic() - started)
        started = time.monotonic()
        tracking.set_tags(run_id, {schema.TAG_CACHE_HIT: False})
        calls.append(time.monotonic() - started)
        assert sum(calls) < 1.0, calls
        records = outbox.records(run_id)  # none arrived, all kept, in order
        assert [r["op"] for r in records] == ["metrics"] * 20 + ["tags"]
        assert [r["metrics"][0][3] for r in records[:20]] == list(range(20))
        assert records[20]["tags"] == {schema.TAG_CACHE_HIT: "false"}

        started = time.monotonic()
        tracking.end_run(run_id)  # waits for one try of the sender, not for MLflow's minutes of retries
        end_s = time.monotonic() - started
        assert end_s < 5
        assert [r["op"] for r in outbox.records(run_id)][-1] == "end" and len(outbox.records(run_id)) == 22
        err = capsys.readouterr().err
        assert f"run {run_id} ended with 22 record(s) the tracking server {uri} has not received" in err

        started = time.monotonic()
        with pytest.raises(ConnectionError) as caught:
            tracking.start_run("stalled", "r", params={}, tags={})
        start_s = time.monotonic() - started
        assert start_s < 5
        assert str(caught.value).startswith(f"tracking server {uri} did not answer while starting run 'r' of "
                                            "experiment 'stalled': ")
        assert "\n" not in str(caught.value)
    with capsys.disabled():
        print(f"\nhanging server: {1000 * max(calls):.1f} ms at most per logging call ({1000 * sum(calls):.0f} ms "
              f"for 21), end_run {end_s:.1f} s, start_run {start_s:.1f} s")


def test_a_report_lists_runs_whose_artifacts_are_gone(store, tmp_path, capsys):
    base = {"experiment": "gone", "method": "dense", "model": "fcn", "model_kwargs": {"layers": 2, "width": 16},
            "dataset": "digits", "cache_dir": str(store / "cache-gone"), "device": "cpu",
            "budget": {"epochs": 1, "finetune_epochs": 1}}
    results = [execute(make_config({**base, "seed": seed}), latency=False) for seed in (0, 1)]
    gone = tracking.search_runs("gone").set_index("run_id").loc[results[0].run_id]
    shutil.rmtree(Path(gone["artifact_uri"].removeprefix("file://")).parent)  # the run's artifact folder

    summary = build_report(tmp_path / "report", experiment="gone")
    assert [(m.run_id, m.artifact) for m in summary.missing] == [(results[0].run_id, schema.ARTIFACT_SPECTRA)]
    assert summary.runs == 2  # its metrics still count
    assert any(p.name.startswith("spectra__") for p in summary.figures)  # seed 1 stands in
    name = gone[f"tags.{schema.TAG_RUN_NAME}"]
    for page in (summary.markdown, summary.html):
        text = page.read_text(encoding="utf-8")
        assert "Runs with missing artifacts" in text and results[0].run_id in text and name in text
    assert (f"left out of a figure: run {name} ({results[0].run_id}) has no {schema.ARTIFACT_SPECTRA}"
            in str(summary))
    with pytest.raises(tracking.MissingArtifact, match=f"run {results[0].run_id} has no artifact "
                                                        f"{schema.ARTIFACT_SPECTRA} in the tracking store"):
        tracking.load_json(results[0].run_id, schema.ARTIFACT_SPECTRA)
