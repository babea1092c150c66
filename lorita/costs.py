"""Analytic FLOPs/parameter cost of Linear/Conv2d layers, dense or factorized, in fvcore's conventions."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from lorita._validate import checked_ranks, lowrank_layers
from lorita.counting import count_flops_params
from lorita.forward import probe
from lorita.matrices import Matrix, input_rows
from lorita.spectra import model_cache, weight_matrix


def splits(out: int, fan_in: int, rank: int) -> bool:
    """Whether a rank-`rank` layer is cheaper as two layers (fan_in->rank->out) than as one out x fan_in."""
    return rank * (out + fan_in) < out * fan_in


@dataclass(frozen=True)
class LayerCost:
    """The shape facts that fix what one Linear/Conv2d costs as fvcore counts it (multiply-adds, no bias)."""

    out: int  # out_features / out_channels
    fan_in: int  # in_features / in_channels * kh * kw
    bias: bool
    positions: int  # output rows (Linear) or batch * H_out * W_out (Conv2d), summed over calls

    def _width(self, rank: int | None) -> int:
        # Multiply-adds (and weights) per output position: the dense matrix, or both factors when split.
        if rank is None or not splits(self.out, self.fan_in, rank):
            return self.out * self.fan_in
        return rank * (self.out + self.fan_in)

    def flops(self, rank: int | None = None) -> int:
        """FLOPs of the layer as it is (rank None) or as factorize leaves it at `rank`."""
        return self.positions * self._width(rank)

    def params(self, rank: int | None = None) -> int:
        """Parameters (weights and bias) of the layer as it is (rank None) or as factorize leaves it at `rank`."""
        return self._width(rank) + (self.out if self.bias else 0)


@dataclass(frozen=True)
class PlanCost:
    """A cost that FLOPs and parameters do not give, such as measured latency, for plan_ranks to plan against.

    `layer(name, None)` is what the layer costs as it is, `layer(name, r)` what its two thin layers cost at rank r
    (not increasing as r falls); `base` is the whole model as it is. A layer is split only where the pair is cheaper
    than the layer (`split`), so a plan's cost is `base` less, per split layer, the difference.
    """

    base: float
    layer: Callable[[str, int | None], float]

    def split(self, name: str, rank: int) -> bool:
        """Whether layer `name` at `rank` is cheaper as two thin layers."""
        return self.layer(name, rank) < self.layer(name, None)

    def price(self, name: str, rank: int | None) -> float:
        """The layer's cost in a plan: as it is (rank None), or the cheaper of itself and its pair at `rank`."""
        whole = self.layer(name, None)
        return whole if rank is None else min(whole, self.layer(name, rank))


@dataclass(frozen=True)
class Profile:
    """A model's fvcore totals and the cost facts of each layer a rank plan may name."""

    flops: int | None  # None when profiled without an input (parameters only)
    params: int
    layers: dict[str, LayerCost]


def _positions(model: nn.Module, layers: Mapping[str, nn.Module | Matrix],
               example_input: torch.Tensor) -> dict[str, int]:
    positions = dict.fromkeys(layers, 0)
    # A layer's positions are its output rows; a matrix a module reads is applied to every row its reader is given
    # (each token, each time step of each sequence), so one hook on the reader counts all of its matrices.
    counted: dict[nn.Module, list] = {}
    for name, layer in layers.items():
        if isinstance(layer, Matrix):
            counted.setdefault(layer.reader, []).append((name, lambda args, output: input_rows(args)))
        else:
            width = weight_matrix(layer.weight).shape[0]
            counted.setdefault(layer, []).append((name, lambda args, output, w=width: output.numel() // w))

    def record(entries: list):
        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            for name, rows in entries:
                positions[name] += rows(args, output)

        return hook

    # Eval mode, as fvcore counts: the shapes come from the same kind of pass.
    probe(model, example_input, {module: record(entries) for module, entries in counted.items()})
    return positions


def profile(model: nn.Module, example_input: torch.Tensor | None = None) -> Profile:
    """fvcore totals and per-layer cost facts of `model` (FLOPs only with `example_input`), cached per state."""
    cache = model_cache(model).profiles
    key = None if example_input is None else tuple(example_input.shape)
    if key not in cache:
        layers = lowrank_layers(model)
        if example_input is None:
            flops, positions = None, dict.fromkeys(layers, 0)
        else:
            flops, _ = count_flops_params(model, example_input)
            positions = _positions(model, layers, example_input)
        # Same rule as fvcore's parameter_count: named_parameters, shared tensors once.
        params = sum(p.numel() for p in model.parameters())
        facts = {}
        for name, layer in layers.items():
            out, fan_in = weight_matrix(layer.weight).shape
            facts[name] = LayerCost(out, fan_in, layer.bias is not None, positions[name])
        cache[key] = Profile(flops, params, facts)
    return cache[key]


def plan_cost(model: nn.Module, ranks: Mapping[str, int], example_input: torch.Tensor) -> tuple[int, int]:
    """(FLOPs, params) that count_flops_params will report for factorize(model, ranks), priced analytically."""
    ranks = checked_ranks(model, ranks)
    base = profile(model, example_input)
    flops, params = base.flops, base.params
    for name, rank in ranks.items():
        layer = base.layers[name]
        flops += layer.flops(rank) - layer.flops()
        params += layer.params(rank) - layer.params()
    return flops, params

