"""`lorita-bench sweep --executor ray`: a sweep's pending runs as Ray tasks, on a local instance or a cluster.

Ray is an optional extra (pip install -e '.[ray]'): it is imported here only, and only when a sweep asks for
it. Each task runs the sweep worker's run_one, so a run skips, resumes, claims and fails exactly as with the local
executor; the driver submits every run once and gathers the results.
"""

from __future__ import annotations

import dataclasses
import os
import socket
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from benchmarks import tracking
from benchmarks.config import ConfigError, RunConfig
from benchmarks.errors import one_line
from benchmarks.run.pipeline import RunResult, run_name
from benchmarks.sweeps.schedule import producers_first
from benchmarks.sweeps.worker import init_worker, run_one, worker_env
from benchmarks.tracking import outbox, schema

# Seconds a Ctrl-C waits for the cancelled runs to record themselves KILLED before the driver lets them go.
_CANCEL_GRACE_S = 10
# The reachability probe of a cluster address: ray.init retries an unreachable one for about ten minutes.
_PROBE_TIMEOUT_S = 5


def require_ray() -> Any:
    """The ray module, or a one-line ConfigError naming the extra that provides it."""
    try:
        import ray
    except ImportError:
        raise ConfigError("sweep: executor ray needs the ray extra: pip install -e '.[ray]'") from None
    return ray


def cluster_address(address: str | None) -> str | None:
    """The cluster to join: `address`, else RAY_ADDRESS, else None (start a local instance)."""
    return address or os.environ.get("RAY_ADDRESS") or None


def describe(address: str | None) -> str:
    """Where the runs go, for the sweep's plan."""
    joined = cluster_address(address)
    return f"the Ray cluster at {joined}" if joined else "a local Ray instance"


def _number(name: str, value: Any, allowed: str, ok) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int | float) or not ok(value)):
        raise ConfigError(f"sweep: {name} must be {allowed}; got {value!r}")


def check_options(*, address: str | None, local_cpus: int | None, cpus_per_run: int | None,
                  gpus_per_run: float | None) -> None:
    """One-line ConfigError for a bad option or a missing ray, before anything trains."""
    if address is not None and (not isinstance(address, str) or not address.strip()):
        raise ConfigError(f"sweep: address must be a Ray cluster address such as head-node:6379; got {address!r}")
    _number("local_cpus", local_cpus, "an integer >= 1", lambda v: isinstance(v, int) and v >= 1)
    _number("cpus_per_run", cpus_per_run, "an integer >= 1", lambda v: isinstance(v, int) and v >= 1)
    _number("gpus_per_run", gpus_per_run, "a number >= 0 (a fraction shares a GPU)", lambda v: v >= 0)
    joined = cluster_address(address)
    if local_cpus is not None and joined:
        raise ConfigError("sweep: local_cpus sizes the local Ray instance started without an address (or "
                          "RAY_ADDRESS); a cluster's CPUs are set where it starts: ray start --num-cpus")
    require_ray()
    if joined:
        _probe(joined)


def _probe(address: str) -> None:
    """A one-line ConnectionError within seconds when nothing answers at a host:port cluster address."""
    host, _, port = address.rpartition(":")
    if "://" in address or not host or not port.isdigit():
        return  # auto, a Ray Client URL (ray://...): left to ray.init
    try:
        socket.create_connection((host, int(port)), timeout=_PROBE_TIMEOUT_S).close()
    except OSError as err:
        raise ConnectionError(f"sweep: Ray cluster {address} unreachable: {err.strerror or err}") from None


def _absolute_uri(uri: str) -> str:
    # A relative SQLite path would name another file in a worker that runs elsewhere.
    path = uri.removeprefix("sqlite:///")
    return f"sqlite:///{Path(path).absolute()}" if uri.startswith("sqlite:///") and path[:1] != "/" else uri


def _env(threads: int) -> dict[str, str]:
    """Environment of every worker: the driver's tracking store, MLflow and project settings; threads to match."""
    settings = {key: value for key, value in os.environ.items() if key.startswith(("MLFLOW_", "LORITA_BENCH_"))}
    # The outbox resolved on the driver, like the cache: a worker on another node has another working directory.
    return {**settings, "MLFLOW_TRACKING_URI": _absolute_uri(tracking.tracking_uri()),
            outbox.OUTBOX_ENV: str(outbox.folder()), **worker_env(threads)}


def absolute_paths(cfg: RunConfig) -> RunConfig:
    """`cfg` with absolute cache and data paths, for a worker that runs in another working directory."""
    # Workers of a cluster do not share the driver's working directory; neither path is part of the config hash.
    data_root = None if cfg.data_root is None else str(Path(cfg.data_root).absolute())
    return dataclasses.replace(cfg, cache_dir=str(Path(cfg.cache_dir).absolute()), data_root=data_root)


