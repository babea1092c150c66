"""benchmarks.tracking against a real SQLite store in a temporary directory (no server, no network)."""

import os

# MLflow decides at import whether to start its usage-telemetry thread, which would reach the network.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import json  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from support import free_port  # noqa: E402

from benchmarks import tracking  # noqa: E402
from benchmarks.tracking import schema  # noqa: E402


@pytest.fixture
def experiment(store, request):
    """A fresh experiment name per test, in the shared store."""
    return f"exp-{request.node.name}"


def test_flatten_joins_nested_keys_and_stringifies():
    config = {"model": "fcn", "budget": {"lr": 0.1, "epochs": 3, "sched": {"kind": "step"}}, "ex": ["fc*"]}
    assert tracking.flatten(config) == {
        "model": "fcn",
        "budget.lr": "0.1",
        "budget.epochs": "3",
        "budget.sched.kind": "step",
        "ex": '["fc*"]',
    }
    assert tracking.flatten({"data_root": None, "dims": (1, 2)}) == {"data_root": "None", "dims": "[1, 2]"}


def test_round_trip(store, experiment):
    # 150 params: more than one of MLflow's batches of 100.
    many = {f"p{i}": i for i in range(150)}
    params = {"model": "vgg", "budget": {"lr": 0.01, "widths": [64, 128]}, "n": many}
    tags = {schema.TAG_METHOD: "lorita", schema.TAG_CONFIG_HASH: "h-round", schema.TAG_GPU_NAME: None}
    run_id = tracking.start_run(experiment, "lorita-vgg", params=params, tags=tags)
    for epoch, (loss, acc) in enumerate([(2.0, 0.3), (1.0, 0.6), (0.5, 0.8)]):
        tracking.log_metrics(run_id, {schema.TRAIN_LOSS: loss, schema.TEST_ACC: acc}, step=epoch)
    keep = {percent: percent / 100 for percent in range(0, 101, 10)}
    tracking.log_series(run_id, schema.ACC_AT_KEEP, keep)
    tracking.log_metrics(run_id, {schema.ACC_TRAINED: 0.8, schema.FLOPS: 123456789})
    tracking.set_tags(run_id, {schema.TAG_CACHE_HIT: True, schema.TAG_THREADS: 2})
    tracking.log_json(run_id, schema.ARTIFACT_RANKS, {"features.0": 3, "classifier": None})
    tracking.log_text(run_id, schema.ARTIFACT_CONFIG, "model: vgg\n")
    net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3)).half()
    state = net.state_dict()  # float16 weights, an int64 buffer, _metadata
    structure = {"ranks": {"features.0": 3}, "channels": [16, 32]}
    tracking.log_state(run_id, state, structure)
    tracking.end_run(run_id)

    runs = tracking.search_runs(experiment)
    assert len(runs) == 1
    row = runs.iloc[0]
    assert row["run_id"] == run_id and row["status"] == schema.STATUS_FINISHED
    assert row["params.model"] == "vgg"
    assert row["params.budget.lr"] == "0.01"
    assert row["params.budget.widths"] == "[64, 128]"
    assert row["params.n.p149"] == "149"
    assert row[f"metrics.{schema.TRAIN_LOSS}"] == 0.5  # the latest epoch
    assert row[f"metrics.{schema.FLOPS}"] == 123456789
    assert row[f"tags.{schema.TAG_METHOD}"] == "lorita"
    assert row[f"tags.{schema.TAG_CACHE_HIT}"] == "true"
    assert row[f"tags.{schema.TAG_THREADS}"] == "2"
    assert row[f"tags.{schema.TAG_RUN_NAME}"] == "lorita-vgg"
    assert f"tags.{schema.TAG_GPU_NAME}" not in runs.columns  # None: not written
    assert f"tags.{schema.TAG_ERROR}" not in runs.columns
    assert list(runs.columns[:4]) == ["run_id", "experiment_id", "status", "artifact_uri"]

    assert tracking.metric_history(run_id, schema.TRAIN_LOSS) == [(0, 2.0), (1, 1.0), (2, 0.5)]
    assert tracking.metric_history(run_id, schema.ACC_AT_KEEP) == sorted(keep.items())
    assert tracking.metric_history(run_id, "never_logged") == []

    loaded, loaded_structure = tracking.load_state(run_id)
    assert loaded.keys() == state.keys()
    for name, tensor in state.items():
        assert loaded[name].dtype == tensor.dtype and torch.equal(loaded[name], tensor)
    assert loaded._metadata == state._metadata
    torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3)).half().load_state_dict(loaded)
    assert loaded_structure == structure
    assert tracking.load_json(run_id, schema.ARTIFACT_RANKS) == {"features.0": 3, "classifier": None}

    # Artifacts of a SQLite store lie beside its file.
    artifacts = store / tracking.ARTIFACTS_DIR / experiment / run_id / "artifacts"
    assert (artifacts / schema.ARTIFACT_CONFIG).read_text() == "model: vgg\n"
    assert json.loads((artifacts / schema.ARTIFACT_STRUCTURE).read_text()) == structure
    assert (artifacts / schema.ARTIFACT_MODEL).is_file()


