"""The local executor: a sweep's runs one after another in this process, or as `jobs` worker processes."""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

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


def run_parallel(pending: list[RunConfig], parent_run_id: str, jobs: int, results: list[RunResult],
                 bar: tqdm) -> None:
    """Run `pending` on `jobs` spawned worker processes, the threads split between them.

    On Ctrl-C or SIGTERM here every worker finishes its batch, checkpoints and records its run KILLED; queued runs
    never start. Workers whose parent dies (SIGKILL) do the same and exit (see worker.Parent).
    """
    threads = max(1, (os.cpu_count() or 1) // jobs)
    context = multiprocessing.get_context("spawn")
    parent = Parent(os.getpid(), parent_run_id, context.RawValue("b", 0))

    def done(result: RunResult) -> None:
        results.append(result)
        bar.update()

    with tracking.environment(worker_env(threads)), ProcessPoolExecutor(
            jobs, mp_context=context, initializer=init_worker, initargs=(threads, parent)) as pool:
        try:
            producers_first(pending, lambda cfg: pool.submit(run_one, cfg, parent_run_id, False),
                            lambda futures: wait(futures, return_when=FIRST_COMPLETED)[0],
                            lambda future, cfg: future.result(), done)
        except KeyboardInterrupt:
            # Ctrl-C at a terminal reaches the workers too; SIGTERM, or any signal sent to this process alone, does
            # not: the flag tells them all (and never counts as the second signal that stops at once).
            parent.stopping.value = 1
            # Waits for the running ones to record their runs KILLED (a second Ctrl-C at a terminal reaches them too,
            # and stops them at once), so that the sweep's summary comes after.
            pool.shutdown(wait=True, cancel_futures=True)
            raise


