"""Structured-pruning baselines (torch-pruning 1.6 criteria) compared with LoRITa under identical budgets."""

from baselines.applicability import not_applicable
from baselines.budget import LatencyCost, layer_widths
from baselines.pruning import TOLERANCE, progressive_targets, prune
from baselines.registry import METHODS, MethodSpec, get_method
from baselines.regularizers import SparsityRegularizer, sparsity_regularizer
from baselines.shapes import apply_structure, pruned_structure
from baselines.structure import PruningError, classifier_name

__all__ = [
    "METHODS",
    "LatencyCost",
    "TOLERANCE",
    "MethodSpec",
    "PruningError",
    "SparsityRegularizer",
    "apply_structure",
    "classifier_name",
    "get_method",
    "layer_widths",
    "not_applicable",
    "progressive_targets",
    "prune",
    "pruned_structure",
    "sparsity_regularizer",
]
