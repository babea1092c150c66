"""The CLI against a tracking store: results and compare, a rerun that shows the stored numbers, typos found before
anything is recorded (runs and sweeps), and `runs delete --failed`.

CI only (`-m ci`): the module's store takes seconds to create on a busy machine, more than the default suite has left.
"""

import re

import numpy as np
import pytest
import torch
import yaml

from benchmarks import tracking
from benchmarks.cli import main
from benchmarks.config import config_to_dict, make_config
from benchmarks.data import load_dataset
from benchmarks.methods import get_method
from benchmarks.run.pipeline import finetune_dir, run_tags
from benchmarks.sweeps.driver import grid_results
from benchmarks.tracking import schema

pytestmark = pytest.mark.ci

TINY = ["--model", "fcn", "--set", "model_kwargs={layers: 2, width: 16}", "--dataset", "digits", "--epochs", "2",
        "--finetune-epochs", "1", "--set", "budget.batch_size=128", "--set", "budget.lr=0.05", "--device", "cpu",
        "--no-latency"]


def test_results_compare_and_a_rerun_read_the_store(store, capsys):
    common = [*TINY, "--experiment", "terminal", "--cache-dir", str(store / "cache-terminal")]
    assert main(["run", "--method", "dense", *common]) == 0
    for seed in ("0", "1"):
        assert main(["run", "--method", "lorita", "--factors", "2", "--target-flops-drop", "0.5", "--seed", seed,
                     *common]) == 0
    out = capsys.readouterr().out
    assert "compressing to flops_drop 0.5" in out  # the status line before compression
    runs = tracking.search_runs("terminal")
    lorita = runs[runs[f"tags.{schema.TAG_METHOD}"] == "lorita"]
    assert main(["results", "--experiment", "terminal"]) == 0
    table = capsys.readouterr().out
    row = next(line for line in table.splitlines() if line.startswith("fcn") and "LoRITa (N=2)" in line)
    acc = lorita[f"metrics.{schema.ACC_FINETUNED}"].to_numpy(dtype=np.float64)
    assert f"{acc.mean():.4f} +- {acc.std(ddof=1):.4f}" in row and " 2 " in row
    drop = lorita[f"metrics.{schema.FLOPS_DROP}"].to_numpy(dtype=np.float64)
    assert f"{drop.mean():.1%}" in row and "flops 0.50" in row
    lines = table.splitlines()
    assert lines.index(next(line for line in lines if "Dense" in line)) < lines.index(row)  # the reference first
    first, second = lorita["run_id"]
    assert main(["compare", first, second]) == 0
    compared = capsys.readouterr().out
    assert re.search(r"^  seed\s+[01]\s+[01]$", compared, re.M)  # the one config key in which they differ
    values = [f"{v:.4f}" for v in lorita[f"metrics.{schema.ACC_FINETUNED}"]]
    assert re.search(rf"^acc_finetuned\s+{values[0]}\s+{values[1]}$", compared, re.M)
    # The table that ends a sweep holds the grid's runs only.
    identities = {row[f"tags.{schema.TAG_CONFIG_HASH}"]: (row[f"tags.{schema.TAG_CONFIG_HASH}"],
                                                          row[f"tags.{schema.TAG_DATA_FINGERPRINT}"])
                  for row in lorita.to_dict("records")}
    grid = grid_results("terminal", identities)
    assert row in grid and "Dense" not in grid
    # Run again: nothing trains, and the stored run's numbers are printed, not "trained now".
    assert main(["run", "--method", "lorita", "--factors", "2", "--target-flops-drop", "0.5", "--seed", "1",
                 *common]) == 0
    rerun = capsys.readouterr().out
    stored = lorita.set_index("params.seed").loc["1"]
    assert "SKIPPED" in rerun and "trained now" not in rerun and stored["run_id"] in rerun
    assert re.search(rf"^  acc_finetuned +{stored[f'metrics.{schema.ACC_FINETUNED}']:.4f}$", rerun, re.M)
    assert main(["results", "--experiment", "termnial"]) == 2
    assert "did you mean 'terminal'?" in capsys.readouterr().err
    assert main(["compare", "0123456789abcdef0123456789abcdef"]) == 2


