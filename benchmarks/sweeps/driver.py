"""`lorita-bench sweep`: run a grid resumably, with a plan first and a summary last, on the chosen executor.

Runs already FINISHED in the store are skipped, interrupted ones resume from their checkpoints, a failed run is
recorded and the sweep goes on; latency is measured afterwards, on the otherwise idle machine.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from collections import Counter
from typing import Any

import pandas as pd
import yaml
from tqdm.auto import tqdm

from benchmarks import tracking
from benchmarks.config import EXECUTORS, ConfigError, RunConfig
from benchmarks.data import fingerprint, load_dataset
from benchmarks.methods import get_method
from benchmarks.models import create_model
from benchmarks.results import finished_runs, results_table
from benchmarks.run import claims
from benchmarks.run.environment import resolve_device
from benchmarks.run.measure import latency_metrics
from benchmarks.run.pipeline import RunResult, criterion_batches, load_model, run_name
from benchmarks.run.speed import cached, tables
from benchmarks.sweeps import cluster
from benchmarks.sweeps.grid import Sweep, check_inputs, expand, grid_hash, load_sweep
from benchmarks.sweeps.local import run_parallel, run_sequential
from benchmarks.sweeps.schedule import EXIT_INCOMPLETE
from benchmarks.tracking import notes, schema
from benchmarks.tuning.tuner import tune

Identity = tuple[str, str]  # (config hash, data fingerprint): what makes two runs the same measurement


def _identities(runs: list[RunConfig]) -> dict[str, Identity]:
    """Each run's identity by config hash; each dataset is fingerprinted once (from its cache after the first)."""
    def source(cfg: RunConfig) -> tuple:
        return cfg.dataset, cfg.data_root, cfg.cache_dir, json.dumps(cfg.dataset_kwargs, sort_keys=True)

    prints = {key: fingerprint(key[0], data_root=key[1], cache_dir=key[2], options=json.loads(key[3]))
              for key in dict.fromkeys(source(cfg) for cfg in runs)}
    return {(h := cfg.config_hash()): (h, prints[source(cfg)]) for cfg in runs}


def _finished_runs(experiment: str) -> pd.DataFrame:
    """The experiment's FINISHED runs, with config-hash and data-fingerprint columns even when there are none."""
    frame = tracking.search_runs(experiment, f"attributes.status = '{schema.STATUS_FINISHED}'")
    columns = [f"tags.{schema.TAG_CONFIG_HASH}", f"tags.{schema.TAG_DATA_FINGERPRINT}"]
    return frame.reindex(columns=frame.columns.union(columns))


def _finished(experiment: str) -> set[Identity]:
    frame = _finished_runs(experiment)
    return set(zip(frame[f"tags.{schema.TAG_CONFIG_HASH}"], frame[f"tags.{schema.TAG_DATA_FINGERPRINT}"],
                   strict=True))


def _parent_run(sweep: Sweep, runs: list[RunConfig]) -> tuple[str, bool]:
    """(id, reused): the sweep's parent run for this grid, created on the first run of the grid."""
    digest = grid_hash(runs)
    found = tracking.search_runs(sweep.name, f"tags.{schema.TAG_GRID_HASH} = '{digest}'")
    if len(found):
        return found.sort_values("start_time").iloc[-1]["run_id"], True
    run_id = tracking.start_run(sweep.name, f"sweep-{sweep.name}", params=sweep.source,
                                tags={schema.TAG_SWEEP: sweep.name, schema.TAG_GRID_HASH: digest,
                                      schema.TAG_NOTE: notes.sweep_note(sweep.name, len(runs))})
    tracking.log_text(run_id, schema.ARTIFACT_SWEEP, yaml.safe_dump(sweep.source, sort_keys=False))
    return run_id, False


def _plan(sweep: Sweep, runs: list[RunConfig], done_hashes: set[str], how: str, parent: tuple[str, bool]) -> str:
    """What the sweep will do: runs by method, how many already finished, where results go."""
    total = Counter(cfg.method for cfg in runs)
    done = Counter(cfg.method for cfg in runs if cfg.config_hash() in done_hashes)
    width = max(len(m) for m in total)
    lines = [f"sweep {sweep.name}: {len(runs)} runs, {sum(done.values())} already finished, "
             f"{len(runs) - sum(done.values())} to run {how}",
             f"  {'method':<{width}}  runs  finished"]
    lines += [f"  {m:<{width}}  {n:>4}  {done[m]:>8}" for m, n in total.items()]
    lines += [f"results: experiment {sweep.name!r} in {tracking.tracking_uri()} "
              f"(parent run {parent[0]}{', reused' if parent[1] else ''})",
              f"trained-model cache: {', '.join(sorted({cfg.cache_dir for cfg in runs}))}"]
    return "\n".join(lines)


