"""The layers the low-rank tools accept, and the argument checks that ranks.py and factorize.py share."""

from __future__ import annotations

import numbers
from collections.abc import Mapping

from torch import nn

from lorita.compose import is_composed, weight_read_directly
from lorita.matrices import Matrix, read_matrices
from lorita.spectra import weight_matrix


def require_collapsed(model: nn.Module) -> None:
    """Raise unless `model` is a plain module holding no composed LoRITa layers."""
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module; got {type(model).__name__}")
    if is_composed(model):
        raise ValueError("model is still composed: call lorita.collapse(model) first")


def lowrank_layers(model: nn.Module) -> dict[str, nn.Linear | nn.Conv2d | Matrix]:
    """Every layer a rank plan may name: Linear and ungrouped Conv2d, and the matrices modules read themselves.

    A Linear whose weight a parent reads (nn.MultiheadAttention's out_proj) is named as that parent's Matrix, which
    factorize compresses through the parent; one no lorita.matrices form covers (Swin's) is left out.
    """
    read_directly = weight_read_directly(model)
    layers = {
        name: m for name, m in model.named_modules()
        if (isinstance(m, nn.Linear) or (isinstance(m, nn.Conv2d) and m.groups == 1)) and name not in read_directly
    }
    return {**layers, **read_matrices(model)}


def max_rank(layer: nn.Linear | nn.Conv2d | Matrix) -> int:
    """Number of singular values of the layer's weight matrix: min(out, in*kh*kw)."""
    return min(weight_matrix(layer.weight).shape)


def checked_ranks(model: nn.Module, ranks: Mapping[str, int]) -> dict[str, int]:
    """`ranks` as {layer name: int}, after checking every name and rank against the collapsed `model`."""
    require_collapsed(model)
    if not isinstance(ranks, Mapping):
        raise ValueError(f"ranks must be a mapping from layer name to rank; got {type(ranks).__name__}")
    layers = lowrank_layers(model)
    checked = {}
    for name, rank in ranks.items():
        if name not in layers:
            raise ValueError(f"ranks names {name!r}, which is not a layer that can be factorized: allowed are the "
                             "model's Linear and Conv2d (groups=1) layers and the recurrent and attention matrices "
                             "lorita.matrices names")
        limit = max_rank(layers[name])
        if isinstance(rank, bool) or not isinstance(rank, numbers.Integral) or not 1 <= rank <= limit:
            raise ValueError(f"ranks[{name!r}] must be an int in [1, {limit}]; got {rank!r}")
        checked[name] = int(rank)
    return checked
