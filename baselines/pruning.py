"""Structured pruning to an exact FLOPs/params budget with torch-pruning importance criteria."""

from __future__ import annotations

import copy
import dataclasses
import itertools
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from baselines import budget, tp_private
from baselines.graph import Setup, build
from baselines.importance import collect_gradients
from baselines.registry import MethodSpec, get_method
from baselines.structure import PruningError, check_forward
from lorita.counting import count_flops_params
from lorita.ranks import UnreachableTarget

TOLERANCE = 0.01  # the achieved drop is within ±1 percentage point of the target
METRICS = ("flops", "params", "latency")
SCOPES = ("global", "uniform")
_ATTEMPTS = 3


def progressive_targets(target: float, steps: int) -> list[float]:
    """The drops reached after each of `steps` progressive rounds: target * i / steps (the last is `target`)."""
    return [target * i / steps for i in range(1, steps + 1)]


@dataclass(frozen=True)
class _Config:
    spec: MethodSpec
    metric: str
    example_input: torch.Tensor
    batches: list | None
    base: float | None
    scope: str
    seed: int
    ignored_layers: tuple[str, ...]
    max_ratio: float
    prune_heads: bool
    latency: budget.LatencyCost | None = None


def prune(
    model: nn.Module,
    method: str,
    target: float,
    *,
    metric: str = "flops",
    example_input: torch.Tensor,
    train_batches: Iterable | None = None,
    reference: tuple[int, int] | None = None,
    scope: str = "global",
    steps: int = 1,
    seed: int = 0,
    ignored_layers: Iterable[str] = (),
    max_ratio: float = 0.9,
    prune_heads: bool = False,
    grad_batches: int = 8,
    latency: budget.LatencyCost | None = None,
) -> nn.Module:
    """A structurally pruned copy of `model` whose `metric` ("flops" or "params") dropped by `target`.

    The input model is never modified; the result is a deep copy with channels removed (same training mode).
    The drop is 1 - count / reference count, counted by lorita.counting.count_flops_params on `example_input`
    (eval mode), where `reference` = (flops, params) of the ORIGINAL model (default: `model`'s own counts). Pass it
    when pruning progressively with fine-tuning in between: round i of k calls
    prune(current, ..., target=progressive_targets(T, k)[i], reference=(base flops, base params)).
    The achieved drop is verified with count_flops_params to lie within ±1 percentage point of `target`.
    Metric "latency" prices plans by `latency` (a budget.LatencyCost: the caller's measured table) instead, against
    its `base` (the original model's latency, so progressive rounds need no `reference`); the achieved drop is the
    same prediction for the pruned model's widths.

    Each round computes the method's importance on the current model (taylor and hessian from cross-entropy
    gradients on up to `grad_batches` batches of `train_batches`, (inputs, labels) pairs) and removes the least
    important channels: ranked across all layers (scope "global") or the same fraction of every layer (scope
    "uniform"); the budget decides how many (see baselines.budget.choose). `steps` > 1 does that many rounds in
    this call, without fine-tuning in between. No layer loses more than `max_ratio` of the channels it has when
    the round starts (and always keeps one).

    Never pruned: the classifier's outputs (`classifier_name`), layers matching `ignored_layers` (module names or
    glob patterns), the residual stream of zero-padding ("option A") ResNets and of transformers. Transformers
    lose attention head dims and MLP hidden dims (whole heads instead with `prune_heads=True`); each attention's
    `num_heads` (and `head_dim` if it has one) is updated. `seed` fixes the `random` criterion.

    Errors: ValueError for an unknown method (listing the registry), a target outside (0, 1),
    a target that cannot be reached (stating the largest reachable drop) or missing train_batches; PruningError
    (a RuntimeError) naming the layer when torch-pruning cannot trace or consistently prune the model.
    """
    spec = get_method(method)
    if isinstance(target, bool) or not isinstance(target, (int, float)) or not 0.0 < target < 1.0:
        raise ValueError(f"target must be a fraction in (0, 1), got {target!r}")
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {', '.join(METRICS)}, got {metric!r}")
    if (metric == "latency") != (latency is not None):
        raise ValueError(f"latency (a budget.LatencyCost) is what metric 'latency' prices plans by, and only it: got "
                         f"metric {metric!r} with latency {'given' if latency is not None else 'None'}")
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {', '.join(SCOPES)}, got {scope!r}")
    for name, value in (("steps", steps), ("grad_batches", grad_batches), ("seed", seed)):
        if isinstance(value, bool) or not isinstance(value, int) or value < (0 if name == "seed" else 1):
            raise ValueError(f"{name} must be an integer >= {0 if name == 'seed' else 1}, got {value!r}")
    if isinstance(max_ratio, bool) or not isinstance(max_ratio, (int, float)) or not 0.0 < max_ratio <= 1.0:
        raise ValueError(f"max_ratio must be in (0, 1], got {max_ratio!r}")
    if not isinstance(prune_heads, bool):
        raise ValueError(f"prune_heads must be a bool, got {prune_heads!r}")
    ignored = (ignored_layers,) if isinstance(ignored_layers, str) else tuple(ignored_layers)
    batches = None
    if spec.needs_data:
        if train_batches is None:
            raise ValueError(f"method {method!r} needs train_batches: (inputs, labels) batches for its gradients")
        batches = list(itertools.islice(iter(train_batches), grad_batches))
        if not batches:
            raise ValueError(f"method {method!r} needs train_batches, but the iterable yielded no batch")
    if reference is not None and (len(reference) != 2 or any(
            isinstance(r, bool) or not isinstance(r, int) or r <= 0 for r in reference)):
        raise ValueError(f"reference must be (flops, params) of the original model, got {reference!r}")
    work = model  # every round prunes a deep copy of its input: `model` itself is never modified
    # Without a reference the first round's count (the same fvcore configuration as count_flops_params) is it.
    if metric == "latency":
        base = latency.base
    else:
        base = None if reference is None else reference[METRICS.index(metric)]
    config = _Config(spec, metric, example_input, batches, base, scope, seed, ignored, float(max_ratio),
                     prune_heads, latency)
    for index, round_target in enumerate(progressive_targets(float(target), steps)):
        work, base = _prune_round(work, round_target, config, seed + index)
        config = dataclasses.replace(config, base=base)
    return work


