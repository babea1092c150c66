"""Low-rank methods: LoRITa (train composed, collapse, truncate) and SVD truncation of the dense model.

The low-rank training baselines (nuclear norm, Frobenius decay) are in lowrank_training.py.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

import lorita
from benchmarks.config import RunConfig
from benchmarks.methods.registry import Method, Option, register
from benchmarks.methods.structure import LOWRANK, exclude_patterns
from lorita.compose import INITS


def compress_lowrank(cfg: RunConfig, model: nn.Module, *, target: float, reference: tuple[int, int],
                     example: torch.Tensor, train_batches: Iterable, trained: nn.Module) -> tuple[nn.Module, dict]:
    """SVD-truncate each layer to the ranks that meet the target (lorita.plan_ranks), as two thin layers."""
    ranks = lorita.plan_ranks(model, cfg.target_metric, target, example_input=example,
                              exclude=exclude_patterns(cfg, model))
    return lorita.factorize(model, ranks), {"kind": LOWRANK, "ranks": ranks}


# How composed factors start (lorita.overparameterize's init): PyTorch's default each, or spectral (Khodak+ 2021).
INIT = Option(f"one of {', '.join(INITS)}", lambda v: v in INITS)
LORITA_INIT = "default"  # the authors' init, and the one every LoRITa run had before the option existed


def _lorita_init(cfg: RunConfig) -> str:
    return cfg.method_options.get("init", LORITA_INIT)


def _composed(cfg: RunConfig, model: nn.Module) -> nn.Module:
    return lorita.overparameterize(model, cfg.factors, mode=cfg.mode, init=_lorita_init(cfg))


def collapsed(cfg: RunConfig, trained: nn.Module) -> nn.Module:
    """The trained composed model as the original network, each composed layer holding its product."""
    return lorita.collapse(trained)


def _lorita_family(cfg: RunConfig) -> dict:
    # init only away from its default: models cached before the option existed keep their key.
    init = _lorita_init(cfg)
    return {"family": "lorita", "factors": cfg.factors, **({} if init == LORITA_INIT else {"init": init})}


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
    options={"init": INIT},
    family=_lorita_family,
    build_for_training=_composed,
    uncompressed=collapsed,
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
