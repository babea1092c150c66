"""Low-rank methods: LoRITa (train composed, collapse, truncate) and SVD truncation of the dense model."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

import lorita
from benchmarks.config import RunConfig
from benchmarks.methods.registry import Method, register
from benchmarks.methods.structure import LOWRANK, exclude_patterns


def compress_lowrank(cfg: RunConfig, model: nn.Module, *, target: float, reference: tuple[int, int],
                     example: torch.Tensor, train_batches: Iterable) -> tuple[nn.Module, dict]:
    """SVD-truncate each layer to the ranks that meet the target (lorita.plan_ranks), as two thin layers."""
    ranks = lorita.plan_ranks(model, cfg.target_metric, target, example_input=example,
                              exclude=exclude_patterns(cfg, model))
    return lorita.factorize(model, ranks), {"kind": LOWRANK, "ranks": ranks}


def _composed(cfg: RunConfig, model: nn.Module) -> nn.Module:
    return lorita.overparameterize(model, cfg.factors, mode=cfg.mode)


def _collapsed(cfg: RunConfig, trained: nn.Module) -> nn.Module:
    return lorita.collapse(trained)


def _lorita_family(cfg: RunConfig) -> dict:
    return {"family": "lorita", "factors": cfg.factors}


LORITA = register(Method(
    name="lorita",
    description="LoRITa: layers trained as products of `factors` linear maps, collapsed, SVD-truncated "
                "(Zhang+ 2024)",
    citation="Zhang, Alkhouri, Wang, TMLR 2024 (arXiv 2405.03089)",
    label="LoRITa",
    compresses=True,
    report_rank=1,
    composes=True,
    default_factors=3,
    family=_lorita_family,
    build_for_training=_composed,
    uncompressed=_collapsed,
    compress=compress_lowrank,
))

SVD = register(Method(
    name="svd",
    description="truncated SVD of the dense model's layers (lorita.plan_ranks / lorita.factorize)",
    citation="Denton et al., NeurIPS 2014",
    label="SVD",
    compresses=True,
    report_rank=2,
    compress=compress_lowrank,
))
