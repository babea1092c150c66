"""Processes and signals, for real: a sweep's workers die with it, SIGTERM stops a run as Ctrl-C does (recorded
KILLED, resumable), a double Ctrl-C ends in one line, and `ui` checks its port and stops every server process."""

import contextlib
import multiprocessing
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from support import benchmark_runs, free_port, write_sweep

from benchmarks import tracking
from benchmarks.cli import main
from benchmarks.run import interrupts
from benchmarks.sweeps.driver import run_sweep
from benchmarks.tracking import schema

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads Linux's /proc")

# One thread per process (the machine may have two cores for everything), and no progress bars: stderr then holds
# only what the command says.
ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
# A dense 2-layer FCN on digits: each epoch a fraction of a second, so a run is signalled in its middle.
RUN = ["run", "--model", "fcn", "--dataset", "digits", "--method", "dense", "--seed", "0", "--device", "cpu",
       "--no-latency", "--set", "model_kwargs={layers: 2, width: 16}", "--set", "budget.batch_size=16"]
# Long enough that both workers are still training when the sweep is signalled (they are stopped long before).
LONG = {"epochs": 200, "finetune_epochs": 1, "batch_size": 16, "lr": 0.05}
START_S = 180  # a cold start imports torch, torchvision and MLflow: slow on a busy two-core machine
GONE_S = 10  # what "at once" may take on that machine: a batch, a checkpoint and the KILLED record


def _start(store: Path, name: str, args: list[str]) -> tuple[subprocess.Popen, Path, Path]:
    """The real command line in a subprocess; stdout and stderr go to files (orphans would keep a pipe open)."""
    out, err = store / f"{name}.out", store / f"{name}.err"
    with out.open("w") as stdout, err.open("w") as stderr:
        proc = subprocess.Popen([sys.executable, "-m", "benchmarks.cli", *args], cwd=store,
                                env={**os.environ, **ENV}, stdout=stdout, stderr=stderr, text=True)
    return proc, out, err


def _until(condition, proc: subprocess.Popen, what: str, err: Path, timeout: float = START_S) -> None:
    """Poll `condition` until true; fail if the process ends first or the deadline passes."""
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            pytest.fail(f"the command ended (exit {proc.returncode}) before {what}:\n{err.read_text()}")
        if time.monotonic() > deadline:
            pytest.fail(f"no {what} within {timeout:.0f} s")
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=0.1)  # the poll interval


