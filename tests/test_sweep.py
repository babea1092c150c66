"""Sweeps: grid expansion and its checks, skipping finished runs, resuming after a kill, failures, parallel jobs."""

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest
from support import write_sweep

from benchmarks import tracking
from benchmarks.config import ConfigError
from benchmarks.data import DataError
from benchmarks.run.pipeline import training_group
from benchmarks.sweeps.driver import run_sweep
from benchmarks.sweeps.grid import expand, load_sweep, parse_sweep
from benchmarks.tracking import schema


def _finished_hashes(experiment):
    runs = tracking.search_runs(experiment, f"attributes.status = '{schema.STATUS_FINISHED}'")
    return list(runs[f"tags.{schema.TAG_CONFIG_HASH}"].dropna()) if len(runs) else []


def _hashes(path):
    return {cfg.config_hash() for cfg in expand(load_sweep(path))}


GRID = {"name": "grid", "models": ["fcn", {"name": "cnn", "channels": [8]}], "datasets": ["digits"],
        "methods": ["dense", "svd", "lorita", "l1"], "factors": [2, 3],
        "targets": {"flops_drop": [0.3, 0.5], "params_drop": [0.5]}, "seeds": [0, 1],
        "budget": {"epochs": 2, "weight_decay": ["1e-4", 1e-3]}}


def test_expansion_counts_and_order():
    runs = expand(parse_sweep(GRID))
    per_block = 1 + 3 + 2 * 3 + 3  # dense, svd x targets, lorita x factors x targets, l1 x targets
    assert len(runs) == 2 * 2 * 2 * per_block  # models x seeds x budgets
    methods = Counter(cfg.method for cfg in runs)
    assert methods["dense"] == 8 and methods["lorita"] == 48 and methods["svd"] == methods["l1"] == 24
    assert all(cfg.target is None for cfg in runs if cfg.method == "dense")
    assert {cfg.factors for cfg in runs if cfg.method == "lorita"} == {2, 3}
    assert {cfg.factors for cfg in runs if cfg.method != "lorita"} == {1}
    assert len({cfg.config_hash() for cfg in runs}) == len(runs)
    budgets = {cfg.budget.hash(): cfg.budget.weight_decay for cfg in runs}
    assert sorted(budgets.values()) == [1e-4, 1e-3]
    # Runs sharing a trained model are adjacent, the dense reference first among those of the dense model.
    keys = [training_group(cfg) for cfg in runs]
    starts = [i for i, key in enumerate(keys) if i == 0 or key != keys[i - 1]]
    assert len(starts) == len(set(keys))
    assert all(runs[i].method in ("dense", "lorita") for i in starts)


def test_repeated_axis_values_run_once():
    once = expand(parse_sweep({**GRID, "factors": [2]}))
    assert len(expand(parse_sweep({**GRID, "factors": [2, 2]}))) == len(once)


@pytest.mark.parametrize("change, message", [
    ({"nme": "x"}, "unknown key 'nme'; allowed: name, models"),
    ({"models": None}, "models must be a non-empty list"),
    ({"models": [{"layers": 2}]}, "models[0] must be a model name"),
    ({"datasets": [{"name": "digits", "root": "x"}]}, "allowed: name, data_root"),
    ({"targets": {"flop_drop": [0.5]}}, "unknown key 'targets.flop_drop'; allowed: flops_drop, params_drop"),
    ({"method_options": {"slim": {"reg": 1e-4}}}, "unknown method of this sweep 'method_options.slim'"),
    ({"budget": {"lr": -1}}, "budget.lr must be a number in (0, 100]"),
    ({"budget": {"epochs": []}}, "budget.epochs is an empty list"),
    ({"methods": ["nope"]}, "method must be one of"),
    ({"seeds": [-1]}, "seed must be an integer in [0, 2**63 - 1]"),
    ({"method_options": {"l1": {"scope": "local"}}}, "method_options.scope must be one of global, uniform"),
])
def test_bad_sweep_is_one_line_config_error(change, message):
    with pytest.raises(ConfigError) as info:
        expand(parse_sweep({**GRID, **change}))
    assert message in str(info.value) and "\n" not in str(info.value)


def test_missing_targets_and_name_are_named():
    with pytest.raises(ConfigError, match="missing key 'targets'"):
        parse_sweep({k: v for k, v in GRID.items() if k != "targets"})
    with pytest.raises(ConfigError, match="missing key 'name'"):
        parse_sweep({k: v for k, v in GRID.items() if k != "name"})


