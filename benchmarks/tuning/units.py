"""What is tuned: one study per method of the grid (per model, dataset and budget), and the grid it selects for.

A unit is one method variant of the grid with everything but the searched knobs, the seed and the target fixed.
Its trials train once with the tuning seed on the training data less the validation split and compress to each
of the grid's targets; the reported grid then runs each unit's selected values on the grid's seeds.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from benchmarks.config import RunConfig, identity, stable_hash
from benchmarks.methods import get_method
from benchmarks.sweeps.grid import Sweep, expand, in_training_order
from benchmarks.tracking import schema
from benchmarks.tuning.space import FACTORS, SEARCHABLE, Dimension, Tuning

# Config fields a unit's runs differ in (or that say where they run), never what is tuned.
_PER_RUN = ("experiment", "seed", "target_metric", "target", "cache_dir", "device", "wait", "split_seed", "tuning")


@dataclass(frozen=True)
class Unit:
    """One study: the method variant, its search space, and its trial's configs (one per target; dense: one)."""

    key: str
    name: str  # readable: model-dataset-method[-N]
    study: str  # the Optuna study name
    space: dict[str, Dimension]
    configs: tuple[RunConfig, ...]


def unit_key(cfg: RunConfig, tuning: Tuning) -> str:
    """The key of the unit (study) a run of the grid belongs to."""
    return _key(cfg, tuning.space_for(get_method(cfg.method)))


def _key(cfg: RunConfig, space: dict[str, Dimension]) -> str:
    d = identity(cfg)
    for key in _PER_RUN:
        d.pop(key, None)
    d["budget"] = {k: v for k, v in d["budget"].items() if k not in space}
    d["method_options"] = {k: v for k, v in d["method_options"].items() if k not in space}
    if FACTORS in space:
        d.pop(FACTORS, None)
    return stable_hash(d)


def _name(cfg: RunConfig, space: dict[str, Dimension]) -> str:
    parts = [cfg.model, cfg.dataset.split("/")[-1], cfg.method]
    if get_method(cfg.method).composes and FACTORS not in space:
        parts.append(f"N{cfg.factors}")
    return "-".join(parts)


def selection_config(cfg: RunConfig, tuning: Tuning, experiment: str, seed: int) -> RunConfig:
    """`cfg` in a tuned comparison: the tuning's validation split, seeded by tuning.seed, and its block recorded."""
    budget = dataclasses.replace(cfg.budget, val_fraction=tuning.val_fraction)
    return dataclasses.replace(cfg, experiment=experiment, seed=seed, split_seed=tuning.seed, budget=budget,
                               tuning=tuning.identity())


def units(sweep: Sweep) -> list[Unit]:
    """The studies of a tuned sweep, in the grid's order (dense first)."""
    tuning = sweep.tuning
    assert tuning is not None, "units() is for a sweep with a tuning block"
    found: dict[str, dict[str, RunConfig]] = {}
    spaces: dict[str, dict[str, Dimension]] = {}
    for cfg in expand(sweep):
        space = tuning.space_for(get_method(cfg.method))
        key = _key(cfg, space)
        spaces[key] = space
        # The grid's seeds become the tuning seed: one trial config per target.
        trial = selection_config(cfg, tuning, sweep.name + schema.TUNING_SUFFIX, tuning.seed)
        found.setdefault(key, {}).setdefault(trial.config_hash(), trial)
    block = stable_hash(tuning.identity())
    out = []
    for key, by_hash in found.items():
        runs = tuple(by_hash.values())
        name = _name(runs[0], spaces[key])
        out.append(Unit(key=key, name=name, study=f"{sweep.name}/{name}/{stable_hash([key, block])}",
                        space=spaces[key], configs=runs))
    return out


def apply(cfg: RunConfig, values: dict[str, Any]) -> RunConfig:
    """`cfg` with a trial's (or the selected) values: budget fields, factors and method options."""
    budget = dataclasses.replace(cfg.budget, **{k: float(v) for k, v in values.items() if k in SEARCHABLE})
    options = {**cfg.method_options, **{k: v for k, v in values.items() if k not in SEARCHABLE and k != FACTORS}}
    factors = values.get(FACTORS, cfg.factors)
    return get_method(cfg.method).resolve(dataclasses.replace(cfg, budget=budget, method_options=options,
                                                              factors=factors))


def tuned_grid(sweep: Sweep, selected: dict[str, dict[str, Any]]) -> dict[str, list[RunConfig]]:
    """The reported grid by unit key: every run of the sweep with its unit's selected values, on the grid's seeds."""
    tuning = sweep.tuning
    assert tuning is not None, "tuned_grid() is for a sweep with a tuning block"
    grid: dict[str, dict[str, RunConfig]] = {}
    for cfg in expand(sweep):
        key = unit_key(cfg, tuning)
        run = apply(selection_config(cfg, tuning, sweep.name, cfg.seed), selected[key])
        grid.setdefault(key, {}).setdefault(run.config_hash(), run)
    return {key: list(runs.values()) for key, runs in grid.items()}


def tuned_runs(sweep: Sweep, selected: dict[str, dict[str, Any]]) -> list[RunConfig]:
    """The reported grid's runs, each trained model's producer first."""
    return in_training_order([cfg for runs in tuned_grid(sweep, selected).values() for cfg in runs])
