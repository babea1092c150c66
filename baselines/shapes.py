"""A pruned model's structure as plain data, and a freshly built model reshaped to it (to load its weights)."""

from __future__ import annotations

import itertools

import torch
from torch import nn

# Module attributes that describe widths (torch layers, and attention modules' head count / width).
WIDTH_ATTRIBUTES = ("in_channels", "out_channels", "groups", "in_features", "out_features", "num_features",
                    "normalized_shape", "num_channels", "num_groups", "num_heads", "head_dim", "embed_dim")


def pruned_structure(model: nn.Module) -> dict:
    """JSON-able structure of `model`: every parameter/buffer shape and each module's width attributes."""
    shapes = {name: list(tensor.shape)
              for name, tensor in itertools.chain(model.named_parameters(), model.named_buffers())}
    attributes = {}
    for name, module in model.named_modules():
        values = {}
        for attribute in WIDTH_ATTRIBUTES:
            value = getattr(module, attribute, None)
            if isinstance(value, bool):
                continue
            if isinstance(value, int):
                values[attribute] = value
            elif isinstance(value, tuple) and all(isinstance(v, int) for v in value):
                values[attribute] = list(value)
        if values:
            attributes[name] = values
    return {"shapes": shapes, "attributes": attributes}


def apply_structure(model: nn.Module, structure: dict) -> nn.Module:
    """Reshape `model` (a freshly built network of the same architecture) in place to `structure` from
    `pruned_structure`; the new tensors are zeros, to be overwritten by load_state_dict. Returns `model`."""
    modules = dict(model.named_modules())
    for name, shape in structure["shapes"].items():
        owner_name, _, leaf = name.rpartition(".")
        owner = modules.get(owner_name)
        current = getattr(owner, leaf, None) if owner is not None else None
        if not isinstance(current, torch.Tensor):
            raise ValueError(f"structure names {name!r}, which {type(model).__name__} does not have")
        if list(current.shape) == list(shape):
            continue
        fresh = torch.zeros(shape, dtype=current.dtype, device=current.device)
        if isinstance(current, nn.Parameter):
            setattr(owner, leaf, nn.Parameter(fresh, requires_grad=current.requires_grad))
        else:
            owner.register_buffer(leaf, fresh, persistent=leaf not in owner._non_persistent_buffers_set)
    for name, values in structure["attributes"].items():
        if name not in modules:
            raise ValueError(f"structure names module {name!r}, which {type(model).__name__} does not have")
        module = modules[name]
        for attribute, value in values.items():
            setattr(module, attribute, tuple(value) if isinstance(value, list) else value)
    return model