def _stat(pid: int) -> list[str] | None:
    """Fields 3.. of /proc/<pid>/stat (state, ppid, ...), None when the process is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None


def _alive(pid: int) -> bool:
    stat = _stat(pid)
    return stat is not None and stat[0] != "Z"  # a zombie has ended; only its exit status waits for a reaper


def _descendants(pid: int) -> list[int]:
    """Every live process below `pid`, found by parent pid in /proc."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (stat := _stat(int(entry.name))) is not None and stat[0] != "Z":
            parents.setdefault(int(stat[1]), []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        children = parents.get(todo.pop(), [])
        found += children
        todo += children
    return found


def _cmdline(pid: int) -> str:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    return ""


def _wait_gone(pids: list[int], timeout: float) -> list[int]:
    """Wait (on pidfds: woken by each exit) until the processes have ended; those still alive after `timeout`."""
    fds = {}
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            fds[os.pidfd_open(pid)] = pid
    deadline = time.monotonic() + timeout
    try:
        while fds and (left := deadline - time.monotonic()) > 0:
            ready, _, _ = select.select(list(fds), [], [], left)
            for fd in ready:
                os.close(fd)
                del fds[fd]
    finally:
        for fd in fds:
            os.close(fd)
    return [pid for pid in pids if _alive(pid)]


def _kill(pids: list[int]) -> None:
    """Clean up after a failed test: never leave a 1 GB worker behind (pids found by the test, still alive)."""
    for pid in filter(_alive, pids):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _epochs_logged(experiment: str) -> list[int]:
    """For each benchmark run of the experiment, whether it has logged an epoch (1) or not yet (0)."""
    runs = tracking.search_runs(experiment)
    if f"tags.{schema.TAG_METHOD}" not in runs:  # none yet, or only a sweep's parent run
        return []
    runs = runs[runs[f"tags.{schema.TAG_METHOD}"].notna()]
    column = f"metrics.{schema.TRAIN_LOSS}"
    return [0] * len(runs) if column not in runs else list(runs[column].notna().astype(int))


def _parent_run(experiment: str):
    runs = tracking.search_runs(experiment)
    return runs[runs[f"tags.{schema.TAG_METHOD}"].isna()].iloc[0]


def _long_sweep(store: Path, name: str) -> str:
    """A sweep file of two runs that train different models, each long enough to be stopped while training."""
    return write_sweep(store, name, methods=["dense"], seeds=[0, 1], budget=LONG, cache_dir=str(store / name))


@pytest.mark.ci  # real sweep processes, 9-15 s
def test_a_killed_sweep_takes_its_workers_with_it(store):
    proc, _, err = _start(store, "orphaned", ["sweep", _long_sweep(store, "orphaned"), "--jobs", "2"])
    everything = []
    try:
        _until(lambda: _epochs_logged("orphaned") == [1, 1], proc, "both workers trained an epoch", err)
        everything = _descendants(proc.pid)  # the two workers and multiprocessing's resource tracker
        assert sum("spawn_main" in _cmdline(pid) for pid in everything) == 2, [_cmdline(pid) for pid in everything]
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        assert _wait_gone(everything, GONE_S) == [], "processes outlived the sweep they worked for"
    finally:
        _kill(everything or _descendants(proc.pid))
        proc.kill()  # a no-op once it was reaped, unlike a kill by pid
    # Each worker finished its batch, saved a checkpoint and recorded its run KILLED; nobody holds a claim now.
    assert list(benchmark_runs("orphaned")["status"]) == [schema.STATUS_KILLED] * 2
    assert len(list((store / "orphaned" / "trained").glob("*/checkpoint.pt"))) == 2
    parent = _parent_run("orphaned")
    assert parent["status"] == schema.STATUS_KILLED
    assert parent[f"tags.{schema.TAG_ERROR}"] == "the sweep's process died"


@pytest.mark.ci  # real sweep processes, 9-15 s
def test_sigterm_to_a_sweep_stops_every_worker_at_its_batch(store, capsys):
    # In this process (the CLI's exit code for SIGTERM is the run test's): it saves importing the harness again.
    path, swept = _long_sweep(store, "terminated"), threading.Event()
    signalled = []

    def terminate_once_both_train() -> None:
        while not swept.wait(0.1):  # the poll interval
            if _epochs_logged("terminated") == [1, 1]:
                signalled.append(True)
                os.kill(os.getpid(), signal.SIGTERM)  # to the sweep's process alone, as `kill` does
                return

    watcher = threading.Thread(target=terminate_once_both_train, daemon=True)
    with interrupts.installed():
        assert callable(signal.getsignal(signal.SIGTERM)), "SIGTERM is not handled: it would end pytest itself"
        watcher.start()
        try:
            code = run_sweep(path, jobs=2)
        finally:
            swept.set()
            watcher.join()
        assert interrupts.received() == signal.SIGTERM and interrupts.exit_code() == 143
    assert signalled, "the sweep ended before both workers trained"
    assert code == 130  # the driver's code for any interrupt; the CLI makes it 143
    assert "sweep interrupted: run the same command again to resume" in capsys.readouterr().err
    # run_sweep returns after its workers: each finished its batch, saved a checkpoint, recorded its run KILLED.
    assert multiprocessing.active_children() == []
    assert list(benchmark_runs("terminated")["status"]) == [schema.STATUS_KILLED] * 2
    assert len(list((store / "terminated" / "trained").glob("*/checkpoint.pt"))) == 2
    assert _parent_run("terminated")["status"] == schema.STATUS_KILLED


def _run(store: Path, experiment: str, epochs: int) -> list[str]:
    return [*RUN, "--epochs", str(epochs), "--experiment", experiment, "--cache-dir", str(store / experiment)]


@pytest.mark.ci  # real sweep processes, 9-15 s
def test_sigterm_stops_a_run_recorded_killed_and_the_same_command_resumes(store, capsys):
    command = _run(store, "sigterm", epochs=40)
    proc, out, err = _start(store, "sigterm", command)
    try:
        _until(lambda: _epochs_logged("sigterm") == [1], proc, "an epoch was logged", err)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 128 + signal.SIGTERM, err.read_text()
    finally:
        proc.kill()
    assert err.read_text().splitlines() == ["lorita-bench: terminated (SIGTERM): run the same command again to resume"]
    assert "SIGTERM: finishing the current batch" in out.read_text()
    assert "interrupted after epoch" in out.read_text()
    assert list(benchmark_runs("sigterm")["status"]) == [schema.STATUS_KILLED]

    capsys.readouterr()
    assert main(command) == 0
    assert "resuming from epoch" in capsys.readouterr().out
    assert Counter(benchmark_runs("sigterm")["status"]) == {schema.STATUS_FINISHED: 1, schema.STATUS_KILLED: 1}


def _importing_torch(pid: int) -> bool:
    # torch's libraries are mapped as `import torch` begins, a second or so before it ends; the CLI imports it in
    # the command's handler, after parsing.
    with contextlib.suppress(OSError):
        return "libtorch" in Path(f"/proc/{pid}/maps").read_text()
    return False


def _recorded(experiment: str) -> bool:
    return f"tags.{schema.TAG_METHOD}" in tracking.search_runs(experiment)


# When the two Ctrl-C come: while torch is imported, once the run is in the store (model and data being set up),
# and mid-training (the first one then deferred to the end of the batch, the second stopping at once).
MOMENTS = {
    "starting": lambda proc, experiment: _importing_torch(proc.pid),
    "recorded": lambda proc, experiment: _recorded(experiment),
    "training": lambda proc, experiment: _epochs_logged(experiment) == [1],
}


@pytest.mark.ci  # real sweep processes, 9-15 s
@pytest.mark.parametrize("moment", list(MOMENTS))
def test_two_ctrl_c_5_ms_apart_end_in_one_line(store, moment):
    experiment = f"double-{moment}"
    proc, out, err = _start(store, experiment, _run(store, experiment, epochs=40))
    try:
        _until(lambda: MOMENTS[moment](proc, experiment), proc, moment, err)
        proc.send_signal(signal.SIGINT)
        time.sleep(0.005)  # the gap under test, not a wait for anything
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 130, err.read_text()
    finally:
        proc.kill()
    assert "Traceback" not in out.read_text() + err.read_text()
    assert err.read_text().splitlines() == ["lorita-bench: interrupted: run the same command again to resume"]
    if moment == "training":  # the second Ctrl-C stops at once, but does not cut the KILLED record short
        assert list(benchmark_runs(experiment)["status"]) == [schema.STATUS_KILLED]


def test_a_stop_request_never_counts_as_the_second_signal_that_stops_at_once():
    # What a sweep worker's watch does when its parent stops; the worker may get the terminal's Ctrl-C as well.
    with interrupts.installed():
        assert callable(signal.getsignal(signal.SIGTERM)), "SIGTERM is not handled: it would end pytest itself"
        with interrupts.deferred():
            requester = threading.Thread(target=interrupts.request)
            requester.start()
            requester.join()
            assert interrupts.requested()
            os.kill(os.getpid(), signal.SIGINT)  # a first signal still: the batch finishes
            with pytest.raises(KeyboardInterrupt):
                os.kill(os.getpid(), signal.SIGINT)  # a second one stops at once
    # Outside training the request interrupts the main thread at once, as a SIGTERM.
    with interrupts.installed(), pytest.raises(KeyboardInterrupt):
        threading.Thread(target=interrupts.request).start()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            time.sleep(0.01)  # busy in Python code, where the request lands


def test_a_signal_just_after_the_one_that_stopped_the_process_lets_its_clean_up_finish():
    with interrupts.installed():
        assert callable(signal.getsignal(signal.SIGTERM)), "SIGTERM is not handled: it would end pytest itself"
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGINT)  # within REPEAT_S: the same request, not raised into the clean-up
        assert interrupts.received() == signal.SIGTERM and interrupts.exit_code() == 143
        assert interrupts.stopped_by() == "terminated (SIGTERM)"


