"""A run's latency table: built before training under a latency target, checked for reach, read for predictions."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from torch import nn
from tqdm.auto import tqdm

import lorita
from benchmarks.config import LATENCY_DROP, ConfigError, RunConfig, identity, stable_hash
from benchmarks.data import Dataset, load_dataset
from benchmarks.latency import MissingEntry, ModelLatency, for_run
from benchmarks.methods import Method, exclude_patterns, get_method
from benchmarks.models import create_model
from benchmarks.run.environment import resolve_device
from lorita.ranks import DROP_TOLERANCE


def _largest_rank_drop(cfg: RunConfig, network: nn.Module, latency: ModelLatency) -> float:
    # Every planned layer at rank 1 where its pair is faster: no rank plan drops latency further.
    cost = latency.plan_cost()
    planned = lorita.planned_layers(network, exclude_patterns(cfg, network))
    saved = sum(cost.price(name, None) - cost.price(name, 1) for name in planned if name in latency.geometries)
    return saved / cost.base


def _largest_pruned_drop(cfg: RunConfig, method: Method, network: nn.Module, latency: ModelLatency,
                         example: torch.Tensor, batches: list) -> float | None:
    # How far channels can go depends on the network's structure alone: a dry run on the random-init network says.
    try:
        method.compress(cfg, network, target=cfg.target, reference=lorita.count_flops_params(network, example),
                        example=example, train_batches=batches, trained=network, latency=latency)
    except lorita.UnreachableTarget as err:
        return err.largest
    except (ValueError, RuntimeError):
        # Any other failure is the run's own to meet (and be recorded FAILED with); this dry run asks only about reach.
        return None
    return None


def prepared(cfg: RunConfig, method: Method, network: nn.Module, data: Dataset, device: torch.device,
             batches: list) -> ModelLatency:
    """The latency model of a latency_drop run's uncompressed `network` (random init will do), its missing table
    entries measured now; a ConfigError before anything is trained when no plan of the method reaches the target,
    stating the largest reachable speed-up as the table predicts it."""
    latency = for_run(cfg, network, data.in_shape, device, (method.latency_form,))
    example = torch.zeros(1, *data.in_shape)
    if method.latency_form == "rank":
        largest = _largest_rank_drop(cfg, network, latency)
        largest = largest if largest < cfg.target - DROP_TOLERANCE else None
    else:
        largest = _largest_pruned_drop(cfg, method, network, latency, example, batches)
    if largest is not None:
        raise ConfigError(f"config: target latency_drop={cfg.target:g} (a {1 / (1 - cfg.target):.3g}x speed-up at "
                          f"batch {cfg.latency_batch}) is unreachable for {method.name} on {cfg.model}: the largest "
                          f"reachable speed-up is {1 / (1 - largest):.2f}x, as the measured latency table predicts it")
    return latency


def cached(cfg: RunConfig, method: Method, network: nn.Module, in_shape: tuple[int, ...], device: torch.device,
           *, measure: bool = False) -> ModelLatency | None:
    """The latency model of a run's network from the entries in its table (measuring the missing ones only when
    `measure`); None when the method has no latency entries, or one is missing (a run under another target predicts
    its latency only where the table was built)."""
    if method.latency_form is None:
        return None
    try:
        return for_run(cfg, network, in_shape, device, (method.latency_form,), measure=measure)
    except MissingEntry:
        return None


def tables(runs: list[RunConfig], batches_for: Callable[[RunConfig, Dataset], list]) -> None:
    """Measure the table entries the latency-target runs among `runs` need, one network after another, in this
    process (a sweep's driver, before its workers start: the workers then only read them), and check every such
    run's target against them: an unreachable one stops the sweep with one line before anything runs.
    `batches_for(cfg, data)` gives the training batches a dry run of a data-driven pruning criterion scores on."""
    todo = {}
    for cfg in runs:
        if cfg.target_metric == LATENCY_DROP:
            # Runs that differ only by seed meet or miss the target alike (a dry run on the structure decides).
            key = stable_hash({**identity(cfg), "seed": None, "split_seed": None, "experiment": None})
            todo.setdefault(key, cfg)
    started = time.perf_counter()
    for cfg in tqdm(todo.values(), desc="latency tables", unit="config", leave=False, disable=not todo):
        device = resolve_device(cfg.device)
        data = load_dataset(cfg.dataset, data_root=cfg.data_root, cache_dir=cfg.cache_dir, options=cfg.dataset_kwargs)
        torch.manual_seed(cfg.seed)
        network = create_model(cfg.model, data.num_classes, data.in_shape, **cfg.model_kwargs)
        prepared(cfg, get_method(cfg.method), network, data, device, batches_for(cfg, data))
    if todo:
        batches = sorted({cfg.latency_batch for cfg in todo.values()})
        print(f"latency tables at batch sizes {batches} ready and {len(todo)} latency target(s) reachable in "
              f"{time.perf_counter() - started:.0f} s", flush=True)
