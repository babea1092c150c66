"""Faults provoked for real: Ctrl-C and SIGKILL of the real command, a stopped MLflow server, corrupt and
foreign files, a full or read-only disk. Each run resumes or fails cleanly, and nothing measured is lost."""

import contextlib
import errno
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path

import pytest
import torch
import yaml
from support import benchmark_runs, free_port

import lorita
from benchmarks import checkpoints, tracking
from benchmarks.checkpoints import UnusableFile
from benchmarks.cli import main
from benchmarks.config import make_config
from benchmarks.data import load_dataset
from benchmarks.methods import resolve
from benchmarks.models import create_model
from benchmarks.run import interrupts
from benchmarks.run.pipeline import execute, load_model, trained_key
from benchmarks.run.train import Phase, train
from benchmarks.sweeps import worker
from benchmarks.sweeps.driver import run_sweep
from benchmarks.sweeps.grid import expand, load_sweep
from benchmarks.tracking import outbox, schema

# Plateau with patience 0 moves the learning rate almost every epoch, so a resume that lost the scheduler's
# state would show; crop+flip draws random numbers per batch, so one that lost the data order would too.
PHASE = Phase(epochs=3, lr=0.05, schedule="plateau", optimizer="sgd", momentum=0.9, weight_decay=1e-3,
              label_smoothing=0.1, batch_size=64, augment=True, plateau_patience=0)

# The fingerprint of the embedded digits data, part of every trained-model key.
DIGITS = load_dataset("digits").fingerprint


def _fcn(width: int = 32) -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("fcn", 10, (1, 8, 8), layers=2, width=width)


def _without_times(history):
    return [{k: v for k, v in epoch.items() if k != "epoch_time_s"} for epoch in history]


def _assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(x, y), name


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", seed=0)


def _lorita_cnn() -> torch.nn.Module:
    torch.manual_seed(0)
    return lorita.overparameterize(create_model("cnn", 10, (1, 8, 8), channels=[8]), 2)


# A plain FCN, and a LoRITa-composed CNN with BatchNorm (running statistics are state too).
MODELS = {"fcn": _fcn, "lorita-cnn": _lorita_cnn}


@pytest.fixture(scope="module")
def reference(digits):
    model = _fcn()
    return model, train(model, digits, PHASE, seed=0)


@pytest.mark.parametrize("build", list(MODELS))
def test_ctrl_c_finishes_the_batch_and_the_resume_ends_with_identical_numbers(digits, build, tmp_path, capsys):
    build = MODELS[build]
    ref_model = build()
    ref_history = train(ref_model, digits, PHASE, seed=0)
    steps_per_epoch = math.ceil(len(digits.train_y) / PHASE.batch_size)
    at = steps_per_epoch + 7  # the 7th batch of epoch 2
    calls = []

    def ctrl_c():  # a real SIGINT, delivered while the batch is between backward and step
        calls.append(1)
        if len(calls) == at:
            os.kill(os.getpid(), signal.SIGINT)

    checkpoint = tmp_path / "checkpoint.pt"
    with interrupts.installed(), pytest.raises(KeyboardInterrupt):
        train(build(), digits, PHASE, seed=0, checkpoint=checkpoint, after_backward=ctrl_c)
    assert len(calls) == at  # the batch that was running finished, no further batch started
    saved = checkpoints.load(checkpoint)
    assert (saved["epoch"], saved["batch"]) == (1, 7)
    assert "interrupted after epoch 2, batch 7" in capsys.readouterr().out

    model = build()
    history = train(model, digits, PHASE, seed=0, checkpoint=checkpoint)
    assert "resuming from epoch 1, batch 7 of epoch 2" in capsys.readouterr().out
    assert _without_times(history) == _without_times(ref_history)
    _assert_same_weights(model, ref_model)


def test_a_second_ctrl_c_or_one_outside_training_stops_at_once():
    with interrupts.installed():
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
        with interrupts.deferred():
            os.kill(os.getpid(), signal.SIGINT)
            assert interrupts.requested()
            with pytest.raises(KeyboardInterrupt):
                os.kill(os.getpid(), signal.SIGINT)


