"""LoRITa: Low-Rank Induced Training (Zhang, Alkhouri, Wang; TMLR 2024) as a library for any PyTorch model."""

from lorita.compose import collapse, low_rank, overparameterize
from lorita.counting import count_flops_params
from lorita.factorize import factorize, truncate, unfactorize
from lorita.ranks import UnreachableTarget, plan_ranks, planned_layers, scaled_ranks
from lorita.spectra import spectra

__all__ = ["UnreachableTarget", "collapse", "count_flops_params", "factorize", "low_rank", "overparameterize",
           "plan_ranks", "planned_layers", "scaled_ranks", "spectra", "truncate", "unfactorize"]
