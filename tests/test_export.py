"""Export and deployment: ONNX and pt2 files that compute the run's model, the logged MLflow model, bad requests."""

from __future__ import annotations

import copy
import pickle
import zipfile

import mlflow
import pytest
import torch

import lorita
from benchmarks import export, tracking
from benchmarks.cli import main
from benchmarks.config import make_config
from benchmarks.data import batches, load_dataset
from benchmarks.export import command, formats, ort
from benchmarks.models import create_model
from benchmarks.run import pipeline
from benchmarks.run.pipeline import execute, load_model
from benchmarks.tracking import schema

# The pipeline's stage, taken before tests/conftest.py replaces it in each test.
LOG_MODEL = pipeline._log_model


def _cfg(store, **kw):
    base = {"experiment": "export", "model": "fcn", "model_kwargs": {"layers": 2, "width": 16}, "dataset": "digits",
            "method": "lorita", "factors": 2, "target_metric": "flops_drop", "target": 0.5, "device": "cpu",
            "cache_dir": str(store / "cache"), "budget": {"epochs": 1, "finetune_epochs": 1, "batch_size": 64,
                                                          "lr": 0.05}}
    return make_config({**base, **kw})


def _float64_outputs(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The reference: the same network computed in float64."""
    with torch.no_grad():
        return copy.deepcopy(model).double().eval()(x.double())


@pytest.fixture(scope="module")
def finished(store):
    """One finished LoRITa run (a factorized FCN) whose model is logged, as every run's is."""
    with pytest.MonkeyPatch.context() as patch:  # conftest's fixture may have replaced it: this run logs its model
        patch.setattr(pipeline, "_log_model", LOG_MODEL)
        result = execute(_cfg(store), latency=False)
    assert result.status == schema.STATUS_FINISHED
    return result


@pytest.mark.ci  # a run, its model logged (torch.export, MLflow): ~10 s on two busy cores
def test_the_logged_model_loads_with_mlflow_and_gives_the_runs_test_accuracy(store, finished):
    experiment = tracking.client().get_experiment_by_name("export").experiment_id
    logged = tracking.client().search_logged_models(experiment_ids=[experiment])
    assert [(m.name, m.source_run_id, m.status) for m in logged] == [("model", finished.run_id, "READY")]
    info = mlflow.models.get_model_info(f"models:/{logged[0].model_id}")
    assert info.flavors["pytorch"] and info.signature.inputs.to_dict()[0]["tensor-spec"]["shape"] == (-1, 1, 8, 8)
    data = load_dataset("digits", cache_dir=str(store / "cache"))
    assert info.metadata == {"normalize_mean": list(data.mean), "normalize_std": list(data.std)}
    model = mlflow.pytorch.load_model(f"models:/{logged[0].model_id}")  # pt2: loads without allowing pickle
    correct = sum(int((model(x).argmax(1) == y).sum()) for x, y in
                  batches(data.test_x, data.test_y, 512, mean=data.mean, std=data.std, augment=False, shuffle=False))
    assert correct / len(data.test_y) == finished.metrics[schema.ACC_FINETUNED]
    # The logged model carries the run's final metrics and config.
    assert {m.key: m.value for m in logged[0].metrics}[schema.ACC_FINETUNED] == finished.metrics[schema.ACC_FINETUNED]
    assert logged[0].params["method"] == "lorita"


@pytest.mark.ci  # two exports of a run's model, one through torch.onnx's dynamo exporter (~5 s)
def test_pt2_and_onnx_exports_compute_the_runs_model(store, finished, tmp_path, capsys):
    model = load_model(finished.run_id)
    batch = torch.randn(5, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    reference = _float64_outputs(model, batch)
    assert main(["export", finished.run_id, "--format", "pt2", "--out", str(tmp_path / "m.pt2")]) == 0
    assert "largest absolute difference from PyTorch's outputs on a batch of 8" in capsys.readouterr().out
    round_trip = formats.load_pt2(tmp_path / "m.pt2")(batch).double()
    assert (round_trip - reference).abs().max() < 1e-5
    assert main(["export", finished.run_id, "--format", "onnx", "--out", str(tmp_path / "m.onnx")]) == 0
    session = ort.ort_session((tmp_path / "m.onnx").read_bytes())
    assert (session(batch).double() - reference).abs().max() < 1e-4
    recorded = tracking.run_metrics(finished.run_id)
    assert recorded[schema.export_max_abs_diff("pt2")] < 1e-5
    assert recorded[schema.export_max_abs_diff("onnx")] < 1e-4


def _one_line(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err
    return err


def _recorded(monkeypatch, status: str, **tags) -> None:
    """The store's answer for run "R": its status and tags (the refusals come before anything is read from it)."""
    monkeypatch.setattr(tracking, "run_record", lambda run_id: {"run_id": run_id, "status": status, "tags": tags})


def test_bad_export_requests_are_one_line_before_anything_is_written(tmp_path, capsys, monkeypatch):
    out = tmp_path / "model.onnx"
    run = ["export", "R", "--out", str(out)]
    _recorded(monkeypatch, schema.STATUS_FINISHED)
    assert _one_line(capsys, [*run, "--format", "tflite"]) == (
        "lorita-bench: error: export: --format must be one of onnx, pt2; got 'tflite'")
    out.write_bytes(b"keep")
    assert _one_line(capsys, [*run, "--format", "onnx"]) == (
        f"lorita-bench: error: export: --out {out} exists; pass --force to replace it")
    assert _one_line(capsys, ["export", "R", "--out", str(tmp_path), "--format", "pt2"]) == (
        f"lorita-bench: error: export: --out {tmp_path} is a folder; name the file to write")
    _recorded(monkeypatch, schema.STATUS_RUNNING)
    assert _one_line(capsys, ["export", "R", "--format", "pt2", "--out", str(tmp_path / "r.pt2")]) == (
        "lorita-bench: error: export: run R is RUNNING, not FINISHED: only a finished run's model is exported")
    _recorded(monkeypatch, schema.STATUS_FINISHED, **{schema.TAG_NOT_APPLICABLE: "no prunable channels"})
    assert _one_line(capsys, ["export", "R", "--format", "pt2", "--out", str(tmp_path / "r.pt2")]) == (
        "lorita-bench: error: export: run R recorded no model: its method does not apply (no prunable channels)")
    monkeypatch.setattr(ort, "available", lambda: False)
    assert _one_line(capsys, [*run, "--format", "onnx", "--force"]) == (
        "lorita-bench: error: export: --format onnx needs onnx, onnxscript and onnxruntime, which are not installed: "
        "pip install -e '.[export]'")
    assert out.read_bytes() == b"keep" and not (tmp_path / "r.pt2").exists()


def test_a_run_built_by_a_factory_exports_only_with_trust_code(monkeypatch, tmp_path, capsys):
    _recorded(monkeypatch, schema.STATUS_FINISHED)
    monkeypatch.setattr(tracking, "load_text", lambda run_id, name: "model: mymodels:build\n")
    err = _one_line(capsys, ["export", "R", "--format", "pt2", "--out", str(tmp_path / "f.pt2")])
    assert "would import and run module 'mymodels'" in err and "--trust-code" in err
    assert not (tmp_path / "f.pt2").exists()


def _factorized_fcn() -> torch.nn.Module:
    torch.manual_seed(0)
    model = create_model("fcn", 10, (1, 8, 8), layers=2, width=16).eval()
    return lorita.factorize(model, {"1": 5, "4": 4})


def test_a_pt2_file_computes_the_model_as_float64_pytorch_does_at_any_batch_size(tmp_path):
    model = _factorized_fcn()
    formats.write(model, torch.randn(2, 1, 8, 8), "pt2", tmp_path / "m.pt2")
    batch = torch.randn(7, 1, 8, 8)
    assert (formats.load_pt2(tmp_path / "m.pt2")(batch).double() - _float64_outputs(model, batch)).abs().max() < 1e-5
    assert command.max_abs_diff(model, "pt2", tmp_path / "m.pt2", batch) < 1e-5


def test_a_pt2_archive_holding_a_pickle_is_never_loaded(tmp_path, capsys):
    formats.write(_factorized_fcn(), torch.randn(2, 1, 8, 8), "pt2", tmp_path / "m.pt2")
    with zipfile.ZipFile(tmp_path / "m.pt2", "a") as archive:
        # A pickle that would call print on load: torch.export.load would run it.
        archive.writestr("m/data/constants/evil", pickle.dumps(_Evil()))
    with pytest.raises(Exception, match="not a pickle-free payload"):
        formats.load_pt2(tmp_path / "m.pt2")
    assert "pickle ran" not in capsys.readouterr().out


class _Evil:
    def __reduce__(self):
        return (print, ("pickle ran",))


def test_an_ort_backend_is_refused_at_the_door_without_onnxruntime(monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime"
                        else find_spec(name, *a))
    with pytest.raises(ValueError, match=r"latency_backend ort needs ONNX Runtime, which is not installed: "
                                         r"pip install -e '\.\[export\]'"):
        make_config({"latency_backend": "ort"})


def test_an_example_of_one_sample_is_refused():
    with pytest.raises(ValueError, match="needs a batch of 2 or more samples"):
        export.exported(create_model("fcn", 10, (1, 8, 8), layers=2, width=8), torch.zeros(1, 1, 8, 8))
