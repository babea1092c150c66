"""A model's torch-pruning pruner (dependency graph + criterion) under the suite's rules of what may be pruned."""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch_pruning as tp
from torch import nn

from baselines import tp_private
from baselines.registry import get_method
from baselines.structure import (
    LayerTracker,
    PruningError,
    attention_modules,
    classifier_name,
    residual_stream,
    resolve_patterns,
    zero_pad_ignored,
)
from lorita.forward import evaluating


@dataclass
class Setup:
    """A pruner on `model` plus what the suite derived: the classifier and attention modules."""

    pruner: tp.pruner.BasePruner
    classifier: str
    attentions: list[nn.Module]

    @property
    def dg(self):
        return self.pruner.DG

    def groups(self):
        """The prunable dependency groups (attention groups re-rooted at their output projection, as
        torch-pruning's own pruning loop does)."""
        pruner = self.pruner
        for group in pruner.DG.get_all_groups(ignored_layers=pruner.ignored_layers,
                                              root_module_types=pruner.root_module_types):
            is_attention, qkv = tp_private.attention_qkv(pruner, group)
            if is_attention:
                group = tp_private.reroot_attention_group(pruner, group)
                if group is None:
                    continue
            yield group, (qkv[0] if is_attention else None)

    def ignore(self, modules: Iterable[nn.Module]) -> None:
        for module in modules:
            self.pruner.ignored_layers.extend(module.modules())


def build(model: nn.Module, method: str, example_input: torch.Tensor, *, ignored_layers: Iterable[str] = (),
          prune_heads: bool = False, seed: int = 0, reg: float | None = None) -> Setup:
    """torch-pruning's pruner for `method` on `model` (traced in eval mode with `example_input`).

    Kept whole: the classifier, layers matching `ignored_layers` (names or glob patterns), the residual stream of
    zero-padding residual networks (only the inner convs of each block are prunable) and of transformers (the
    embedding dim; attention heads / head dims and MLP hidden dims are prunable).
    """
    spec = get_method(method)
    extra = resolve_patterns(model, ignored_layers)
    attentions = attention_modules(model)
    options: dict = {
        "importance": spec.importance(seed),
        "num_heads": {attn.qkv: attn.num_heads for attn in attentions},
        "prune_num_heads": prune_heads,
        "prune_head_dims": not prune_heads,
    }
    if spec.regularized_training:
        options["reg"] = spec.default_reg if reg is None else reg
    with evaluating(model), warnings.catch_warnings(), LayerTracker(model) as tracker:
        warnings.filterwarnings("ignore", message="Unwrapped parameters detected")
        try:
            classifier = classifier_name(model, example_input)
            ignored = [model.get_submodule(classifier), *extra, *zero_pad_ignored(model)]
            pruner = spec.pruner(model, example_input, ignored_layers=ignored, **options)
        except Exception as err:  # noqa: BLE001 - re-raised with the layer's name
            raise PruningError(f"torch-pruning cannot trace {type(model).__name__}: it fails in layer "
                               f"{tracker.culprit()}: {type(err).__name__}: {err}") from err
    setup = Setup(pruner, classifier, attentions)
    if attentions:
        setup.ignore(residual_stream(pruner.DG, attentions))
    return setup