# The real command line: a dense FCN whose epochs take long enough to be interrupted in the middle of the run.
RUN = ["run", "--model", "fcn", "--dataset", "digits", "--method", "dense", "--epochs", "12", "--seed", "0",
       "--device", "cpu", "--no-latency", "--set", "model_kwargs={layers: 3, width: 256}",
       "--set", "budget.batch_size=8", "--set", "budget.lr=0.01"]


def _command(store: Path, experiment: str) -> list[str]:
    return [*RUN, "--experiment", experiment, "--cache-dir", str(store / f"cache-{experiment}")]


def _epochs_logged(experiment: str) -> int:
    runs = benchmark_runs(experiment)
    return len(tracking.metric_history(runs.iloc[0]["run_id"], schema.TRAIN_LOSS)) if len(runs) else 0


@pytest.fixture(scope="module")
def uninterrupted(store):
    assert main(_command(store, "uninterrupted")) == 0
    row = benchmark_runs("uninterrupted").iloc[0]
    return row, tracking.metric_history(row["run_id"], schema.TRAIN_LOSS)


# Ctrl-C resumes by the path test_sigterm_stops_a_run_recorded_killed... covers: CI runs it (~17 s).
@pytest.mark.parametrize("sig", [pytest.param(signal.SIGINT, marks=pytest.mark.ci), signal.SIGKILL],
                         ids=["ctrl-c", "kill"])
def test_interrupted_command_resumes_to_one_finished_run_with_identical_numbers(store, uninterrupted, sig, capsys):
    experiment = f"interrupted-{sig.name}"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "benchmarks.cli", *_command(store, experiment)], cwd=store,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while _epochs_logged(experiment) < 2 and proc.poll() is None and time.monotonic() < deadline:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=0.1)  # the poll interval
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    if sig == signal.SIGINT:
        assert proc.returncode == 130, err
        assert "interrupted after epoch" in out and "run the same command again to resume" in err
        assert list(benchmark_runs(experiment)["status"]) == [schema.STATUS_KILLED]
    else:
        assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
        assert list(benchmark_runs(experiment)["status"]) == [schema.STATUS_RUNNING]

    capsys.readouterr()
    assert main(_command(store, experiment)) == 0
    assert "resuming from epoch" in capsys.readouterr().out
    runs = benchmark_runs(experiment)
    assert Counter(runs["status"]) == {schema.STATUS_FINISHED: 1, schema.STATUS_KILLED: 1}
    finished = runs[runs["status"] == schema.STATUS_FINISHED].iloc[0]
    reference, reference_losses = uninterrupted
    for name in (schema.ACC_TRAINED, schema.ACC_FINETUNED, schema.PARAMS):
        assert finished[f"metrics.{name}"] == reference[f"metrics.{name}"], name
    # Every epoch is in the finished run, the ones before the interruption included, with the same values.
    assert tracking.metric_history(finished["run_id"], schema.TRAIN_LOSS) == reference_losses


def test_corrupt_or_foreign_files_are_named_and_never_loaded(tmp_path):
    path = tmp_path / "state.pt"
    checkpoints.save(path, _fcn().state_dict())
    checkpoints.load_state(path, _fcn())

    foreign = r"was written for another model: 1.weight has shape \(32, 64\), this model \(16, 64\)"
    with pytest.raises(UnusableFile, match=foreign):
        checkpoints.load_state(path, _fcn(width=16))
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(UnusableFile, match="does not match its digest"):
        checkpoints.load(path)
    path.with_name("state.pt.sha256").unlink()
    with pytest.raises(UnusableFile, match="has no .sha256 digest"):
        checkpoints.load(path)


def test_foreign_training_checkpoint_restarts_the_phase(digits, reference, tmp_path, capsys):
    checkpoint = tmp_path / "checkpoint.pt"
    train(_fcn(width=16), digits, PHASE, seed=0, checkpoint=checkpoint)  # another model's checkpoint
    model = _fcn()
    history = train(model, digits, PHASE, seed=0, checkpoint=checkpoint)
    assert "checkpoint unusable" in capsys.readouterr().out
    assert _without_times(history) == _without_times(reference[1])


def _cfg(store, **changes):
    return make_config({"experiment": "reliability", "method": "dense", "model": "fcn",
                        "model_kwargs": {"layers": 2, "width": 32}, "dataset": "digits",
                        "cache_dir": str(store / "cache"), "device": "cpu",
                        "budget": {"epochs": 3, "finetune_epochs": 1, "batch_size": 64, "lr": 0.05}, **changes})


