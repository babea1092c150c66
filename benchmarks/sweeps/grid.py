"""A sweep file: its keys checked, its grid expanded into validated run configs.

A sweep file names the grid's axes (models, datasets, methods, factors, targets, seeds, budget); every
combination becomes one RunConfig, validated before anything trains.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from benchmarks.config import (
    LATENCY_DROP,
    MAX_NAME,
    TARGET_METRICS,
    ConfigError,
    RunConfig,
    check_keys,
    load_yaml,
    make_config,
    shown,
    speedup_target,
    stable_hash,
)
from benchmarks.data import check_available
from benchmarks.methods import get_method
from benchmarks.run.environment import check_writable, resolve_device
from benchmarks.run.pipeline import training_group
from benchmarks.tuning.space import FACTORS, Tuning, parse_tuning

# Top-level keys of a sweep file, with what each holds (the error for an unknown key lists them).
SWEEP_KEYS = {
    "name": "the MLflow experiment name",
    "models": "model names or {name: ..., <model options>} mappings",
    "datasets": "dataset names or {name: ..., data_root: ..., dataset_kwargs: {size: ...}, budget: {...}} mappings "
                "(budget: fields this dataset's runs set over the sweep's budget, one value each)",
    "methods": "method names (see lorita-bench methods)",
    "factors": "LoRITa's N values (other methods train with factors = 1)",
    "targets": "{flops_drop: [...], params_drop: [...], latency_drop: [...], speedup: [...]}",
    "seeds": "integer seeds",
    "budget": "budget fields; a list value makes one budget per value",
    "method_options": "{method: {option: value}}",
    "device": "auto, cpu, cuda or cuda:N",
    "cache_dir": "the trained-model cache",
    "exclude": "module-name globs every compression keeps whole",
    "mode": "LoRITa's forward mode",
    "wait": "true: wait for runs another process is running on the store (default false: report them held)",
    "split_seed": "seeds the validation split (budget.val_fraction) for every run alike (default: each run's seed)",
    "latency_batch": "batch size of latency targets and of the latency recorded beside batch 1 (default 128)",
    "latency_backend": "how latency is measured: eager (PyTorch) or ort (ONNX Runtime, CPU)",
    "tuning": "{trials, space, objective, sampler, seed, val_fraction, storage}: tune every method alike first",
}
REQUIRED_KEYS = ("name", "models", "datasets", "methods")
# Keys copied unchanged into every run's config.
COMMON_KEYS = ("device", "cache_dir", "exclude", "mode", "wait", "split_seed", "latency_batch", "latency_backend")
DATASET_KEYS = ("name", "data_root", "dataset_kwargs", "budget")


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
    tuning: Tuning | None = None  # the tuning block: the grid then runs with the values it selects


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
    check_keys(entry, DATASET_KEYS, context="sweep", prefix=f"datasets[{index}].")
    budget = entry.get("budget", {})
    # One value per field: a list would make comparison groups that other datasets of the grid lack.
    if not isinstance(budget, Mapping) or any(isinstance(v, list | Mapping) for v in budget.values()):
        raise ConfigError(f"sweep: datasets[{index}].budget must be a mapping of budget fields to one value each "
                          f"(e.g. {{epochs: 10}}); got {budget!r}")
    options = entry.get("dataset_kwargs", {})
    if not isinstance(options, Mapping):
        raise ConfigError(f"sweep: datasets[{index}].dataset_kwargs must be a mapping of dataset options (e.g. "
                          f"{{size: 32}}); got {options!r}")
    return {"dataset": entry["name"], **({"data_root": entry["data_root"]} if "data_root" in entry else {}),
            **({"dataset_kwargs": dict(options)} if options else {}), **({"budget": dict(budget)} if budget else {})}


# A targets key that lists speed-ups rather than drops.
SPEEDUP = "speedup"


def _targets(value: Any) -> list[tuple[str, float]]:
    if not isinstance(value, Mapping) or not value:
        raise ConfigError(f"sweep: targets must be a mapping {SWEEP_KEYS['targets']}; got {value!r}")
    check_keys(value, (*TARGET_METRICS, SPEEDUP), context="sweep", prefix="targets.")
    # A speed-up S is the latency_drop target 1 - 1/S (the name users think in; the runs record the drop).
    return [(LATENCY_DROP, speedup_target(target, f"targets.{SPEEDUP}")) if metric == SPEEDUP else (metric, target)
            for metric, values in value.items() for target in _as_list("targets", values)]


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
    check_keys(value, names, context="sweep", prefix="method_options.", what="method of this sweep")
    for method, options in value.items():
        if not isinstance(options, Mapping):
            raise ConfigError(f"sweep: method_options.{method} must be a mapping of options; got {options!r}")
    return {method: dict(options) for method, options in value.items()}


def parse_sweep(data: Mapping[str, Any]) -> Sweep:
    """A checked Sweep from the mapping of a sweep file (one-line ConfigError naming the bad key)."""
    check_keys(data, SWEEP_KEYS, context="sweep")
    for key in REQUIRED_KEYS:
        if key not in data:
            raise ConfigError(f"sweep: missing key {key!r} ({SWEEP_KEYS[key]})")
    name = data["name"]
    if not isinstance(name, str) or not 0 < len(name) <= MAX_NAME:
        raise ConfigError(f"sweep: name must be a non-empty string of at most {MAX_NAME} characters "
                          f"({SWEEP_KEYS['name']}); got {shown(name)}")
    names = _as_list("methods", data["methods"])
    if not all(isinstance(m, str) for m in names):
        raise ConfigError(f"sweep: methods must be a list of method names; got {data['methods']!r}")
    for method in names:
        get_method(method)
    if "targets" not in data and any(get_method(m).compresses for m in names):
        raise ConfigError("sweep: missing key 'targets' (every method but dense compresses to a target), "
                          "e.g. targets: {flops_drop: [0.5]}")
    targets = _targets(data["targets"]) if "targets" in data else []
    tuning = parse_tuning(data["tuning"], names, targets) if "tuning" in data else None
    if tuning is not None:
        _check_tuned_grid(data, tuning)
    return Sweep(
        name=name,
        models=[_model(i, e) for i, e in enumerate(_as_list("models", data["models"]))],
        datasets=[_dataset(i, e) for i, e in enumerate(_as_list("datasets", data["datasets"]))],
        methods=names,
        factors=_as_list("factors", data["factors"]) if "factors" in data else [None],
        targets=targets,
        seeds=_as_list("seeds", data["seeds"]) if "seeds" in data else [0],
        budgets=_budgets(data.get("budget") or {}),
        method_options=_method_options(data.get("method_options") or {}, names),
        common={key: data[key] for key in COMMON_KEYS if key in data},
        source=dict(data),
        tuning=tuning,
    )


def _check_tuned_grid(data: Mapping[str, Any], tuning: Tuning) -> None:
    """A searched knob is not also an axis or a fixed value of the grid; the split is the tuning's."""
    budget = data.get("budget") or {}
    for key in tuning.searched_budget():
        if isinstance(budget, Mapping) and isinstance(budget.get(key), list):
            raise ConfigError(f"sweep: budget.{key} is searched by tuning.space.{key}; give it one value (the "
                              "start of every method's search) or none")
    if "factors" in data and (FACTORS in tuning.shared or any(FACTORS in d for d in tuning.per_method.values())):
        raise ConfigError("sweep: factors is searched by tuning.space; remove the sweep's factors axis")
    if isinstance(budget, Mapping) and budget.get("val_fraction") not in (None, tuning.val_fraction):
        raise ConfigError(f"sweep: budget.val_fraction is set by tuning.val_fraction ({tuning.val_fraction:g}) "
                          "for every run of a tuned comparison; remove it from budget")
    if "split_seed" in data:
        raise ConfigError("sweep: split_seed is tuning.seed in a tuned comparison; remove split_seed")


