"""The training loop shared by every method: one budget, epoch checkpoints, resumable."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from benchmarks.data import Dataset, batches
from benchmarks.files import write_atomic

MetricLogger = Callable[[dict[str, float], int], None]


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or infinite: the run stops at once."""


@dataclass(frozen=True)
class Phase:
    """One optimization phase (training or fine-tuning) of a budget."""

    epochs: int
    lr: float
    schedule: str
    optimizer: str
    momentum: float
    weight_decay: float
    label_smoothing: float
    batch_size: int
    augment: bool
    plateau_factor: float = 0.1
    plateau_patience: int = 15
    prefix: str = ""  # "" for training, "ft_" for fine-tuning metric names


def make_optimizer(model: nn.Module, phase: Phase) -> torch.optim.Optimizer:
    """The phase's optimizer over all parameters (weight decay on all, as the authors)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if phase.optimizer == "sgd":
        return torch.optim.SGD(params, lr=phase.lr, momentum=phase.momentum, weight_decay=phase.weight_decay)
    if phase.optimizer == "adam":
        return torch.optim.Adam(params, lr=phase.lr, weight_decay=phase.weight_decay)
    return torch.optim.AdamW(params, lr=phase.lr, weight_decay=phase.weight_decay)


def make_scheduler(optimizer: torch.optim.Optimizer, phase: Phase):
    """The phase's learning-rate schedule; `plateau` watches train accuracy, never test data."""
    if phase.schedule == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=phase.plateau_factor,
                                                          patience=phase.plateau_patience)
    if phase.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(phase.epochs, 1))
    if phase.schedule == "step":
        milestones = [int(phase.epochs * 0.5), int(phase.epochs * 0.75)]
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=0.1)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, data: Dataset, batch_size: int = 512) -> float:
    """Top-1 accuracy of `model` (eval mode) on uint8 images `x`."""
    if len(y) == 0:
        return float("nan")
    was_training = model.training
    model.eval()
    correct = 0
    for inputs, labels in batches(x, y, batch_size, mean=data.mean, std=data.std, augment=False, shuffle=False):
        correct += (model(inputs).argmax(1) == labels).sum().item()
    model.train(was_training)
    return correct / len(y)


def _load_checkpoint(path: Path | None) -> dict | None:
    if path is None or not path.exists():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - a corrupt checkpoint means: start the phase again
        tqdm.write(f"checkpoint {path} unreadable ({type(err).__name__}); starting this phase again")
        return None


def train(model: nn.Module, data: Dataset, phase: Phase, *, seed: int, checkpoint: Path | None = None,
          log: MetricLogger | None = None, after_backward: Callable[[], None] | None = None,
          desc: str = "train") -> list[dict[str, float]]:
    """Train `model` in place for the phase; returns per-epoch metrics (and `epoch_time_s`, the optimization time).

    Resumes from `checkpoint` if present.
    """
    optimizer = make_optimizer(model, phase)
    scheduler = make_scheduler(optimizer, phase)
    criterion = nn.CrossEntropyLoss(label_smoothing=phase.label_smoothing)
    order = torch.Generator().manual_seed(seed)
    history: list[dict[str, float]] = []
    start = 0
    state = _load_checkpoint(checkpoint)
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        order.set_state(state["order"])
        torch.set_rng_state(state["torch_rng"])
        history, start = state["history"], state["epoch"]
        tqdm.write(f"resuming from epoch {start}")
    pre = phase.prefix
    epochs = tqdm(range(start, phase.epochs), desc=desc, initial=start, total=phase.epochs, unit="epoch",
                  leave=False, dynamic_ncols=True)
    for epoch in epochs:
        model.train()
        loss_sum, correct, seen = 0.0, 0, 0
        steps = math.ceil(len(data.train_y) / phase.batch_size)
        started = time.perf_counter()
        batch_bar = tqdm(batches(data.train_x, data.train_y, phase.batch_size, mean=data.mean, std=data.std,
                                 augment=phase.augment, shuffle=True, generator=order),
                         total=steps, desc=f"epoch {epoch + 1}", leave=False, unit="batch", dynamic_ncols=True,
                         disable=None)
        for inputs, labels in batch_bar:
            out = model(inputs)
            loss = criterion(out, labels)
            value = loss.item()
            if not math.isfinite(value):
                raise NonFiniteLoss(f"loss is {value} at epoch {epoch + 1} ({desc})")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if after_backward is not None:
                after_backward()
            optimizer.step()
            loss_sum += value * len(labels)
            correct += (out.argmax(1) == labels).sum().item()
            seen += len(labels)
        # Optimization only: evaluation and logging are the same for every method and would blur the ratio.
        epoch_time = time.perf_counter() - started
        metrics = {f"{pre}train_loss": loss_sum / seen, f"{pre}train_acc": correct / seen,
                   f"{pre}lr": optimizer.param_groups[0]["lr"],
                   f"{pre}test_acc": evaluate(model, data.test_x, data.test_y, data)}
        if len(data.val_y):
            metrics[f"{pre}val_acc"] = evaluate(model, data.val_x, data.val_y, data)
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            scheduler.step(metrics[f"{pre}train_acc"])
        else:
            scheduler.step()
        history.append({**metrics, "epoch_time_s": epoch_time})
        if log is not None:
            log(metrics, epoch + 1)
        epochs.set_postfix(loss=f"{metrics[f'{pre}train_loss']:.3f}", acc=f"{metrics[f'{pre}test_acc']:.3f}")
        if checkpoint is not None:
            state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                          "scheduler": scheduler.state_dict(), "order": order.get_state(),
                          "torch_rng": torch.get_rng_state(), "history": history, "epoch": epoch + 1}
            write_atomic(checkpoint, lambda tmp, state=state: torch.save(state, tmp))
    return history