@pytest.mark.parametrize("flags, said", [
    (["--model", "fcn", "--set", "model_kwargs.widht=3"], "fcn: unknown option 'widht' (did you mean 'width'?)"),
    (["--model", "fcnn"], "unknown model 'fcnn' (did you mean 'fcn'?)"),
    (["--model", "tv:resnet81"], "unknown torchvision model 'resnet81' (did you mean 'resnet18'?)"),
    (["--model", "fcn", "--set", "dataset_kwargs.size=8"], "dataset_kwargs.size: dataset 'digits' takes none"),
])
def test_typos_fail_in_one_line_before_a_run_is_recorded(store, capsys, flags, said):
    code = main(["run", "--method", "dense", "--experiment", "typos", "--device", "cpu", "--no-latency",
                 "--cache-dir", str(store / "cache-typos"), *flags])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and said in err
    assert tracking.search_runs("typos").empty


def _recorded(experiment, status, cfg, tags=None):
    """A run of `cfg` in the store that ended with `status` (as the pipeline records one)."""
    data = load_dataset(cfg.dataset)
    run_id = tracking.start_run(experiment, f"{cfg.method}-{status}", params=config_to_dict(cfg),
                                tags={**run_tags(cfg, torch.device("cpu"), data.fingerprint),
                                      **(tags or {})})
    tracking.log_text(run_id, schema.ARTIFACT_CONFIG, yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
    tracking.end_run(run_id, status, error=None if status == schema.STATUS_FINISHED else f"{status.lower()} here")
    return run_id, data.fingerprint


def test_runs_delete_removes_failed_and_killed_runs_only(store, capsys):
    base = {"experiment": "cleanup", "model": "fcn", "dataset": "digits", "device": "cpu",
            "cache_dir": str(store / "cache-cleanup")}

    def cfg(seed, **kw):
        return get_method("dense").resolve(make_config({**base, "method": "dense", "seed": seed, **kw}))

    failed, fingerprint = _recorded("cleanup", schema.STATUS_FAILED, cfg(0))
    killed, _ = _recorded("cleanup", schema.STATUS_KILLED, cfg(1))
    finished, _ = _recorded("cleanup", schema.STATUS_FINISHED, cfg(2))
    na, _ = _recorded("cleanup", schema.STATUS_FAILED, cfg(3), {schema.TAG_NOT_APPLICABLE: "no channels"})
    parent = tracking.start_run("cleanup", "sweep-cleanup", params={}, tags={schema.TAG_SWEEP: "cleanup"})
    tracking.end_run(parent, schema.STATUS_KILLED)
    checkpoint = finetune_dir(cfg(1), fingerprint) / "finetune-1.pt"
    checkpoint.parent.mkdir(parents=True)
    checkpoint.write_bytes(b"kept for the resume")

    assert main(["runs", "delete", "--experiment", "cleanup"]) == 2  # no selection: nothing happens
    assert main(["runs", "delete", "--failed", "--experiment", "cleanup", "--dry-run"]) == 0
    listed = capsys.readouterr().out
    assert "would delete 2 runs" in listed and failed in listed and killed in listed
    assert finished not in listed and na not in listed and parent not in listed
    assert set(tracking.search_runs("cleanup")["run_id"]) == {failed, killed, finished, na, parent}

    assert main(["runs", "delete", "--failed", "--experiment", "cleanup"]) == 0
    assert "deleted 2 runs" in capsys.readouterr().out
    assert set(tracking.search_runs("cleanup")["run_id"]) == {finished, na, parent}
    assert checkpoint.exists()  # checkpoints stay unless --purge
    again, _ = _recorded("cleanup", schema.STATUS_KILLED, cfg(1))
    assert main(["runs", "delete", "--failed", "--experiment", "cleanup", "--purge"]) == 0
    assert f"removed {checkpoint.parent}" in capsys.readouterr().out and not checkpoint.exists()
    assert again not in set(tracking.search_runs("cleanup")["run_id"])
    # MLflow's soft delete: the run is still there, marked deleted.
    assert tracking.client().get_run(failed).info.lifecycle_stage == "deleted"
    assert main(["runs", "delete", "--failed", "--experiment", "cleanup"]) == 0
    assert "no failed or killed runs" in capsys.readouterr().out


def test_a_sweep_with_a_model_typo_records_nothing(store, capsys):
    path = store / "typo-sweep.yaml"
    path.write_text(yaml.safe_dump({"name": "typo-sweep", "models": [{"name": "fcn", "widht": 8}],
                                    "datasets": ["digits"], "methods": ["dense", "lorita"],
                                    "targets": {"flops_drop": [0.5]}, "cache_dir": str(store / "cache-typo"),
                                    "device": "cpu"}))
    assert main(["sweep", str(path)]) == 2
    assert "fcn: unknown option 'widht' (did you mean 'width'?)" in capsys.readouterr().err
    assert "typo-sweep" not in tracking.experiment_names()  # not even the sweep's parent run

