"""Rank plans: how many singular values each layer of a collapsed model keeps under a policy and a target."""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lorita._validate import lowrank_layers, require_collapsed
from lorita.compose import check_patterns, matches_any
from lorita.costs import LayerCost, PlanCost, profile
from lorita.greedy import Batch, LossFn, greedy_ranks
from lorita.matrices import Matrix
from lorita.spectra import spectra, weight_matrix

POLICIES = ("uniform", "global", "energy", "flops_drop", "params_drop", "cost_drop")
# The policies that plan to a drop of a whole-model cost, and what a plan's drop is priced by.
DROP_POLICIES = ("flops_drop", "params_drop", "cost_drop")
# How flops_drop / params_drop find their plan: one threshold on normalized singular values, or the authors' greedy
# layer-by-layer cuts scored by a loss on training batches (lorita.greedy).
SEARCHES = ("threshold", "greedy")
# |achieved drop - target| allowed for flops_drop / params_drop, as fvcore counts it.
DROP_TOLERANCE = 0.01
# target * n lands a hair below an integer in floating point (0.29 * 100 = 28.999...); floor must not lose it.
_FLOOR_SLACK = 1e-9


class UnreachableTarget(ValueError):
    """A drop target no plan reaches; `largest` is the largest drop one does (baselines.prune raises it too)."""

    def __init__(self, message: str, largest: float) -> None:
        super().__init__(message)
        self.largest = largest


def _check_target(policy: str, target: float) -> None:
    closed = policy not in DROP_POLICIES
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


def _bisect_plans(candidates: int, plan: Callable[[int], dict[str, int]], layers: Mapping[str, object], base: float,
                  cost: Callable[[object, int | None], float], policy: str, target: float) -> dict[str, int]:
    # plan(0..candidates) keeps fewer values as the index grows, ending with every layer at rank 1; a layer's cost
    # never grows as its rank falls, so the drop is monotone in the index: bisect it.
    fixed = base - sum(cost(layers[name], None) for name in plan(0))  # what no plan of these layers changes

    def drop(index: int) -> float:
        return 1 - (fixed + sum(cost(layers[name], r) for name, r in plan(index).items())) / base

    largest = drop(candidates)
    if largest < target - DROP_TOLERANCE:
        raise UnreachableTarget(f"target={target} for {policy} is unreachable: the largest reachable drop is "
                                f"{largest:.3f}", largest)
    low, high = 0, candidates  # find the first index whose drop reaches target
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


def _drop_search(values: dict[str, np.ndarray], layers: Mapping[str, object], base: float,
                 cost: Callable[[object, int | None], float], policy: str, target: float) -> dict[str, int]:
    # Threshold candidates are the normalized values themselves (ascending), plus one past the end for
    # "every layer at rank 1"; a higher threshold keeps fewer values.
    ascending = {name: _normalized(s)[::-1] for name, s in values.items()}
    thresholds = np.unique(np.concatenate(list(ascending.values())))

    def plan(index: int) -> dict[str, int]:
        threshold = thresholds[index] if index < len(thresholds) else np.inf
        return {name: max(1, len(a) - int(np.searchsorted(a, threshold, side="left"))) for name, a in ascending.items()}

    return _bisect_plans(len(thresholds), plan, layers, base, cost, policy, target)


def _cost_facts(model: nn.Module, policy: str, example_input: torch.Tensor | None, cost: PlanCost | None = None
                ) -> tuple[Mapping[str, object], float, Callable[[object, int | None], float]]:
    # What a plan's layers are priced by: their LayerCost (FLOPs, params), or their name (a caller's PlanCost).
    if policy == "cost_drop":
        return {name: name for name in lowrank_layers(model)}, cost.base, cost.price
    if policy == "flops_drop":
        facts = profile(model, example_input)
        return facts.layers, facts.flops, LayerCost.flops
    facts = profile(model)
    return facts.layers, facts.params, LayerCost.params


def planned_layers(model: nn.Module, exclude: Sequence[str] | None = None) -> dict[str, nn.Linear | nn.Conv2d | Matrix]:
    """The layers plan_ranks plans and factorize may compress: Linear and ungrouped Conv2d, and the matrices modules
    read themselves (lorita.matrices.Matrix, with .weight and .bias), not matched by `exclude`."""
    check_patterns("exclude", exclude)
    return {name: layer for name, layer in lowrank_layers(model).items() if not matches_any(name, exclude)}