def _measure_missing_latency(experiment: str, runs: list[RunConfig], identities: dict[str, Identity]) -> None:
    """Measure latency, on the now idle machine, of each FINISHED run of the grid that lacks it, once.

    A run's latency is measured by one sweep only (a claim per run, and a second look at the store under it)
    and never rewritten; a measurement taken while the CPU was busy is flagged.
    """
    by_identity = {identities[cfg.config_hash()]: cfg for cfg in runs}
    frame = _finished_runs(experiment)
    column = f"metrics.{schema.LATENCY_MS_B1}"
    if column in frame:
        frame = frame[frame[column].isna()]
    not_applicable = f"tags.{schema.TAG_NOT_APPLICABLE}"
    if not_applicable in frame:  # recorded without a model: nothing to time
        frame = frame[frame[not_applicable].isna()]
    found = [(row["run_id"], by_identity[key]) for row in frame.to_dict("records")
             if (key := (row[f"tags.{schema.TAG_CONFIG_HASH}"], row[f"tags.{schema.TAG_DATA_FINGERPRINT}"]))
             in by_identity]
    for run_id, cfg in tqdm(found, desc="latency", unit="run", leave=False, dynamic_ncols=True, disable=not found):
        with claims.claimed(f"latency-{run_id}", wait=False) as mine:
            if not mine or tracking.has_metric(run_id, schema.LATENCY_MS_B1):
                continue  # another sweep measures it, or has
            structure = tracking.load_json(run_id, schema.ARTIFACT_STRUCTURE)
            in_shape = tuple(structure["in_shape"])
            device = resolve_device(cfg.device)
            method = get_method(cfg.method)
            # The uncompressed network's latency does not depend on its weights: a fresh one is timed beside.
            base = create_model(cfg.model, structure["num_classes"], in_shape, **cfg.model_kwargs)
            record = latency_metrics(load_model(run_id, cfg), base, in_shape, device, cfg.latency_batch,
                                     cached(cfg, method, base, in_shape, device), cfg.latency_backend)
            tracking.log_metrics(run_id, record.metrics)
            tracking.set_tags(run_id, record.tags)


def _summary(name: str, results: list[RunResult], skipped_before: int, not_run: int, seconds: float) -> str:
    """Counts of finished, skipped, held and failed runs, and each failed, held or not applicable run's name."""
    count = Counter(r.status for r in results)
    skipped = skipped_before + count[schema.STATUS_SKIPPED]
    held = count[schema.STATUS_HELD]
    not_applicable = [r for r in results if r.not_applicable]
    lines = [f"sweep {name}: {count[schema.STATUS_FINISHED]} finished"
             + (f" ({len(not_applicable)} of them not applicable, not trained)" if not_applicable else "")
             + f", {skipped} skipped (already finished), "
             + (f"{held} held by another process, " if held else "")
             + f"{count[schema.STATUS_FAILED]} failed" + (f", {not_run} not run" if not_run else "")
             + f" in {seconds:.0f} s"]
    lines += [f"  FAILED {run_name(r.config)}: {r.error}" for r in results if r.status == schema.STATUS_FAILED]
    lines += [f"  HELD {run_name(r.config)}: another process is running it (--wait waits for it)"
              for r in results if r.status == schema.STATUS_HELD]
    lines += [f"  N/A {run_name(r.config)}: {r.not_applicable}" for r in not_applicable]
    return "\n".join(lines)


def check_models(runs: list[RunConfig]) -> None:
    """Build each distinct model of `runs` once, on its data's shape: a typo in a model name or option is then one line
    before anything is recorded, not a FAILED run per config."""
    shapes: dict[tuple, tuple[int, tuple[int, int, int]]] = {}
    built = set()
    for cfg in runs:
        source = (cfg.dataset, cfg.data_root, cfg.cache_dir, json.dumps(cfg.dataset_kwargs, sort_keys=True))
        if source not in shapes:
            data = load_dataset(cfg.dataset, data_root=cfg.data_root, cache_dir=cfg.cache_dir,
                                options=cfg.dataset_kwargs)
            shapes[source] = data.num_classes, data.in_shape
        key = (cfg.model, json.dumps(cfg.model_kwargs, sort_keys=True), shapes[source])
        if key not in built:
            create_model(cfg.model, *shapes[source], **cfg.model_kwargs)
            built.add(key)


def grid_results(experiment: str, identities: dict[str, Identity]) -> str:
    """The results table of the grid's finished runs (those of its configs on its data)."""
    frame = finished_runs(experiment)
    keys = list(zip(frame.get(f"tags.{schema.TAG_CONFIG_HASH}", []), frame.get(f"tags.{schema.TAG_DATA_FINGERPRINT}",
                                                                                []), strict=True))
    ours = set(identities.values())
    return f"results of sweep {experiment}:\n" + results_table(frame[[key in ours for key in keys]])


