"""The gradients that data-driven criteria (Taylor, Hessian) read, collected from training batches."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from baselines.registry import MethodSpec
from lorita.forward import evaluating


def _to_device(batch, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(batch, Sequence) or len(batch) < 2:
        raise ValueError("train_batches must yield (inputs, labels) pairs")
    return batch[0].to(device), batch[1].to(device)


def collect_gradients(model: nn.Module, spec: MethodSpec, batches: list) -> None:
    """Fill each parameter's .grad with what `spec`'s importance reads, from cross-entropy on `batches`.

    spec.gradients "mean" (taylor): the mean over batches of the batch-mean loss gradient. "squared" (hessian): the
    mean over samples of the squared per-sample gradient (the Fisher / diagonal-Hessian estimate of OBD; it replaces
    torch-pruning's HessianImportance.accumulate_grad, which in 1.6 keys its accumulator by parameter but tests
    membership by name, so it keeps only the last sample). Runs in eval mode so BatchNorm statistics and dropout
    stay untouched.
    """
    device = next(model.parameters()).device
    params = [p for p in model.parameters() if p.requires_grad]
    sums = [torch.zeros_like(p) for p in params]
    count = 0
    with evaluating(model), torch.enable_grad():
        for batch in batches:
            inputs, labels = _to_device(batch, device)
            if spec.gradients == "mean":
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
    if count == 0:
        raise ValueError(f"method {spec.name!r} needs train_batches with at least one (inputs, labels) batch")
    for total, p in zip(sums, params, strict=True):
        p.grad = total / count
