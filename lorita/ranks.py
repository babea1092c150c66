"""Rank plans: how many singular values each layer of a collapsed model keeps under a policy and a target."""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

from lorita._validate import lowrank_layers, require_collapsed
from lorita.compose import check_patterns, matches_any
from lorita.costs import LayerCost, profile
from lorita.spectra import spectra

POLICIES = ("uniform", "global", "energy", "flops_drop", "params_drop")
# |achieved drop - target| allowed for flops_drop / params_drop, as fvcore counts it.
DROP_TOLERANCE = 0.01
# target * n lands a hair below an integer in floating point (0.29 * 100 = 28.999...); floor must not lose it.
_FLOOR_SLACK = 1e-9


def _check_target(policy: str, target: float) -> None:
    closed = policy not in ("flops_drop", "params_drop")
    if (isinstance(target, bool) or not isinstance(target, numbers.Real)
            or not (0 < target <= 1 if closed else 0 < target < 1)):
        interval = "(0, 1]" if closed else "(0, 1)"
        raise ValueError(f"target must be a number in {interval} for policy {policy!r}; got {target!r}")


def _normalized(values: np.ndarray) -> np.ndarray:
    # Each layer's values relative to its largest, so layers of any scale compete on one threshold.
    return values / values[0] if values[0] > 0 else np.zeros_like(values)


def _uniform(values: dict[str, np.ndarray], target: float) -> dict[str, int]:
    return {name: max(1, math.floor(target * len(s) + _FLOOR_SLACK)) for name, s in values.items()}


def _energy(values: dict[str, np.ndarray], target: float) -> dict[str, int]:
    ranks = {}
    for name, s in values.items():
        cumulative = np.cumsum(s**2)
        # The relative slack keeps target=1 (and exact fractions) from failing on the last bit of the sum.
        needed = target * cumulative[-1] * (1 - 1e-12)
        ranks[name] = int(np.searchsorted(cumulative, needed, side="left")) + 1 if cumulative[-1] > 0 else 1
    return ranks


def _global(values: dict[str, np.ndarray], target: float) -> dict[str, int]:
    normalized = [_normalized(s) for s in values.values()]
    pooled = np.concatenate(normalized)
    owner = np.repeat(np.arange(len(normalized)), [len(s) for s in normalized])
    keep = math.floor(target * len(pooled) + _FLOOR_SLACK)
    kept = np.bincount(owner[np.argsort(-pooled, kind="stable")[:keep]], minlength=len(normalized))
    return {name: max(1, int(count)) for name, count in zip(values, kept, strict=True)}


def _drop_search(values: dict[str, np.ndarray], layers: dict[str, LayerCost], base: int,
                 cost: Callable[[LayerCost, int | None], int], policy: str, target: float) -> dict[str, int]:
    # Threshold candidates are the normalized values themselves (ascending), plus one past the end for
    # "every layer at rank 1". A higher threshold keeps fewer values, and a layer's cost never grows as its
    # rank falls, so the drop is monotone in the candidate index: bisect it.
    ascending = {name: _normalized(s)[::-1] for name, s in values.items()}
    thresholds = np.unique(np.concatenate(list(ascending.values())))
    fixed = base - sum(cost(layers[name], None) for name in values)  # what no plan of these layers changes

    def plan(index: int) -> dict[str, int]:
        threshold = thresholds[index] if index < len(thresholds) else np.inf
        return {name: max(1, len(a) - int(np.searchsorted(a, threshold, side="left"))) for name, a in ascending.items()}

    def drop(index: int) -> float:
        return 1 - (fixed + sum(cost(layers[name], r) for name, r in plan(index).items())) / base

    largest = drop(len(thresholds))
    if largest < target - DROP_TOLERANCE:
        raise ValueError(f"target={target} for {policy} is unreachable: the largest reachable drop is {largest:.3f}")
    low, high = 0, len(thresholds)  # find the first index whose drop reaches target
    while low < high:
        middle = (low + high) // 2
        if drop(middle) >= target:
            high = middle
        else:
            low = middle + 1
    # Of the two plans around target, the closer; on a tie the one that reaches target.
    best = min((low, low - 1) if low else (low,), key=lambda index: abs(drop(index) - target))
    if abs(drop(best) - target) > DROP_TOLERANCE:
        raise ValueError(f"target={target} for {policy} cannot be met within {DROP_TOLERANCE}: the nearest "
                         f"reachable drops are {drop(max(low - 1, 0)):.3f} and {drop(low):.3f}")
    return plan(best)


def planned_layers(model: nn.Module, exclude: Sequence[str] | None = None) -> dict[str, nn.Linear | nn.Conv2d]:
    """The layers plan_ranks plans and factorize may compress: Linear and ungrouped Conv2d not matched by `exclude`."""
    check_patterns("exclude", exclude)
    return {name: layer for name, layer in lowrank_layers(model).items() if not matches_any(name, exclude)}


def plan_ranks(model: nn.Module, policy: str, target: float, *, example_input: torch.Tensor | None = None,
               exclude: Sequence[str] | None = None) -> dict[str, int]:
    """Rank to keep for every Linear/Conv2d (groups=1) of a collapsed `model` not matched by `exclude`.

    Policies (singular values from lorita.spectra, cached per model state):
      uniform: floor(target * n) of each layer's n singular values, at least 1; target in (0, 1].
      global: the fraction `target` of all singular values pooled over the planned layers, ranked by value over
        its layer's largest; at least 1 per layer; target in (0, 1]. (The LoRITa authors pool conv and linear
        layers separately; we pool all.)
      energy: per layer, the smallest rank whose squared singular values reach `target` of the total; (0, 1].
      flops_drop / params_drop: one threshold on normalized singular values, chosen so that
        factorize(model, ranks) has `target` fewer FLOPs (needs `example_input`) or parameters than `model`,
        within 0.01 as count_flops_params counts them; target in (0, 1). Candidates are priced analytically
        (lorita.costs) from one fvcore count and one forward pass, both cached with the singular values.
    `exclude` takes module-name glob patterns; matched layers stay whole and are left out of the plan.
    """
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {', '.join(POLICIES)}; got {policy!r}")
    _check_target(policy, target)
    require_collapsed(model)
    if policy == "flops_drop" and example_input is None:
        raise ValueError("example_input is required for policy 'flops_drop' (a batch the model accepts); got None")
    layers = planned_layers(model, exclude)
    all_values = spectra(model)
    values = {name: all_values[name].numpy() for name in layers}
    if not values:  # everything excluded, or no Linear/Conv2d at all
        if policy in ("flops_drop", "params_drop"):
            raise ValueError(f"target={target} for {policy} is unreachable: no layer is left to plan (see exclude)")
        return {}
    if policy == "uniform":
        return _uniform(values, target)
    if policy == "energy":
        return _energy(values, target)
    if policy == "global":
        return _global(values, target)
    if policy == "flops_drop":
        facts = profile(model, example_input)
        return _drop_search(values, facts.layers, facts.flops, LayerCost.flops, policy, target)
    facts = profile(model)
    return _drop_search(values, facts.layers, facts.params, LayerCost.params, policy, target)
