"""Rank-r compression of a collapsed model: truncated SVD, written as two thin layers where that is cheaper."""

from __future__ import annotations

import copy
from collections.abc import Collection, Mapping

import torch
from torch import nn

from lorita._validate import checked_ranks, lowrank_layers, max_rank
from lorita.attention import LowRankAttention, LowRankEncoderLayer, release_fast_paths_
from lorita.costs import splits
from lorita.linalg import reduced_svd
from lorita.matrices import Matrix
from lorita.recurrent import LowRankRNN
from lorita.spectra import weight_matrix

# The modules unfactorize turns back into the reader they stand for (their children's pairs merged first).
_READER_FORMS = (LowRankRNN, LowRankAttention, LowRankEncoderLayer)


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


class Factorized(nn.Sequential):
    """The two thin layers factorize writes in place of one (first: in -> rank, no bias; second: rank -> out).

    A type of its own so that unfactorize finds exactly these pairs, never a Sequential the model had already; its
    parameters are named as a Sequential's ("0.weight", "1.weight", "1.bias").
    """


@torch.no_grad()
def _two_layers(layer: nn.Linear | nn.Conv2d, rank: int) -> Factorized:
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
    pair = Factorized(first, second)
    pair.train(layer.training)
    return pair


def _as_linear(matrix: Matrix) -> nn.Linear:
    """A Linear applying `matrix` with its own weight and bias Parameters (the owner itself when it is a Linear)."""
    if isinstance(matrix.owner, nn.Linear):
        return matrix.owner
    weight = matrix.weight
    linear = nn.Linear(weight.shape[1], weight.shape[0], bias=False, device=weight.device, dtype=weight.dtype)
    linear.weight, linear.bias = weight, matrix.bias
    linear.train(matrix.reader.training)
    return linear


def _reader_form(reader: nn.Module, projections: dict[str, nn.Module]) -> nn.Module:
    """`reader` with its matrices applied by `projections` (by slot key): a Linear each, or a thin pair."""
    if isinstance(reader, nn.RNNBase):
        return LowRankRNN(reader, {key.removeprefix("weight_"): p for key, p in projections.items()})
    if isinstance(reader, nn.MultiheadAttention):
        return LowRankAttention(reader, projections["in_proj_weight"], projections["out_proj"])
    for name, projection in projections.items():  # nn.TransformerEncoderLayer: its own linear1 and linear2
        setattr(reader, name, projection)
    return reader


def _split_through_readers(result: nn.Module, layers: Mapping[str, nn.Module | Matrix],
                           split: Mapping[str, int]) -> nn.Module:
    """`result` with each reader of a matrix in `split` (name -> rank) in its factorized form."""
    for reader_name in {layers[name].reader_name for name in split}:
        matrices = {name: m for name, m in layers.items() if isinstance(m, Matrix) and m.reader_name == reader_name}
        projections = {m.slot.key: _two_layers(_as_linear(m), split[name]) if name in split else _as_linear(m)
                       for name, m in matrices.items()}
        form = _reader_form(next(iter(matrices.values())).reader, projections)
        if reader_name:
            result.set_submodule(reader_name, form)
        else:
            result = form
    # An encoder layer's fused path reads linear1/linear2 and its attention's packed weights itself.
    release_fast_paths_(result)
    return result


def _compressed(model: nn.Module, ranks: Mapping[str, int], split: bool | Collection[str]) -> nn.Module:
    ranks = checked_ranks(model, ranks)
    if not isinstance(split, bool):
        split = set(split)
        if not split <= ranks.keys():
            raise ValueError(f"split names {sorted(split - ranks.keys())[0]!r}, which ranks does not plan")
    result = copy.deepcopy(model)
    layers = lowrank_layers(result)
    through_readers = {}  # matrices a module reads itself, split by giving that module its factorized form
    for name, rank in ranks.items():
        layer = layers[name]
        out, fan_in = weight_matrix(layer.weight).shape
        pair = split and splits(out, fan_in, rank) if isinstance(split, bool) else name in split
        if not pair:
            _truncate_(layer, rank)
        elif isinstance(layer, Matrix):
            through_readers[name] = rank
        elif name:
            result.set_submodule(name, _two_layers(layer, rank))
        else:  # the model is itself the layer
            result = _two_layers(layer, rank)
    return _split_through_readers(result, layers, through_readers) if through_readers else result