def plan_ranks(model: nn.Module, policy: str, target: float, *, example_input: torch.Tensor | None = None,
               exclude: Sequence[str] | None = None, search: str = "threshold", batches: Iterable[Batch] | None = None,
               loss_fn: LossFn | None = None, cost: PlanCost | None = None) -> dict[str, int]:
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
      cost_drop: the same threshold search against `cost` (a lorita.costs.PlanCost, e.g. a measured latency table),
        to within 0.01 of its own prediction; the plan names only the layers `cost` says are cheaper split at their
        rank (the others stay whole and untruncated): factorize them with split=set(plan).
    `search` (flops_drop / params_drop only): "threshold", the one threshold above; or "greedy", the LoRITa authors'
      search (lorita.greedy): from full ranks, each round every layer is cut on its own by 1/8 of the ranks it keeps
      and the cut with the lowest mean `loss_fn(model(x), y)` over `batches` is kept, until the same target is met
      within 0.01. It runs a copy of `model` (eval mode, no grad) once per batch per layer per round: pass training
      batches, never test data. `loss_fn` defaults to cross-entropy (the authors' score); "threshold" ignores both.
    `exclude` takes module-name glob patterns; matched layers stay whole and are left out of the plan.
    """
    if search not in SEARCHES:
        raise ValueError(f"search must be one of {', '.join(SEARCHES)}; got {search!r}")
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {', '.join(POLICIES)}; got {policy!r}")
    _check_target(policy, target)
    _check_cost(policy, cost)
    greedy = search == "greedy"
    if greedy and policy not in ("flops_drop", "params_drop"):
        raise ValueError(f"search 'greedy' cuts until a drop target is met: it needs policy flops_drop or "
                         f"params_drop; got {policy!r}")
    require_collapsed(model)
    if policy == "flops_drop" and example_input is None:
        raise ValueError("example_input is required for policy 'flops_drop' (a batch the model accepts); got None")
    if greedy:
        batches = list(batches or ())
        if not batches:
            raise ValueError("search 'greedy' needs batches: training (input, target) batches to score each cut on; "
                             "got none")
    layers = planned_layers(model, exclude)
    if not layers:  # everything excluded, or no Linear/Conv2d at all
        if policy in DROP_POLICIES:
            raise UnreachableTarget(f"target={target} for {policy} is unreachable: no layer is left to plan (see "
                                    "exclude)", 0.0)
        return {}
    if greedy:
        costs, base, cost = _cost_facts(model, policy, example_input)
        return greedy_ranks(model, {name: costs[name] for name in layers}, base, cost, target=target,
                            tolerance=DROP_TOLERANCE, policy=policy, batches=batches,
                            loss_fn=F.cross_entropy if loss_fn is None else loss_fn)
    all_values = spectra(model)
    values = {name: all_values[name].numpy() for name in layers}
    if policy == "uniform":
        return _uniform(values, target)
    if policy == "energy":
        return _energy(values, target)
    if policy == "global":
        return _global(values, target)
    return _split_only(_drop_search(values, *_cost_facts(model, policy, example_input, cost), policy, target), cost)


def _check_cost(policy: str, cost: PlanCost | None) -> None:
    if (policy == "cost_drop") != (cost is not None):
        raise ValueError("cost (a lorita.costs.PlanCost) is what policy 'cost_drop' plans against, and only it: "
                         f"got policy {policy!r} with cost {'given' if cost is not None else 'None'}")


def _split_only(ranks: dict[str, int], cost: PlanCost | None) -> dict[str, int]:
    # Under a caller's cost a layer that is not cheaper split gains nothing from truncation: it stays as trained.
    return ranks if cost is None else {name: r for name, r in ranks.items() if cost.split(name, r)}


def scaled_ranks(model: nn.Module, shares: Mapping[str, float], policy: str, target: float, *,
                 example_input: torch.Tensor | None = None, cost: PlanCost | None = None) -> dict[str, int]:
    """Ranks in proportion to `shares`, scaled by one factor so that factorize(model, ranks) meets the target.

    Each layer named in `shares` gets min(ceil(a * share), its full rank), at least 1, with a > 0 chosen by
    bisection (where layers tie at a, one layer steps at a time, in the order of `shares`) so that the FLOPs (policy
    flops_drop, needs `example_input`) or parameters (params_drop) drop by `target` within 0.01 as
    count_flops_params counts them, or the drop of `cost` (policy cost_drop, a lorita.costs.PlanCost). A layer whose
    rank is not cheaper split stays one layer at full cost (lorita.costs), so callers that keep such layers whole
    meet the same target; under cost_drop the plan names only the layers that split. Low-rank training (Cuttlefish)
    plans its switch with it: shares are each layer's scaled stable rank.
    """
    if policy not in DROP_POLICIES:
        raise ValueError(f"policy must be one of {', '.join(DROP_POLICIES)}; got {policy!r}")
    _check_target(policy, target)
    _check_cost(policy, cost)
    require_collapsed(model)
    if policy == "flops_drop" and example_input is None:
        raise ValueError("example_input is required for policy 'flops_drop' (a batch the model accepts); got None")
    layers = lowrank_layers(model)
    full = {}
    for name, share in shares.items():
        if name not in layers:
            raise ValueError(f"shares names {name!r}, which is not a Linear or Conv2d (groups=1) layer of the model")
        if isinstance(share, bool) or not isinstance(share, numbers.Real) or not share > 0:
            raise ValueError(f"shares[{name!r}] must be a number > 0; got {share!r}")
        full[name] = min(weight_matrix(layers[name].weight).shape)
    if not full:
        raise ValueError(f"target={target} for {policy} is unreachable: shares name no layer")
    # Rank k of a layer comes in at scale a = k / share; taking those steps one at a time (ties in layer order) moves
    # one layer by one rank per candidate, the finest steps the target can be met in.
    names = list(full)
    steps = sorted((k / shares[name], i) for i, name in enumerate(names) for k in range(2, full[name] + 1))
    owner = np.array([i for _, i in steps], dtype=int)

    def plan(index: int) -> dict[str, int]:
        counts = np.bincount(owner[:len(steps) - index], minlength=len(names))
        return {name: 1 + int(count) for name, count in zip(names, counts, strict=True)}

    return _split_only(_bisect_plans(len(steps), plan, *_cost_facts(model, policy, example_input, cost), policy,
                                     target), cost)
