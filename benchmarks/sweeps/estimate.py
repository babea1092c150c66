"""How long a grid will take: measured time per training step on this device x the steps of its trainings."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

import lorita
from benchmarks.config import RunConfig
from benchmarks.data import load_dataset
from benchmarks.methods import get_method
from benchmarks.models import create_model
from benchmarks.run.environment import resolve_device
from benchmarks.run.measure import step_seconds, training_step
from benchmarks.run.pipeline import training_group


@dataclass(frozen=True)
class Estimate:
    """A block's planned work and its estimated wall time on this device."""

    runs: int
    trainings: int
    seconds: float


def _step_seconds(cfg: RunConfig, factors: int, in_shape: tuple[int, ...], num_classes: int) -> float:
    """Median wall time of one SGD step of the block's model at its batch size on the run's device."""
    device = resolve_device(cfg.device)
    torch.manual_seed(0)
    model = lorita.overparameterize(create_model(cfg.model, num_classes, in_shape, **cfg.model_kwargs), factors)
    x = torch.randn(cfg.budget.batch_size, *in_shape, device=device)
    y = torch.randint(0, num_classes, (cfg.budget.batch_size,), device=device)
    return step_seconds(training_step(model.to(device), x, y), device)


def estimate(runs: list[RunConfig]) -> Estimate:
    """Measured time per training step x steps of every training and fine-tuning of `runs` (each trained model
    once); each dataset is loaded once, so a missing one fails here, before anything trains."""
    sizes: dict[tuple, tuple] = {}
    step_cost: dict[tuple, float] = {}
    trained: set[str] = set()
    seconds = 0.0

    def cost(cfg: RunConfig, factors: int) -> float:
        count, in_shape, num_classes = sizes[cfg.dataset, cfg.data_root]
        key = (cfg.model, repr(cfg.model_kwargs), in_shape, cfg.budget.batch_size, factors)
        if key not in step_cost:
            step_cost[key] = _step_seconds(cfg, factors, in_shape, num_classes)
        # The validation split is held out of training.
        return step_cost[key] * math.ceil(count * (1 - cfg.budget.val_fraction) / cfg.budget.batch_size)

    for cfg in runs:
        if (cfg.dataset, cfg.data_root) not in sizes:
            data = load_dataset(cfg.dataset, data_root=cfg.data_root, cache_dir=cfg.cache_dir)
            sizes[cfg.dataset, cfg.data_root] = (len(data.train_y), data.in_shape, data.num_classes)
        if training_group(cfg) not in trained:
            trained.add(training_group(cfg))
            seconds += cost(cfg, cfg.factors) * cfg.budget.epochs
        if get_method(cfg.method).compresses:
            # A compressed model fine-tunes at most as slowly as the dense one trains.
            seconds += cost(cfg, 1) * cfg.budget.finetune_epochs
    return Estimate(len(runs), len(trained), seconds)


def duration(seconds: float) -> str:
    """3 min 05 s, 2 h 10 min."""
    hours, rest = divmod(int(seconds), 3600)
    return f"{hours} h {rest // 60:02d} min" if hours else f"{rest // 60} min {rest % 60:02d} s"
