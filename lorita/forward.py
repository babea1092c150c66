"""One eval-mode, no-grad forward pass with temporary hooks: how every shape and cost probe looks at a model."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager

import torch
from torch import nn

Hook = Callable[[nn.Module, tuple, torch.Tensor], None]


@contextmanager
def evaluating(model: nn.Module) -> Iterator[nn.Module]:
    """Put `model` in eval mode for the block and restore its training flag after."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def probe(model: nn.Module, example_input: torch.Tensor, hooks: Mapping[nn.Module, Hook]) -> None:
    """Run `model` once on `example_input` (eval mode, no grad) with forward `hooks` attached, then detach them."""
    handles = [module.register_forward_hook(hook) for module, hook in hooks.items()]
    try:
        with evaluating(model), torch.no_grad():
            model(example_input)
    finally:
        for handle in handles:
            handle.remove()
