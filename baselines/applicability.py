"""Whether a pruning criterion applies to a model: a dry-run prune of it to the target, before any training.

Torch-Pruning traces many models it cannot prune consistently (a multi-layer nn.LSTM asserts, a GRU is left whole,
attention ties its dimensions): such a run would fail, or meet no target, after a whole training. Its random-init
weights decide nothing about the structure, so the dry run on the untrained model answers for the trained one.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from baselines.pruning import TOLERANCE, prune
from lorita.counting import count_flops_params

# A tag value, a report cell: the reason's first characters are what anyone reads.
REASON_CHARS = 300


def not_applicable(model: nn.Module, method: str, target: float, *, metric: str = "flops",
                   example_input: torch.Tensor, train_batches: Iterable | None = None, **options) -> str | None:
    """None when baselines.prune(model, method, target, ...) works; else why not, in one line.

    Not applicable: prune raises (whatever the error), or the drop it reaches, counted by count_flops_params on
    `example_input`, lies outside target +- TOLERANCE. `options` go to prune as given (scope, seed, ignored_layers,
    max_ratio, prune_heads, grad_batches); `model` is not modified.
    """
    try:
        pruned = prune(model, method, target, metric=metric, example_input=example_input,
                       train_batches=train_batches, **options)
    except Exception as err:  # noqa: BLE001 - any failure of the dry run is the reason the method does not apply
        reason = " ".join(f"{type(err).__name__}: {err}".split())
        return reason[:REASON_CHARS]
    index = 0 if metric == "flops" else 1
    before, after = count_flops_params(model, example_input)[index], count_flops_params(pruned, example_input)[index]
    drop = 1 - after / before
    if abs(drop - target) > TOLERANCE:
        return f"the dry-run prune reached a {metric} drop of {drop:.3f}, not {target:g} +- {TOLERANCE:g}"
    return None
