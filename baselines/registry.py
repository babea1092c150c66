"""The registry of pruning criteria: each a torch-pruning 1.6 importance/pruner configuration."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch_pruning as tp

from baselines.criteria import SeededRandomImportance

Gradients = Literal["mean", "squared"]


@dataclass(frozen=True)
class MethodSpec:
    """One pruning criterion and everything about it that differs between criteria.

    label: display name for reports. citation: the paper it comes from ("—" when none). importance: seed ->
    the torch-pruning importance object that scores channels (configured as in torch-pruning's benchmarks).
    pruner: the torch-pruning pruner class; it decides the sparsity regularizer. gradients: what
    `baselines.importance.collect_gradients` puts in .grad before scoring, None when the criterion reads weights
    only ("mean": the mean batch-loss gradient, "squared": the mean squared per-sample gradient).
    default_reg: the default strength of the regularizer the method trains with (None: it has none).
    batchnorm_scales: the criterion scores BatchNorm scales, so channels without a BatchNorm stay unscored, and
    its regularizer penalizes every BatchNorm the pruner does not ignore.
    """

    name: str
    label: str
    citation: str
    description: str
    importance: Callable[[int], tp.importance.Importance] = field(repr=False)
    pruner: type[tp.pruner.BasePruner] = tp.pruner.BasePruner
    gradients: Gradients | None = None
    default_reg: float | None = None
    batchnorm_scales: bool = False

    @property
    def regularized_training(self) -> bool:
        """The method trains its own model with a sparsity regularizer (see `baselines.sparsity_regularizer`)."""
        return self.default_reg is not None

    @property
    def needs_data(self) -> bool:
        """`baselines.prune` needs `train_batches` to compute the gradients the criterion reads."""
        return self.gradients is not None


# Regularization strengths: BNScalePruner's default (Liu et al. 2017 use 1e-5 on ResNets) and the default of
# torch-pruning's CIFAR benchmark script (benchmarks/main.py --reg) for group sparsity.
SLIM_REG = 1e-5
GROUP_SL_REG = 5e-4

_imp = tp.importance

METHODS: dict[str, MethodSpec] = {
    spec.name: spec
    for spec in (
        MethodSpec("l1", "L1 norm", "Li et al., ICLR 2017",
                   "filter L1 norm of the pruned layer alone (Li et al. 2017)",
                   lambda seed: _imp.MagnitudeImportance(p=1, normalizer=None, group_reduction="first")),
        MethodSpec("l2", "L2 norm", "Li et al., ICLR 2017", "filter L2 norm of the pruned layer alone",
                   lambda seed: _imp.MagnitudeImportance(p=2, normalizer=None, group_reduction="first")),
        MethodSpec("group_norm", "Group norm (DepGraph)", "Fang et al., CVPR 2023",
                   "L2 norm over all coupled layers of a dependency group (DepGraph, Fang et al. 2023)",
                   lambda seed: _imp.GroupMagnitudeImportance(p=2), pruner=tp.pruner.GroupNormPruner),
        MethodSpec("slim", "Network slimming", "Liu et al., ICCV 2017",
                   "network slimming: L1-regularized BatchNorm scales, prune the smallest (Liu et al. 2017)",
                   lambda seed: _imp.BNScaleImportance(), pruner=tp.pruner.BNScalePruner, default_reg=SLIM_REG,
                   batchnorm_scales=True),
        MethodSpec("group_sl", "Group sparsity (DepGraph)", "Fang et al., CVPR 2023",
                   "DepGraph group-sparsity training, then group-norm pruning (Fang et al. 2023)",
                   # torch-pruning's CIFAR benchmark: "normalized by the maximum score for CIFAR".
                   lambda seed: _imp.GroupMagnitudeImportance(p=2, normalizer="max"),
                   pruner=tp.pruner.GroupNormPruner, default_reg=GROUP_SL_REG),
        MethodSpec("taylor", "Taylor", "Molchanov et al., CVPR 2019",
                   "first-order Taylor |w * dL/dw| over the group (Molchanov et al. 2019)",
                   lambda seed: _imp.TaylorImportance(), gradients="mean"),
        MethodSpec("hessian", "Hessian (OBD)", "LeCun et al., NIPS 1989",
                   "OBD-style w^2 * diag-Hessian from per-sample squared gradients (LeCun et al. 1989)",
                   lambda seed: _imp.HessianImportance(), gradients="squared"),
        MethodSpec("lamp", "LAMP", "Lee et al., ICLR 2021", "layer-adaptive magnitude (LAMP) scores (Lee et al. 2021)",
                   lambda seed: _imp.LAMPImportance(p=2)),
        MethodSpec("fpgm", "FPGM", "He et al., CVPR 2019", "filter pruning via geometric median (He et al. 2019)",
                   lambda seed: _imp.FPGMImportance(p=2)),
        MethodSpec("random", "Random", "—", "seeded random channel scores: the floor every criterion must beat",
                   SeededRandomImportance),
    )
}


def get_method(name: str) -> MethodSpec:
    """The registered spec of `name`; ValueError listing the registry otherwise."""
    spec = METHODS.get(name) if isinstance(name, str) else None
    if spec is None:
        raise ValueError(f"unknown method {name!r}; registered methods: {', '.join(METHODS)}")
    return spec
