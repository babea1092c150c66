"""The method seam: how each method trains its model and how it compresses it, behind one interface."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable

import torch
from torch import nn

import baselines
import lorita
from benchmarks.config import Budget, ConfigError, RunConfig

HARNESS_METHODS = {
    "dense": "the uncompressed reference: trained once per seed and budget, no compression",
    "lorita": "LoRITa: layers trained as products of `factors` linear maps, collapsed, SVD-truncated (Zhang+ 2024)",
}
# Options a pruning method accepts (steps/reg shape the harness's schedule and training; the rest go to prune).
PRUNE_OPTIONS = ("scope", "steps", "reg", "max_ratio", "prune_heads", "grad_batches")
BUDGET_FIELDS = tuple(f.name for f in dataclasses.fields(Budget))


def known_methods() -> dict[str, str]:
    """Every method name with its one-line description."""
    return {**HARNESS_METHODS, **{name: spec.description for name, spec in baselines.METHODS.items()}}


def _is_pruning(method: str) -> bool:
    return method in baselines.METHODS and baselines.METHODS[method].kind == "prune"


def resolve(cfg: RunConfig) -> RunConfig:
    """Cross-field checks and defaults, before any data is loaded."""
    methods = known_methods()
    if cfg.method not in methods:
        raise ConfigError(f"config: method must be one of {', '.join(methods)}; got {cfg.method!r}")
    factors = cfg.factors if cfg.factors is not None else (3 if cfg.method == "lorita" else 1)
    if cfg.method != "lorita" and factors != 1:
        raise ConfigError(f"config: factors applies to lorita only ({cfg.method} trains with factors = 1); "
                          f"got {factors}")
    if cfg.method == "dense":
        if cfg.target is not None or cfg.target_metric is not None:
            raise ConfigError("config: dense is the uncompressed reference and takes no target")
    elif cfg.target is None or cfg.target_metric is None:
        raise ConfigError(f"config: method {cfg.method} needs a target: target_metric (flops_drop or params_drop) "
                          "and target in (0, 1)")
    for key in cfg.method_options:
        if key in BUDGET_FIELDS:
            raise ConfigError(f"config: method_options.{key} would change the budget; set budget.{key} for every "
                              "method of the comparison instead")
        if not _is_pruning(cfg.method):
            raise ConfigError(f"config: method_options.{key}: {cfg.method} takes no method options")
        if key not in PRUNE_OPTIONS or (key == "reg" and not baselines.METHODS[cfg.method].regularized_training):
            allowed = [k for k in PRUNE_OPTIONS if k != "reg" or baselines.METHODS[cfg.method].regularized_training]
            raise ConfigError(f"config: unknown key 'method_options.{key}' for {cfg.method}; allowed: "
                              f"{', '.join(allowed)}")
    steps = cfg.method_options.get("steps", 1)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ConfigError(f"config: method_options.steps must be an integer >= 1; got {steps!r}")
    scope = cfg.method_options.get("scope", "global")
    if scope not in ("global", "uniform"):
        raise ConfigError(f"config: method_options.scope must be one of global, uniform; got {scope!r}")
    return dataclasses.replace(cfg, factors=factors)


def training_family(cfg: RunConfig) -> dict:
    """What the trained model depends on besides model, data, budget and seed (its cache identity)."""
    if cfg.method == "lorita":
        return {"family": "lorita", "factors": cfg.factors}
    spec = baselines.METHODS.get(cfg.method)
    if spec is not None and spec.regularized_training:
        return {"family": cfg.method, "reg": cfg.method_options.get("reg")}
    # dense, svd and every post-training criterion start from the same dense model.
    return {"family": "dense"}


def build_for_training(cfg: RunConfig, model: nn.Module) -> nn.Module:
    """The network as it is trained: over-parameterized for LoRITa, plain otherwise."""
    if cfg.method == "lorita":
        return lorita.overparameterize(model, cfg.factors, mode=cfg.mode)
    return model


def training_hook(cfg: RunConfig, model: nn.Module, example: torch.Tensor) -> Callable[[], None] | None:
    """The per-step sparsity regularizer of methods that train with one (slim, group_sl), else None."""
    if not _is_pruning(cfg.method):
        return None
    options = {"reg": cfg.method_options["reg"]} if "reg" in cfg.method_options else {}
    return baselines.sparsity_regularizer(model, cfg.method, example_input=example, **options)


def uncompressed(cfg: RunConfig, trained: nn.Module) -> nn.Module:
    """The trained network in its original structure (LoRITa's factors multiplied back)."""
    return lorita.collapse(trained) if cfg.method == "lorita" else trained


def exclude_patterns(cfg: RunConfig, model: nn.Module) -> list[str]:
    """Layers every compression keeps whole: the classifier unless the config says otherwise."""
    return list(cfg.exclude) if cfg.exclude is not None else [baselines.classifier_name(model)]


def prune_steps(cfg: RunConfig) -> int:
    """How many progressive compress/fine-tune rounds the method takes (one-shot = 1)."""
    return cfg.method_options.get("steps", 1) if _is_pruning(cfg.method) else 1


def compress(cfg: RunConfig, model: nn.Module, *, target: float, reference: tuple[int, int],
             example: torch.Tensor, train_batches: Iterable) -> tuple[nn.Module, dict]:
    """Compress `model` so its FLOPs/params drop by `target` of `reference`; returns (model, structure)."""
    metric = cfg.target_metric
    if not _is_pruning(cfg.method):
        ranks = lorita.plan_ranks(model, metric, target, example_input=example,
                                  exclude=exclude_patterns(cfg, model))
        return lorita.factorize(model, ranks), {"kind": "lowrank", "ranks": ranks}
    options = {k: v for k, v in cfg.method_options.items() if k not in ("steps", "reg")}
    ignored = [] if cfg.exclude is None else list(cfg.exclude)
    pruned = baselines.prune(model, cfg.method, target, metric=metric.removesuffix("_drop"), example_input=example,
                             train_batches=train_batches, reference=reference, seed=cfg.seed,
                             ignored_layers=ignored, **options)
    return pruned, {"kind": "pruned", "layers": baselines.pruned_structure(pruned)}


def rebuild(model: nn.Module, structure: dict) -> nn.Module:
    """A freshly built network reshaped to a compressed structure (weights to be loaded after)."""
    if structure["kind"] == "lowrank":
        return lorita.factorize(model, structure["ranks"])
    if structure["kind"] == "pruned":
        return baselines.apply_structure(model, structure["layers"])
    return model
