"""Predicting FLOPs/params after removing channels, and choosing the channels that meet a budget.

The prediction is exact for the layers whose cost depends on their widths (convolutions, linear layers, norms,
unwrapped parameters, attention's score/value products): per-layer fvcore counts of the unpruned model scaled by
the surviving fraction of input and output channels (the spatial/token sizes do not change under channel
pruning). Everything else (pooling, ...) is taken as constant; `baselines.prune` verifies the result with
lorita.counting.count_flops_params and corrects if needed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from lorita import counting

BILINEAR, CHANNEL, DEPTHWISE = 0, 1, 2
# {layer name: (input widths, output widths)}, arrays over candidate plans, for the layers a plan changes.
Widths = Mapping[str, tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class LatencyCost:
    """A model's latency as a function of the widths of its Linear/Conv2d layers (the caller's measured table).

    `predict(widths)` gives one latency per candidate plan (widths broadcast against each other), every layer named;
    `base` is the unpruned model's. Latency drops are measured against `base`.
    """

    base: float
    predict: Callable[[Widths], np.ndarray]


def layer_widths(model: nn.Module) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The (in, out) widths of every Linear and ungrouped Conv2d of `model`, as LatencyCost.predict takes them."""
    widths = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            widths[name] = (np.array(module.in_features), np.array(module.out_features))
        elif isinstance(module, nn.Conv2d) and module.groups == 1:
            widths[name] = (np.array(module.in_channels), np.array(module.out_channels))
    return widths
_NORMS = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.modules.instancenorm._InstanceNorm, nn.LayerNorm)


