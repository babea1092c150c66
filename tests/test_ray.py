"""`sweep --executor ray`: a tiny grid through a real local Ray instance and a real `ray start` cluster."""

import contextlib
import io
import os
import re
import socket
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from support import TINY, benchmark_runs, write_sweep

from benchmarks import cli, tracking
from benchmarks.config import ConfigError
from benchmarks.sweeps.cluster import _env as worker_env
from benchmarks.sweeps.driver import run_sweep
from benchmarks.sweeps.grid import expand, load_sweep
from benchmarks.tracking import outbox, schema

# The tiny sweep (a run takes about a second), plus a model whose training raises, except in the one worker that
# first creates the file RAYTEST_CRASH_ONCE names: that worker's process dies.
RAY_TINY = {**TINY, "models": [*TINY["models"], "raytest_models:broken"]}
BROKEN = '''
import os

from torch import nn


class Broken(nn.Module):
    # Built, counted and dry-run pruned like any model (those see a batch of one or two): the sweep's checks before
    # its runs pass, and it fails where a run records it, in training: once by killing its worker, then by raising.
    def __init__(self, num_classes, in_shape):
        super().__init__()
        self.layers = nn.Sequential(nn.Flatten(), nn.Linear(in_shape[0] * in_shape[1] * in_shape[2], 16), nn.ReLU(),
                                    nn.Linear(16, num_classes))

    def forward(self, x):
        if self.training and x.shape[0] > 2:
            try:
                os.close(os.open(os.environ["RAYTEST_CRASH_ONCE"], os.O_CREAT | os.O_EXCL))
            except (KeyError, FileExistsError):
                raise RuntimeError("broken model") from None
            os._exit(3)
        return self.layers(x)


def broken(num_classes, in_shape, **kwargs):
    return Broken(num_classes, in_shape)
'''


# Without it, a terminated `ray start --block` drains its node for 30 s before stopping.
STOP_AT_ONCE = {"RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0"}


@pytest.fixture(scope="module")
def ray_env(store):
    """Ray without token files, usage stats or a RAY_ADDRESS from outside; the broken model importable."""
    (store / "modules").mkdir()
    (store / "modules" / "raytest_models.py").write_text(BROKEN)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RAY_AUTH_MODE", "disabled")
        patch.setenv("RAY_USAGE_STATS_ENABLED", "0")
        patch.delenv("RAY_ADDRESS", raising=False)
        # A local instance's workers inherit the driver's environment; the cluster below is given its own.
        paths = [str(store / "modules"), os.environ.get("PYTHONPATH")]
        patch.setenv("PYTHONPATH", os.pathsep.join(p for p in paths if p))
        patch.syspath_prepend(str(store / "modules"))  # the driver builds every model once before the sweep
        yield store


def _write(store, name, **changes):
    return write_sweep(store, name, RAY_TINY, **changes)


def _hashes(path, model):
    return {cfg.config_hash() for cfg in expand(load_sweep(path)) if cfg.model == model}


def test_without_ray_the_executor_is_a_one_line_error(store, monkeypatch):
    path = _write(store, "no-ray")
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now raises ImportError
    with pytest.raises(ConfigError) as info:
        run_sweep(path, executor="ray")
    assert str(info.value) == "sweep: executor ray needs the ray extra: pip install -e '.[ray]'"
    assert tracking.search_runs("no-ray").empty


@pytest.mark.parametrize("options, message", [
    ({"address": "head:6379"}, "address applies to executor ray only; got executor 'local'"),
    ({"executor": "ray", "jobs": 2}, "jobs applies to executor local only"),
    ({"executor": "ray", "cpus_per_run": 0}, "cpus_per_run must be an integer >= 1; got 0"),
    ({"executor": "ray", "gpus_per_run": -1}, "gpus_per_run must be a number >= 0 (a fraction shares a GPU)"),
    ({"executor": "ray", "local_cpus": 1.5}, "local_cpus must be an integer >= 1; got 1.5"),
    ({"executor": "ray", "address": " "}, "address must be a Ray cluster address"),
    ({"executor": "ray", "address": "head:6379", "local_cpus": 2}, "local_cpus sizes the local Ray instance"),
    ({"executor": "slurm"}, "executor must be one of local, ray; got 'slurm'"),
])
def test_bad_ray_options_fail_before_anything_runs(store, options, message):
    with pytest.raises(ConfigError) as info:
        run_sweep(_write(store, "bad-options"), **options)
    assert message in str(info.value) and "\n" not in str(info.value)
    assert tracking.search_runs("bad-options").empty


