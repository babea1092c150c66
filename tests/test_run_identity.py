"""A run's identity: its data's content, one claim per store, runs another process holds, latency measured once,
and no code run from a store. Each finding is provoked for real (real folders, processes, locks and stores)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from support import benchmark_runs, write_sweep

from benchmarks import tracking
from benchmarks.config import make_config
from benchmarks.data import load_dataset
from benchmarks.latency import time_interleaved
from benchmarks.latency.timing import LOADED_SHARE
from benchmarks.methods import resolve
from benchmarks.run import claims
from benchmarks.run.pipeline import execute, load_model, run_key
from benchmarks.sweeps.driver import EXIT_INCOMPLETE, run_sweep
from benchmarks.tracking import schema

ROOT = Path(__file__).resolve().parent.parent


def _images(root: Path, labels_swapped: bool) -> None:
    """Two classes of 8x8 images told apart by brightness; `labels_swapped` puts each class's images in the other's
    folder. File names and sizes are the same either way (PNG of a constant image)."""
    for split, count in (("train", 24), ("test", 8)):
        for index, name in enumerate(("dark", "light")):
            value = (200 if index == 0 else 30) if labels_swapped else (30 if index == 0 else 200)
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                Image.fromarray(np.full((8, 8), value + i % 3, dtype=np.uint8), "L").save(folder / f"{i}.png")


def _cfg(store: Path, experiment: str, **changes) -> dict:
    return {"experiment": experiment, "model": "fcn", "model_kwargs": {"layers": 2, "width": 16},
            "dataset": "imagefolder:imgs", "cache_dir": str(store / "cache"), "device": "cpu", "method": "dense",
            "budget": {"epochs": 3, "finetune_epochs": 1, "batch_size": 8, "lr": 0.05}, **changes}


def test_the_same_config_on_other_data_is_another_run(store, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    _images(a / "imgs", labels_swapped=False)
    _images(b / "imgs", labels_swapped=True)
    first = execute(make_config(_cfg(store, "two-roots", data_root=str(a))), latency=False)
    second = execute(make_config(_cfg(store, "two-roots", data_root=str(b))), latency=False)
    assert first.status == second.status == schema.STATUS_FINISHED  # not "already finished: skipped"
    assert not second.cache_hit  # its model is trained on its own data
    svd = {"method": "svd", "target_metric": "flops_drop", "target": 0.5}
    on_b = execute(make_config(_cfg(store, "two-roots", data_root=str(b), **svd)), latency=False)
    assert on_b.cache_hit and on_b.metrics[schema.ACC_TRAINED] == second.metrics[schema.ACC_TRAINED]
    runs = benchmark_runs("two-roots").set_index("run_id")
    prints = runs[f"tags.{schema.TAG_DATA_FINGERPRINT}"]
    assert prints[first.run_id] != prints[second.run_id] == prints[on_b.run_id]
    # Swapping the class folders in place is other data again: a new run, a new trained model.
    (b / "imgs" / "train" / "dark").rename(b / "imgs" / "train" / "tmp")
    (b / "imgs" / "train" / "light").rename(b / "imgs" / "train" / "dark")
    (b / "imgs" / "train" / "tmp").rename(b / "imgs" / "train" / "light")
    third = execute(make_config(_cfg(store, "two-roots", data_root=str(b))), latency=False)
    assert third.status == schema.STATUS_FINISHED and not third.cache_hit
    assert execute(make_config(_cfg(store, "two-roots", data_root=str(b))), latency=False).status == \
        schema.STATUS_SKIPPED


def test_an_empty_data_root_is_an_error_not_a_skip(store, tmp_path, capsys):
    from benchmarks.cli import main

    (tmp_path / "empty").mkdir()
    args = ["run", "--model", "fcn", "--dataset", "mnist", "--method", "dense", "--data-root", str(tmp_path / "empty"),
            "--experiment", "empty-root", "--cache-dir", str(store / "cache")]
    assert main(args) == 2
    assert "lorita-bench: error:" in capsys.readouterr().err
    assert benchmark_runs("empty-root").empty


def _slow_run(store: Path, cwd: Path, experiment: str) -> subprocess.Popen:
    """A real `lorita-bench run` that trains for a long time, from its own working folder and cache."""
    cwd.mkdir(exist_ok=True)
    command = [sys.executable, "-m", "benchmarks.cli", "run", "--model", "fcn", "--dataset", "digits",
               "--method", "dense", "--epochs", "2000", "--device", "cpu", "--no-latency", "--experiment", experiment,
               "--set", "model_kwargs={layers: 2, width: 16}"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TQDM_DISABLE": "1"}
    return subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def _wait_running(experiment: str, deadline_s: float = 60) -> str:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        runs = benchmark_runs(experiment)
        if len(runs) and (runs["status"] == schema.STATUS_RUNNING).any():
            return runs[runs["status"] == schema.STATUS_RUNNING].iloc[0]["run_id"]
        time.sleep(0.2)
    raise AssertionError(f"no RUNNING run of {experiment} within {deadline_s} s")


def test_one_store_never_runs_a_config_twice_whatever_the_cache_folder(store, tmp_path):
    experiment = "one-store"
    holder = _slow_run(store, tmp_path / "first", experiment)
    try:
        running = _wait_running(experiment)
        cfg = make_config({"experiment": experiment, "model": "fcn", "model_kwargs": {"layers": 2, "width": 16},
                           "dataset": "digits", "method": "dense", "device": "cpu", "budget": {"epochs": 2000},
                           "cache_dir": str(tmp_path / "second" / ".cache")})
        held = execute(cfg, latency=False)
        assert held.status == schema.STATUS_HELD
        # Deleting the claims folder does not free the config: the running run's runner tag says it lives.
        shutil.rmtree(claims.folder(tracking.tracking_uri()))
        again = execute(cfg, latency=False)
        assert again.status == schema.STATUS_HELD and again.run_id == running
        runs = benchmark_runs(experiment)
        assert list(runs["status"]) == [schema.STATUS_RUNNING]
        assert f"tags.{schema.TAG_ERROR}" not in runs or runs[f"tags.{schema.TAG_ERROR}"].isna().all()
    finally:
        os.killpg(holder.pid, signal.SIGKILL)
        holder.wait(timeout=30)


def test_a_sweep_counts_runs_another_process_holds_and_does_not_finish_its_grid(store, capsys):
    path = write_sweep(store, "held", methods=["dense", "svd"])
    from benchmarks.sweeps.grid import expand, load_sweep

    dense = next(cfg for cfg in expand(load_sweep(path)) if cfg.method == "dense")
    fingerprint = load_dataset("digits").fingerprint
    # Another process holds the dense run's claim (a child process, so the OS lock is really someone else's).
    lock = claims.folder(tracking.tracking_uri()) / f"{run_key(dense, fingerprint)}.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, sys, time; f = open(sys.argv[1], 'a'); "
                               "fcntl.flock(f, fcntl.LOCK_EX); print('held', flush=True); time.sleep(120)",
                               str(lock)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert run_sweep(path) == EXIT_INCOMPLETE
        out = capsys.readouterr().out
        assert "1 held by another process" in out and "HELD fcn-digits-dense-s0" in out
        parent = tracking.search_runs("held")
        parent = parent[parent[f"tags.{schema.TAG_METHOD}"].isna()] if f"tags.{schema.TAG_METHOD}" in parent else parent
        assert list(parent["status"]) == [schema.STATUS_KILLED]
    finally:
        holder.kill()
        holder.wait()
    assert run_sweep(path) == 0  # the holder is gone: the dense run runs now, the grid finishes
    assert "1 finished" in capsys.readouterr().out


def test_latency_is_measured_once_and_a_busy_machine_is_flagged(store, capsys):
    from benchmarks.sweeps import driver
    from benchmarks.sweeps.grid import expand, load_sweep

    path = write_sweep(store, "latency-once", methods=["svd"])
    runs = expand(load_sweep(path))
    result = execute(runs[0], latency=False)
    identities = driver._identities(runs)
    driver._measure_missing_latency("latency-once", runs, identities)
    first = tracking.client().get_run(result.run_id).data.metrics[schema.LATENCY_MS_B1]
    driver._measure_missing_latency("latency-once", runs, identities)  # as a second sweep on the store would
    history = tracking.metric_history(result.run_id, schema.LATENCY_MS_B1)
    assert [value for _, value in history] == [first]
    tags = tracking.client().get_run(result.run_id).data.tags
    assert schema.TAG_LATENCY_UNDER_LOAD in tags
    # Two busy processes on this machine's cores: the measurement is flagged.
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(os.cpu_count() or 1)]
    try:
        time.sleep(0.5)  # let them reach full speed; the flag reads the CPU's use over its own window
        x = torch.randn(128, 128)
        window = time_interleaved([lambda: x @ x], rounds=20, min_sample_s=0.01)
        assert window.under_load and window.others_busy > LOADED_SHARE
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()


HUBCONF = """
import pathlib
pathlib.Path({marker!r}).write_text("code from the store ran")


