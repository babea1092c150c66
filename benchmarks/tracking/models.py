"""Logged models: a run's compressed model as an MLflow model (pt2, pickle-free) under the run's experiment, and
reading a pt2 archive without running code.

MLflow's `log_model` otherwise reaches for the active run and the default experiment: here the logged model is
created against the run's explicit id and experiment, and its flavor's calls are pointed at the record's store.
"""

from __future__ import annotations

from importlib.metadata import version
from pathlib import Path
from typing import Any

import mlflow
import torch
from mlflow import MlflowClient
from mlflow.entities import LoggedModelStatus
from mlflow.models import infer_signature

from benchmarks.tracking.store import mlflow_settings

# The name of a run's logged model (MLflow's "Logged models" list shows it beside the run).
LOGGED_MODEL = "model"


def checked_program(path: Path) -> torch.export.ExportedProgram:
    """The torch.export program in a pt2 archive, loaded only after MLflow's check that every pickled record in it
    holds tensors and plain containers alone (torch.export.load unpickles them with weights_only=False)."""
    # A private name of MLflow's (3.17): the check its own pt2 loader runs. Wrapped here so an upgrade breaks one line.
    from mlflow.pytorch import _validate_pt2_archive_is_pickle_free

    _validate_pt2_archive_is_pickle_free(str(path))
    return torch.export.load(str(path))


def _logged(mlc: MlflowClient, experiment_id: str, run_id: str, name: str) -> bool:
    # A record sent again after a server dropped the answer must not log the model twice.
    found = mlc.search_logged_models(experiment_ids=[experiment_id],
                                     filter_string=f"source_run_id = '{run_id}' AND name = '{name}'")
    return any(model.status == LoggedModelStatus.READY for model in found)


def log_program(uri: str, run_id: str, record: dict[str, Any]) -> None:
    """Log the pt2 program of a queued record as the run's MLflow model, with its signature and input example."""
    mlc = MlflowClient(uri)
    run = mlc.get_run(run_id)
    experiment_id, name = run.info.experiment_id, record["name"]
    if _logged(mlc, experiment_id, run_id, name):
        return
    module = checked_program(Path(record["path"])).module()
    example = torch.tensor(record["example"], dtype=torch.float32)
    with torch.no_grad():
        signature = infer_signature(example.numpy(), module(example).numpy())
    model = mlc.create_logged_model(experiment_id, name=name, source_run_id=run_id, params=dict(run.data.params))
    # The flavor's own calls (saving, finalizing) use MLflow's global store: this record's, for their duration.
    with mlflow_settings(overrides={"MLFLOW_TRACKING_URI": uri}):
        mlflow.pytorch.log_model(module, name=name, model_id=model.model_id, run_id=run_id,
                                 serialization_format="pt2", signature=signature, input_example=example.numpy(),
                                 metadata=record.get("metadata"), pip_requirements=[f"torch=={version('torch')}"])
