"""Structured-pruning baselines (torch-pruning 1.6 criteria) compared with LoRITa under identical budgets."""

from baselines.pruning import TOLERANCE, progressive_targets, prune
from baselines.registry import METHODS, MethodSpec, get_method
from baselines.regularizers import SparsityRegularizer, sparsity_regularizer
from baselines.shapes import apply_structure, pruned_structure
from baselines.structure import PruningError, classifier_name

__all__ = [
    "METHODS",
    "TOLERANCE",
    "MethodSpec",
    "PruningError",
    "SparsityRegularizer",
    "apply_structure",
    "classifier_name",
    "get_method",
    "progressive_targets",
    "prune",
    "pruned_structure",
    "sparsity_regularizer",
]
