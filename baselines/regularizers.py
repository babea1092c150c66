"""Sparsity regularizers of the methods that train their own model (slim, group_sl), torch-pruning style."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
import torch_pruning as tp
from torch import nn

from baselines.graph import build
from baselines.registry import get_method


class SparsityRegularizer:
    """Adds the sparsity (sub)gradient to the model's gradients: call it after loss.backward(), before
    optimizer.step(), every training step.

    slim: reg * sign(gamma) on the scale of every BatchNorm whose channels `prune` may remove (network slimming's
    L1 penalty; BNScalePruner.regularize). group_sl: DepGraph's group-norm penalty on every prunable group
    (GroupNormPruner.regularize, its default alpha = 2**4 scaling). torch-pruning's benchmark turns weight decay off
    while it trains with a regularizer.
    """

    def __init__(self, model: nn.Module, method: str, pruner: tp.pruner.BasePruner, reg: float) -> None:
        self.model = model
        self.method = method
        self.pruner = pruner
        self.reg = reg

    @torch.no_grad()
    def __call__(self) -> None:
        if self.method == "slim":
            self.pruner.regularize(self.model, reg=self.reg)
        else:
            # GroupNormPruner.regularize(model, alpha, bias) reads its strength from pruner.reg.
            self.pruner.regularize(self.model)

    def __repr__(self) -> str:
        return f"SparsityRegularizer(method={self.method!r}, reg={self.reg:g})"


def sparsity_regularizer(model: nn.Module, method: str, *, example_input: torch.Tensor, reg: float | None = None,
                         ignored_layers: Iterable[str] = (), prune_heads: bool = False,
                         ) -> Callable[[], None] | None:
    """The per-step sparsity regularizer of `method` on `model`, or None for methods without one.

    `reg` defaults to METHODS[method].default_reg (slim 1e-5, group_sl 5e-4). It covers exactly the channels that
    `baselines.prune` may remove (same classifier, `ignored_layers` and residual-stream rules), and keeps
    references to `model`'s layers: build it on the model being trained.
    """
    spec = get_method(method)
    if not spec.regularized_training:
        return None
    if reg is None:
        reg = spec.default_reg
    if isinstance(reg, bool) or not isinstance(reg, (int, float)) or not reg > 0:
        raise ValueError(f"reg must be a positive number, got {reg!r}")
    setup = build(model, method, example_input, ignored_layers=ignored_layers, prune_heads=prune_heads,
                  reg=float(reg))
    if method == "slim":
        prunable = {item.dep.target.module for group, _ in setup.groups() for item in group}
        norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        if not any(m in prunable for m in norms):
            raise ValueError(f"slim regularizes BatchNorm scales, but no prunable channel of {type(model).__name__} "
                             "has a BatchNorm")
        setup.ignore(m for m in norms if m not in prunable)
    setup.pruner.update_regularizer()
    return SparsityRegularizer(model, method, setup.pruner, float(reg))
