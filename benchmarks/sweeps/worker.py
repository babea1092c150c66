"""What runs one run of a sweep in whichever process the executor chose: set up, execute, report the result."""

from __future__ import annotations

import torch

from benchmarks import tracking
from benchmarks.config import RunConfig
from benchmarks.errors import one_line
from benchmarks.run import interrupts
from benchmarks.run.pipeline import RunResult, execute
from benchmarks.tracking import schema

# Set in a worker that Ctrl-C reached: the runs already queued to it (which the parent can no longer cancel)
# are then not started.
_interrupted = False


def init_worker(threads: int) -> None:
    """Set up a worker process: its share of the threads, and Ctrl-C finishing the batch before it stops."""
    torch.set_num_threads(threads)
    interrupts.install()


def worker_env(threads: int) -> dict[str, str]:
    """Environment of a worker process: no oversubscribed thread pools, no epoch bars fighting the sweep's bar."""
    return {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "TQDM_DISABLE": "1"}


def run_one(cfg: RunConfig, parent_run_id: str, latency: bool) -> RunResult:
    """Execute one run of the sweep; its failure (recorded FAILED by execute) comes back as a FAILED result."""
    global _interrupted
    if _interrupted:
        return RunResult(cfg, None, schema.STATUS_KILLED, error="interrupted")
    try:
        result = execute(cfg, parent_run_id=parent_run_id, latency=latency, tags={schema.TAG_SWEEP: cfg.experiment})
    except KeyboardInterrupt:
        _interrupted = True
        raise
    except ConnectionError:  # the tracking server is away: every further run would fail alike, so the sweep stops
        raise
    except Exception as err:  # noqa: BLE001 - one failed run must not stop the sweep
        # execute() does not return the id of the run it recorded FAILED: the newest such run is it.
        result = RunResult(cfg, tracking.find_run(cfg.experiment, cfg.config_hash(), (schema.STATUS_FAILED,)),
                           schema.STATUS_FAILED, error=one_line(err, kind=True))
    return result