def test_foreign_cached_model_is_reported_and_retrained(store, capsys):
    first = execute(_cfg(store, experiment="foreign"), latency=False)
    cached = store / "cache" / "trained" / trained_key(resolve(_cfg(store)), DIGITS) / "model.pt"
    checkpoints.save(cached, _fcn(width=16).state_dict())  # a valid file with a valid digest, for another model
    again = execute(_cfg(store, experiment="foreign-again"), latency=False)
    out = capsys.readouterr().out
    assert "cached model unusable" in out and "was written for another model" in out
    assert not again.cache_hit and again.metrics[schema.ACC_TRAINED] == first.metrics[schema.ACC_TRAINED]


def _mount(path: Path, options: str) -> bool:
    """A real tmpfs at `path` (needs root and mount rights, which CI and this machine have); False otherwise."""
    path.mkdir(parents=True, exist_ok=True)
    if shutil.which("mount") is None:
        return False
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True)
    return done.returncode == 0


@contextlib.contextmanager
def _tmpfs(path: Path, options: str):
    mounted = _mount(path, options)
    try:
        yield mounted
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(path)], check=False)


def test_unwritable_output_directory_is_named_before_anything_runs(store, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(OSError, match=f"output directory {blocker}/cache is not writable"):
        execute(_cfg(store, experiment="unwritable", cache_dir=str(blocker / "cache")))
    with _tmpfs(tmp_path / "ro", "size=1m,ro") as mounted:
        if mounted:
            with pytest.raises(OSError, match="is not writable: Read-only file system"):
                execute(_cfg(store, experiment="unwritable", cache_dir=str(tmp_path / "ro")))
    assert tracking.search_runs("unwritable").empty


def test_full_disk_is_named_before_training(store, tmp_path, monkeypatch, capsys):
    small = tmp_path / "small"
    with _tmpfs(small, "size=2m") as mounted:
        if not mounted:  # no tiny filesystem here: report a nearly full disk instead
            usage = shutil.disk_usage(tmp_path)
            monkeypatch.setattr(checkpoints.shutil, "disk_usage", lambda _: usage._replace(free=1 << 20))
        cfg = _cfg(store, experiment="full", cache_dir=str(small), model_kwargs={"layers": 2, "width": 1024})
        with pytest.raises(OSError, match=f"output directory {small}/trained/.* MiB free; this run's checkpoints "
                                          "need about .* MiB"):
            execute(cfg)
        # The same through the command line: one line, in its own words (no "[Errno 28]").
        assert main(["run", "--method", "dense", "--model", "fcn", "--set", "model_kwargs={layers: 2, width: 1024}",
                     "--experiment", "full", "--cache-dir", str(small), "--device", "cpu"]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"lorita-bench: error: output directory {small}/trained/") and "Errno" not in err
    run = tracking.search_runs("full").iloc[0]
    assert run["status"] == schema.STATUS_FAILED and "MiB free" in run[f"tags.{schema.TAG_ERROR}"]
    assert f"metrics.{schema.TRAIN_LOSS}" not in run.index  # not one epoch trained


def test_disk_full_at_a_checkpoint_fails_the_run_naming_the_file_and_the_rerun_resumes(store, monkeypatch, capsys):
    cfg = _cfg(store, experiment="enospc", cache_dir=str(store / "cache-enospc"))
    save, saves = torch.save, []

    def full_at_second_checkpoint(obj, f, *args, **kwargs):
        if ".checkpoint.pt." in str(f):
            saves.append(f)
            if len(saves) == 2:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full_at_second_checkpoint)
    checkpoint = store / "cache-enospc" / "trained" / trained_key(resolve(cfg), DIGITS) / "checkpoint.pt"
    with pytest.raises(OSError, match=f"cannot write {checkpoint}: No space left on device"):
        execute(cfg, latency=False)
    monkeypatch.undo()
    assert checkpoints.load(checkpoint)["epoch"] == 1  # the previous checkpoint is intact
    assert not list(checkpoint.parent.glob(".*.tmp"))
    failed = tracking.search_runs("enospc").iloc[0]
    assert failed["status"] == schema.STATUS_FAILED and "No space left on device" in failed[f"tags.{schema.TAG_ERROR}"]

    capsys.readouterr()
    assert execute(cfg, latency=False).status == schema.STATUS_FINISHED
    assert "resuming from epoch 1" in capsys.readouterr().out


