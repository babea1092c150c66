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

    def __init__(self, model: nn.Module, method: str, pruner: tp.pruner.BasePruner) -> None:
        self.model = model
        self.method = method
        self.pruner = pruner

    @property
    def reg(self) -> float:
        """The regularization strength (the pruner's, which its regularize() reads)."""
        return self.pruner.reg

    @torch.no_grad()
    def __call__(self) -> None:
        # BNScalePruner and GroupNormPruner both default to the strength build() gave them (pruner.reg).
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
    if spec.batchnorm_scales:
        # The pruner penalizes every BatchNorm it does not ignore, prunable or not.
        prunable = {item.dep.target.module for group, _ in setup.groups() for item in group}
        norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        if not any(m in prunable for m in norms):
            raise ValueError(f"{method} regularizes BatchNorm scales, but no prunable channel of "
                             f"{type(model).__name__} has a BatchNorm")
        setup.ignore(m for m in norms if m not in prunable)
    setup.pruner.update_regularizer()
    return SparsityRegularizer(model, method, setup.pruner)
