"""The training loop shared by every method: one budget, epoch checkpoints, resumable."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from benchmarks import checkpoints
from benchmarks.checkpoints import UnusableFile
from benchmarks.data import Dataset, batches
from benchmarks.methods.registry import Switch
from benchmarks.run import interrupts
from benchmarks.tracking import schema
from lorita.forward import evaluating

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
    metrics: schema.EpochMetrics = schema.TRAINING  # the names its epochs are logged under


def make_optimizer(model: nn.Module, phase: Phase, no_decay: Collection[nn.Parameter] = ()) -> torch.optim.Optimizer:
    """The phase's optimizer: weight decay on every parameter (as the authors) but those in `no_decay`.

    Parameter groups, in model.parameters() order within each: the decayed ones, then the exempt ones at weight decay
    0; an empty group is left out, so without exemptions the optimizer is the one-group optimizer of all parameters.
    """
    exempt = {id(p) for p in no_decay}
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if id(p) not in exempt]},
              {"params": [p for p in params if id(p) in exempt], "weight_decay": 0.0}]
    groups = [group for group in groups if group["params"]]
    if phase.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=phase.lr, momentum=phase.momentum, weight_decay=phase.weight_decay)
    if phase.optimizer == "adam":
        return torch.optim.Adam(groups, lr=phase.lr, weight_decay=phase.weight_decay)
    return torch.optim.AdamW(groups, lr=phase.lr, weight_decay=phase.weight_decay)


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
    correct = 0
    with evaluating(model):
        for inputs, labels in batches(x, y, batch_size, mean=data.mean, std=data.std, augment=False, shuffle=False):
            correct += (model(inputs).argmax(1) == labels).sum().item()
    return correct / len(y)


# What a training checkpoint holds; `batch` > 0 marks one saved mid-epoch (after a Ctrl-C).
CHECKPOINT_KEYS = frozenset({"model", "optimizer", "scheduler", "order", "torch_rng", "history", "epoch", "batch",
                             "sums", "elapsed"})


def _resume(checkpoint: Path | None, model: nn.Module, switch: Switch | None) -> dict | None:
    """The checkpoint's state, its structure change applied to `model`; None (start afresh) if absent or unusable."""
    if checkpoint is None or not checkpoint.exists():
        return None
    try:
        state = checkpoints.load(checkpoint)
        if not isinstance(state, dict) or not CHECKPOINT_KEYS <= state.keys():
            raise UnusableFile(f"{checkpoint} is not a training checkpoint of this version")
        made = state.get("switch")
        if made is not None and switch is None:
            raise UnusableFile(f"{checkpoint} was written after a change of structure this training does not make")
        # Checked on a copy: an unusable checkpoint must leave the model as it was.
        shaped = model if made is None else switch.reshaped(model, made)
        checkpoints.check_state(shaped, state["model"], checkpoint)
    except UnusableFile as err:
        tqdm.write(f"checkpoint unusable: {err}; starting this phase again")
        return None
    if made is not None:
        switch.replay(model, made)
    return state


def _load_training_state(state: dict, checkpoint: Path, optimizer: torch.optim.Optimizer, scheduler,
                         switched: bool) -> bool:
    """Load the optimizer's and scheduler's state and the RNGs; False when the optimizer's groups differ."""
    saved = [len(group["params"]) for group in state["optimizer"]["param_groups"]]
    if saved != [len(group["params"]) for group in optimizer.param_groups]:
        if switched:  # the model is already reshaped: it cannot start this phase afresh
            raise UnusableFile(f"{checkpoint} was written for another optimizer setup after a change of structure; "
                               "delete it to train this phase again")
        tqdm.write(f"checkpoint unusable: {checkpoint} was written for another optimizer setup; starting this phase "
                   "again")
        return False
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["torch_rng"])
    if torch.cuda.is_available() and len(state.get("cuda_rng", [])) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda_rng"])  # dropout on a GPU draws from these
    return True


def _rebuilt(model: nn.Module, phase: Phase, no_decay: Collection[nn.Parameter], old: torch.optim.Optimizer,
             old_scheduler) -> tuple[torch.optim.Optimizer, Any]:
    """An optimizer over the model's parameters after a change of structure, at the old one's learning rate and the
    old schedule's position."""
    optimizer = make_optimizer(model, phase, no_decay)
    scheduler = make_scheduler(optimizer, phase)
    scheduler.load_state_dict(old_scheduler.state_dict())
    for group in optimizer.param_groups:
        group["lr"] = old.param_groups[0]["lr"]
    return optimizer, scheduler


