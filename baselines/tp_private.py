"""The only calls into torch-pruning's private API (checked against the installed version by
tests/test_tp_adapter.py).

`baselines.prune` scores and removes dependency groups itself instead of running torch-pruning's own pruning
loop (`BasePruner.step`), so that a FLOPs/params budget decides how many channels go; these helpers are the parts
of that loop that torch-pruning 1.6 does not expose publicly.
"""

from __future__ import annotations

import torch_pruning as tp
from torch import nn


def attention_qkv(pruner: tp.pruner.BasePruner, group: tp.Group) -> tuple[bool, list[nn.Module]]:
    """Whether `group` prunes the outputs of a multi-head attention's qkv layer, and those qkv layers.

    BasePruner._is_atten_group: head-wise pruning and re-rooting apply only to such groups, and this is how
    torch-pruning's loop recognizes them (through the pruner's `num_heads`).
    """
    return pruner._is_atten_group(group)


def reroot_attention_group(pruner: tp.pruner.BasePruner, group: tp.Group) -> tp.Group | None:
    """An attention group rebuilt with its downstream layer (the output projection) as root; None if it has none.

    BasePruner._downstream_node_as_root_if_attention: timm's attention splits qkv with torch.unbind, which
    torch-pruning's index mapping cannot follow from the qkv root, so its loop prunes from the downstream node.
    """
    return pruner._downstream_node_as_root_if_attention(group)


def channel_groups(pruner: tp.pruner.BasePruner, group: tp.Group) -> int:
    """How many channel groups (heads for attention, groups for grouped layers) `group`'s channels form.

    BasePruner._get_channel_groups: a unit must remove the same index in every channel group, and the pruner
    derives the count from its in/out channel-group tables.
    """
    return pruner._get_channel_groups(group)


def module_name(dg: tp.DependencyGraph, module: nn.Module | nn.Parameter) -> str | None:
    """The name the dependency graph gives `module` (unwrapped parameters included); None if it has none.

    DependencyGraph._module2name: the only mapping that also names the unwrapped parameters a group may be rooted
    at, used to name the layer in error messages.
    """
    return dg._module2name.get(module)
