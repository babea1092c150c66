"""What of a network may be pruned: its classifier, zero-padding residual streams, attention, excluded layers."""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable

import torch
from torch import nn

from lorita.forward import evaluating, probe

_ROOT_TYPES = (nn.modules.conv._ConvNd, nn.Linear)


def classifier_name(model: nn.Module, example_input: torch.Tensor | None = None) -> str:
    """Name of the layer producing the model's output: the last nn.Linear (the last conv if there is none).

    Without `example_input` "last" is registration order; with it, execution order of a forward pass.
    """
    if example_input is not None:
        order: list[str] = []
        names = {module: name for name, module in model.named_modules()}
        probe(model, example_input, {module: lambda m, i, o: order.append(names[m])
                                     for module in model.modules() if isinstance(module, _ROOT_TYPES)})
        modules = dict(model.named_modules())
        linears = [name for name in order if isinstance(modules[name], nn.Linear)]
        if linears or order:
            return (linears or order)[-1]
    linears = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    convs = [name for name, m in model.named_modules() if isinstance(m, nn.modules.conv._ConvNd)]
    if not linears and not convs:
        raise ValueError(f"{type(model).__name__} has no nn.Linear or convolution to serve as its classifier")
    return (linears or convs)[-1]


def resolve_patterns(model: nn.Module, patterns: Iterable[str]) -> list[nn.Module]:
    """Modules whose names match any of the glob `patterns` (exact names match themselves)."""
    if isinstance(patterns, str):
        patterns = [patterns]
    named = [(name, module) for name, module in model.named_modules() if name]
    found: list[nn.Module] = []
    for pattern in patterns:
        if not isinstance(pattern, str):
            raise ValueError(f"ignored_layers must be module names or glob patterns, got {pattern!r}")
        hits = [module for name, module in named if fnmatch.fnmatchcase(name, pattern)]
        if not hits:
            raise ValueError(f"ignored_layers pattern {pattern!r} matches no module of {type(model).__name__}")
        found.extend(hits)
    return found


def _is_identity(module: nn.Module) -> bool:
    return isinstance(module, nn.Identity) or (isinstance(module, nn.Sequential) and len(module) == 0)


def residual_blocks(model: nn.Module) -> list[nn.Module]:
    """Blocks of a zero-padding ("option A") residual network: [] unless some block's shortcut is parameter-free
    and not an identity (e.g. a strided zero-padding module). Then every module with a `shortcut` is a block.

    torch-pruning does not model the fixed zero-padding: pruning the residual stream of such a network yields a
    model that fails at forward, so only channels inside the blocks may be pruned (see `zero_pad_ignored`).
    """
    blocks = [m for m in model.modules() if isinstance(getattr(m, "shortcut", None), nn.Module)]
    padded = [
        b for b in blocks if not _is_identity(b.shortcut) and not any(True for _ in b.shortcut.parameters())
    ]
    return blocks if padded else []


def zero_pad_ignored(model: nn.Module) -> list[nn.Module]:
    """Layers to keep whole in a zero-padding residual network: every conv feeding the residual stream.

    Those are the convs outside the blocks (the stem) and each block's last conv (outside its shortcut); what
    stays prunable are the inner convs' outputs, e.g. conv1 of a basic block (and conv2's inputs), as in
    Li et al. 2017. [] for any other network.
    """
    blocks = residual_blocks(model)
    if not blocks:
        return []
    inside: set[nn.Module] = set()
    ignored: list[nn.Module] = []
    for block in blocks:
        shortcut = set(block.shortcut.modules())
        convs = [m for m in block.modules() if isinstance(m, nn.modules.conv._ConvNd) and m not in shortcut]
        inside.update(convs)
        if convs:
            ignored.append(convs[-1])
    ignored += [m for m in model.modules() if isinstance(m, nn.modules.conv._ConvNd) and m not in inside]
    return ignored


def attention_modules(model: nn.Module) -> list[nn.Module]:
    """Multi-head attention modules in torch-pruning's timm convention: a `qkv` nn.Linear and int `num_heads`."""
    return [
        m
        for m in model.modules()
        if isinstance(getattr(m, "qkv", None), nn.Linear) and isinstance(getattr(m, "num_heads", None), int)
    ]


def residual_stream(dg, attentions: list[nn.Module]) -> list[nn.Module]:
    """The layers writing the transformer's residual stream (embedding dim): patch embedding, each attention's
    output projection, each MLP's second layer, the norms. Found as the dependency group of an attention's `proj`
    output; [] if the attention modules have no nn.Linear `proj`.
    """
    for attn in attentions:
        proj = getattr(attn, "proj", None)
        if isinstance(proj, nn.Linear) and proj in dg.module2node:
            pruner = dg.get_pruner_of_module(proj)
            group = dg.get_pruning_group(proj, pruner.prune_out_channels, list(range(proj.out_features)))
            return [
                item.dep.target.module
                for item in group
                if isinstance(item.dep.target.module, nn.Module) and dg.is_out_channel_pruning_fn(item.dep.handler)
            ]
    return []


class LayerTracker:
    """Context manager recording which module is executing, to name the layer where a forward pass fails."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.stack: list[str] = []
        self.last: str | None = None
        self._handles: list = []

    def __enter__(self) -> LayerTracker:
        for name, module in self.model.named_modules():
            self._handles.append(module.register_forward_pre_hook(self._enter(name)))
            self._handles.append(module.register_forward_hook(self._exit(name)))
        return self

    def _enter(self, name: str):
        def hook(module, inputs):
            self.stack.append(name)
            self.last = name

        return hook

    def _exit(self, name: str):
        def hook(module, inputs, output):
            if self.stack and self.stack[-1] == name:
                self.stack.pop()

        return hook

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def culprit(self) -> str:
        """The innermost module running when the failure happened (the last one entered otherwise)."""
        name = self.stack[-1] if self.stack else self.last
        if name is None:
            return "<before any layer>"
        if name == "":
            return f"{type(self.model).__name__}.forward (outside any sub-layer)"
        module = self.model.get_submodule(name)
        return f"{name} ({type(module).__name__})"


def check_forward(model: nn.Module, example_input: torch.Tensor, what: str, hint: str = "") -> torch.Tensor:
    """Run the model once in eval mode; RuntimeError naming the failing layer if the forward pass fails."""
    with evaluating(model), LayerTracker(model) as tracker, torch.no_grad():
        try:
            return model(example_input)
        except Exception as err:  # noqa: BLE001 - re-raised with the layer's name
            raise PruningError(f"{what} fails at forward in layer {tracker.culprit()}: {err}. {hint}") from err


class PruningError(RuntimeError):
    """torch-pruning cannot trace or consistently prune this model (the message names the layer)."""