class CostModel:
    """FLOPs and params of a model as a function of how many channels each layer loses.

    Each layer touched by a pruning group is a slot with an input and an output width; `predict(D)` gives the
    model's count after removing D[..., slot] input channels and D[..., S + slot] output channels.
    """

    def __init__(self, model: nn.Module, example_input: torch.Tensor, attentions: list[nn.Module] = (),
                 latency: LatencyCost | None = None) -> None:
        self.latency = latency
        self._widths = layer_widths(model) if latency is not None else {}  # as the model is now
        self.by_name = counting.flops_by_module(model, example_input)
        self.flops = self.by_name.get("", 0)
        self.params = sum(p.numel() for p in model.parameters())
        self._names = {module: name for name, module in model.named_modules()}
        # Attention's own ops (q.k^T, attn.v) scale with the qkv width.
        self._attention_of = {}
        for attn in attentions:
            name = self._names[attn]
            children = sum(self.by_name.get(f"{name}.{child}" if name else child, 0)
                           for child, _ in attn.named_children())
            self._attention_of[id(attn.qkv)] = self.by_name.get(name, 0) - children
        self._slot_of: dict[int, int | None] = {}
        self.followers: dict[int, int] = {}
        self.kind: list[int] = []
        self.in0: list[float] = []
        self.out0: list[float] = []
        self.f0: list[float] = []
        self.w0: list[float] = []
        self.b0: list[float] = []
        self.layer_names: list[str | None] = []  # per slot, the Linear/Conv2d it is (for the latency metric)
        self._arrays: tuple | None = None

    def count(self, metric: str) -> float:
        """The model's count as it is: FLOPs, params, or its predicted latency."""
        if metric == "latency":
            return float(self.latency.predict(self._widths))
        return self.flops if metric == "flops" else self.params

    @property
    def size(self) -> int:
        return len(self.kind)

    def _add(self, kind: int, in0: float, out0: float, f0: float, w0: float, b0: float, name: str | None = None) -> int:
        self._arrays = None
        self.layer_names.append(name)
        self.kind.append(kind)
        self.in0.append(float(max(in0, 1)))
        self.out0.append(float(max(out0, 1)))
        self.f0.append(float(f0))
        self.w0.append(float(w0))
        self.b0.append(float(b0))
        return len(self.kind) - 1

    def slot(self, target, pruning_dim: int | None = None) -> int | None:
        """The slot of a pruned layer or unwrapped parameter; None when its width costs nothing we model."""
        key = id(target)
        if key in self._slot_of:
            return self._slot_of[key]
        index = None
        if isinstance(target, nn.Parameter):
            dim = pruning_dim if pruning_dim is not None else target.dim() - 1
            index = self._add(CHANNEL, 1, target.shape[dim], 0, 0, target.numel())
        elif isinstance(target, nn.Module) and target in self._names:
            flops = self.by_name.get(self._names[target], 0)
            bias = getattr(target, "bias", None)
            bias_numel = bias.numel() if isinstance(bias, torch.Tensor) else 0
            if isinstance(target, nn.modules.conv._ConvNd):
                depthwise = target.groups > 1 and target.groups == target.in_channels == target.out_channels
                index = self._add(DEPTHWISE if depthwise else BILINEAR, target.in_channels, target.out_channels,
                                  flops, target.weight.numel(), bias_numel,
                                  None if target.groups > 1 else self._names[target])
            elif isinstance(target, nn.Linear):
                index = self._add(BILINEAR, target.in_features, target.out_features, flops,
                                  target.weight.numel(), bias_numel, self._names[target])
            elif isinstance(target, _NORMS):
                width = getattr(target, "num_features", None) or getattr(target, "num_channels", None)
                if width is None:
                    width = target.normalized_shape[-1]
                own = sum(p.numel() for p in target.parameters(recurse=False))
                index = self._add(CHANNEL, 1, width, flops, 0, own)
        self._slot_of[key] = index
        if index is not None and key in self._attention_of:
            self.followers[index] = self._add(CHANNEL, 1, target.out_features, self._attention_of[key], 0, 0)
        return index

    def _numpy(self):
        if self._arrays is None:
            self._arrays = tuple(np.asarray(a, dtype=np.float64)
                                 for a in (self.kind, self.in0, self.out0, self.f0, self.w0, self.b0))
        return self._arrays

    def predict(self, removed: np.ndarray, metric: str) -> np.ndarray:
        """The model's count after removing `removed[..., :S]` input and `removed[..., S:]` output channels."""
        kind, in0, out0, f0, w0, b0 = self._numpy()
        size = len(kind)
        if metric == "latency":
            return self._latency(removed, in0, out0)
        keep_in = 1.0 - removed[..., :size] / in0
        keep_out = 1.0 - removed[..., size:] / out0
        scale = np.where(kind == BILINEAR, keep_in * keep_out,
                         np.where(kind == DEPTHWISE, np.minimum(keep_in, keep_out), keep_out))
        if metric == "flops":
            return self.flops - ((1.0 - scale) * f0).sum(-1)
        return self.params - ((1.0 - scale) * w0 + (1.0 - keep_out) * b0).sum(-1)

    def _latency(self, removed: np.ndarray, in0: np.ndarray, out0: np.ndarray) -> np.ndarray:
        size = len(in0)
        widths = {name: (in0[slot] - removed[..., slot], out0[slot] - removed[..., size + slot])
                  for slot, name in enumerate(self.layer_names) if name is not None}
        return np.asarray(self.latency.predict({**self._widths, **widths}), dtype=np.float64)


@dataclass
class GroupUnits:
    """The prunable units of one dependency group, least important first.

    A unit is a set of root indices removed together: one channel, one dimension in every head (or channel
    group), or one whole attention head. `counts[c, r]` is how many channels column `c` of the cost model loses
    when root index r goes, column c being the input side (`outputs[c]` False) or the output side of cost-model
    slot `slots[c]`; at most `removable` units may go.
    """

    group: object
    units: list[np.ndarray]
    scores: np.ndarray
    removable: int
    slots: np.ndarray
    outputs: np.ndarray
    counts: np.ndarray
    attention: nn.Module | None = None
    heads: bool = False
    effects: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.effects = np.stack([self.counts[:, unit].sum(1) for unit in self.units[: self.removable]])


