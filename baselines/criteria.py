"""Importance criteria torch-pruning lacks: a random criterion that a seed makes repeatable."""

from __future__ import annotations

import torch
import torch_pruning as tp


class SeededRandomImportance(tp.importance.RandomImportance):
    """torch-pruning's RandomImportance drawing from its own generator, so a seed fixes the pruned channels."""

    def __init__(self, seed: int) -> None:
        self.generator = torch.Generator().manual_seed(int(seed))

    @torch.no_grad()
    def __call__(self, group, **kwargs) -> torch.Tensor:
        _, idxs = group[0]
        return torch.rand(len(idxs), generator=self.generator)
