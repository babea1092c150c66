"""Rank-r compression of a collapsed model: truncated SVD, written as two thin layers where that is cheaper."""

from __future__ import annotations

import copy
from collections.abc import Mapping

import torch
from torch import nn

from lorita._validate import checked_ranks, lowrank_layers, max_rank
from lorita.costs import splits
from lorita.linalg import reduced_svd
from lorita.spectra import weight_matrix


def _factors(weight: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(out x rank, rank x fan_in) factors of the best rank-`rank` approximation, float64 on the CPU."""
    u, s, vh = reduced_svd(weight_matrix(weight).detach().to("cpu", torch.float64))
    # Singular values split evenly (sqrt(S) on each side) so neither factor dwarfs the other in training.
    root = s[:rank].sqrt()
    return u[:, :rank] * root, root[:, None] * vh[:rank]


@torch.no_grad()
def _truncate_(layer: nn.Linear | nn.Conv2d, rank: int) -> None:
    # At full rank the weight is its own best approximation; skipping the SVD keeps it bit-exact.
    if rank < max_rank(layer):
        left, right = _factors(layer.weight, rank)
        layer.weight.copy_((left @ right).reshape(layer.weight.shape))


@torch.no_grad()
def _two_layers(layer: nn.Linear | nn.Conv2d, rank: int) -> nn.Sequential:
    kw = {"device": layer.weight.device, "dtype": layer.weight.dtype}
    has_bias = layer.bias is not None
    if isinstance(layer, nn.Linear):
        first = nn.Linear(layer.in_features, rank, bias=False, **kw)
        second = nn.Linear(rank, layer.out_features, bias=has_bias, **kw)
    else:
        first = nn.Conv2d(layer.in_channels, rank, layer.kernel_size, layer.stride, layer.padding, layer.dilation,
                          bias=False, padding_mode=layer.padding_mode, **kw)
        second = nn.Conv2d(rank, layer.out_channels, 1, bias=has_bias, **kw)
    left, right = _factors(layer.weight, rank)
    first.weight.copy_(right.reshape(first.weight.shape))
    second.weight.copy_(left.reshape(second.weight.shape))
    if has_bias:
        second.bias = layer.bias  # the copied model's own bias Parameter, requires_grad included
    for factor in (first.weight, second.weight):
        factor.requires_grad_(layer.weight.requires_grad)
    pair = nn.Sequential(first, second)
    pair.train(layer.training)
    return pair


def _compressed(model: nn.Module, ranks: Mapping[str, int], split: bool) -> nn.Module:
    ranks = checked_ranks(model, ranks)
    result = copy.deepcopy(model)
    layers = lowrank_layers(result)
    for name, rank in ranks.items():
        layer = layers[name]
        out, fan_in = weight_matrix(layer.weight).shape
        if not (split and splits(out, fan_in, rank)):
            _truncate_(layer, rank)
        elif name:
            result.set_submodule(name, _two_layers(layer, rank))
        else:  # the model is itself the layer
            result = _two_layers(layer, rank)
    return result


def factorize(model: nn.Module, ranks: Mapping[str, int]) -> nn.Module:
    """A copy of `model` with each layer in `ranks` at its best rank-r approximation, as two layers if cheaper.

    Linear -> Sequential(Linear(in->r, no bias), Linear(r->out, bias)); Conv2d -> Sequential(k x k Conv2d(in->r)
    with the original stride/padding/dilation, 1x1 Conv2d(r->out, bias)). A layer where r*(out + in*k*k) is not
    below out*in*k*k stays one layer with its weight truncated to rank r. Layers not in `ranks` are untouched.
    """
    return _compressed(model, ranks, split=True)


def truncate(model: nn.Module, ranks: Mapping[str, int]) -> nn.Module:
    """A copy of `model` with each layer in `ranks` replaced in place by its best rank-r approximation."""
    return _compressed(model, ranks, split=False)
