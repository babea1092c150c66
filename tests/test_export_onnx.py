"""ONNX: every model family, whole, factorized and pruned, computes the same function through ONNX Runtime; latency
through ONNX Runtime beside eager; a logged model waits in the outbox while the tracking server is away.

Each ONNX export (torch.onnx's dynamo exporter) takes 2-7 s on two cores, so these run in CI only.
"""

from __future__ import annotations

import copy

import mlflow
import pytest
import torch
from support import FAMILIES, free_port, input_shape, small_tv_vit
from test_reliability import _mlflow_server, _stop

import baselines
import lorita
from benchmarks import tracking
from benchmarks.config import make_config
from benchmarks.export import ort
from benchmarks.latency.table import LatencyTable, context, geometry
from benchmarks.models import create_model
from benchmarks.run import measure
from benchmarks.run.pipeline import execute
from benchmarks.tracking import outbox, schema

pytestmark = [pytest.mark.ci, pytest.mark.export]  # export: conftest leaves ONNX Runtime on

SEQUENCES = {"lstm": lambda: create_model("lstm", 4, (12, 6), hidden=16),
             "gru": lambda: create_model("gru", 4, (12, 6), hidden=16),
             "transformer": lambda: create_model("transformer", 4, (12, 6), dim=16, depth=1, heads=2)}
# Families outside FAMILIES, whose tests take every weight for a Linear/Conv2d module's (tv_vit's attention holds
# matrices) and images (gcn takes graphs): each with the shape of one input.
OTHERS = {"tv_vit": (small_tv_vit, (3, 32, 32)), "gcn": (lambda: create_model("gcn", 2, (34, 69)), (34, 69))}


def _example(family: str, batch: int) -> torch.Tensor:
    shape = ((batch, 12, 6) if family in SEQUENCES else (batch, *OTHERS[family][1]) if family in OTHERS
             else input_shape(family, batch))
    return torch.randn(*shape, generator=torch.Generator().manual_seed(batch))


def _factorized(model: torch.nn.Module) -> torch.nn.Module:
    layers = {name: layer for name, layer in lorita.planned_layers(model).items() if isinstance(layer, torch.nn.Module)}
    return lorita.factorize(model, {name: max(1, min(layer.weight.flatten(1).shape) // 2)
                                    for name, layer in layers.items()})


def _forms(family: str) -> dict[str, torch.nn.Module]:
    build = {**FAMILIES, **SEQUENCES, **{name: other[0] for name, other in OTHERS.items()}}[family]
    torch.manual_seed(0)
    model = build().eval()
    forms = {"whole": model, "factorized": _factorized(copy.deepcopy(model))}
    if family not in SEQUENCES and family not in OTHERS and not family.startswith("tv_"):
        forms["pruned"] = baselines.prune(copy.deepcopy(model), "l1", 0.3, example_input=_example(family, 2))
    return forms


# One of each kind of layer in CI (about a minute); every family with -m slow (about 4 minutes on two cores).
CI_FAMILIES = ("cnn", "resnet20_a", "vit", "lstm", "transformer")


@pytest.mark.parametrize("family", [pytest.param(f, marks=() if f in CI_FAMILIES else pytest.mark.slow)
                                    for f in [*FAMILIES, *SEQUENCES, *OTHERS]])
def test_every_family_and_form_runs_in_onnx_runtime_as_in_float64_pytorch(family):
    for form, model in _forms(family).items():
        model = model.eval()
        session = ort.ort_session(copy.deepcopy(model), _example(family, 2))
        batch = _example(family, 5)  # another batch size than the export's: the batch dimension is free
        with torch.no_grad():
            reference = copy.deepcopy(model).double()(batch.double())
        assert (session(batch).double() - reference).abs().max() < 1e-4, form


def test_latency_is_recorded_through_onnx_runtime_beside_eager():
    model = create_model("fcn", 10, (1, 8, 8), layers=3, width=32)
    small = _factorized(copy.deepcopy(model))
    plain = measure.latency_metrics(small, model, (1, 8, 8), torch.device("cpu"), 16)
    assert not any(name.endswith(measure.ORT_SUFFIX) for name in plain.metrics)  # only runs asking for it pay
    record = measure.latency_metrics(small, model, (1, 8, 8), torch.device("cpu"), 16, backend="ort")
    for suffix in ("", measure.ORT_SUFFIX):
        for size in (1, 16):
            assert record.metrics[schema.latency_at("ms", size, suffix)] > 0
            speedup = record.metrics[schema.speedup_at(size, suffix)]
            assert speedup == pytest.approx(record.metrics[schema.latency_at("base_ms", size, suffix)]
                                            / record.metrics[schema.latency_at("ms", size, suffix)])
    assert record.metrics[schema.LATENCY_DROP] == pytest.approx(
        1 - 1 / record.metrics[schema.speedup_at(16, measure.ORT_SUFFIX)])


def test_an_ort_latency_table_entry_is_timed_through_onnx_runtime(tmp_path, monkeypatch):
    geom = geometry(torch.nn.Linear(12, 10), (12,))
    monkeypatch.setattr("benchmarks.latency.table.RANK_FRACTIONS", (0.5, 1.0))
    sessions = []
    real = ort.ort_session

    def counted(*args, **kwargs):
        sessions.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(ort, "ort_session", counted)
    ctx = context(4, torch.device("cpu"), "ort")
    assert ctx.backend == "ort" and ctx != context(4, torch.device("cpu"))  # another context: another folder
    curve = LatencyTable(tmp_path, ctx, rounds=3).rank_curve(geom)
    assert curve.dense_ms > 0 and curve.ranks == [5, 10]
    # Every call timed (the dense layer, then the pair at each rank, and the table's reference conv beside them) ran
    # through an ONNX Runtime session.
    assert [type(m).__name__ for m in sessions] == ["Linear", "Sequential", "Sequential", "Conv2d"]


def test_a_logged_model_waits_in_the_outbox_while_the_server_is_away(tmp_path, monkeypatch):
    port = free_port()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    monkeypatch.setenv(outbox.OUTBOX_ENV, str(tmp_path / "outbox"))
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    cfg = make_config({"experiment": "export-away", "model": "fcn", "model_kwargs": {"layers": 2, "width": 16},
                       "dataset": "digits", "method": "svd", "target_metric": "flops_drop", "target": 0.5,
                       "device": "cpu", "cache_dir": str(tmp_path / "cache"),
                       "budget": {"epochs": 1, "finetune_epochs": 1, "batch_size": 64, "lr": 0.05}})
    log_model = tracking.log_model
    with _mlflow_server(tmp_path, port) as server:

        def stop_server_first(*args, **kwargs):
            _stop(server)
            log_model(*args, **kwargs)

        monkeypatch.setattr(tracking, "log_model", stop_server_first)
        result = execute(cfg, latency=False)
    assert result.status == schema.STATUS_FINISHED
    assert [r["op"] for r in outbox.records(result.run_id)].count("model") == 1
    with _mlflow_server(tmp_path, port):
        assert tracking.sync().sent == [result.run_id]
        experiment = tracking.client().get_experiment_by_name("export-away").experiment_id
        logged = tracking.client().search_logged_models(experiment_ids=[experiment])
        assert [(m.source_run_id, m.status) for m in logged] == [(result.run_id, "READY")]
        model = mlflow.pytorch.load_model(f"models:/{logged[0].model_id}")
        assert model(torch.zeros(3, 1, 8, 8)).shape == (3, 10)
