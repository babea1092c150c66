"""A tuned sweep's first stage: every method's study run to its trials, on the sweep's executor, then the selection.

The plan comes first (studies, trials, trainings, a time estimate from measured step times); trials run one per
task, in this process, on `--jobs` workers or as Ray tasks, each study's trials interleaved with the others'; the
best values per method come back for the reported grid. Resumable like a sweep: the same command again counts
what each study has, retries killed trials with their values and runs the rest.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Callable
from concurrent.futures import as_completed
from typing import Any

from tqdm.auto import tqdm

from benchmarks import tracking
from benchmarks.config import RunConfig, stable_hash
from benchmarks.methods import SearchRange
from benchmarks.run import claims
from benchmarks.sweeps import cluster
from benchmarks.sweeps.estimate import Estimate, duration, estimate
from benchmarks.sweeps.grid import Sweep, check_inputs
from benchmarks.sweeps.local import worker_pool
from benchmarks.sweeps.schedule import EXIT_INCOMPLETE
from benchmarks.sweeps.worker import guarded, init_worker
from benchmarks.tracking import schema
from benchmarks.tuning import study as studies
from benchmarks.tuning.space import FACTORS, Dimension, Tuning
from benchmarks.tuning.storage import prepare, storage_url
from benchmarks.tuning.units import Unit, apply, tuned_grid, tuned_runs, units


@dataclasses.dataclass(frozen=True)
class Selection:
    """The tuning's end: an exit code (0: every study complete) and, when 0, the reported grid's runs."""

    code: int
    runs: list[RunConfig]


def _shown(dim: Dimension) -> str:
    if isinstance(dim, SearchRange):
        return f"[{dim.low:g}, {dim.high:g}]" + (" log" if dim.log else "")
    return "{" + ", ".join(map(str, dim)) + "}"


def _representative(unit: Unit) -> dict[str, Any]:
    # For the estimate: the slowest choice of factors (the rest does not change a step's time).
    values: dict[str, Any] = {k: (d.low if isinstance(d, SearchRange) else d[0]) for k, d in unit.space.items()}
    if FACTORS in unit.space:
        values[FACTORS] = max(unit.space[FACTORS])
    return values


def _plan(sweep: Sweep, found: list[Unit], done: dict[str, int], url: str, parent: str) -> str:
    tuning = sweep.tuning
    assert tuning is not None
    per_trial = {u.key: estimate([apply(cfg, _representative(u)) for cfg in u.configs]).seconds for u in found}
    left = sum(per_trial[u.key] * max(0, tuning.trials - done[u.key]) for u in found)
    # Each method trains its own models in the grid (its selected values are its own): estimated per study.
    grids = [estimate(runs) for runs in tuned_grid(sweep, {u.key: _representative(u) for u in found}).values()]
    grid = Estimate(sum(g.runs for g in grids), sum(g.trainings for g in grids), sum(g.seconds for g in grids))
    objective = ("mean validation accuracy over the grid's targets" if tuning.objective is None
                 else f"validation accuracy at {tuning.objective[0]} {tuning.objective[1]:g}")
    width = max(len(u.name) for u in found)
    lines = [f"tuning {sweep.name}: {len(found)} studies x {tuning.trials} trials, sampler {tuning.sampler}, "
             f"objective {objective} (dense: its own); {tuning.val_fraction:g} of the training data held out "
             f"(stratified, seed {tuning.seed}); the test split is never read",
             f"  {'study':<{width}}  complete  searched"]
    lines += [f"  {u.name:<{width}}  {done[u.key]:>3}/{tuning.trials:<4}  "
              + ", ".join(f"{k} {_shown(d)}" for k, d in u.space.items()) for u in found]
    lines += [f"  trainings: {sum(max(0, tuning.trials - done[u.key]) for u in found)} trials left, then "
              f"{grid.trainings} for the reported grid ({grid.runs} runs); about {duration(left)} of tuning and "
              f"{duration(grid.seconds)} for the grid (measured step time x steps, one at a time; evaluation and "
              "bookkeeping add seconds per trial and run)",
              f"studies: {url}; trials: experiment {sweep.name + schema.TUNING_SUFFIX!r} (parent run {parent})"]
    return "\n".join(lines)


def _parent_run(sweep: Sweep, found: list[Unit]) -> str:
    digest = stable_hash(sorted(u.study for u in found))
    experiment = sweep.name + schema.TUNING_SUFFIX
    existing = tracking.search_runs(experiment, f"tags.{schema.TAG_GRID_HASH} = '{digest}'")
    if len(existing):
        return existing.sort_values("start_time").iloc[-1]["run_id"]
    return tracking.start_run(experiment, f"tuning-{sweep.name}", params={"tuning": sweep.tuning.identity()},
                              tags={schema.TAG_SWEEP: sweep.name, schema.TAG_GRID_HASH: digest})


def _next_trial(task: studies.TrialTask) -> studies.Outcome:
    return guarded(studies.run_next, task, stopped=studies.Outcome(task.unit.key, studies.STOPPED))


def _ray_trial(task: studies.TrialTask, threads: int) -> studies.Outcome:
    init_worker(threads)
    return _next_trial(task)


def _round_robin(found: list[Unit], need: dict[str, int]) -> list[Unit]:
    order, left = [], dict(need)
    while any(left.values()):
        for unit in found:
            if left[unit.key] > 0:
                order.append(unit)
                left[unit.key] -= 1
    return order


def _execute(tasks: list[studies.TrialTask], jobs: int, executor: str, ray_options: dict, parent: str, bar: tqdm,
             on_outcome: Callable[[studies.Outcome], None]) -> None:
    """Run `tasks` (one trial each) on the executor, passing each outcome on as it comes."""
    if executor == "ray":
        with cluster.ray_session(bar, **ray_options) as session:
            task = session.remote(_ray_trial, gpu=tasks[0].unit.configs[0].device != "cpu")
            refs = {task.options(name=f"{t.unit.name}-trial").remote(t, session.cpus): t for t in tasks}
            pending = list(refs)
            try:
                while pending:
                    ready, pending = session.ray.wait(pending, num_returns=1)
                    for ref in ready:
                        outcome, error = session.result(ref)
                        on_outcome(outcome if error is None else
                                   studies.Outcome(refs[ref].unit.key, studies.FAILED, error=error))
            except KeyboardInterrupt:
                cluster.cancel(session, pending)
                raise
    elif jobs == 1:
        for task in tasks:
            on_outcome(studies.run_next(task))
    else:
        with worker_pool(jobs, parent) as pool:
            for future in as_completed([pool.submit(_next_trial, task) for task in tasks]):
                on_outcome(future.result())


def tune(sweep: Sweep, *, jobs: int = 1, executor: str = "local", ray_options: dict | None = None,
         wait: bool = False) -> Selection:
    """Run every study of `sweep` to its trials and select each method's values (see the module docstring).

    Bad tuning storage or data is a one-line ConfigError/DataError before any trial; 1 when a trial failed, 3 when
    another process still runs some trials (unless `wait`), 130 when interrupted.
    """
    tuning: Tuning | None = sweep.tuning
    assert tuning is not None, "tune() is for a sweep with a tuning block"
    ray_options = ray_options or {}
    found = units(sweep)
    if executor == "ray":
        found = [dataclasses.replace(u, configs=tuple(map(cluster.absolute_paths, u.configs))) for u in found]
    check_inputs([cfg for u in found for cfg in u.configs])
    url = storage_url(tuning.storage)
    tracking.ensure_store()
    prepare(url)  # created and migrated once, here, before any worker opens it
    for unit in found:
        studies.create(unit, url)
    parent = _parent_run(sweep, found)
    progress = {u.key: studies.progress(u, url) for u in found}
    done = {key: p.complete for key, p in progress.items()}
    print(_plan(sweep, found, done, url, parent), flush=True)
    started = time.perf_counter()
    failed: list[studies.Outcome] = []
    bar = tqdm(total=tuning.trials * len(found), initial=sum(min(v, tuning.trials) for v in done.values()),
               desc=f"tuning {sweep.name}", unit="trial", dynamic_ncols=True)
    names = {u.key: u.name for u in found}

    def on_outcome(outcome: studies.Outcome) -> None:
        if outcome.status == studies.RAN:
            bar.update()
            bar.set_postfix_str(f"{names[outcome.unit]} trial {outcome.number}: {outcome.objective:.4f}")
        elif outcome.status == studies.FAILED:
            failed.append(outcome)
            bar.write(f"FAILED {names[outcome.unit]} trial {outcome.number}: {outcome.error}")

    try:
        with bar:
            while True:
                need = {k: max(0, tuning.trials - p.complete - p.live) for k, p in progress.items()}
                if failed or not any(need.values()):
                    held = [u.name for u in found if progress[u.key].complete < tuning.trials]
                    if failed or not held:
                        break
                    if not wait:
                        print(f"tuning {sweep.name}: trials of {', '.join(held)} are being run by another process; "
                              "run again later, or with --wait", file=sys.stderr)
                        tracking.end_run(parent, schema.STATUS_KILLED, "trials held by another process")
                        return Selection(EXIT_INCOMPLETE, [])
                    time.sleep(claims.WAIT_POLL_S)
                else:
                    tasks = [studies.TrialTask(u, url, tuning, parent) for u in _round_robin(found, need)]
                    _execute(tasks, jobs, executor, ray_options, parent, bar, on_outcome)
                progress = {u.key: studies.progress(u, url) for u in found}
    except KeyboardInterrupt:
        tracking.end_run(parent, schema.STATUS_KILLED, "interrupted")
        print("tuning interrupted: run the same command again to resume (killed trials are retried with their "
              "values)", file=sys.stderr)
        return Selection(130, [])
    if failed:
        tracking.end_run(parent, schema.STATUS_FAILED, f"{len(failed)} trials failed")
        print(f"tuning {sweep.name}: {len(failed)} trial(s) failed; the reported grid is not run. Fix the cause "
              "and run the same command again: the studies keep their complete trials", file=sys.stderr)
        return Selection(1, [])
    best = {u.key: studies.best(u, url) for u in found}
    tracking.log_json(parent, schema.ARTIFACT_SELECTED, {
        u.study: {"name": u.name, "method": u.configs[0].method, "values": best[u.key].values,
                  "objective": best[u.key].objective, "trial": best[u.key].number, "trials": best[u.key].complete}
        for u in found})
    tracking.end_run(parent, schema.STATUS_FINISHED)
    print(_selected(found, best, time.perf_counter() - started), flush=True)
    return Selection(0, tuned_runs(sweep, {k: b.values for k, b in best.items()}))


def _selected(found: list[Unit], best: dict[str, studies.Best], seconds: float) -> str:
    width = max(len(u.name) for u in found)
    lines = [f"tuning done in {duration(seconds)}; selected on validation data:"]
    for unit in found:
        b = best[unit.key]
        values = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in b.values.items())
        lines.append(f"  {unit.name:<{width}}  objective {b.objective:.4f} (trial {b.number})  {values}")
    lines.append("the reported grid runs these values on the grid's seeds, each run tagged tuned")
    return "\n".join(lines)