def test_unreachable_cluster_fails_fast_in_one_line(store):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed once the block ends: nothing listens there
    with pytest.raises(ConnectionError) as info:
        run_sweep(_write(store, "unreachable"), executor="ray", address=f"127.0.0.1:{port}")
    assert f"sweep: Ray cluster 127.0.0.1:{port} unreachable: Connection refused" == str(info.value)
    assert tracking.search_runs("unreachable").empty


def test_cli_passes_the_ray_flags(monkeypatch):
    seen = {}
    monkeypatch.setattr("benchmarks.sweeps.driver.run_sweep", lambda path, **kw: seen.update(kw, path=path) or 0)
    assert cli.main(["sweep", "grid.yaml", "--executor", "ray", "--address", "head:6379", "--cpus-per-run", "2",
                     "--gpus-per-run", "0.5"]) == 0
    assert seen == {"path": "grid.yaml", "jobs": 1, "executor": "ray", "address": "head:6379", "local_cpus": None,
                    "cpus_per_run": 2, "gpus_per_run": 0.5, "wait": False}
    with pytest.raises(SystemExit):
        cli.main(["sweep", "grid.yaml", "--executor", "slurm"])
    monkeypatch.setattr("benchmarks.sweeps.reproduce.reproduce", lambda **kw: seen.update(kw) or 0)
    assert cli.main(["reproduce", "--preset", "short", "--executor", "ray", "--address", "head:6379"]) == 0
    assert seen["executor"] == "ray" and seen["address"] == "head:6379" and seen["jobs"] == 1


@pytest.fixture(scope="module")
def local_instance(ray_env):
    """The grid run once on a Ray instance the executor starts (2 CPUs) and stops; one worker of the broken
    model dies: (path, exit code, output)."""
    import ray

    path = _write(ray_env, "ray")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RAYTEST_CRASH_ONCE", str(ray_env / "crashed"))
        with contextlib.redirect_stdout(io.StringIO()) as out:
            code = run_sweep(path, executor="ray", local_cpus=2)
    assert not ray.is_initialized()  # the instance it started is stopped
    return path, code, out.getvalue()


@pytest.mark.ci  # a real Ray instance: ~25 s to start on two cores
def test_local_instance_runs_the_grid_and_lists_dead_workers(local_instance):
    path, code, out = local_instance
    assert code == 1
    assert "8 runs, 0 already finished, 8 to run as Ray tasks on a local Ray instance" in out
    assert "ray: a local Ray instance with 2 CPUs and 0 GPUs; each task asks for 1 CPU(s) and 0 GPU(s)" in out
    assert "sweep ray: 4 finished, 0 skipped (already finished), 4 failed" in out
    failures = [line for line in out.splitlines() if line.startswith("  FAILED ")]
    assert len(failures) == 4 and all(line.startswith("  FAILED raytest_models:broken-digits-") for line in failures)
    errors = Counter(line.split(": ", 1)[1].split(":")[0] for line in failures)
    assert errors == {"WorkerCrashedError": 1, "RuntimeError": 3}

    runs = benchmark_runs("ray")
    done = runs[runs["status"] == schema.STATUS_FINISHED]
    assert Counter(done[f"tags.{schema.TAG_CONFIG_HASH}"]) == dict.fromkeys(_hashes(path, "fcn"), 1)
    assert done[f"metrics.{schema.LATENCY_MS_B1}"].notna().all()  # measured by the driver afterwards
    assert set(done[f"tags.{schema.TAG_THREADS}"]) == {"1"}  # a run's threads are its CPUs
    every = tracking.search_runs("ray")
    parents = every[every[f"tags.{schema.TAG_METHOD}"].isna()]
    assert len(parents) == 1 and set(runs[f"tags.{schema.TAG_SWEEP_RUN}"]) == set(parents["run_id"])
    # The dead worker could not end its run: it stays RUNNING until the next sweep of its config.
    broken = runs[runs[f"tags.{schema.TAG_MODEL}"] == "raytest_models:broken"]
    assert Counter(broken["status"]) == {schema.STATUS_RUNNING: 1, schema.STATUS_FAILED: 3}


