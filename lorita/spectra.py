"""Singular values of every Linear/Conv2d weight and read-directly matrix, cached per model state."""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from lorita.compose import COMPOSED
from lorita.matrices import read_matrices


def weight_matrix(weight: torch.Tensor) -> torch.Tensor:
    """A Linear/Conv2d weight as the out x (in/groups)*kh*kw matrix whose singular values we report."""
    return weight.reshape(weight.shape[0], -1)


@dataclass
class ModelCache:
    """What is computed once per model state: its spectra and, per input shape, its cost profile."""

    fingerprint: tuple
    spectra: dict[str, torch.Tensor] | None = None
    profiles: dict[Any, Any] = field(default_factory=dict)


# Keyed weakly by the model so a cache never keeps a discarded model (or its tensors' owner) alive.
_CACHE: weakref.WeakKeyDictionary[nn.Module, ModelCache] = weakref.WeakKeyDictionary()


def _fingerprint(model: nn.Module) -> tuple:
    # _version moves on every in-place update made through the parameter (optimizer steps, load_state_dict,
    # no_grad copies); data_ptr and name move when a parameter or a layer is replaced.
    return tuple((name, p.data_ptr(), p._version) for name, p in model.named_parameters())


def model_cache(model: nn.Module) -> ModelCache:
    """The cache entry of `model`, emptied first if its parameters changed since it was filled."""
    fingerprint = _fingerprint(model)
    entry = _CACHE.get(model)
    if entry is None or entry.fingerprint != fingerprint:
        entry = ModelCache(fingerprint)
        _CACHE[model] = entry
    return entry


def _singular_values(matrix: torch.Tensor) -> torch.Tensor:
    # Eigenvalues of the smaller Gram matrix are ~15x faster than svdvals on VGG16-sized layers; in float64
    # the error of sigma_i is about eps * sigma_max**2 / sigma_i, far below what any rank decision needs.
    m = matrix.detach().to(device="cpu", dtype=torch.float64)
    gram = m @ m.T if m.shape[0] <= m.shape[1] else m.T @ m
    return torch.linalg.eigvalsh(gram).clamp_(min=0).sqrt_().flip(0)


def _layer_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    weights: dict[str, torch.Tensor] = {}
    composed_prefixes: tuple[str, ...] = ()
    for name, module in model.named_modules():
        if composed_prefixes and name.startswith(composed_prefixes):
            continue  # an inner factor of a composed layer: the product stands for it
        if isinstance(module, COMPOSED):
            weights[name] = module.product_weight()
            composed_prefixes += (f"{name}.",)
        elif isinstance(module, (nn.Linear, nn.Conv2d)):
            weights[name] = module.weight
    # The weights modules read themselves (recurrent, attention): a composed one reads as its product.
    weights.update({name: matrix.weight for name, matrix in read_matrices(model).items()})
    return weights


def spectra(model: nn.Module) -> dict[str, torch.Tensor]:
    """Descending singular values (float64, CPU) of every Linear/Conv2d weight, keyed by module name, and of every
    matrix a module reads itself (lorita.matrices: recurrent weight_ih_l*/weight_hh_l*, attention projections).

    On a composed model (lorita.compose), those of each composed layer's product weight, keyed by the composed
    layer's name. Conv weights are viewed as out x (in/groups)*kh*kw. Computed once per model state: any update
    through a parameter (optimizer step, load_state_dict) recomputes; writes to `param.data` are not seen.
    """
    entry = model_cache(model)
    if entry.spectra is None:
        with torch.no_grad():
            entry.spectra = {
                name: _singular_values(weight_matrix(w)) for name, w in _layer_weights(model).items()
            }
    # Copies of the dict, not of the tensors: callers may add or drop keys without touching the cache.
    return dict(entry.spectra)