@pytest.mark.parametrize("port", ["70000", "0", "-1"])
def test_ui_refuses_a_port_out_of_range_in_one_line(store, port):
    done = subprocess.run([sys.executable, "-m", "benchmarks.cli", "ui", "--port", port], cwd=store,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.splitlines() == [f"lorita-bench: error: ui: --port must be between 1 and 65535; got {port}"]


@pytest.mark.parametrize("host", ["127.0.0.1", "0.0.0.0"])
def test_ui_refuses_a_port_in_use_and_warns_of_a_public_host(store, host):
    with socket.create_server(("127.0.0.1", 0)) as taken:  # the port is in use here (and so on every address)
        port = taken.getsockname()[1]
        done = subprocess.run([sys.executable, "-m", "benchmarks.cli", "ui", "--host", host, "--port", str(port)],
                              cwd=store, capture_output=True, text=True, timeout=60)
    lines = done.stderr.splitlines()
    assert done.returncode == 2
    assert lines[-1] == f"lorita-bench: error: ui: cannot listen on {host} port {port}: Address already in use " \
                        "(choose another --port)"
    warnings = lines[:-1]
    if host == "127.0.0.1":
        assert warnings == []
    else:
        assert len(warnings) == 1
        assert "no authentication" in warnings[0] and "reachable from the network" in warnings[0]


# Stands in for `mlflow ui`, as its process tree is: a CLI that forwards SIGTERM and SIGINT to the server it started
# (as mlflow's _run_server does), the server listening on the port, and a helper that ignores both (a job runner
# slower to go than the CLI). Seconds to start, where MLflow takes tens.
FAKE_MLFLOW = '''
import signal, socket, subprocess, sys
port, role = int(sys.argv[1]), sys.argv[2]
if role == "server":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with socket.create_server(("127.0.0.1", port)) as sock:
        while True:
            sock.accept()[0].close()
elif role == "helper":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    while True:
        signal.pause()
else:
    server = subprocess.Popen([sys.executable, __file__, str(port), "server"])
    subprocess.Popen([sys.executable, __file__, str(port), "helper"])
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda signum, _: server.send_signal(signum))
    sys.exit(server.wait())
'''
# `lorita-bench ui`, its MLflow command line replaced by the stand-in.
UI_WITH_FAKE = '''
import sys
from benchmarks import tracking
from benchmarks.cli import main
fake = sys.argv.pop(1)
tracking.ui_command = lambda host, port: [sys.executable, fake, str(port), "cli"]
sys.argv[0] = "lorita-bench"
sys.exit(main())
'''


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.parametrize("sig", [signal.SIGTERM, pytest.param(signal.SIGINT, marks=pytest.mark.slow)],
                         ids=["sigterm", "ctrl-c"])  # Ctrl-C takes the same path: a KeyboardInterrupt in _ui
def test_ui_stops_every_server_process_on_a_signal(tmp_path, sig):
    fake = tmp_path / "fake_mlflow.py"
    fake.write_text(FAKE_MLFLOW)
    port = free_port()
    err = tmp_path / "ui.err"
    with err.open("w") as stderr:
        proc = subprocess.Popen([sys.executable, "-c", UI_WITH_FAKE, str(fake), "ui", "--port", str(port)],
                                cwd=Path(__file__).parents[1], env={**os.environ, **ENV}, stderr=stderr)
    server = []
    try:
        _until(lambda: _listening(port) and len(_descendants(proc.pid)) == 3, proc, "the server listened", err, 60)
        server = _descendants(proc.pid)
        proc.send_signal(sig)  # to lorita-bench alone: `kill`, or a supervisor stopping it
        assert proc.wait(timeout=30) == 128 + sig
        assert _wait_gone(server, GONE_S) == [], [_cmdline(pid) for pid in server]
    finally:
        _kill(server or _descendants(proc.pid))
        proc.kill()
    assert not _listening(port)
    word = "interrupted" if sig == signal.SIGINT else "terminated (SIGTERM)"
    assert err.read_text().splitlines() == [f"lorita-bench: {word}"]


@pytest.mark.slow  # MLflow's UI takes ~15-20 s to start on two cores
def test_real_ui_stops_every_mlflow_process_on_sigterm(store, tmp_path):
    port = free_port()
    proc, _, err = _start(store, "real-ui", ["ui", "--port", str(port)])
    server = []
    try:
        _until(lambda: _listening(port), proc, "MLflow listened", err)
        server = _descendants(proc.pid)
        assert any("uvicorn" in _cmdline(pid) for pid in server), [_cmdline(pid) for pid in server]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 128 + signal.SIGTERM
        assert _wait_gone(server, 30) == [], [_cmdline(pid) for pid in server]
    finally:
        _kill(server or _descendants(proc.pid))
        proc.kill()
    assert not _listening(port)
    assert err.read_text().splitlines()[-1] == "lorita-bench: terminated (SIGTERM)"
