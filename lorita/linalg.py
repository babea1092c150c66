"""The one SVD the low-rank tools share."""

from __future__ import annotations

import torch


def reduced_svd(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """U, S, V^T of `matrix` with full_matrices=False, in its dtype and on its device."""
    if matrix.shape[0] >= matrix.shape[1]:
        return torch.linalg.svd(matrix, full_matrices=False)
    # LAPACK's SVD of a wide 512 x 4608 matrix takes ~4x longer than that of its transpose.
    u, s, vh = torch.linalg.svd(matrix.T, full_matrices=False)
    return vh.T, s, u.T
