"""One run end to end through the CLI and the pipeline: metrics in MLflow, determinism, the trained-model cache."""

import time

import mlflow
import pytest
import torch

from benchmarks import load_model, tracking
from benchmarks.cli import main
from benchmarks.config import make_config
from benchmarks.data import load_dataset
from benchmarks.run.pipeline import execute
from benchmarks.run.train import evaluate
from benchmarks.tracking import schema


def _cfg(store, **kw):
    base = {"experiment": "pipeline", "model": "fcn", "model_kwargs": {"layers": 3, "width": 64},
            "dataset": "digits", "cache_dir": str(store / "cache"), "device": "cpu",
            "budget": {"epochs": 4, "finetune_epochs": 2, "batch_size": 64, "lr": 0.05}}
    budget = {**base["budget"], **kw.pop("budget", {})}
    return make_config({**base, **kw, "budget": budget})


def test_cli_run_records_every_metric(store, capsys):
    code = main(["run", "--model", "fcn", "--dataset", "digits", "--method", "lorita", "--factors", "3",
                 "--target-flops-drop", "0.5", "--epochs", "30", "--experiment", "cli",
                 "--cache-dir", str(store / "cache-cli"), "--device", "cpu"])
    assert code == 0
    out = capsys.readouterr().out
    assert "flops_drop" in out and "acc_finetuned" in out
    runs = mlflow.search_runs(experiment_names=["cli"])
    assert len(runs) == 1
    row = runs.iloc[0]
    assert row["status"] == "FINISHED"
    for name in (schema.ACC_TRAINED, schema.ACC_COMPRESSED, schema.ACC_FINETUNED, schema.FLOPS, schema.PARAMS,
                 schema.FLOPS_BASE, schema.PARAMS_BASE, schema.FLOPS_DROP, schema.PARAMS_DROP,
                 schema.LATENCY_MS_B1, schema.LATENCY_MS_B128, schema.TRAIN_TIME_S):
        assert f"metrics.{name}" in row.index and row[f"metrics.{name}"] == row[f"metrics.{name}"], name
    assert abs(row[f"metrics.{schema.FLOPS_DROP}"] - 0.5) <= 0.01
    assert row["params.factors"] == "3" and row[f"tags.{schema.TAG_METHOD}"] == "lorita"
    run_id = row["run_id"]
    assert len(tracking.metric_history(run_id, schema.TRAIN_LOSS)) == 30
    assert len(tracking.metric_history(run_id, schema.FT_TEST_ACC)) == 5
    keep = dict(tracking.metric_history(run_id, schema.ACC_AT_KEEP))
    assert sorted(keep) == [5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100]
    assert set(tracking.load_json(run_id, schema.ARTIFACT_RANKS))


def test_same_seed_gives_identical_results(store):
    first = execute(_cfg(store, method="lorita", factors=2, target_metric="flops_drop", target=0.4,
                         cache_dir=str(store / "det-a")), latency=False)
    second = execute(_cfg(store, method="lorita", factors=2, target_metric="flops_drop", target=0.4,
                          cache_dir=str(store / "det-b")), force=True, latency=False)
    assert not second.cache_hit
    for name in (schema.ACC_TRAINED, schema.ACC_COMPRESSED, schema.ACC_FINETUNED, schema.FLOPS, schema.PARAMS):
        assert first.metrics[name] == second.metrics[name], name
    assert tracking.metric_history(first.run_id, schema.TRAIN_LOSS) == tracking.metric_history(
        second.run_id, schema.TRAIN_LOSS)


def test_second_target_reuses_the_trained_model(store):
    t0 = time.perf_counter()
    first = execute(_cfg(store, method="svd", target_metric="flops_drop", target=0.3,
                         budget={"epochs": 15}), latency=False)
    t1 = time.perf_counter()
    second = execute(_cfg(store, method="svd", target_metric="flops_drop", target=0.6,
                          budget={"epochs": 15}), latency=False)
    t2 = time.perf_counter()
    assert not first.cache_hit and second.cache_hit
    assert first.metrics[schema.ACC_TRAINED] == second.metrics[schema.ACC_TRAINED]
    runs = tracking.search_runs("pipeline")
    assert runs.set_index("run_id").loc[second.run_id, f"tags.{schema.TAG_CACHE_HIT}"] == "true"
    assert (t2 - t1) < 0.8 * (t1 - t0), (t1 - t0, t2 - t1)


def test_finished_config_is_skipped_and_dense_is_the_reference(store):
    dense = execute(_cfg(store, method="dense"), latency=False)
    assert dense.metrics[schema.FLOPS_DROP] == 0.0
    assert dense.metrics[schema.ACC_FINETUNED] == dense.metrics[schema.ACC_TRAINED]
    again = execute(_cfg(store, method="dense"), latency=False)
    assert again.status == "SKIPPED" and again.run_id == dense.run_id