def _prune_round(model: nn.Module, target: float, config: _Config, seed: int) -> tuple[nn.Module, int]:
    """A copy of `model` whose drop is within TOLERANCE of `target` (retrying if the prediction missed), and the
    base count the drop is measured against."""
    aim, achieved = target, None
    for _ in range(_ATTEMPTS):
        work = copy.deepcopy(model)
        setup = build(work, config.spec.name, config.example_input, ignored_layers=config.ignored_layers,
                      prune_heads=config.prune_heads, seed=seed)
        if config.batches is not None:
            collect_gradients(work, config.spec, config.batches)
        cost = budget.CostModel(work, config.example_input, setup.attentions, config.latency)
        if config.base is None:
            config = dataclasses.replace(config, base=cost.count(config.metric))
        current = 1.0 - cost.count(config.metric) / config.base
        if abs(current - target) <= TOLERANCE:
            work.zero_grad(set_to_none=True)
            return work, config.base
        if current > target:
            raise ValueError(f"target={target:.4g} for {config.metric}_drop is already exceeded: the model's drop "
                             f"is {current:.3f}")
        groups = _group_units(setup, cost, config)
        if not groups:
            raise UnreachableTarget(_unreachable(target, config, current, why=_no_units_reason(config.spec)), current)
        try:
            plan = budget.choose(groups, cost, config.metric, aim, config.base, scope=config.scope)
        except budget.UnreachableTarget as err:
            raise UnreachableTarget(f"target={target:.4g} for {config.metric}_drop is unreachable: {err} "
                                    f"(every prunable layer pruned to max_ratio={config.max_ratio:g} with method "
                                    f"{config.spec.name!r})", err.largest) from None
        except budget.BudgetError as err:
            raise ValueError(f"target={target:.4g} for {config.metric}_drop: {err}") from None
        _apply(setup, groups, plan)
        work.zero_grad(set_to_none=True)
        check_forward(work, config.example_input,
                      f"torch-pruning could not prune {type(work).__name__} consistently ({config.spec.name}); the "
                      "pruned model", _HINT)
        achieved = 1.0 - _count(work, config) / config.base
        if abs(achieved - target) <= TOLERANCE:
            _check_classifier(model, work, setup.classifier)
            return work, config.base
        aim += target - achieved
    raise PruningError(f"could not bring {config.metric}_drop within 1 percentage point of {target:.4g} "
                       f"({config.spec.name} on {type(model).__name__}): last achieved {achieved:.4f}")


def _count(model: nn.Module, config: _Config) -> float:
    """The pruned model's count as the target measures it: fvcore's FLOPs or params, or the predicted latency."""
    if config.metric == "latency":
        return float(config.latency.predict(budget.layer_widths(model)))
    flops, params = count_flops_params(model, config.example_input)
    return flops if config.metric == "flops" else params


_HINT = ("Layers whose widths are tied by operations torch-pruning does not model (e.g. a fixed zero-padding "
         "shortcut) must be kept whole: pass their names in ignored_layers")


def _root_name(setup: Setup, group) -> str:
    module = group[0].dep.target.module
    name = tp_private.module_name(setup.dg, module)
    return f"{'?' if name is None else name} ({type(module).__name__})"