def train(model: nn.Module, data: Dataset, phase: Phase, *, seed: int, checkpoint: Path | None = None,
          log: MetricLogger | None = None, after_backward: Callable[[], None] | None = None,
          no_decay: Collection[nn.Parameter] = (), switch: Switch | None = None,
          desc: str = "train") -> list[dict[str, float]]:
    """Train `model` in place for the phase; returns per-epoch metrics (and `epoch_time_s`, the optimization time).

    `after_backward` runs between backward and the optimizer step (a method's penalty gradient); the parameters in
    `no_decay` get no weight decay from the optimizer. `switch` changes the model's structure between epochs.

    Saves `checkpoint` after every epoch and resumes from it. After a Ctrl-C (with `benchmarks.run.interrupts`
    installed) the current batch finishes, the checkpoint is saved there and KeyboardInterrupt is raised; the
    resumed run then ends with exactly the numbers of an uninterrupted one.
    """
    state = _resume(checkpoint, model, switch)
    optimizer = make_optimizer(model, phase, no_decay)
    scheduler = make_scheduler(optimizer, phase)
    if state is not None and not _load_training_state(state, checkpoint, optimizer, scheduler,
                                                      switched=state.get("switch") is not None):
        state = None
    if state is not None:
        model.load_state_dict(state["model"])
    criterion = nn.CrossEntropyLoss(label_smoothing=phase.label_smoothing)
    order = torch.Generator().manual_seed(seed)
    history: list[dict[str, float]] = []
    start, done, sums, elapsed = 0, 0, (0.0, 0, 0), 0.0
    if state is not None:
        order.set_state(state["order"])
        history, start, done, sums, elapsed = (state["history"], state["epoch"], state["batch"],
                                               tuple(state["sums"]), state["elapsed"])
        tqdm.write(f"resuming from epoch {start}" + (f", batch {done} of epoch {start + 1}" if done else ""))
        if log is not None:  # a new tracking run must show the epochs done before the interruption too
            for epoch, metrics in enumerate(history, 1):
                log({k: v for k, v in metrics.items() if k != "epoch_time_s"}, epoch)

    def save(epoch: int, batch: int, epoch_order: torch.Tensor, sums: tuple, elapsed: float) -> None:
        checkpoints.save(checkpoint, {
            "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "order": epoch_order, "torch_rng": torch.get_rng_state(), "history": history, "epoch": epoch,
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "batch": batch, "sums": list(sums), "elapsed": elapsed, "switch": switch.made if switch else None})

    def stop(where: str) -> None:
        tqdm.write(f"interrupted after {where}" + (f" (checkpoint {checkpoint})" if checkpoint is not None else ""))
        raise KeyboardInterrupt

    names = phase.metrics
    steps = math.ceil(len(data.train_y) / phase.batch_size)
    # No bar for a phase without epochs (no fine-tuning budget): it would show an empty "0 epoch" line.
    epochs = tqdm(range(start, phase.epochs), desc=desc, initial=start, total=phase.epochs, unit="epoch",
                  leave=False, dynamic_ncols=True, disable=True if phase.epochs == 0 else None)
    with interrupts.deferred():
        for epoch in epochs:
            if switch is not None and switch.made is None and not done:
                change = switch.decide(model, history)
                if change is not None:
                    switch.apply(model, change)
                    switch.made = {"epoch": epoch, **change}
                    optimizer, scheduler = _rebuilt(model, phase, no_decay, optimizer, scheduler)
                    tqdm.write(f"{desc}: structure changed after epoch {epoch}: {change}")
            model.train()
            # A mid-epoch resume replays this epoch's shuffle from the generator state it started with.
            epoch_order = order.get_state()
            loss_sum, correct, seen = sums
            started = time.perf_counter() - elapsed
            batch_bar = tqdm(batches(data.train_x, data.train_y, phase.batch_size, mean=data.mean, std=data.std,
                                     augment=phase.augment, shuffle=True, generator=order, skip=done),
                             total=steps, initial=done, desc=f"epoch {epoch + 1}", leave=False, unit="batch",
                             dynamic_ncols=True, disable=None)
            for batch, (inputs, labels) in enumerate(batch_bar, done + 1):
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
                if interrupts.requested():
                    if checkpoint is not None:
                        save(epoch, batch, epoch_order, (loss_sum, correct, seen), time.perf_counter() - started)
                    stop(f"epoch {epoch + 1}, batch {batch}")
            done, sums, elapsed = 0, (0.0, 0, 0), 0.0
            # Optimization only: evaluation and logging are the same for every method and would blur the ratio.
            epoch_time = time.perf_counter() - started
            metrics = {names.train_loss: loss_sum / seen, names.train_acc: correct / seen,
                       names.lr: optimizer.param_groups[0]["lr"],
                       names.test_acc: evaluate(model, data.test_x, data.test_y, data)}
            if len(data.val_y):
                metrics[names.val_acc] = evaluate(model, data.val_x, data.val_y, data)
            if switch is not None:
                metrics.update(switch.measure(model))
            if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                scheduler.step(metrics[names.train_acc])
            else:
                scheduler.step()
            history.append({**metrics, "epoch_time_s": epoch_time})
            if log is not None:
                log(metrics, epoch + 1)
            epochs.set_postfix(loss=f"{metrics[names.train_loss]:.3f}", acc=f"{metrics[names.test_acc]:.3f}")
            if checkpoint is not None:
                save(epoch + 1, 0, order.get_state(), sums, 0.0)
            if interrupts.requested():  # it came during evaluation: the epoch's checkpoint is the resume point
                stop(f"epoch {epoch + 1}")
    return history
