"""The local executor: a sweep's runs one after another in this process, or as `jobs` worker processes."""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from contextlib import contextmanager

from tqdm.auto import tqdm

from benchmarks import tracking
from benchmarks.config import RunConfig
from benchmarks.run.pipeline import RunResult, run_name
from benchmarks.sweeps.schedule import producers_first
from benchmarks.sweeps.worker import Parent, init_worker, run_one, worker_env


def run_sequential(pending: list[RunConfig], parent_run_id: str, results: list[RunResult], bar: tqdm) -> None:
    """Run `pending` in order in this process (latency measured right after each run)."""
    for cfg in pending:
        bar.set_postfix_str(run_name(cfg))
        results.append(run_one(cfg, parent_run_id, latency=True))
        bar.update()


@contextmanager
def worker_pool(jobs: int, parent_run_id: str) -> Iterator[ProcessPoolExecutor]:
    """`jobs` spawned worker processes, the threads split between them, that stop with this process.

    On Ctrl-C or SIGTERM here every worker finishes its batch, checkpoints and records its run KILLED; queued work
    never starts. Workers whose parent dies (SIGKILL) do the same and exit (see worker.Parent).
    """
    threads = max(1, (os.cpu_count() or 1) // jobs)
    context = multiprocessing.get_context("spawn")
    parent = Parent(os.getpid(), parent_run_id, context.RawValue("b", 0))
    with tracking.environment(worker_env(threads)), ProcessPoolExecutor(
            jobs, mp_context=context, initializer=init_worker, initargs=(threads, parent)) as pool:
        try:
            yield pool
        except KeyboardInterrupt:
            # Ctrl-C at a terminal reaches the workers too; SIGTERM, or any signal sent to this process alone, does
            # not: the flag tells them all (and never counts as the second signal that stops at once).
            parent.stopping.value = 1
            # Waits for the running ones to record their runs KILLED (a second Ctrl-C at a terminal reaches them too,
            # and stops them at once), so that the sweep's summary comes after.
            pool.shutdown(wait=True, cancel_futures=True)
            raise


def run_parallel(pending: list[RunConfig], parent_run_id: str, jobs: int, results: list[RunResult],
                 bar: tqdm) -> None:
    """Run `pending` on `jobs` worker processes (see worker_pool), each trained model's producer first."""

    def done(result: RunResult) -> None:
        results.append(result)
        bar.update()

    with worker_pool(jobs, parent_run_id) as pool:
        producers_first(pending, lambda cfg: pool.submit(run_one, cfg, parent_run_id, False),
                        lambda futures: wait(futures, return_when=FIRST_COMPLETED)[0],
                        lambda future, cfg: future.result(), done)