@pytest.mark.parametrize("method", ["lorita", "l1"])
def test_load_model_rebuilds_the_compressed_model(store, method):
    cfg = _cfg(store, method=method, target_metric="flops_drop", target=0.5)
    result = execute(cfg, latency=False)
    model = load_model(result.run_id)
    data = load_dataset("digits")
    assert evaluate(model, data.test_x, data.test_y, data) == result.metrics[schema.ACC_FINETUNED]
    x = torch.zeros(1, *data.in_shape)
    from lorita import count_flops_params

    assert count_flops_params(model, x)[0] == result.metrics[schema.FLOPS]


def test_unreachable_target_is_recorded_failed(store):
    with pytest.raises(ValueError, match="largest reachable drop"):
        execute(_cfg(store, method="svd", target_metric="flops_drop", target=0.99), latency=False)
    runs = tracking.search_runs("pipeline")
    failed = runs[runs["status"] == "FAILED"]
    assert len(failed) == 1
    assert "largest reachable drop" in failed.iloc[0][f"tags.{schema.TAG_ERROR}"]


@pytest.mark.parametrize(
    ("method", "options", "message"),
    [
        ("l1", {"lr": 0.1}, "method_options.lr would change the budget"),
        ("l1", {"sigma": 1}, "unknown key 'method_options.sigma' for l1; allowed: scope, steps, max_ratio"),
        ("l1", {"reg": 1e-4}, "unknown key 'method_options.reg' for l1"),
        ("l1", {"steps": 0}, "method_options.steps must be an integer >= 1"),
        ("svd", {"scope": "global"}, "unknown key 'method_options.scope' for svd; allowed: rank_policy, steps"),
    ],
)
def test_bad_method_options_are_refused_before_training(store, method, options, message):
    with pytest.raises(ValueError, match=message):
        execute(_cfg(store, method=method, target_metric="flops_drop", target=0.5, method_options=options))


def test_a_claimed_config_is_not_run_twice_and_a_dead_claim_expires(store):
    import subprocess
    import sys

    from benchmarks.run.pipeline import run_key

    cfg = _cfg(store, method="svd", target_metric="flops_drop", target=0.5, experiment="claims")
    from benchmarks.data import load_dataset
    from benchmarks.methods import resolve
    from benchmarks.run import claims

    fingerprint = load_dataset("digits").fingerprint
    lock = claims.folder(tracking.tracking_uri()) / f"{run_key(resolve(cfg), fingerprint)}.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    hold = (f"from filelock import FileLock; claim = FileLock({str(lock)!r}); claim.acquire(); "
            "print('held', flush=True); import sys; sys.stdin.read()")
    holder = subprocess.Popen([sys.executable, "-c", hold], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert execute(cfg, latency=False).status == schema.STATUS_HELD
        assert tracking.search_runs("claims").empty
    finally:
        holder.kill()  # a dead process's claim is released by the OS
        holder.wait(timeout=30)
    stale = tracking.start_run("claims", "killed-earlier", params={},
                               tags={schema.TAG_CONFIG_HASH: resolve(cfg).config_hash(),
                                     schema.TAG_DATA_FINGERPRINT: fingerprint})
    result = execute(cfg, latency=False)
    assert result.status == "FINISHED"
    runs = tracking.search_runs("claims").set_index("run_id")
    assert runs.loc[stale, "status"] == "KILLED" and runs.loc[result.run_id, "status"] == "FINISHED"
    assert (runs["status"] == "FINISHED").sum() == 1


def test_non_finite_loss_stops_at_once_naming_the_epoch():
    from torch import nn

    from benchmarks.run.pipeline import _phase
    from benchmarks.run.train import NonFiniteLoss, train

    data = load_dataset("digits")

    class Broken(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(64, 10)

        def forward(self, x):
            return self.fc(x.flatten(1)) * float("nan")

    cfg = make_config({"budget": {"epochs": 3}})
    with pytest.raises(NonFiniteLoss, match="loss is nan at epoch 1"):
        train(Broken(), data, _phase(cfg, data, finetune=False), seed=0)


def test_corrupt_cached_model_is_reported_and_retrained(store, capsys):
    from benchmarks.methods import resolve
    from benchmarks.run.pipeline import trained_key

    first = execute(_cfg(store, method="svd", target_metric="flops_drop", target=0.4, experiment="corrupt"),
                    latency=False)
    cfg = resolve(_cfg(store, method="svd", target_metric="flops_drop", target=0.5, experiment="corrupt"))
    from benchmarks.data import load_dataset

    state = store / "cache" / "trained" / trained_key(cfg, load_dataset("digits").fingerprint) / "model.pt"
    state.write_bytes(b"not a checkpoint")
    second = execute(cfg, latency=False)
    assert second.status == "FINISHED" and not second.cache_hit
    assert "unusable" in capsys.readouterr().out
    assert second.metrics[schema.ACC_TRAINED] == first.metrics[schema.ACC_TRAINED]
