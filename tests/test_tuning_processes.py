"""Tuning with real processes: a SIGKILLed trial retried with its values, two tuning processes on one store, Ray."""

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from support import TINY, benchmark_runs, write_sweep

from benchmarks import tracking
from benchmarks.sweeps.driver import run_sweep
from benchmarks.sweeps.grid import load_sweep
from benchmarks.tracking import schema
from benchmarks.tuning import study as studies
from benchmarks.tuning.storage import open_storage, storage_url
from benchmarks.tuning.units import units

pytestmark = pytest.mark.ci  # real processes: 15-40 s each on two cores; .ci/run runs them

ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
SPACE = {"lr": {"low": 0.01, "high": 0.1, "log": True}, "weight_decay": {"low": 1e-5, "high": 1e-3, "log": True}}
# Two methods, two trials each; a trial trains long enough to be killed in its middle.
TUNED = {**{k: v for k, v in TINY.items() if k != "factors"}, "methods": ["dense", "svd"],
         "budget": {"epochs": 30, "finetune_epochs": 1, "batch_size": 16, "lr": 0.05},
         "tuning": {"trials": 2, "space": SPACE}}
START_S = 180


def _start(store: Path, name: str, args: list[str]) -> subprocess.Popen:
    with (store / f"{name}.out").open("a") as out, (store / f"{name}.err").open("a") as err:
        return subprocess.Popen([sys.executable, "-m", "benchmarks.cli", *args], cwd=store,
                                env={**os.environ, **ENV}, stdout=out, stderr=err)


def _trials(path: str) -> dict[str, list]:
    sweep = load_sweep(path)
    url = storage_url(sweep.tuning.storage)
    out = {}
    for unit in units(sweep):
        try:
            out[unit.name] = optuna.load_study(study_name=unit.study, storage=open_storage(url)).get_trials()
        except KeyError:  # not created yet
            out[unit.name] = []
    return out


def _trial_runs(experiment: str):
    runs = tracking.search_runs(experiment + schema.TUNING_SUFFIX)
    column = f"tags.{schema.TAG_TRIAL}"
    return runs[runs[column].notna()] if column in runs else runs.iloc[0:0]


def _one_epoch_logged(experiment: str) -> bool:
    runs = _trial_runs(experiment)
    column = f"metrics.{schema.TRAIN_LOSS}"
    return bool(len(runs)) and column in runs and runs[column].notna().any()


def test_a_trial_killed_mid_training_is_retried_with_its_values_and_the_study_ends_exact(store, capsys):
    path = write_sweep(store, "tkill", TUNED)
    proc = _start(store, "tkill", ["sweep", path])
    deadline = time.monotonic() + START_S
    try:
        while not _one_epoch_logged("tkill"):
            assert proc.poll() is None, (store / "tkill.err").read_text()
            assert time.monotonic() < deadline, "no trial epoch logged in time"
            time.sleep(0.1)
        time.sleep(0.3)  # past an epoch checkpoint
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        proc.kill()
    killed = {name: [t for t in ts if t.state == TrialState.RUNNING] for name, ts in _trials(path).items()}
    (name, [dead]), = [(n, ts) for n, ts in killed.items() if ts]
    assert run_sweep(path) == 0  # the same command, at once
    assert "resuming from epoch" in capsys.readouterr().out
    trials = _trials(path)
    assert {n: Counter(t.state for t in ts)[TrialState.COMPLETE] for n, ts in trials.items()} == {
        n: 2 for n in trials}
    assert not any(t.state == TrialState.RUNNING for ts in trials.values() for t in ts)
    retry = [t for t in trials[name] if t.user_attrs.get(studies.RETRY_OF) == dead.number]
    assert len(retry) == 1 and retry[0].state == TrialState.COMPLETE and retry[0].params == dead.params
    assert next(t for t in trials[name] if t.number == dead.number).state == TrialState.FAIL
    runs = _trial_runs("tkill")
    assert set(runs["status"]) == {schema.STATUS_FINISHED, schema.STATUS_KILLED}
    assert (runs["status"] == schema.STATUS_KILLED).sum() == 1
    assert len(benchmark_runs("tkill")) == 2


def test_two_tuning_processes_on_one_store_run_each_trial_once(store):
    path = write_sweep(store, "ttwo", {**TUNED, "budget": {**TUNED["budget"], "epochs": 6}},
                       tuning={"trials": 3, "space": SPACE})
    procs = [_start(store, f"ttwo{i}", ["sweep", path, "--wait"]) for i in range(2)]
    try:
        codes = [p.wait(timeout=400) for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert codes == [0, 0], [(store / f"ttwo{i}.err").read_text()[-2000:] for i in range(2)]
    trials = _trials(path)
    assert {n: [t.state for t in ts] for n, ts in trials.items()} == {n: [TrialState.COMPLETE] * 3 for n in trials}
    runs = _trial_runs("ttwo")
    pairs = Counter(zip(runs[f"tags.{schema.TAG_STUDY}"], runs[f"tags.{schema.TAG_TRIAL}"], strict=True))
    assert len(pairs) == 6 and set(pairs.values()) == {1}  # no trial number executed by two processes
    assert len(set(runs[f"tags.{schema.TAG_RUNNER}"])) == 2  # both processes ran trials
    grid = benchmark_runs("ttwo")
    finished = grid[grid["status"] == schema.STATUS_FINISHED]
    assert finished[f"tags.{schema.TAG_CONFIG_HASH}"].value_counts().tolist() == [1, 1]


def test_ray_tunes_too(store):
    pytest.importorskip("ray")
    path = write_sweep(store, "tray", {**TUNED, "budget": {**TUNED["budget"], "epochs": 2}})
    assert run_sweep(path, executor="ray", local_cpus=2) == 0
    trials = _trials(path)
    assert {n: [t.state for t in ts] for n, ts in trials.items()} == {n: [TrialState.COMPLETE] * 2 for n in trials}
    assert len(_trial_runs("tray")) == 4 and len(benchmark_runs("tray")) == 2