@pytest.fixture(scope="module")
def cluster(ray_env):
    """A real cluster (`ray start --head`, 2 CPUs) in another working directory, without our tracking URI."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**{key: value for key, value in os.environ.items() if key != "MLFLOW_TRACKING_URI"},
           **STOP_AT_ONCE}
    elsewhere = ray_env / "elsewhere"
    elsewhere.mkdir()
    head = subprocess.Popen([str(Path(sys.executable).parent / "ray"), "start", "--head", "--block",
                             f"--port={port}", "--num-cpus=2", "--include-dashboard=false", "--disable-usage-stats"],
                            cwd=elsewhere, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lines = []
        for line in head.stdout:  # --block: its last words before blocking (the address comes before)
            lines.append(line)
            if "will now block" in line:
                break
        assert head.poll() is None, "".join(lines)
        address = next(m.group(1) for line in lines if (m := re.search(r"--address='([^']+)'", line)))
        yield head, address
    finally:
        head.terminate()  # `ray start --block` stops the head's processes when it is terminated
        head.wait(timeout=60)


@pytest.mark.ci  # a real Ray instance: ~25 s to start on two cores
def test_joined_cluster_skips_finished_closes_dead_runs_and_records_failures(local_instance, cluster, capsys):
    path, _, _ = local_instance
    head, address = cluster
    grid = _write(Path(path).parent, "ray", factors=[2, 3])
    assert run_sweep(grid, executor="ray", address=address) == 1
    out = capsys.readouterr().out
    assert f"ray: the Ray cluster at {address} with 2 CPUs" in out
    assert "sweep ray: 1 finished, 4 skipped (already finished), 5 failed" in out
    failures = [line for line in out.splitlines() if line.startswith("  FAILED ")]
    assert len(failures) == 5 and all("raytest_models:broken" in f and "RuntimeError: broken model" in f
                                      for f in failures)
    assert head.poll() is None  # the driver left the cluster running

    runs = benchmark_runs("ray")
    done = runs[runs["status"] == schema.STATUS_FINISHED]
    assert Counter(done[f"tags.{schema.TAG_CONFIG_HASH}"]) == dict.fromkeys(_hashes(grid, "fcn"), 1)
    broken = runs[runs[f"tags.{schema.TAG_MODEL}"] == "raytest_models:broken"]
    # The run the dead worker left RUNNING was closed KILLED by its rerun; every rerun failed in its worker.
    assert Counter(broken["status"]) == {schema.STATUS_KILLED: 1, schema.STATUS_FAILED: 8}
    killed = broken[broken["status"] == schema.STATUS_KILLED]
    assert set(killed[f"tags.{schema.TAG_ERROR}"]) == {"its process died; replaced by a new run"}

    # Nothing left to run: the driver skips every run without joining the cluster.
    fcn_only = _write(Path(path).parent, "ray", models=TINY["models"][:1], factors=[2, 3])
    assert run_sweep(fcn_only, executor="ray", address=address) == 0
    out = capsys.readouterr().out
    assert "sweep ray: 0 finished, 5 skipped (already finished), 0 failed" in out and "ray: the Ray" not in out


def test_workers_are_given_absolute_store_and_outbox_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///relative.db")
    monkeypatch.delenv(outbox.OUTBOX_ENV, raising=False)
    env = worker_env(2)
    assert env["MLFLOW_TRACKING_URI"] == f"sqlite:///{tmp_path / 'relative.db'}"
    assert env[outbox.OUTBOX_ENV] == str(tmp_path / ".cache" / "lorita-bench" / "outbox")
    assert env["OMP_NUM_THREADS"] == "2"