@contextlib.contextmanager
def _mlflow_server(root: Path, port: int):
    """A real `mlflow server` on 127.0.0.1:port with a SQLite backend under root; stopped on exit."""
    # Its own process group: the server is three processes (CLI, uvicorn, job runner) and all must stop.
    # The job runner only serves MLflow's GenAI jobs; off, the server starts faster.
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri",
                             f"sqlite:///{root / 'server.db'}", "--artifacts-destination", str(root / "artifacts"),
                             "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                            env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 90
    while True:
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1):
                break
        if proc.poll() is not None or time.monotonic() > deadline:
            _stop(proc)
            pytest.fail("mlflow server did not start")
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=0.2)  # the poll interval
    try:
        yield proc
    finally:
        _stop(proc)


def _stop(server: subprocess.Popen) -> None:
    """Kill the server's whole process group, as a crash or a power cut would."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.pid, signal.SIGKILL)
    server.wait(timeout=30)


@pytest.mark.ci  # a real MLflow server takes ~15 s to start on two cores
def test_server_stopped_mid_run_loses_nothing_and_sync_sends_it(tmp_path, monkeypatch, capsys):
    port = free_port()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    monkeypatch.setenv(outbox.OUTBOX_ENV, str(tmp_path / "outbox"))
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    cfg = _cfg(tmp_path, experiment="server-away", method="svd", target_metric="flops_drop", target=0.5,
               model_kwargs={"layers": 3, "width": 64},
               budget={"epochs": 4, "finetune_epochs": 2, "batch_size": 64, "lr": 0.05})
    log_metrics = tracking.log_metrics
    with _mlflow_server(tmp_path, port) as server:

        def stop_server_at_epoch_2(run_id, metrics, step=None):
            if step == 2 and server.poll() is None:
                _stop(server)
            log_metrics(run_id, metrics, step=step)

        monkeypatch.setattr(tracking, "log_metrics", stop_server_at_epoch_2)
        result = execute(cfg, latency=False)
    assert result.status == schema.STATUS_FINISHED
    assert "unreachable" in capsys.readouterr().err
    assert outbox.runs() == [result.run_id]
    kinds = Counter(record["op"] for record in outbox.records(result.run_id))
    assert kinds["metrics"] >= 4 and kinds["file"] == 1 and kinds["end"] == 1

    with _mlflow_server(tmp_path, port):
        assert main(["sync"]) == 0
        assert "sent every kept record of 1 run" in capsys.readouterr().out
        assert outbox.runs() == []
        run = tracking.search_runs("server-away").iloc[0]
        assert run["status"] == schema.STATUS_FINISHED
        for name, value in result.metrics.items():
            assert run[f"metrics.{name}"] == pytest.approx(value), name
        assert [step for step, _ in tracking.metric_history(result.run_id, schema.TRAIN_LOSS)] == [1, 2, 3, 4]
        assert [step for step, _ in tracking.metric_history(result.run_id, schema.FT_TEST_ACC)] == [1, 2]
        assert load_model(result.run_id) is not None  # the model artifact arrived too
        assert main(["sync"]) == 0 and "nothing to send" in capsys.readouterr().out


def _sweep_file(store: Path, name: str, **changes) -> Path:
    path = store / f"{name}.yaml"
    path.write_text(yaml.safe_dump({
        "name": name, "models": [{"name": "fcn", "layers": 2, "width": 16}], "datasets": ["digits"],
        "methods": ["dense", "svd", "l1"], "targets": {"flops_drop": [0.5]}, "seeds": [0, 1], "device": "cpu",
        "budget": {"epochs": 2, "finetune_epochs": 1, "batch_size": 64, "lr": 0.05},
        "cache_dir": str(store / f"cache-{name}"), **changes}))
    return path


def test_a_nan_run_fails_naming_the_epoch_and_the_sweep_goes_on(store, capsys):
    # Weight decay 1e30 blows the weights up within the first steps (an absurd learning rate is refused at the door).
    path = _sweep_file(store, "nan-sweep", methods=["dense"], budget={"epochs": 2, "lr": 0.05,
                                                                      "weight_decay": [1e-3, 1e30]}, seeds=[0])
    assert run_sweep(str(path)) == 1
    out = capsys.readouterr().out
    assert "1 finished, 0 skipped (already finished), 1 failed" in out
    assert "FAILED fcn-digits-dense-s0: NonFiniteLoss: loss is nan at epoch 1 (train)" in out
    runs = benchmark_runs("nan-sweep")
    failed = runs[runs["status"] == schema.STATUS_FAILED]
    assert len(failed) == 1 and "at epoch 1" in failed.iloc[0][f"tags.{schema.TAG_ERROR}"]
    assert (runs["status"] == schema.STATUS_FINISHED).sum() == 1


@pytest.mark.ci  # two real sweep processes, ~14 s
def test_two_concurrent_sweeps_never_run_a_run_twice(store):
    path = _sweep_file(store, "concurrent")
    expected = {cfg.config_hash() for cfg in expand(load_sweep(str(path)))}
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    # --wait: each waits for the runs the other holds, then skips them (finished) or runs them (its holder died).
    sweeps = [subprocess.Popen([sys.executable, "-m", "benchmarks.cli", "sweep", str(path), "--wait"], cwd=store,
                               env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outputs = [proc.communicate(timeout=240)[0] for proc in sweeps]
    assert [proc.returncode for proc in sweeps] == [0, 0], outputs
    runs = benchmark_runs("concurrent")
    # Each run of the grid exactly once, by one of the two: no duplicate, no leftover RUNNING or KILLED record.
    assert Counter(runs[f"tags.{schema.TAG_CONFIG_HASH}"]) == Counter(expected)
    assert set(runs["status"]) == {schema.STATUS_FINISHED}
    finished_by = [int(re.search(r"sweep concurrent: (\d+) finished", out).group(1)) for out in outputs]
    assert sum(finished_by) == len(expected), outputs


def test_a_sweep_stops_at_once_when_the_tracking_server_goes_away(store, monkeypatch, capsys):
    path = _sweep_file(store, "server-gone", methods=["dense"])
    calls = []

    def unreachable(cfg, **_):  # what execute raises when its probe of the tracking server fails
        calls.append(cfg)
        raise ConnectionError("tracking server http://127.0.0.1:9 unreachable: connection refused")

    monkeypatch.setattr(worker, "execute", unreachable)
    assert main(["sweep", str(path)]) == 2
    assert len(calls) == 1  # the second run is not tried: it would fail the same way
    assert "lorita-bench: error: tracking server http://127.0.0.1:9 unreachable" in capsys.readouterr().err


def _at_epoch(monkeypatch, epoch: int, act) -> None:
    """Call `act` once, when the training logs epoch `epoch` (a real moment of a real run)."""
    original = tracking.log_metrics

    def log_metrics(run_id, metrics, step=None):
        if step == epoch and schema.TRAIN_LOSS in metrics and not getattr(log_metrics, "done", False):
            log_metrics.done = True
            act()
        original(run_id, metrics, step=step)

    monkeypatch.setattr(tracking, "log_metrics", log_metrics)


def test_a_cache_folder_deleted_mid_run_is_made_again(store, tmp_path, monkeypatch):
    cache = tmp_path / "vanishing"
    _at_epoch(monkeypatch, 1, lambda: shutil.rmtree(cache))
    result = execute(_cfg(store, experiment="vanishing", cache_dir=str(cache)), latency=False)
    assert result.status == schema.STATUS_FINISHED
    assert (cache / "trained" / trained_key(resolve(_cfg(store)), DIGITS) / "model.pt").exists()


def test_an_unwritable_cache_file_mid_run_is_named(store, tmp_path, monkeypatch):
    cache = tmp_path / "blocked"
    checkpoint = cache / "trained" / trained_key(resolve(_cfg(store)), DIGITS) / "checkpoint.pt"
    _at_epoch(monkeypatch, 1, lambda: checkpoint.unlink(missing_ok=True) or checkpoint.mkdir())  # a folder in its place
    with pytest.raises(OSError, match=f"cannot write {checkpoint}: Is a directory"):
        execute(_cfg(store, experiment="blocked", cache_dir=str(cache)), latency=False)
    runs = benchmark_runs("blocked")
    assert list(runs["status"]) == [schema.STATUS_FAILED]
