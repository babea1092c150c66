"""`lorita-bench sweep`: expand a YAML grid into runs and execute them resumably, in sequence or in parallel.

A sweep file names the grid's axes (models, datasets, methods, factors, targets, seeds, budget); every
combination becomes one RunConfig, validated before anything trains. Runs already FINISHED in the store are
skipped, interrupted ones resume from their checkpoints, a failed run is recorded and the sweep goes on.
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
import sys
import time
from collections import Counter
from collections.abc import Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch
import yaml
from tqdm.auto import tqdm

from benchmarks import interrupts, methods, pipeline, schema, tracking
from benchmarks.config import EXECUTORS, TARGET_METRICS, ConfigError, RunConfig, load_yaml, make_config, stable_hash
from benchmarks.data import check_available
from benchmarks.pipeline import RunResult, run_name, trained_key

# Top-level keys of a sweep file, with what each holds (the error for an unknown key lists them).
SWEEP_KEYS = {
    "name": "the MLflow experiment name",
    "models": "model names or {name: ..., <model options>} mappings",
    "datasets": "dataset names or {name: ..., data_root: ...} mappings",
    "methods": "method names (see lorita-bench methods)",
    "factors": "LoRITa's N values (other methods train with factors = 1)",
    "targets": "{flops_drop: [...], params_drop: [...]}",
    "seeds": "integer seeds",
    "budget": "budget fields; a list value makes one budget per value",
    "method_options": "{method: {option: value}}",
    "device": "auto, cpu, cuda or cuda:N",
    "cache_dir": "the trained-model cache",
    "exclude": "module-name globs every compression keeps whole",
    "mode": "LoRITa's forward mode",
}
REQUIRED_KEYS = ("name", "models", "datasets", "methods")
# Keys copied unchanged into every run's config.
COMMON_KEYS = ("device", "cache_dir", "exclude", "mode")
DATASET_KEYS = ("name", "data_root")
# Tag of the parent run: the grid it stands for, so a rerun of the same grid nests under the same parent.
STATUS_SKIPPED = "SKIPPED"  # execute()'s status for a run found already FINISHED (another process finished it)


@dataclass(frozen=True)
class Sweep:
    """A sweep file, checked: the axes of its grid and the settings shared by every run."""

    name: str
    models: list[dict]  # {"model": ..., "model_kwargs": {...}}
    datasets: list[dict]  # {"dataset": ..., "data_root": ...}
    methods: list[str]
    factors: list[int | None]  # None: lorita's default
    targets: list[tuple[str, float]]  # (target_metric, target)
    seeds: list[int]
    budgets: list[dict]  # one budget mapping per combination of list-valued fields
    method_options: dict[str, dict]
    common: dict  # COMMON_KEYS given in the file
    source: dict  # the file's mapping, recorded with the parent run


def _as_list(key: str, value: Any) -> list:
    items = value if isinstance(value, list) else [value]
    if not items or value is None:
        raise ConfigError(f"sweep: {key} must be a non-empty list of {SWEEP_KEYS[key]}; got {value!r}")
    return items


def _model(index: int, entry: Any) -> dict:
    if isinstance(entry, str):
        return {"model": entry, "model_kwargs": {}}
    if isinstance(entry, Mapping) and isinstance(entry.get("name"), str):
        return {"model": entry["name"], "model_kwargs": {k: v for k, v in entry.items() if k != "name"}}
    raise ConfigError(f"sweep: models[{index}] must be a model name or {{name: ..., <model options>}}; got {entry!r}")


def _dataset(index: int, entry: Any) -> dict:
    if isinstance(entry, str):
        return {"dataset": entry}
    if not isinstance(entry, Mapping) or not isinstance(entry.get("name"), str):
        raise ConfigError(f"sweep: datasets[{index}] must be a dataset name or {{name: ..., data_root: ...}}; "
                          f"got {entry!r}")
    unknown = [k for k in entry if k not in DATASET_KEYS]
    if unknown:
        raise ConfigError(f"sweep: datasets[{index}] has unknown key {unknown[0]!r}; "
                          f"allowed: {', '.join(DATASET_KEYS)}")
    return {"dataset": entry["name"], **({"data_root": entry["data_root"]} if "data_root" in entry else {})}


def _targets(value: Any) -> list[tuple[str, float]]:
    if not isinstance(value, Mapping) or not value:
        raise ConfigError(f"sweep: targets must be a mapping {SWEEP_KEYS['targets']}; got {value!r}")
    for metric in value:
        if metric not in TARGET_METRICS:
            raise ConfigError(f"sweep: unknown key 'targets.{metric}'; allowed: {', '.join(TARGET_METRICS)}")
    return [(metric, target) for metric, values in value.items() for target in _as_list("targets", values)]


def _budgets(value: Any) -> list[dict]:
    if not isinstance(value, Mapping):
        raise ConfigError(f"sweep: budget must be a mapping of budget fields (e.g. {{epochs: 30}}); got {value!r}")
    axes = {key: items if isinstance(items, list) else [items] for key, items in value.items()}
    for key, items in axes.items():
        if not items:
            raise ConfigError(f"sweep: budget.{key} is an empty list; give at least one value")
    return [dict(zip(axes, combination, strict=True)) for combination in itertools.product(*axes.values())]


def _method_options(value: Any, names: list[str]) -> dict[str, dict]:
    if not isinstance(value, Mapping):
        raise ConfigError(f"sweep: method_options must be a mapping {SWEEP_KEYS['method_options']}; got {value!r}")
    for method, options in value.items():
        if method not in names:
            raise ConfigError(f"sweep: method_options.{method}: not a method of this sweep; "
                              f"allowed: {', '.join(names)}")
        if not isinstance(options, Mapping):
            raise ConfigError(f"sweep: method_options.{method} must be a mapping of options; got {options!r}")
    return {method: dict(options) for method, options in value.items()}


def parse_sweep(data: Mapping[str, Any]) -> Sweep:
    """A checked Sweep from the mapping of a sweep file (one-line ConfigError naming the bad key)."""
    for key in data:
        if key not in SWEEP_KEYS:
            raise ConfigError(f"sweep: unknown key {key!r}; allowed: {', '.join(SWEEP_KEYS)}")
    for key in REQUIRED_KEYS:
        if key not in data:
            raise ConfigError(f"sweep: missing key {key!r} ({SWEEP_KEYS[key]})")
    name = data["name"]
    if not isinstance(name, str) or not name:
        raise ConfigError(f"sweep: name must be a non-empty string ({SWEEP_KEYS['name']}); got {name!r}")
    names = _as_list("methods", data["methods"])
    if not all(isinstance(m, str) for m in names):
        raise ConfigError(f"sweep: methods must be a list of method names; got {data['methods']!r}")
    if "targets" not in data and any(m != "dense" for m in names):
        raise ConfigError("sweep: missing key 'targets' (every method but dense compresses to a target), "
                          "e.g. targets: {flops_drop: [0.5]}")
    return Sweep(
        name=name,
        models=[_model(i, e) for i, e in enumerate(_as_list("models", data["models"]))],
        datasets=[_dataset(i, e) for i, e in enumerate(_as_list("datasets", data["datasets"]))],
        methods=names,
        factors=_as_list("factors", data["factors"]) if "factors" in data else [None],
        targets=_targets(data["targets"]) if "targets" in data else [],
        seeds=_as_list("seeds", data["seeds"]) if "seeds" in data else [0],
        budgets=_budgets(data.get("budget") or {}),
        method_options=_method_options(data.get("method_options") or {}, names),
        common={key: data[key] for key in COMMON_KEYS if key in data},
        source=dict(data),
    )


def load_sweep(path: str) -> Sweep:
    """The checked Sweep in the YAML file at `path`."""
    return parse_sweep(load_yaml(path))


def _variants(sweep: Sweep) -> list[dict]:
    """Method, factors and target of every run of one (model, dataset, seed, budget); dense first."""
    variants = [{"method": "dense"}] if "dense" in sweep.methods else []
    for method in (m for m in sweep.methods if m != "dense"):
        options = {"method_options": sweep.method_options[method]} if method in sweep.method_options else {}
        factors = sweep.factors if method == "lorita" else [None]
        variants += [{"method": method, "factors": n, "target_metric": metric, "target": target, **options}
                     for metric, target in sweep.targets for n in factors]
    return variants


def expand(sweep: Sweep) -> list[RunConfig]:
    """Every run of the grid, validated and resolved, ordered so that runs sharing a trained model are adjacent."""
    unique: dict[str, RunConfig] = {}
    for budget, model, dataset, seed in itertools.product(sweep.budgets, sweep.models, sweep.datasets, sweep.seeds):
        base = {"experiment": sweep.name, **sweep.common, **model, **dataset, "seed": seed, "budget": budget}
        for variant in _variants(sweep):
            cfg = methods.resolve(make_config({**base, **variant}))
            # A repeated axis value (factors: [2, 2]) would otherwise run the same config twice at once.
            unique.setdefault(cfg.config_hash(), cfg)
    # Stable sort by the trained model's first appearance: its producer (dense before the methods that
    # start from the dense model) comes first and the runs that reuse it from the cache follow.
    first: dict[str, int] = {}
    for cfg in unique.values():
        first.setdefault(trained_key(cfg), len(first))
    return sorted(unique.values(), key=lambda cfg: first[trained_key(cfg)])


def _grid_hash(runs: list[RunConfig]) -> str:
    """Identity of a grid: the set of its runs' config hashes."""
    return stable_hash(sorted(cfg.config_hash() for cfg in runs))