def run_sweep(path: str, *, jobs: int = 1, executor: str = "local", address: str | None = None,
              local_cpus: int | None = None, cpus_per_run: int | None = None,
              gpus_per_run: float | None = None, wait: bool = False) -> int:
    """Run the sweep file at `path`: 0 when every run finished or was skipped, 1 when one failed, 3 when another
    process holds some (the grid is incomplete), 130 when interrupted.

    A sweep with a `tuning:` block first tunes every method alike (benchmarks.tuning.tuner) and then runs the
    grid with the selected values. A bad sweep file, executor, job count or Ray option, or a missing dataset,
    raises a one-line ConfigError/DataError before anything trains. The Ray options (see cluster.ray_session) need
    executor ray. `wait` waits for runs another process holds (as the sweep file's `wait: true`).
    """
    sweep = load_sweep(path)
    if wait:
        sweep = dataclasses.replace(sweep, common={**sweep.common, "wait": True})
    ray_options = {"address": address, "local_cpus": local_cpus, "cpus_per_run": cpus_per_run,
                   "gpus_per_run": gpus_per_run}
    check_executor(jobs, executor, ray_options)
    runs = None
    if sweep.tuning is not None:
        tables(expand(sweep), criterion_batches)  # the trials read them: measured here first, on the idle machine
        selection = tune(sweep, jobs=jobs, executor=executor, ray_options=ray_options,
                         wait=bool(sweep.common.get("wait")))
        if selection.code:
            return selection.code
        runs = selection.runs
    return run_grid(sweep, runs, jobs=jobs, executor=executor, **ray_options)


def check_executor(jobs: int, executor: str, ray_options: dict[str, Any]) -> None:
    """One-line ConfigError for a bad executor, job count or Ray option (or a missing ray)."""
    if executor not in EXECUTORS:
        raise ConfigError(f"sweep: executor must be one of {', '.join(EXECUTORS)}; got {executor!r}")
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ConfigError(f"sweep: jobs must be an integer >= 1; got {jobs!r}")
    given = [name for name, value in ray_options.items() if value is not None]
    if executor == "local" and given:
        raise ConfigError(f"sweep: {given[0]} applies to executor ray only; got executor 'local'")
    if executor == "ray":
        if jobs != 1:
            raise ConfigError("sweep: jobs applies to executor local only; with executor ray the cluster's free "
                              "CPUs and GPUs set how many runs go at once (see cpus_per_run, gpus_per_run)")
        cluster.check_options(**ray_options)


def run_grid(sweep: Sweep, runs: list[RunConfig] | None = None, *, jobs: int = 1, executor: str = "local",
             address: str | None = None, local_cpus: int | None = None, cpus_per_run: int | None = None,
             gpus_per_run: float | None = None) -> int:
    """Run a parsed sweep's grid, or `runs` of it (a tuned grid); see run_sweep for the exit codes."""
    ray_options = {"address": address, "local_cpus": local_cpus, "cpus_per_run": cpus_per_run,
                   "gpus_per_run": gpus_per_run}
    check_executor(jobs, executor, ray_options)
    if runs is None:
        if sweep.tuning is not None:
            raise ConfigError("sweep: a sweep with a tuning block runs through run_sweep, which tunes it first")
        runs = expand(sweep)
    check_inputs(runs)
    # Created and migrated once here: MLflow's migrations race when several workers open a fresh store.
    tracking.ensure_store()
    identities = _identities(runs)
    finished = _finished(sweep.name)
    pending = [cfg for cfg in runs if identities[cfg.config_hash()] not in finished]
    done_hashes = {cfg.config_hash() for cfg in runs} - {cfg.config_hash() for cfg in pending}
    check_models(pending)
    # Measured here, one layer at a time, before any worker loads the machine; and before the parent run, so that an
    # unreachable speed-up is one line with nothing recorded.
    tables(pending, criterion_batches)
    parent = _parent_run(sweep, runs)
    how = f"as Ray tasks on {cluster.describe(address)}" if executor == "ray" else (
        f"with {jobs} job{'s' if jobs > 1 else ''}")
    print(_plan(sweep, runs, done_hashes, how, parent), flush=True)
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
        _measure_missing_latency(sweep.name, runs, identities)
        failed = sum(r.status == schema.STATUS_FAILED for r in results)
        held = sum(r.status == schema.STATUS_HELD for r in results)
        if failed:
            status, error = schema.STATUS_FAILED, f"{failed} of {len(runs)} runs failed"
        elif held:
            # Incomplete, not failed: the grid is FINISHED only once every run of it is.
            status, error = schema.STATUS_KILLED, f"{held} of {len(runs)} runs held by another process"
        else:
            status, error = schema.STATUS_FINISHED, None
    except KeyboardInterrupt:
        status, error = schema.STATUS_KILLED, "interrupted"
        print("sweep interrupted: run the same command again to resume", file=sys.stderr)
        return 130
    finally:
        tracking.end_run(parent[0], status, error)
        print(_summary(sweep.name, results, len(runs) - len(pending), len(pending) - len(results),
                       time.perf_counter() - started), flush=True)
    # Not in `finally`: an interrupted or broken sweep ends with its summary, and a store that is away says so once.
    print(grid_results(sweep.name, identities), flush=True)
    return 1 if status == schema.STATUS_FAILED else EXIT_INCOMPLETE if status == schema.STATUS_KILLED else 0

