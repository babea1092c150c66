"""What every compression shares: the layers it keeps whole, and rebuilding a stored compressed structure."""

from __future__ import annotations

from torch import nn

import baselines
import lorita
from benchmarks.config import RunConfig

# The structure a run records (structure.json): "lowrank" (rank plan), "pruned" (channel counts) or "dense".
LOWRANK, PRUNED, DENSE = "lowrank", "pruned", "dense"


def exclude_patterns(cfg: RunConfig, model: nn.Module) -> list[str]:
    """Layers every compression keeps whole: the classifier unless the config says otherwise."""
    return list(cfg.exclude) if cfg.exclude is not None else [baselines.classifier_name(model)]


def rebuild(model: nn.Module, structure: dict) -> nn.Module:
    """A freshly built network reshaped to a compressed structure (weights to be loaded after)."""
    if structure["kind"] == LOWRANK:
        return lorita.factorize(model, structure["ranks"])
    if structure["kind"] == PRUNED:
        return baselines.apply_structure(model, structure["layers"])
    return model
