"""Low-rank methods: LoRITa (train composed, collapse, truncate) and SVD truncation of the dense model.

The low-rank training baselines (nuclear norm, Frobenius decay) are in lowrank_training.py.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

import lorita
from benchmarks.config import RunConfig
from benchmarks.latency import ModelLatency
from benchmarks.methods.registry import STEPS, Method, Option, register, steps_option
from benchmarks.methods.structure import LOWRANK, exclude_patterns
from lorita.compose import INITS
from lorita.ranks import SEARCHES

# How the ranks are planned after training (lorita.plan_ranks' search): one threshold on normalized singular values,
# or the authors' greedy cuts scored on training batches. It changes no trained model, so no method's family holds it.
RANK_POLICY_DEFAULT = "threshold"
RANK_POLICY = Option(f"one of {', '.join(SEARCHES)}", lambda v: v in SEARCHES)
# The options of every method that plans ranks after training, as compress_lowrank reads them.
PLAN_OPTIONS = {"rank_policy": RANK_POLICY, "steps": STEPS}


def compress_lowrank(cfg: RunConfig, model: nn.Module, *, target: float, reference: tuple[int, int],
                     example: torch.Tensor, train_batches: Iterable, trained: nn.Module,
                     latency: ModelLatency | None = None) -> tuple[nn.Module, dict]:
    """SVD-truncate each layer to the ranks that meet the target (lorita.plan_ranks), as two thin layers.

    `rank_policy` is plan_ranks' search; greedy scores its cuts on `train_batches` (cross-entropy). In round i > 1 of
    `steps`, `model` is round i - 1's fine-tuned factorized model: lorita.unfactorize multiplies its pairs back, which
    restores the uncompressed structure and so its cost, `reference`; the plan's drop is measured against it.
    Under a latency target the plan prices layers by the measured table (`latency`) and splits exactly the layers
    whose thin pair the table says is faster.
    """
    plain = lorita.unfactorize(model)
    policy, cost = (cfg.target_metric, None) if latency is None else ("cost_drop", latency.plan_cost())
    ranks = lorita.plan_ranks(plain, policy, target, example_input=example, exclude=exclude_patterns(cfg, plain),
                              search=cfg.method_options.get("rank_policy", RANK_POLICY_DEFAULT), batches=train_batches,
                              cost=cost)
    return lorita.factorize(plain, ranks, split=None if cost is None else set(ranks)), {"kind": LOWRANK, "ranks": ranks}


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
    options={"init": INIT, **PLAN_OPTIONS},
    family=_lorita_family,
    build_for_training=_composed,
    uncompressed=collapsed,
    steps=steps_option,
    compress=compress_lowrank,
    latency_form="rank",
))

SVD = register(Method(
    name="svd",
    description="truncated SVD of the dense model's layers (lorita.plan_ranks / lorita.factorize)",
    citation="Denton et al., NeurIPS 2014",
    label="SVD",
    compresses=True,
    report_rank=2,
    options=PLAN_OPTIONS,
    steps=steps_option,
    compress=compress_lowrank,
    latency_form="rank",
))
