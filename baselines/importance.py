"""Each pruning method as a torch-pruning importance criterion and pruner class, plus gradient collection."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
import torch_pruning as tp
from torch import nn

from baselines.registry import get_method


class SeededRandomImportance(tp.importance.RandomImportance):
    """torch-pruning's RandomImportance drawing from its own generator, so a seed fixes the pruned channels."""

    def __init__(self, seed: int) -> None:
        self.generator = torch.Generator().manual_seed(int(seed))

    @torch.no_grad()
    def __call__(self, group, **kwargs) -> torch.Tensor:
        _, idxs = group[0]
        return torch.rand(len(idxs), generator=self.generator)


def make_importance(method: str, seed: int = 0) -> tp.importance.Importance:
    """The torch-pruning importance criterion of `method` (configured as in torch-pruning's benchmarks)."""
    get_method(method)
    imp = tp.importance
    if method == "l1":
        return imp.MagnitudeImportance(p=1, normalizer=None, group_reduction="first")
    if method == "l2":
        return imp.MagnitudeImportance(p=2, normalizer=None, group_reduction="first")
    if method == "group_norm":
        return imp.GroupMagnitudeImportance(p=2)
    if method == "group_sl":
        # torch-pruning's CIFAR benchmark: "normalized by the maximum score for CIFAR".
        return imp.GroupMagnitudeImportance(p=2, normalizer="max")
    if method == "slim":
        return imp.BNScaleImportance()
    if method == "taylor":
        return imp.TaylorImportance()
    if method == "hessian":
        return imp.HessianImportance()
    if method == "lamp":
        return imp.LAMPImportance(p=2)
    if method == "fpgm":
        return imp.FPGMImportance(p=2)
    if method == "random":
        return SeededRandomImportance(seed)
    raise ValueError(f"{method!r} is a low-rank method, not a pruning criterion")


def pruner_class(method: str) -> type[tp.pruner.BasePruner]:
    """The torch-pruning pruner class of `method` (it matters for the sparsity regularizer)."""
    if method == "slim":
        return tp.pruner.BNScalePruner
    if method in ("group_norm", "group_sl"):
        return tp.pruner.GroupNormPruner
    return tp.pruner.BasePruner


def _to_device(batch, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(batch, Sequence) or len(batch) < 2:
        raise ValueError("train_batches must yield (inputs, labels) pairs")
    return batch[0].to(device), batch[1].to(device)


def collect_gradients(model: nn.Module, method: str, batches: list) -> None:
    """Fill each parameter's .grad with what `method`'s importance reads, from cross-entropy on `batches`.

    taylor: the mean over batches of the batch-mean loss gradient. hessian: the mean over samples of the squared
    per-sample gradient (the Fisher / diagonal-Hessian estimate of OBD; it replaces torch-pruning's
    HessianImportance.accumulate_grad, which in 1.6 keys its accumulator by parameter but tests membership by name,
    so it keeps only the last sample). Runs in eval mode so BatchNorm statistics and dropout stay untouched.
    """
    device = next(model.parameters()).device
    params = [p for p in model.parameters() if p.requires_grad]
    sums = [torch.zeros_like(p) for p in params]
    count = 0
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            for batch in batches:
                inputs, labels = _to_device(batch, device)
                if method == "taylor":
                    model.zero_grad(set_to_none=True)
                    F.cross_entropy(model(inputs), labels).backward()
                    for total, p in zip(sums, params, strict=True):
                        if p.grad is not None:
                            total += p.grad
                    count += 1
                else:
                    losses = F.cross_entropy(model(inputs), labels, reduction="none")
                    for index, loss in enumerate(losses):
                        model.zero_grad(set_to_none=True)
                        loss.backward(retain_graph=index < len(losses) - 1)
                        for total, p in zip(sums, params, strict=True):
                            if p.grad is not None:
                                total += p.grad.pow(2)
                        count += 1
    finally:
        model.train(was_training)
    if count == 0:
        raise ValueError(f"method {method!r} needs train_batches with at least one (inputs, labels) batch")
    for total, p in zip(sums, params, strict=True):
        p.grad = total / count