def load_sweep(path: str) -> Sweep:
    """The checked Sweep in the YAML file at `path`."""
    return parse_sweep(load_yaml(path))


def _variants(sweep: Sweep) -> list[dict]:
    """Method, factors and target of every run of one (model, dataset, seed, budget); dense first."""
    variants = [{"method": m} for m in sweep.methods if not get_method(m).compresses]
    for method in (m for m in sweep.methods if get_method(m).compresses):
        options = {"method_options": sweep.method_options[method]} if method in sweep.method_options else {}
        factors = sweep.factors if get_method(method).composes else [None]
        variants += [{"method": method, "factors": n, "target_metric": metric, "target": target, **options}
                     for metric, target in sweep.targets for n in factors]
    return variants


def expand(sweep: Sweep) -> list[RunConfig]:
    """Every run of the grid, validated and resolved, ordered so that runs sharing a trained model are adjacent."""
    unique: dict[str, RunConfig] = {}
    for budget, model, dataset, seed in itertools.product(sweep.budgets, sweep.models, sweep.datasets, sweep.seeds):
        data = {key: value for key, value in dataset.items() if key != "budget"}
        base = {"experiment": sweep.name, **sweep.common, **model, **data, "seed": seed,
                "budget": {**budget, **dataset.get("budget", {})}}
        for variant in _variants(sweep):
            cfg = get_method(variant["method"]).resolve(make_config({**base, **variant}))
            # A repeated axis value (factors: [2, 2]) would otherwise run the same config twice at once.
            unique.setdefault(cfg.config_hash(), cfg)
    return in_training_order(list(unique.values()))


def in_training_order(runs: list[RunConfig]) -> list[RunConfig]:
    """`runs` stably sorted by their trained model's first appearance: its producer (dense before the methods that
    start from the dense model) comes first and the runs that reuse it from the cache follow."""
    first: dict[str, int] = {}
    for cfg in runs:
        first.setdefault(training_group(cfg), len(first))
    return sorted(runs, key=lambda cfg: first[training_group(cfg)])


def grid_hash(runs: list[RunConfig]) -> str:
    """Identity of a grid: the set of its runs' config hashes."""
    return stable_hash(sorted(cfg.config_hash() for cfg in runs))


def check_inputs(runs: list[RunConfig]) -> None:
    """Fail before anything trains on a missing dataset, an unwritable cache or an absent device."""
    sources = dict.fromkeys((cfg.dataset, cfg.data_root, json.dumps(cfg.dataset_kwargs, sort_keys=True))
                            for cfg in runs)
    for dataset, data_root, options in sources:
        check_available(dataset, data_root, json.loads(options))
    for cache_dir in {cfg.cache_dir for cfg in runs}:
        check_writable(cache_dir)
    for device in {cfg.device for cfg in runs}:
        resolve_device(device)