def factorize(model: nn.Module, ranks: Mapping[str, int], *, split: Collection[str] | None = None) -> nn.Module:
    """A copy of `model` with each layer in `ranks` at its best rank-r approximation, as two layers if cheaper.

    Linear -> Factorized(Linear(in->r, no bias), Linear(r->out, bias)), a Sequential; Conv2d -> Factorized(k x k
    Conv2d(in->r) with the original stride/padding/dilation, 1x1 Conv2d(r->out, bias)). A layer where
    r*(out + in*k*k) is not below out*in*k*k stays one layer with its weight truncated to rank r. `split` names the
    layers to write as two instead, whatever their FLOPs (another cost decided it, e.g. measured latency); the
    rest of `ranks` is truncated in place. Layers not in `ranks` are untouched.

    A matrix a module reads itself (lorita.matrices) is written as two through that module's own form, which trains
    normally: nn.LSTM/GRU/RNN -> lorita.recurrent.LowRankRNN (each input and hidden projection a Linear or a pair),
    nn.MultiheadAttention -> lorita.attention.LowRankAttention (in_proj and out_proj modules), an
    nn.TransformerEncoderLayer's linear1/linear2 -> pairs, the layer then a LowRankEncoderLayer (no fused path).
    """
    return _compressed(model, ranks, split=True if split is None else split)


def truncate(model: nn.Module, ranks: Mapping[str, int]) -> nn.Module:
    """A copy of `model` with each layer in `ranks` replaced in place by its best rank-r approximation."""
    return _compressed(model, ranks, split=False)


@torch.no_grad()
def _merged(pair: Factorized) -> nn.Linear | nn.Conv2d:
    first, second = pair
    kw = {"device": second.weight.device, "dtype": second.weight.dtype}
    has_bias = second.bias is not None
    if isinstance(first, nn.Linear):
        layer = nn.Linear(first.in_features, second.out_features, bias=has_bias, **kw)
    else:
        layer = nn.Conv2d(first.in_channels, second.out_channels, first.kernel_size, first.stride, first.padding,
                          first.dilation, bias=has_bias, padding_mode=first.padding_mode, **kw)
    # The 1x1 second factor folds into the first's output channels; formed in float64 as collapse forms products.
    product = second.weight.flatten(1).double() @ first.weight.flatten(1).double()
    layer.weight.copy_(product.reshape(layer.weight.shape))
    if has_bias:
        layer.bias.copy_(second.bias)
    layer.requires_grad_(second.weight.requires_grad)
    layer.train(pair.training)
    return layer


def unfactorize(model: nn.Module) -> nn.Module:
    """A copy of `model` with every pair factorize wrote multiplied back into one layer of the original shape.

    The merged weight is the pair's product (its rank at most the pair's width); other layers are untouched, so
    factorize(m, ranks) comes back with m's structure and, until its factors are trained, truncate(m, ranks)'s
    weights up to rounding. How a second round of compression plans again on a fine-tuned factorized model.
    """
    result = copy.deepcopy(model)
    # Deepest first (named_modules lists a parent before its children): a pair whose factor was factorized again
    # merges inside out, and the model itself, when it is a pair, last.
    for name, module in reversed(list(result.named_modules())):
        if isinstance(module, (Factorized, *_READER_FORMS)):
            merged = _merged(module) if isinstance(module, Factorized) else module.merged()
            if not name:
                return merged
            result.set_submodule(name, merged)
    return result
