"""`lorita-bench sweep`: run a grid resumably, with a plan first and a summary last, on the chosen executor.

Runs already FINISHED in the store are skipped, interrupted ones resume from their checkpoints, a failed run is
recorded and the sweep goes on; latency is measured afterwards, on the otherwise idle machine.
"""

from __future__ import annotations

import sys
import time
from collections import Counter

import pandas as pd
import yaml
from tqdm.auto import tqdm

from benchmarks import tracking
from benchmarks.config import EXECUTORS, ConfigError, RunConfig
from benchmarks.data import check_available
from benchmarks.run.environment import check_writable, resolve_device
from benchmarks.run.measure import latency_metrics
from benchmarks.run.pipeline import RunResult, load_model, run_name
from benchmarks.sweeps import cluster
from benchmarks.sweeps.grid import Sweep, expand, grid_hash, load_sweep
from benchmarks.sweeps.local import run_parallel, run_sequential
from benchmarks.tracking import schema


def _check_inputs(runs: list[RunConfig]) -> None:
    """Fail before anything trains on a missing dataset, an unwritable cache or an absent device."""
    for dataset, data_root in dict.fromkeys((cfg.dataset, cfg.data_root) for cfg in runs):
        check_available(dataset, data_root)
    for cache_dir in {cfg.cache_dir for cfg in runs}:
        check_writable(cache_dir)
    for device in {cfg.device for cfg in runs}:
        resolve_device(device)


def _finished_runs(experiment: str) -> pd.DataFrame:
    """The experiment's FINISHED runs, with a config-hash column even when there are none."""
    frame = tracking.search_runs(experiment, f"attributes.status = '{schema.STATUS_FINISHED}'")
    return frame.reindex(columns=frame.columns.union([f"tags.{schema.TAG_CONFIG_HASH}"]))


def _parent_run(sweep: Sweep, runs: list[RunConfig]) -> tuple[str, bool]:
    """(id, reused): the sweep's parent run for this grid, created on the first run of the grid."""
    digest = grid_hash(runs)
    found = tracking.search_runs(sweep.name, f"tags.{schema.TAG_GRID_HASH} = '{digest}'")
    if len(found):
        return found.sort_values("start_time").iloc[-1]["run_id"], True
    run_id = tracking.start_run(sweep.name, f"sweep-{sweep.name}", params=sweep.source,
                                tags={schema.TAG_SWEEP: sweep.name, schema.TAG_GRID_HASH: digest})
    tracking.log_text(run_id, schema.ARTIFACT_SWEEP, yaml.safe_dump(sweep.source, sort_keys=False))
    return run_id, False


def _plan(sweep: Sweep, runs: list[RunConfig], finished: set[str], how: str, parent: tuple[str, bool]) -> str:
    """What the sweep will do: runs by method, how many already finished, where results go."""
    total = Counter(cfg.method for cfg in runs)
    done = Counter(cfg.method for cfg in runs if cfg.config_hash() in finished)
    width = max(len(m) for m in total)
    lines = [f"sweep {sweep.name}: {len(runs)} runs, {sum(done.values())} already finished, "
             f"{len(runs) - sum(done.values())} to run {how}",
             f"  {'method':<{width}}  runs  finished"]
    lines += [f"  {m:<{width}}  {n:>4}  {done[m]:>8}" for m, n in total.items()]
    lines += [f"results: experiment {sweep.name!r} in {tracking.tracking_uri()} "
              f"(parent run {parent[0]}{', reused' if parent[1] else ''})",
              f"trained-model cache: {', '.join(sorted({cfg.cache_dir for cfg in runs}))}"]
    return "\n".join(lines)


def _measure_missing_latency(experiment: str, runs: list[RunConfig]) -> None:
    """Measure latency, on the now idle machine, of each FINISHED run of the grid that lacks it."""
    by_hash = {cfg.config_hash(): cfg for cfg in runs}
    frame = _finished_runs(experiment)
    column = f"metrics.{schema.LATENCY_MS_B1}"
    if column in frame:
        frame = frame[frame[column].isna()]
    frame = frame[frame[f"tags.{schema.TAG_CONFIG_HASH}"].isin(by_hash)]
    for run_id, config_hash in tqdm(list(zip(frame["run_id"], frame[f"tags.{schema.TAG_CONFIG_HASH}"], strict=True)),
                                    desc="latency", unit="run", leave=False, dynamic_ncols=True, disable=frame.empty):
        in_shape = tuple(tracking.load_json(run_id, schema.ARTIFACT_STRUCTURE)["in_shape"])
        device = resolve_device(by_hash[config_hash].device)
        tracking.log_metrics(run_id, latency_metrics(load_model(run_id), in_shape, device))