def test_parent_run_and_search_across_experiments(store, experiment):
    parent = tracking.start_run(experiment, "sweep", params={}, tags={schema.TAG_SWEEP: "s1"})
    child = tracking.start_run(
        experiment + "-b", "child", params={"seed": 1}, tags={schema.TAG_SWEEP: "s1"}, parent_run_id=parent
    )
    for run_id in (child, parent):
        tracking.end_run(run_id)
    runs = tracking.search_runs(filter_string=f"tags.{schema.TAG_SWEEP} = 's1'").set_index("run_id")
    assert set(runs.index) == {parent, child}
    assert runs.loc[child, "tags.mlflow.parentRunId"] == parent
    assert runs["experiment_id"].nunique() == 2
    assert tracking.search_runs("no-such-experiment").empty


def test_find_run_newest_with_status(store, experiment):
    def run(config_hash: str, status: str) -> str:
        run_id = tracking.start_run(experiment, status, params={}, tags={schema.TAG_CONFIG_HASH: config_hash})
        if status != schema.STATUS_RUNNING:
            tracking.end_run(run_id, status, error="boom" if status == schema.STATUS_FAILED else None)
        return run_id

    old_ok = run("h1", schema.STATUS_FINISHED)
    new_ok = run("h1", schema.STATUS_FINISHED)
    failed = run("h1", schema.STATUS_FAILED)
    running = run("h1", schema.STATUS_RUNNING)
    other = run("h2", schema.STATUS_FINISHED)
    assert old_ok != new_ok
    assert tracking.find_run(experiment, "h1") == new_ok
    assert tracking.find_run(experiment, "h2") == other
    assert tracking.find_run(experiment, "h1", (schema.STATUS_FAILED,)) == failed
    everything = (schema.STATUS_FINISHED, schema.STATUS_FAILED, schema.STATUS_RUNNING)
    assert tracking.find_run(experiment, "h1", everything) == running
    assert tracking.find_run(experiment, "h3") is None
    assert tracking.find_run("no-such-experiment", "h1") is None


def test_failed_runs_carry_the_error_tag(store, experiment):
    failed = tracking.start_run(experiment, "a", params={}, tags={})
    tracking.end_run(failed, schema.STATUS_FAILED, error="CUDA out of memory\nat layer 3")
    silent = tracking.start_run(experiment, "b", params={}, tags={})
    tracking.end_run(silent, schema.STATUS_FAILED)
    runs = tracking.search_runs(experiment).set_index("run_id")
    assert runs.loc[failed, "status"] == schema.STATUS_FAILED
    assert runs.loc[failed, f"tags.{schema.TAG_ERROR}"] == "CUDA out of memory\nat layer 3"
    assert runs.loc[silent, f"tags.{schema.TAG_ERROR}"] == "unknown error"


def test_experiment_is_created_once(store, experiment):
    first = tracking.get_or_create_experiment(experiment)
    assert tracking.get_or_create_experiment(experiment) == first


def test_default_uri_is_sqlite_in_cwd(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    assert tracking.tracking_uri() == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert tracking.tracking_uri().startswith("sqlite:////")  # an absolute path
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracker:5000")
    assert tracking.tracking_uri() == "http://tracker:5000"


def test_unreachable_server_fails_fast_in_one_line(monkeypatch):
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", raising=False)
    uri = f"http://127.0.0.1:{free_port()}"
    start = time.monotonic()
    with pytest.raises(ConnectionError) as caught:
        tracking.ensure_store(uri)
    assert time.monotonic() - start < 5
    message = str(caught.value)
    assert message.startswith(f"tracking server {uri} unreachable: ") and "\n" not in message
    assert "MLFLOW_HTTP_REQUEST_MAX_RETRIES" not in os.environ  # the probe's settings do not leak


def test_ui_command_is_local_by_default(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'x.db'}")
    command = tracking.ui_command()
    assert command[command.index("--host") + 1] == "127.0.0.1"
    assert command[command.index("--port") + 1] == "5000"
    assert command[command.index("--backend-store-uri") + 1] == f"sqlite:///{tmp_path / 'x.db'}"
    assert command[command.index("--artifacts-destination") + 1] == str(tmp_path / "mlartifacts")
    anywhere = tracking.ui_command("0.0.0.0", 8080)
    assert anywhere[anywhere.index("--host") + 1 :][:3] == ["0.0.0.0", "--port", "8080"]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "https://tracker.example")
    with pytest.raises(ValueError, match="tracker.example"):
        tracking.ui_command()


def _listening_addresses(port: int) -> set[str]:
    """Local addresses (hex, as in /proc/net/tcp*) of sockets listening on `port`."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:
                found.add(address)
    return found


@pytest.mark.ci  # an MLflow server takes ~20 s to start on two cores
@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads Linux's socket table")
def test_real_ui_listens_on_loopback_only(store):
    port = free_port()
    server = subprocess.Popen(
        tracking.ui_command(port=port),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not _listening_addresses(port):
            assert server.poll() is None, "mlflow ui exited"
            assert time.monotonic() < deadline, "mlflow ui did not listen within 120 s"
            time.sleep(0.1)
        assert _listening_addresses(port) == {"0100007F"}  # 127.0.0.1, no IPv4/IPv6 wildcard
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