def _unreachable(target: float, config: _Config, current: float, why: str) -> str:
    return (f"target={target:.4g} for {config.metric}_drop is unreachable: the largest reachable drop is "
            f"{current:.3f} ({why})")


def _no_units_reason(spec: MethodSpec) -> str:
    if spec.batchnorm_scales:
        return f"{spec.name} scores channels by BatchNorm scales and no prunable channel has a BatchNorm"
    return "the model has no prunable channel outside the classifier, residual streams and ignored layers"


def _group_units(setup: Setup, cost: budget.CostModel, config: _Config) -> list[budget.GroupUnits]:
    """Importance-ranked units of every prunable group (the method's torch-pruning criterion, per group)."""
    pruner, dg = setup.pruner, setup.dg
    attention_of = {attn.qkv: attn for attn in setup.attentions}
    result = []
    for group, qkv in setup.groups():
        try:
            importance = pruner.estimate_importance(group)
        except Exception as err:  # noqa: BLE001 - re-raised with the layer's name
            raise PruningError(f"torch-pruning fails to score the channels of layer {_root_name(setup, group)}: "
                               f"{type(err).__name__}: {err}. {_HINT}") from err
        if importance is None:
            continue
        scores = importance.detach().float().cpu().numpy()
        size = len(group[0].idxs)
        if len(scores) != size or sorted(group[0].idxs) != list(range(size)):
            continue
        root_order = np.asarray(group[0].idxs)
        scores = scores[np.argsort(root_order)]
        channel_groups = tp_private.channel_groups(pruner, group)
        heads = qkv is not None and config.prune_heads
        if heads:
            count = pruner.num_heads[qkv]
            width = size // count
            units = [np.arange(h * width, (h + 1) * width) for h in range(count)]
            unit_scores = scores.reshape(count, width).mean(1)
        elif channel_groups > 1 and size % channel_groups == 0:
            width = size // channel_groups
            units = [j + width * np.arange(channel_groups) for j in range(width)]
            unit_scores = scores.reshape(channel_groups, width).mean(0)
        else:
            units = [np.array([i]) for i in range(size)]
            unit_scores = scores
        unit_scores = np.nan_to_num(unit_scores, nan=np.inf)
        order = np.argsort(unit_scores, kind="stable")
        removable = len(units) - budget.keep_at_least(len(units), config.max_ratio)
        if removable <= 0:
            continue
        slots, outputs, counts = [], [], []
        for item in group:
            node = item.dep.target
            slot = cost.slot(node.module, node.pruning_dim)
            roots = item.root_idxs
            if slot is None or roots is None or any(r is None for r in roots):
                continue
            out = dg.is_out_channel_pruning_fn(item.dep.handler)
            histogram = np.bincount(np.asarray(roots, dtype=int), minlength=size)[:size]
            slots.append(slot)
            outputs.append(out)
            counts.append(histogram)
            if out and slot in cost.followers:
                slots.append(cost.followers[slot])
                outputs.append(True)
                counts.append(histogram)
        if not slots:
            continue
        result.append(budget.GroupUnits(
            group=group, units=[units[i] for i in order], scores=unit_scores[order], removable=removable,
            slots=np.asarray(slots), outputs=np.asarray(outputs, dtype=int), counts=np.stack(counts),
            attention=attention_of.get(qkv) if heads else None, heads=heads))
    return result


def _apply(setup: Setup, groups: list[budget.GroupUnits], plan: dict[int, int]) -> None:
    """Remove the planned units of each group with torch-pruning (updating attention head counts)."""
    dg = setup.dg
    for index, count in sorted(plan.items()):
        gu = groups[index]
        idxs = sorted(int(i) for i in np.concatenate(gu.units[:count]))
        root = gu.group[0].dep
        try:
            group = dg.get_pruning_group(root.target.module, root.handler, idxs)
            if not dg.check_pruning_group(group):
                raise PruningError(f"it refuses to remove {len(idxs)} of them")
            group.prune()
        except Exception as err:  # noqa: BLE001 - re-raised with the layer's name
            raise PruningError(f"torch-pruning fails to prune the channels of layer {_root_name(setup, gu.group)}: "
                               f"{type(err).__name__}: {err}. {_HINT}") from err
        if gu.heads and gu.attention is not None:
            gu.attention.num_heads -= count
    for attn in setup.attentions:
        if isinstance(getattr(attn, "head_dim", None), int):
            attn.head_dim = attn.qkv.out_features // (3 * attn.num_heads)


def _check_classifier(before: nn.Module, after: nn.Module, name: str) -> None:
    """Defensive: the classifier keeps all its outputs."""
    width = [getattr(m.get_submodule(name), "out_features", None) or m.get_submodule(name).out_channels
             for m in (before, after)]
    if width[0] != width[1]:
        raise PruningError(f"internal error: classifier {name} lost outputs ({width[0]} -> {width[1]})")
