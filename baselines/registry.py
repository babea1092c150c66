"""The registry of baseline compression methods (each a torch-pruning 1.6 importance/pruner configuration)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MethodSpec:
    """One baseline method.

    kind: "prune" (structured channel pruning by `baselines.prune`) or "lowrank" (the harness factorizes the
    dense model with lorita.plan_ranks / lorita.factorize). regularized_training: the method trains its own model
    with a sparsity regularizer (see `baselines.sparsity_regularizer`). needs_data: `baselines.prune` needs
    `train_batches` to compute gradients for the importance criterion. default_reg: the regularizer's default
    strength (None when there is no regularizer).
    """

    name: str
    description: str
    kind: str
    regularized_training: bool = False
    needs_data: bool = False
    default_reg: float | None = None


# Regularization strengths: BNScalePruner's default (Liu et al. 2017 use 1e-5 on ResNets) and the default of
# torch-pruning's CIFAR benchmark script (benchmarks/main.py --reg) for group sparsity.
SLIM_REG = 1e-5
GROUP_SL_REG = 5e-4

METHODS: dict[str, MethodSpec] = {
    spec.name: spec
    for spec in (
        MethodSpec("l1", "filter L1 norm of the pruned layer alone (Li et al. 2017)", "prune"),
        MethodSpec("l2", "filter L2 norm of the pruned layer alone", "prune"),
        MethodSpec("group_norm", "L2 norm over all coupled layers of a dependency group (DepGraph, Fang et al. 2023)",
                   "prune"),
        MethodSpec("slim", "network slimming: L1-regularized BatchNorm scales, prune the smallest (Liu et al. 2017)",
                   "prune", regularized_training=True, default_reg=SLIM_REG),
        MethodSpec("group_sl", "DepGraph group-sparsity training, then group-norm pruning (Fang et al. 2023)",
                   "prune", regularized_training=True, default_reg=GROUP_SL_REG),
        MethodSpec("taylor", "first-order Taylor |w * dL/dw| over the group (Molchanov et al. 2019)", "prune",
                   needs_data=True),
        MethodSpec("hessian", "OBD-style w^2 * diag-Hessian from per-sample squared gradients (LeCun et al. 1989)",
                   "prune", needs_data=True),
        MethodSpec("lamp", "layer-adaptive magnitude (LAMP) scores (Lee et al. 2021)", "prune"),
        MethodSpec("fpgm", "filter pruning via geometric median (He et al. 2019)", "prune"),
        MethodSpec("random", "seeded random channel scores: the floor every criterion must beat", "prune"),
        MethodSpec("svd", "truncated SVD of the dense model's layers (lorita.plan_ranks / lorita.factorize)",
                   "lowrank"),
    )
}


def get_method(name: str) -> MethodSpec:
    """The registered spec of `name`; ValueError listing the registry otherwise."""
    spec = METHODS.get(name) if isinstance(name, str) else None
    if spec is None:
        raise ValueError(f"unknown method {name!r}; registered methods: {', '.join(METHODS)}")
    return spec