def _summary(name: str, results: list[RunResult], skipped_before: int, not_run: int, seconds: float) -> str:
    """Counts of finished, skipped and failed runs, and each failure's run name and error."""
    count = Counter(r.status for r in results)
    skipped = skipped_before + count[schema.STATUS_SKIPPED]
    lines = [f"sweep {name}: {count[schema.STATUS_FINISHED]} finished, {skipped} skipped (already finished), "
             f"{count[schema.STATUS_FAILED]} failed" + (f", {not_run} not run" if not_run else "")
             + f" in {seconds:.0f} s"]
    lines += [f"  FAILED {run_name(r.config)}: {r.error}" for r in results if r.status == schema.STATUS_FAILED]
    return "\n".join(lines)


def run_sweep(path: str, *, jobs: int = 1, executor: str = "local", address: str | None = None,
              local_cpus: int | None = None, cpus_per_run: int | None = None,
              gpus_per_run: float | None = None) -> int:
    """Run the sweep file at `path`: 0 when every run finished or was skipped, 1 when one failed, 130 when interrupted.

    A bad sweep file, executor, job count or Ray option, or a missing dataset, raises a one-line
    ConfigError/DataError before anything trains. The Ray options (see cluster.run_on_ray) need executor ray.
    """
    return run_grid(load_sweep(path), jobs=jobs, executor=executor, address=address, local_cpus=local_cpus,
                    cpus_per_run=cpus_per_run, gpus_per_run=gpus_per_run)


def run_grid(sweep: Sweep, *, jobs: int = 1, executor: str = "local", address: str | None = None,
             local_cpus: int | None = None, cpus_per_run: int | None = None,
             gpus_per_run: float | None = None) -> int:
    """Run a parsed sweep (see run_sweep for the exit codes)."""
    if executor not in EXECUTORS:
        raise ConfigError(f"sweep: executor must be one of {', '.join(EXECUTORS)}; got {executor!r}")
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ConfigError(f"sweep: jobs must be an integer >= 1; got {jobs!r}")
    ray_options = {"address": address, "local_cpus": local_cpus, "cpus_per_run": cpus_per_run,
                   "gpus_per_run": gpus_per_run}
    given = [name for name, value in ray_options.items() if value is not None]
    if executor == "local" and given:
        raise ConfigError(f"sweep: {given[0]} applies to executor ray only; got executor 'local'")
    if executor == "ray":
        if jobs != 1:
            raise ConfigError("sweep: jobs applies to executor local only; with executor ray the cluster's free "
                              "CPUs and GPUs set how many runs go at once (see cpus_per_run, gpus_per_run)")
        cluster.check_options(**ray_options)
    runs = expand(sweep)
    _check_inputs(runs)
    # Created and migrated once here: MLflow's migrations race when several workers open a fresh store.
    tracking.ensure_store()
    finished = set(_finished_runs(sweep.name)[f"tags.{schema.TAG_CONFIG_HASH}"].dropna())
    pending = [cfg for cfg in runs if cfg.config_hash() not in finished]
    parent = _parent_run(sweep, runs)
    how = f"as Ray tasks on {cluster.describe(address)}" if executor == "ray" else (
        f"with {jobs} job{'s' if jobs > 1 else ''}")
    print(_plan(sweep, runs, finished, how, parent), flush=True)
    results: list[RunResult] = []
    started = time.perf_counter()
    status, error = schema.STATUS_FAILED, "the sweep stopped on an error"
    try:
        with tqdm(total=len(runs), initial=len(runs) - len(pending), desc=f"sweep {sweep.name}", unit="run",
                  position=0, leave=True, dynamic_ncols=True) as bar:
            if executor == "ray":
                cluster.run_on_ray(pending, parent[0], results, bar, **ray_options)
            elif jobs == 1:
                run_sequential(pending, parent[0], results, bar)
            else:
                run_parallel(pending, parent[0], jobs, results, bar)
        _measure_missing_latency(sweep.name, runs)
        failed = sum(r.status == schema.STATUS_FAILED for r in results)
        status, error = (schema.STATUS_FAILED, f"{failed} of {len(runs)} runs failed") if failed else (
            schema.STATUS_FINISHED, None)
    except KeyboardInterrupt:
        status, error = schema.STATUS_KILLED, "interrupted"
        print("sweep interrupted: run the same command again to resume", file=sys.stderr)
        return 130
    finally:
        tracking.end_run(parent[0], status, error)
        print(_summary(sweep.name, results, len(runs) - len(pending), len(pending) - len(results),
                       time.perf_counter() - started), flush=True)
    return 1 if status == schema.STATUS_FAILED else 0

