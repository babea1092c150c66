"""How long a grid will take: measured time per training step on this device x the steps of its trainings."""

from __future__ import annotations

import functools
import json
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


@functools.cache
def _step_seconds(model: str, kwargs: str, in_shape: tuple[int, ...], num_classes: int, batch_size: int,
                  factors: int, device: str) -> float:
    """Median wall time of one SGD step of the model (`kwargs` as JSON) at its batch size on the device; measured
    once per process, however many grids (a tuning's studies, its reported grid) ask."""
    torch.manual_seed(0)
    net = lorita.overparameterize(create_model(model, num_classes, in_shape, **json.loads(kwargs)), factors)
    where = resolve_device(device)
    x = torch.randn(batch_size, *in_shape, device=where)
    y = torch.randint(0, num_classes, (batch_size,), device=where)
    return step_seconds(training_step(net.to(where), x, y), where)


@functools.cache
def _size(dataset: str, data_root: str | None, cache_dir: str, options: str = "{}") -> tuple[int, tuple[int, ...], int]:
    """(training images, input shape, classes) of a dataset (`options`: its dataset_kwargs as JSON), loaded once per
    process."""
    data = load_dataset(dataset, data_root=data_root, cache_dir=cache_dir, options=json.loads(options))
    return len(data.train_y), data.in_shape, data.num_classes


def estimate(runs: list[RunConfig]) -> Estimate:
    """Measured time per training step x steps of every training and fine-tuning of `runs` (each trained model
    once); each dataset is loaded once, so a missing one fails here, before anything trains."""
    trained: set[str] = set()
    seconds = 0.0

    def cost(cfg: RunConfig, factors: int) -> float:
        count, in_shape, num_classes = _size(cfg.dataset, cfg.data_root, cfg.cache_dir,
                                             json.dumps(cfg.dataset_kwargs, sort_keys=True))
        step = _step_seconds(cfg.model, json.dumps(cfg.model_kwargs, sort_keys=True), in_shape, num_classes,
                             cfg.budget.batch_size, factors, cfg.device)
        # The validation split is held out of training.
        return step * math.ceil(count * (1 - cfg.budget.val_fraction) / cfg.budget.batch_size)

    for cfg in runs:
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