def test_bad_executor_jobs_or_dataset_fail_before_anything_runs(store):
    path = write_sweep(store, "early")
    with pytest.raises(ConfigError, match="executor must be one of local, ray; got 'slurm'"):
        run_sweep(path, executor="slurm")
    with pytest.raises(ConfigError, match="jobs must be an integer >= 1"):
        run_sweep(path, jobs=0)
    missing = write_sweep(store, "early", datasets=[{"name": "imagefolder:absent", "data_root": str(store)}])
    with pytest.raises(DataError, match="missing folder"):
        run_sweep(missing)
    assert tracking.search_runs("early").empty


@pytest.fixture(scope="module")
def sequential(store):
    """The tiny grid run once with one job: (path, exit code, its FINISHED config hashes)."""
    path = write_sweep(store, "tiny-seq")
    return path, run_sweep(path), _finished_hashes("tiny-seq")


def test_sweep_runs_the_grid_and_a_rerun_adds_nothing(sequential, capsys):
    path, code, finished = sequential
    assert code == 0 and sorted(finished) == sorted(_hashes(path))
    runs = tracking.search_runs("tiny-seq")
    parent = runs[runs[f"tags.{schema.TAG_METHOD}"].isna()]
    assert len(parent) == 1 and parent.iloc[0][f"tags.{schema.TAG_SWEEP}"] == "tiny-seq"
    children = runs[runs[f"tags.{schema.TAG_METHOD}"].notna()]
    # Linked to the parent by the suite's tag, not nested under it (the MLflow UI would hide them behind it).
    assert set(children[f"tags.{schema.TAG_SWEEP_RUN}"]) == {parent.iloc[0]["run_id"]}
    assert f"tags.{schema.TAG_PARENT_RUN_ID}" not in children
    assert set(children[f"tags.{schema.TAG_SWEEP}"]) == {"tiny-seq"}

    capsys.readouterr()
    assert run_sweep(path) == 0
    out = capsys.readouterr().out
    assert "4 already finished" in out and "0 finished, 4 skipped" in out
    again = tracking.search_runs("tiny-seq")
    assert len(again) == len(runs)  # no new run, and the parent of this grid was reused


def test_failed_run_is_recorded_and_the_sweep_goes_on(store, capsys):
    path = write_sweep(store, "failing", methods=["dense", "svd"], targets={"flops_drop": [0.5, 0.99]})
    assert run_sweep(path) == 1
    out = capsys.readouterr().out
    assert "2 finished, 0 skipped (already finished), 1 failed" in out
    assert "FAILED fcn-digits-svd-flops0.99-s0: UnreachableTarget: target=0.99 for flops_drop is unreachable" in out
    runs = tracking.search_runs("failing")
    status = Counter(runs["status"])
    assert status[schema.STATUS_FINISHED] == 2 and status[schema.STATUS_FAILED] == 2  # the run and the parent
    failed = runs[(runs["status"] == schema.STATUS_FAILED) & runs[f"tags.{schema.TAG_METHOD}"].notna()]
    assert failed.iloc[0][f"tags.{schema.TAG_SWEEP}"] == "failing"


@pytest.mark.ci  # a sweep killed and run again in real processes: 15-60 s on two cores
def test_killed_sweep_resumes_without_duplicates(store):
    path = write_sweep(store, "killed", methods=["dense", "svd", "l1", "group_norm", "random", "lorita"], seeds=[0, 1],
                  cache_dir=str(store / "cache-killed"))
    expected = _hashes(path)
    # The real command line, killed for real.
    proc = subprocess.Popen([sys.executable, "-m", "benchmarks.cli", "sweep", path], cwd=store,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    try:
        while len(_finished_hashes("killed")) < 3 and proc.poll() is None and time.monotonic() < deadline:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=0.2)  # the poll interval
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, "the sweep ended before it could be killed"
    done_before = _finished_hashes("killed")
    assert 3 <= len(done_before) < len(expected)

    assert run_sweep(path) == 0
    finished = Counter(_finished_hashes("killed"))
    assert set(finished) == expected and set(finished.values()) == {1}


@pytest.mark.ci  # two worker processes and the driver's latency stage: 15-40 s on two cores
def test_parallel_jobs_finish_the_same_runs_with_latency(store, sequential):
    _, _, serial = sequential
    path = write_sweep(store, "tiny-par", cache_dir=str(store / "cache-par"))
    assert run_sweep(path, jobs=2) == 0
    runs = tracking.search_runs("tiny-par", f"attributes.status = '{schema.STATUS_FINISHED}'")
    runs = runs[runs[f"tags.{schema.TAG_METHOD}"].notna()]
    assert sorted(runs[f"tags.{schema.TAG_CONFIG_HASH}"]) == sorted(serial)
    assert runs[f"metrics.{schema.LATENCY_MS_B1}"].notna().all()
    assert runs[f"metrics.{schema.LATENCY_MS_B128}"].notna().all()
    # The cores are split between the two workers.
    assert set(runs[f"tags.{schema.TAG_THREADS}"]) == {str(max(1, (os.cpu_count() or 1) // 2))}