def _check_inputs(runs: list[RunConfig]) -> None:
    """Fail before anything trains on a missing dataset, an unwritable cache or an absent device."""
    for dataset, data_root in dict.fromkeys((cfg.dataset, cfg.data_root) for cfg in runs):
        check_available(dataset, data_root)
    for cache_dir in {cfg.cache_dir for cfg in runs}:
        pipeline.check_writable(cache_dir)
    for device in {cfg.device for cfg in runs}:
        pipeline.resolve_device(device)


def _finished_runs(experiment: str) -> pd.DataFrame:
    """The experiment's FINISHED runs, with a config-hash column even when there are none."""
    frame = tracking.search_runs(experiment, f"attributes.status = '{schema.STATUS_FINISHED}'")
    return frame.reindex(columns=frame.columns.union([f"tags.{schema.TAG_CONFIG_HASH}"]))


def _parent_run(sweep: Sweep, runs: list[RunConfig]) -> tuple[str, bool]:
    """(id, reused): the sweep's parent run for this grid, created on the first run of the grid."""
    digest = _grid_hash(runs)
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


def _one_line(err: BaseException) -> str:
    return " ".join(f"{type(err).__name__}: {err}".split())


# Set in a worker that Ctrl-C reached: the runs already queued to it (which the parent can no longer cancel)
# are then not started.
_interrupted = False


