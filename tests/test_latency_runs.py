"""Runs with a latency target: bad input before anything runs, the table built first, predicted beside measured."""

from __future__ import annotations

import pytest
import torch
from support import write_sweep
from torch.utils.flop_counter import FlopCounterMode

import lorita
from benchmarks import tracking
from benchmarks.cli import main
from benchmarks.config import make_config
from benchmarks.latency import Timing, Window
from benchmarks.latency import table as table_module
from benchmarks.methods import exclude_patterns, get_method
from benchmarks.models import create_model
from benchmarks.run import speed
from benchmarks.run.pipeline import criterion_batches, execute
from benchmarks.sweeps.grid import expand, load_sweep
from benchmarks.tracking import schema

BATCH = 8


def _flops_time(calls, **_):
    """Deterministic stand-in for time_interleaved: a call 'takes' 1 ns per multiply-add it does."""
    timings = []
    for call in calls:
        with FlopCounterMode(display=False) as counter:
            call()
        timings.append(Timing(counter.get_total_flops() / 2e6, 0.0, 1, False))
    return Window(timings, 0.0)


def _predicted_at_table_speed(metrics: dict, table) -> float:
    # A run's prediction is the table's ratio to the uncompressed network times that network's time in the run's window
    # (real ms; the table's are priced by FLOPs): brought back to the table's own window by the network's two times.
    return metrics[schema.latency_at("pred_ms", BATCH)] * table.base_ms / metrics[schema.latency_at("base_ms", BATCH)]


@pytest.fixture
def flops_table(monkeypatch):
    """Table entries and network latencies priced by their FLOPs (the run's own latency is still measured)."""
    monkeypatch.setattr(table_module, "time_interleaved", _flops_time)


def _cfg(store, **kw):
    base = {"experiment": "latency", "model": "fcn", "model_kwargs": {"layers": 3, "width": 48}, "dataset": "digits",
            "cache_dir": str(store / "cache"), "device": "cpu", "latency_batch": BATCH,
            "budget": {"epochs": 1, "finetune_epochs": 1, "batch_size": 64, "lr": 0.05}}
    return make_config({**base, **kw})


def _runs(experiment: str) -> int:
    frame = tracking.search_runs(experiment)
    return 0 if frame is None else len(frame)


@pytest.mark.parametrize(("flags", "message"), [
    (["--target-speedup", "1"], "config: --target-speedup must be a number > 1 (latency falls by 1 - 1/S); got 1.0"),
    (["--target-speedup", "1.5", "--set", "latency_backend=onnx"],
     "config: latency_backend must be one of eager, ort; got 'onnx'"),
    (["--target-speedup", "1.5", "--latency-batch", "0"], "config: latency_batch must be an integer >= 1; got 0"),
])
def test_bad_latency_input_is_one_line_before_anything_runs(store, capsys, flags, message):
    code = main(["run", "--method", "lorita", "--experiment", "latency-bad", "--cache-dir", str(store / "bad"),
                 *flags])
    assert code == 2
    assert capsys.readouterr().err.strip() == f"lorita-bench: error: {message}"
    assert _runs("latency-bad") == 0


def test_a_speedup_and_a_params_target_together_are_refused(capsys):
    with pytest.raises(SystemExit) as info:
        main(["run", "--target-speedup", "2", "--target-params-drop", "0.5"])
    assert info.value.code == 2
    assert "--target-params-drop: not allowed with argument --target-speedup" in capsys.readouterr().err


def test_a_method_without_latency_entries_refuses_a_latency_target():
    with pytest.raises(ValueError, match="dense is the uncompressed reference and takes no target"):
        get_method("dense").resolve(make_config({"method": "dense", "target_metric": "latency_drop",
                                                 "target": 0.3}))