def _run_task(cfg: RunConfig, parent_run_id: str, threads: int) -> RunResult:
    """One run in a Ray worker, set up as a --jobs worker is (a cancel then finishes the batch and checkpoints)."""
    init_worker(threads)
    return run_one(cfg, parent_run_id, False)  # latency: measured by the driver afterwards


def _result(session: RaySession, ref: Any, cfg: RunConfig) -> RunResult:
    # A run a dead task left RUNNING is closed KILLED by the next sweep that runs this config (its claim died with
    # the worker).
    value, error = session.result(ref)
    return value if error is None else RunResult(cfg, None, schema.STATUS_FAILED, error=error)


@dataclass(frozen=True)
class RaySession:
    """A connected Ray instance or cluster and what each task asks for."""

    ray: Any
    cpus: int
    gpus: float

    def result(self, ref: Any) -> tuple[Any, str | None]:
        """(the task's return value, None), or (None, the one line saying why it did not return: its worker or node
        died, or it was cancelled)."""
        try:
            return self.ray.get(ref), None
        except self.ray.exceptions.RayError as err:
            return None, one_line(getattr(err, "cause", None) or err, kind=True)

    def remote(self, fn: Callable, *, gpu: bool) -> Any:
        # Declared with its GPUs (not set per call) so that Ray gives each GPU task a fresh worker, which frees the
        # GPU's memory when it ends. No retries: a task whose worker died is reported, and the next sweep resumes
        # its work from its checkpoints.
        return self.ray.remote(num_cpus=self.cpus, num_gpus=self.gpus if gpu else 0, max_retries=0)(fn)


@contextmanager
def ray_session(bar: tqdm, *, address: str | None = None, local_cpus: int | None = None,
                cpus_per_run: int | None = None, gpus_per_run: float | None = None) -> Iterator[RaySession]:
    """Ray for the block: without an address (or RAY_ADDRESS) a local instance with `local_cpus` CPUs (default all),
    started and stopped after; with one, the cluster is joined and left running. A task asks for `cpus_per_run`
    CPUs (default 1) and `gpus_per_run` GPUs (default 1 when the cluster has GPUs; none for device: cpu).
    """
    ray = require_ray()
    cpus = cpus_per_run or 1
    joined = cluster_address(address)
    runtime_env = {"env_vars": _env(cpus)}
    if joined:
        ray.init(address=joined, runtime_env=runtime_env)
    else:
        # "local": a new instance, even when `ray start` left one running on this machine.
        ray.init(address="local", num_cpus=local_cpus, include_dashboard=False, runtime_env=runtime_env)
    try:
        resources = ray.cluster_resources()
        gpus = gpus_per_run if gpus_per_run is not None else (1 if resources.get("GPU", 0) > 0 else 0)
        bar.write(f"ray: {describe(address)} with {resources.get('CPU', 0):g} CPUs and {resources.get('GPU', 0):g} "
                  f"GPUs; each task asks for {cpus} CPU(s) and {gpus:g} GPU(s)")
        yield RaySession(ray, cpus, gpus)
    finally:
        ray.shutdown()  # stops the local instance; only disconnects from a cluster


def cancel(session: RaySession, refs: Iterable[Any]) -> None:
    """Interrupt running tasks as by Ctrl-C (each records its work KILLED) and drop queued ones; wait briefly."""
    refs = list(refs)
    for ref in refs:
        session.ray.cancel(ref)
    session.ray.wait(refs, num_returns=len(refs), timeout=_CANCEL_GRACE_S)


def run_on_ray(pending: list[RunConfig], parent_run_id: str, results: list[RunResult], bar: tqdm,
               **options: Any) -> None:
    """Run `pending` as Ray tasks (see ray_session for the options), appending each result to `results` and
    advancing `bar` as runs end."""
    if not pending:
        return
    with ray_session(bar, **options) as session:
        _submit_and_wait(session, [absolute_paths(cfg) for cfg in pending], parent_run_id, results, bar)


def _submit_and_wait(session: RaySession, pending: list[RunConfig], parent_run_id: str, results: list[RunResult],
                     bar: tqdm) -> None:
    tasks = {gpu: session.remote(_run_task, gpu=gpu) for gpu in (False, True)}

    def submit(cfg: RunConfig) -> Any:
        return tasks[cfg.device != "cpu"].options(name=run_name(cfg)).remote(cfg, parent_run_id, session.cpus)

    def wait_any(refs: list) -> list:
        bar.set_postfix_str(f"{len(refs)} running or queued")
        return session.ray.wait(refs, num_returns=1)[0]

    def done(result: RunResult) -> None:
        results.append(result)
        bar.update()

    waiting: dict = {}
    try:
        producers_first(pending, submit, wait_any, lambda ref, cfg: _result(session, ref, cfg), done, waiting)
    except KeyboardInterrupt:
        cancel(session, waiting)
        raise