def keep_at_least(units: int, max_ratio: float) -> int:
    """Units a group keeps when at most `max_ratio` of them may be pruned (never fewer than one)."""
    return max(1, math.ceil(units * (1.0 - max_ratio) - 1e-9))


class BudgetError(ValueError):
    """The target cannot be met (the message says what can)."""


class UnreachableTarget(BudgetError):
    """Even removing every removable unit falls short of the target (the message states the largest drop)."""

    def __init__(self, largest: float) -> None:
        super().__init__(f"the largest reachable drop is {largest:.3f}")
        self.largest = largest


def choose(groups: list[GroupUnits], cost: CostModel, metric: str, target: float, base: int, *,
           scope: str, tolerances: tuple[float, ...] = (0.005, 0.0099)) -> dict[int, int]:
    """How many units of each group to remove so the predicted drop (vs `base`) is within tolerance of target.

    Units are taken in one order, least important first: by score across all groups (scope "global") or by the
    fraction of its group a unit completes, ties by score (scope "uniform": the same ratio in every group). Of the
    prefixes of that order whose predicted drop lies within the tolerance window, the one nearest the target is
    taken; when none does (one unit jumps over the window), later units that fit are added instead (a group whose
    next unit is skipped is closed, so each group still loses its least important units). The window is ±0.5
    point first, then ±0.99.
    Returns {group index: units to remove}.
    """
    width = 2 * cost.size
    rows, owner, ranks, scores, fractions = [], [], [], [], []
    for index, gu in enumerate(groups):
        columns = gu.slots + cost.size * gu.outputs
        for rank in range(gu.removable):
            row = np.zeros(width)
            np.add.at(row, columns, gu.effects[rank])
            rows.append(row)
            owner.append(index)
            ranks.append(rank)
            scores.append(gu.scores[rank])
            fractions.append((rank + 1) / len(gu.units))
    if not rows:
        raise BudgetError("no prunable channels")
    owner_arr = np.asarray(owner)
    if scope == "global":
        order = np.lexsort((np.asarray(ranks), np.asarray(scores)))
    else:
        order = np.lexsort((np.asarray(scores), np.asarray(fractions)))
    effects = np.asarray(rows)[order]
    owner_arr = owner_arr[order]
    cumulative = np.vstack([np.zeros(width), np.cumsum(effects, axis=0)])
    drops = 1.0 - cost.predict(cumulative, metric) / base
    if drops[0] >= target - tolerances[0]:
        return {}
    if drops[-1] < target - tolerances[-1]:
        raise UnreachableTarget(float(drops[-1]))
    for tol in tolerances:
        low, high = target - tol, target + tol
        inside = np.flatnonzero((drops >= low) & (drops <= high))
        if len(inside):
            return _counts(owner_arr[: inside[np.argmin(np.abs(drops[inside] - target))]])
        first = int(np.argmax(drops >= low))
        removed, taken, closed = cumulative[first - 1].copy(), [], set()
        for position in range(first - 1, len(order)):
            group = owner_arr[position]
            if group in closed:
                continue
            trial = removed + effects[position]
            drop = 1.0 - float(cost.predict(trial, metric)) / base
            if drop <= high:
                removed = trial
                taken.append(group)
                if drop >= low:
                    return _counts(np.concatenate([owner_arr[: first - 1], np.asarray(taken, dtype=int)]))
            else:
                closed.add(group)
    below = drops[first - 1]
    raise BudgetError(f"no channel selection lands within 1 percentage point of {target}: the nearest predicted "
                      f"drops are {below:.4f} and {drops[first]:.4f}")


def _counts(owners: np.ndarray) -> dict[int, int]:
    values, counts = np.unique(owners.astype(int), return_counts=True)
    return {int(v): int(c) for v, c in zip(values, counts, strict=True)}