@pytest.mark.parametrize("method", ["lorita", "l1"])
def test_a_latency_target_run_plans_by_the_table_and_records_prediction_beside_measurement(store, flops_table,
                                                                                            method):
    cfg = _cfg(store, method=method, target_metric="latency_drop", target=0.4)
    result = execute(cfg)
    assert result.status == schema.STATUS_FINISHED
    m = result.metrics
    for kind in ("ms", "iqr_ms", "base_ms", "pred_ms"):
        assert schema.latency_at(kind, BATCH) in m, kind
    for size in (1, BATCH):
        assert m[schema.speedup_at(size)] == pytest.approx(
            m[schema.latency_at("base_ms", size)] / m[schema.latency_at("ms", size)])
    assert m[schema.LATENCY_DROP] == pytest.approx(1 - 1 / m[schema.speedup_at(BATCH)])
    tags = tracking.client().get_run(result.run_id).data.tags
    assert tags[schema.TAG_LATENCY_UNDER_LOAD] in ("true", "false")
    # The plan met the target as the table predicts it (here: FLOPs at 1 ns each).
    network = create_model("fcn", 10, (1, 8, 8), layers=3, width=48)
    table = speed.cached(cfg, get_method(method), network, (1, 8, 8), torch.device("cpu"))
    assert abs(1 - _predicted_at_table_speed(m, table) / table.base_ms - 0.4) <= 0.01


def test_an_unreachable_speedup_fails_before_the_run_is_recorded_stating_the_largest(store, flops_table):
    cfg = _cfg(store, experiment="latency-far", method="lorita", target_metric="latency_drop", target=0.95)
    with pytest.raises(ValueError, match=r"1\.05e\+06x|20x speed-up") as info:
        execute(cfg)
    message = str(info.value)
    assert message.startswith("config: target latency_drop=0.95 (a 20x speed-up at batch 8) is unreachable for "
                              "lorita on fcn: the largest reachable speed-up is ")
    stated = float(message.rsplit("is ", 1)[1].split("x")[0])
    # Every planned layer (the classifier is kept) at rank 1: the plan no latency target can pass.
    network = create_model("fcn", 10, (1, 8, 8), layers=3, width=48)
    table = speed.cached(cfg, get_method("lorita"), network, (1, 8, 8), torch.device("cpu"))
    cost = table.plan_cost()
    planned = lorita.planned_layers(network, exclude_patterns(cfg, network))
    assert len(planned) == len(table.geometries) - 1
    fastest = table.base_ms - sum(cost.price(n, None) - cost.price(n, 1) for n in planned)
    assert stated == pytest.approx(table.base_ms / fastest, abs=0.01)
    assert _runs("latency-far") == 0


def test_a_sweep_lists_speedups_and_builds_their_tables_before_its_runs(store, flops_table):
    path = write_sweep(store, "speedups", methods=["svd", "l1"], targets={"speedup": [1.25]}, latency_batch=BATCH,
                       cache_dir=str(store / "sweep-cache"))
    runs = expand(load_sweep(path))
    assert {(cfg.target_metric, round(cfg.target, 12)) for cfg in runs} == {("latency_drop", 0.2)}
    speed.tables(runs, criterion_batches)
    folder = next((store / "sweep-cache" / "latency").iterdir())
    names = sorted(p.name.split("-")[0] for p in folder.glob("*.json"))
    assert names.count("rank") == names.count("width") == 2 and names.count("network") == 1
    # A speed-up no plan of a method reaches stops the sweep with one line, before any run.
    far = write_sweep(store, "too-fast", methods=["svd"], targets={"speedup": [50]}, latency_batch=BATCH,
                      cache_dir=str(store / "sweep-cache"))
    with pytest.raises(ValueError, match="is unreachable for svd on fcn: the largest reachable speed-up is"):
        speed.tables(expand(load_sweep(far)), criterion_batches)
    # Through the command: one line, and nothing recorded (no parent run left RUNNING either).
    assert main(["sweep", str(far)]) == 2
    assert _runs("too-fast") == 0


def test_cuttlefish_switches_to_the_ranks_the_table_plans(store, flops_table):
    cfg = _cfg(store, method="cuttlefish", target_metric="latency_drop", target=0.4, method_options={"warmup": 1},
               budget={"epochs": 2, "finetune_epochs": 1, "batch_size": 64, "lr": 0.05})
    result = execute(cfg)
    assert result.status == schema.STATUS_FINISHED
    ranks = tracking.load_json(result.run_id, schema.ARTIFACT_SWITCH)["ranks"]
    network = create_model("fcn", 10, (1, 8, 8), layers=3, width=48)
    table = speed.cached(cfg, get_method("cuttlefish"), network, (1, 8, 8), torch.device("cpu"))
    cost = table.plan_cost()
    assert ranks and all(cost.split(name, rank) for name, rank in ranks.items())
    assert abs(1 - _predicted_at_table_speed(result.metrics, table) / table.base_ms - 0.4) <= 0.01