def load(*args, **kwargs):
    raise SystemExit("never")
"""


@pytest.mark.parametrize("trick", ["hub", "artifact-factory"])
def test_a_stored_model_name_never_runs_code(store, tmp_path, trick):
    result = execute(make_config({"experiment": f"code-{trick}", "model": "fcn",
                                  "model_kwargs": {"layers": 2, "width": 16}, "dataset": "digits",
                                  "method": "dense", "device": "cpu", "cache_dir": str(store / "cache"),
                                  "budget": {"epochs": 1}}), latency=False)
    marker = tmp_path / "marker"
    run_dir = Path(tracking.client().get_run(result.run_id).info.artifact_uri.removeprefix("file://"))
    (run_dir / "hubconf.py").write_text(HUBCONF.format(marker=str(marker)))
    (run_dir / "evil_factory.py").write_text(HUBCONF.format(marker=str(marker)))
    config = yaml.safe_load((run_dir / schema.ARTIFACT_CONFIG).read_text())
    config["model"] = "torch.hub:load" if trick == "hub" else "evil_factory:load"
    config["model_kwargs"] = {"repo_or_dir": str(run_dir), "model": "load", "source": "local"} if trick == "hub" \
        else {}
    (run_dir / schema.ARTIFACT_CONFIG).write_text(yaml.safe_dump(config))
    sys.path.insert(0, str(run_dir))
    try:
        with pytest.raises(ValueError, match=r"loading it would import and run module .*trust_code=True"):
            load_model(result.run_id)
    finally:
        sys.path.remove(str(run_dir))
    assert not marker.exists()
    # The run's own config, as a sweep has it, rebuilds the model without reading the store's config.
    cfg = resolve(make_config({"model": "fcn", "model_kwargs": {"layers": 2, "width": 16}, "method": "dense"}))
    model = load_model(result.run_id, cfg)
    assert model(torch.zeros(1, 1, 8, 8)).shape == (1, 10)
    assert not marker.exists()

