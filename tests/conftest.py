"""Shared fixtures: every test that records runs gets its own MLflow store and cache in a temporary folder."""

import os

import pytest
import torch

# MLflow 3 starts a telemetry thread on import unless told not to; tests never touch the network.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
# Tests use tiny models, where a second intra-op thread buys nothing; and when another process holds one of
# the two cores, two spinning OpenMP threads make tiny ops 100x slower (measured: batch_norm 26 ms per call).
torch.set_num_threads(1)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A fresh sqlite tracking store and cache folder shared by one test module (creating a store takes seconds)."""
    root = tmp_path_factory.mktemp("store")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    old = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = uri
    from benchmarks import tracking

    tracking.ensure_store()
    yield root
    if old is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = old


@pytest.fixture(autouse=True)
def _no_export_in_runs(request, monkeypatch):
    """Runs in tests skip the two stages that cost a second or more per run and are tested on their own
    (tests/test_export*.py): the MLflow logged model and ONNX Runtime latency. A test marked `export` keeps them."""
    if request.node.get_closest_marker("export") is None:
        from benchmarks.run import measure, pipeline

        monkeypatch.setattr(pipeline, "_log_model", lambda *args, **kwargs: None)
        monkeypatch.setattr(measure, "ort_available", lambda: False)
