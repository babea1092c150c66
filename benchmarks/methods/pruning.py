"""Every structured-pruning criterion of `baselines` as a method: its options, regularized training, pruning."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

import baselines
from benchmarks.config import RunConfig
from benchmarks.latency import ModelLatency
from benchmarks.methods.registry import (
    STEPS,
    Method,
    Option,
    SearchRange,
    StepHook,
    positive_int,
    register,
    steps_option,
)
from benchmarks.methods.structure import PRUNED


def _real_in(low: float, high: float):
    return lambda v: not isinstance(v, bool) and isinstance(v, int | float) and low < v <= high


# Options every criterion accepts; steps and reg shape the harness's schedule and training, the rest go to prune.
_OPTIONS = {
    "scope": Option("one of global, uniform", lambda v: v in ("global", "uniform")),
    "steps": STEPS,
    "max_ratio": Option("a number in (0, 1]", _real_in(0.0, 1.0)),
    "prune_heads": Option("true or false", lambda v: isinstance(v, bool)),
    "grad_batches": Option("an integer >= 1", positive_int),
}
# A regularizer's strength is tuned like a learning rate, as its design has it: a decade either side of the
# criterion's default.
_REG_DECADES = 10.0
# Harness-side options, not passed to baselines.prune.
_HARNESS_OPTIONS = ("steps", "reg")


def _regularized_family(cfg: RunConfig) -> dict:
    # The regularized model depends on its strength; post-training criteria start from the dense model.
    return {"family": cfg.method, "reg": cfg.method_options.get("reg")}


def _hook(cfg: RunConfig, model: nn.Module, example: torch.Tensor) -> StepHook | None:
    options = {"reg": cfg.method_options["reg"]} if "reg" in cfg.method_options else {}
    return baselines.sparsity_regularizer(model, cfg.method, example_input=example, **options)


def _compress(cfg: RunConfig, model: nn.Module, *, target: float, reference: tuple[int, int],
              example: torch.Tensor, train_batches: Iterable, trained: nn.Module,
              latency: ModelLatency | None = None) -> tuple[nn.Module, dict]:
    options = {k: v for k, v in cfg.method_options.items() if k not in _HARNESS_OPTIONS}
    ignored = [] if cfg.exclude is None else list(cfg.exclude)
    # Under a latency target the criterion still picks which channels go; the measured table says how many.
    pruned = baselines.prune(model, cfg.method, target, metric=cfg.target_metric.removesuffix("_drop"),
                             example_input=example, train_batches=train_batches, reference=reference, seed=cfg.seed,
                             ignored_layers=ignored, latency=None if latency is None else latency.prune_cost(),
                             **options)
    return pruned, {"kind": PRUNED, "layers": baselines.pruned_structure(pruned)}


def _not_applicable(cfg: RunConfig, model: nn.Module, example: torch.Tensor, train_batches: Iterable) -> str | None:
    # A latency target's channel counts come from a measured table; whether the criterion can prune the model at all
    # is the same question at that drop of FLOPs.
    metric = "params" if cfg.target_metric == "params_drop" else "flops"
    options = {k: v for k, v in cfg.method_options.items() if k not in _HARNESS_OPTIONS}
    ignored = [] if cfg.exclude is None else list(cfg.exclude)
    return baselines.not_applicable(model, cfg.method, cfg.target, metric=metric, example_input=example,
                                    train_batches=train_batches, seed=cfg.seed, ignored_layers=ignored, **options)


def _reg(default: float) -> Option:
    return Option("a number > 0", _real_in(0.0, float("inf")),
                  search=SearchRange(default / _REG_DECADES, default * _REG_DECADES, log=True))


def _options(spec: baselines.MethodSpec) -> dict[str, Option]:
    options = {key: _OPTIONS[key] for key in ("scope", "steps")}
    if spec.regularized_training:
        options["reg"] = _reg(spec.default_reg)
    return {**options, **{key: _OPTIONS[key] for key in ("max_ratio", "prune_heads", "grad_batches")}}


def _method(spec: baselines.MethodSpec) -> Method:
    return Method(name=spec.name, description=spec.description, citation=spec.citation, label=spec.label,
                  compresses=True, report_rank=3, plain_training=not spec.regularized_training,
                  options=_options(spec), steps=steps_option, compress=_compress, latency_form="width",
                  not_applicable=_not_applicable,
                  **({"family": _regularized_family, "training_hook": _hook} if spec.regularized_training else {}))


PRUNING = [register(_method(spec)) for spec in baselines.METHODS.values()]