def _run_one(cfg: RunConfig, parent_run_id: str, latency: bool) -> RunResult:
    """Execute one run of the sweep; its failure (recorded FAILED by execute) comes back as a FAILED result."""
    global _interrupted
    if _interrupted:
        return RunResult(cfg, None, schema.STATUS_KILLED, error="interrupted")
    try:
        result = pipeline.execute(cfg, parent_run_id=parent_run_id, latency=latency,
                                  tags={schema.TAG_SWEEP: cfg.experiment})
    except KeyboardInterrupt:
        _interrupted = True
        raise
    except ConnectionError:  # the tracking server is away: every further run would fail alike, so the sweep stops
        raise
    except Exception as err:  # noqa: BLE001 - one failed run must not stop the sweep
        # execute() does not return the id of the run it recorded FAILED: the newest such run is it.
        result = RunResult(cfg, tracking.find_run(cfg.experiment, cfg.config_hash(), (schema.STATUS_FAILED,)),
                           schema.STATUS_FAILED, error=_one_line(err))
    return result


def _run_sequential(pending: list[RunConfig], parent_run_id: str, results: list[RunResult], bar: tqdm) -> None:
    for cfg in pending:
        bar.set_postfix_str(run_name(cfg))
        results.append(_run_one(cfg, parent_run_id, latency=True))
        bar.update()


def _init_worker(threads: int) -> None:
    torch.set_num_threads(threads)
    interrupts.install()


def _worker_env(threads: int) -> dict[str, str]:
    """Environment of a worker process: no oversubscribed thread pools, no epoch bars fighting the sweep's bar."""
    return {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "TQDM_DISABLE": "1"}


def _groups(pending: list[RunConfig]) -> list[list[RunConfig]]:
    """Pending runs by the trained model they share, each group's first run the one that trains it."""
    groups: dict[str, list[RunConfig]] = {}
    for cfg in pending:
        groups.setdefault(trained_key(cfg), []).append(cfg)
    return list(groups.values())


def _run_parallel(pending: list[RunConfig], parent_run_id: str, jobs: int, results: list[RunResult],
                  bar: tqdm) -> None:
    threads = max(1, (os.cpu_count() or 1) // jobs)
    env = _worker_env(threads)
    context = multiprocessing.get_context("spawn")
    with tracking.environment(env), ProcessPoolExecutor(jobs, mp_context=context, initializer=_init_worker,
                                                 initargs=(threads,)) as pool:
        # Producers first, each training a different model; a group's other runs are submitted once its
        # model is cached, so no worker sits waiting on another's trained-model lock.
        waiting: dict[Future, list[RunConfig]] = {
            pool.submit(_run_one, group[0], parent_run_id, False): group[1:] for group in _groups(pending)}
        try:
            while waiting:
                done, _ = wait(waiting, return_when=FIRST_COMPLETED)
                for future in done:
                    rest = waiting.pop(future)
                    results.append(future.result())
                    bar.update()
                    waiting.update({pool.submit(_run_one, cfg, parent_run_id, False): [] for cfg in rest})
        except KeyboardInterrupt:
            pool.shutdown(wait=False, cancel_futures=True)
            raise


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
        device = pipeline.resolve_device(by_hash[config_hash].device)
        tracking.log_metrics(run_id, pipeline.measure_latency(pipeline.load_model(run_id), in_shape, device))


def _summary(name: str, results: list[RunResult], skipped_before: int, not_run: int, seconds: float) -> str:
    """Counts of finished, skipped and failed runs, and each failure's run name and error."""
    count = Counter(r.status for r in results)
    skipped = skipped_before + count[STATUS_SKIPPED]
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
        from benchmarks import cluster  # imports ray, an optional extra, only when a sweep runs on it

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
                _run_sequential(pending, parent[0], results, bar)
            else:
                _run_parallel(pending, parent[0], jobs, results, bar)
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

