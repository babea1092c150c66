"""Model registry: the paper's FCN, VGG and CIFAR ResNets, a small CNN and ViT, torchvision's ViT from its arguments,
sequence models, a graph convolution network, torchvision and custom factories."""

from __future__ import annotations

import functools
import hashlib
import importlib
import inspect
import itertools
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

from benchmarks.errors import did_you_mean, one_line


class ModelError(ValueError):
    """A model name or option is invalid (one-line message)."""


def _positive_int(model: str, field: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ModelError(f"{model}: {field} must be a positive integer, got {value!r}")
    return value


def _fraction(model: str, field: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise ModelError(f"{model}: {field} must be a number in [0, 1), got {value!r}")
    return value


# ---------------------------------------------------------------- fcn, cnn


def fcn(num_classes: int, in_shape: tuple[int, int, int], *, layers: int = 4, width: int = 256) -> nn.Module:
    """Flatten then `layers` x (Linear, BatchNorm1d, ReLU), the output layer without ReLU (LoRITa's FCN)."""
    layers = _positive_int("fcn", "layers", layers)
    width = _positive_int("fcn", "width", width)
    modules: list[nn.Module] = [nn.Flatten()]
    features = in_shape[0] * in_shape[1] * in_shape[2]
    for index in range(layers):
        out = num_classes if index == layers - 1 else width
        modules += [nn.Linear(features, out), nn.BatchNorm1d(out)]
        if index < layers - 1:
            modules.append(nn.ReLU())
        features = out
    return nn.Sequential(*modules)


def cnn(
    num_classes: int,
    in_shape: tuple[int, int, int],
    *,
    channels: Sequence[int] = (32, 64),
    hidden: int | None = None,
) -> nn.Module:
    """Small CNN for tiny images: (Conv3x3, BatchNorm2d, ReLU, MaxPool2d(2)) per entry of `channels`."""
    if isinstance(channels, (str, bytes)) or not isinstance(channels, Sequence) or not channels:
        raise ModelError(f"cnn: channels must be a non-empty sequence of positive integers, got {channels!r}")
    channels = [_positive_int("cnn", "channels", c) for c in channels]
    c, h, w = in_shape
    side = 2 ** len(channels)
    if h < side or w < side:
        raise ModelError(f"cnn with {len(channels)} pooling stages needs inputs of at least {side}x{side}, got {h}x{w}")
    modules: list[nn.Module] = []
    for out in channels:
        modules += [
            nn.Conv2d(c, out, 3, padding=1, bias=False),
            nn.BatchNorm2d(out),
            nn.ReLU(),
            nn.MaxPool2d(2),
        ]
        c = out
    modules.append(nn.Flatten())
    features = c * (h // side) * (w // side)
    if hidden is not None:
        hidden = _positive_int("cnn", "hidden", hidden)
        modules += [nn.Linear(features, hidden), nn.ReLU()]
        features = hidden
    modules.append(nn.Linear(features, num_classes))
    return nn.Sequential(*modules)


# ---------------------------------------------------------------- vgg (pytorch-cifar variant)

VGG_CFGS: dict[str, list[int | str]] = {
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}


class VGG(nn.Module):
    """CIFAR VGG: 3x3 conv (no bias) + BatchNorm + ReLU stages, 5 max-pools, one Linear classifier."""

    def __init__(self, name: str, num_classes: int, in_shape: tuple[int, int, int]) -> None:
        super().__init__()
        c, h, w = in_shape
        if h < 32 or w < 32:
            raise ModelError(f"{name} needs inputs of at least 32x32, got {h}x{w}")
        modules: list[nn.Module] = []
        for entry in VGG_CFGS[name]:
            if entry == "M":
                modules.append(nn.MaxPool2d(2, 2))
            else:
                modules += [nn.Conv2d(c, entry, 3, padding=1, bias=False), nn.BatchNorm2d(entry), nn.ReLU()]
                c = entry
        self.features = nn.Sequential(*modules)
        self.classifier = nn.Linear(c * (h // 32) * (w // 32), num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x).flatten(1))


def vgg16(num_classes: int, in_shape: tuple[int, int, int]) -> nn.Module:
    """VGG-16, CIFAR variant (13 conv layers, one Linear)."""
    return VGG("vgg16", num_classes, in_shape)


def vgg19(num_classes: int, in_shape: tuple[int, int, int]) -> nn.Module:
    """VGG-19, CIFAR variant (16 conv layers, one Linear)."""
    return VGG("vgg19", num_classes, in_shape)


# ---------------------------------------------------------------- CIFAR ResNets (Idelbayev's resnet_cifar)


class PadShortcut(nn.Module):
    """Option-A shortcut: subsample by 2 and zero-pad `pad` channels on each side (no parameters)."""

    def __init__(self, pad: int) -> None:
        super().__init__()
        self.pad = pad

    def forward(self, x: Tensor) -> Tensor:
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))

    def extra_repr(self) -> str:
        return f"pad={self.pad}"


class BasicBlock(nn.Module):
    """Two 3x3 convs with BatchNorm and an identity, option-A or option-B shortcut."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1, shortcut: str = "A") -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Sequential()
        if stride != 1 or in_planes != planes:
            if shortcut == "A":
                self.shortcut = PadShortcut(planes // 4)
            else:
                self.shortcut = nn.Sequential(
                    nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
                )

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """He et al.'s CIFAR ResNet-(6n+2): 16/32/64-channel stages, global average pool, Linear."""

    def __init__(self, blocks: int, num_classes: int, in_channels: int = 3, shortcut: str = "A") -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        in_planes = 16
        stages = []
        for planes, stride in ((16, 1), (32, 2), (64, 2)):
            stage = []
            for index in range(blocks):
                stage.append(BasicBlock(in_planes, planes, stride if index == 0 else 1, shortcut))
                in_planes = planes
            stages.append(nn.Sequential(*stage))
        self.layer1, self.layer2, self.layer3 = stages
        self.linear = nn.Linear(64, num_classes)
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(module.weight)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        return self.linear(F.adaptive_avg_pool2d(out, 1).flatten(1))


def _cifar_resnet(
    name: str, blocks: int, num_classes: int, in_shape: tuple[int, int, int], shortcut: str
) -> nn.Module:
    if shortcut not in ("A", "B"):
        raise ModelError(f"{name}: shortcut must be 'A' or 'B', got {shortcut!r}")
    c, h, w = in_shape
    if h < 8 or w < 8:
        raise ModelError(f"{name} needs inputs of at least 8x8, got {h}x{w}")
    return CifarResNet(blocks, num_classes, c, shortcut)


def resnet20(num_classes: int, in_shape: tuple[int, int, int], *, shortcut: str = "A") -> nn.Module:
    """ResNet-20 for CIFAR (3 blocks per stage, 0.27 M parameters with option A)."""
    return _cifar_resnet("resnet20", 3, num_classes, in_shape, shortcut)


def resnet56(num_classes: int, in_shape: tuple[int, int, int], *, shortcut: str = "A") -> nn.Module:
    """ResNet-56 for CIFAR (9 blocks per stage, 0.85 M parameters with option A)."""
    return _cifar_resnet("resnet56", 9, num_classes, in_shape, shortcut)


# ---------------------------------------------------------------- ViT


class Attention(nn.Module):
    """Multi-head self-attention whose head width follows the qkv width, so pruned widths keep working."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, n, _ = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, -1))


class Mlp(nn.Module):
    """Transformer feed-forward: fc1, GELU, fc2."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block."""

    def __init__(self, dim: int, num_heads: int, mlp_dim: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, mlp_dim)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class VisionTransformer(nn.Module):
    """Small ViT: patch embedding, cls token, learned positions, pre-norm blocks, Linear head on cls."""

    def __init__(
        self,
        num_classes: int,
        in_shape: tuple[int, int, int],
        patch_size: int,
        dim: int,
        depth: int,
        heads: int,
        mlp_dim: int,
    ) -> None:
        super().__init__()
        c, h, w = in_shape
        self.patch_embed = nn.Conv2d(c, dim, patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, (h // patch_size) * (w // patch_size) + 1, dim))
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_dim) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x)[:, 0])


def vit(
    num_classes: int,
    in_shape: tuple[int, int, int],
    *,
    patch_size: int = 4,
    dim: int = 192,
    depth: int = 6,
    heads: int = 3,
    mlp_dim: int = 384,
) -> nn.Module:
    """Small Vision Transformer with CIFAR-sized defaults (64 patches of 4x4 on 32x32 inputs)."""
    options = {"patch_size": patch_size, "dim": dim, "depth": depth, "heads": heads, "mlp_dim": mlp_dim}
    for field, value in options.items():
        _positive_int("vit", field, value)
    _, h, w = in_shape
    if h % patch_size or w % patch_size:
        raise ModelError(f"vit: image side must be divisible by patch_size={patch_size}, got {h}x{w}")
    if dim % heads:
        raise ModelError(f"vit: dim must be divisible by heads, got dim={dim}, heads={heads}")
    return VisionTransformer(num_classes, in_shape, patch_size, dim, depth, heads, mlp_dim)


def _vit_side(model: str, in_shape: tuple[int, int, int], patch_size: int) -> int:
    """The image side of a square in_shape that patch_size divides (torchvision's ViT takes one image_size)."""
    _, h, w = in_shape
    if h != w:
        raise ModelError(f"{model}: torchvision's VisionTransformer takes square images, got {h}x{w}")
    if h % patch_size:
        raise ModelError(f"{model}: image side must be divisible by patch_size={patch_size}, got {h}x{w}")
    return h


def tv_vit(
    num_classes: int,
    in_shape: tuple[int, int, int],
    *,
    patch_size: int = 4,
    num_layers: int = 6,
    num_heads: int = 3,
    hidden_dim: int = 192,
    mlp_dim: int = 384,
    dropout: float = 0.0,
    attention_dropout: float = 0.0,
    representation_size: int | None = None,
) -> nn.Module:
    """torchvision's VisionTransformer from its own arguments (image_size is in_shape's side), any channel count."""
    options = {"patch_size": patch_size, "num_layers": num_layers, "num_heads": num_heads, "hidden_dim": hidden_dim,
               "mlp_dim": mlp_dim}
    for field, value in options.items():
        _positive_int("tv_vit", field, value)
    if representation_size is not None:
        _positive_int("tv_vit", "representation_size", representation_size)
    _fraction("tv_vit", "dropout", dropout)
    _fraction("tv_vit", "attention_dropout", attention_dropout)
    if hidden_dim % num_heads:
        raise ModelError(f"tv_vit: hidden_dim must be divisible by num_heads, got hidden_dim={hidden_dim}, "
                         f"num_heads={num_heads}")
    side = _vit_side("tv_vit", in_shape, patch_size)
    model = torchvision.models.VisionTransformer(side, **options, dropout=dropout, attention_dropout=attention_dropout,
                                                 num_classes=num_classes, representation_size=representation_size)
    channels = in_shape[0]
    if channels != 3:  # torchvision hard-codes 3; the patch embedding is the only layer that sees channels
        model.conv_proj = nn.Conv2d(channels, hidden_dim, patch_size, stride=patch_size)
        # torchvision's own init of the patch embedding, for this fan-in
        nn.init.trunc_normal_(model.conv_proj.weight, std=(1 / model.conv_proj.weight[0].numel()) ** 0.5)
        nn.init.zeros_(model.conv_proj.bias)
    return model


# ---------------------------------------------------------------- sequence models: in_shape = (time steps, features)


class RecurrentClassifier(nn.Module):
    """A recurrent layer over the sequence, then a Linear on the last layer's final hidden state (both directions)."""

    def __init__(self, rnn: nn.RNNBase, num_classes: int) -> None:
        super().__init__()
        self.rnn = rnn
        self.directions = 2 if rnn.bidirectional else 1
        self.classifier = nn.Linear(rnn.hidden_size * self.directions, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        _, state = self.rnn(x)
        hidden = state[0] if isinstance(state, tuple) else state  # an LSTM's state is (h, c)
        return self.classifier(torch.cat(list(hidden[-self.directions:]), dim=-1))


def _recurrent(kind: type, model: str, num_classes: int, in_shape: tuple[int, ...], layers: int, hidden: int,
               bidirectional: bool) -> nn.Module:
    _, features = in_shape
    layers, hidden = _positive_int(model, "layers", layers), _positive_int(model, "hidden", hidden)
    if not isinstance(bidirectional, bool):
        raise ModelError(f"{model}: bidirectional must be true or false, got {bidirectional!r}")
    rnn = kind(features, hidden, layers, batch_first=True, bidirectional=bidirectional)
    return RecurrentClassifier(rnn, num_classes)


def lstm(num_classes: int, in_shape: tuple[int, int], *, layers: int = 1, hidden: int = 128,
         bidirectional: bool = False) -> nn.Module:
    """nn.LSTM sequence classifier (batch first; the classifier reads the final hidden state)."""
    return _recurrent(nn.LSTM, "lstm", num_classes, in_shape, layers, hidden, bidirectional)


def gru(num_classes: int, in_shape: tuple[int, int], *, layers: int = 1, hidden: int = 128,
        bidirectional: bool = False) -> nn.Module:
    """nn.GRU sequence classifier (batch first; the classifier reads the final hidden state)."""
    return _recurrent(nn.GRU, "gru", num_classes, in_shape, layers, hidden, bidirectional)


class TransformerClassifier(nn.Module):
    """Linear embedding of each step plus a learned position embedding, nn.TransformerEncoder, mean over steps,
    LayerNorm, Linear classifier."""

    def __init__(self, num_classes: int, steps: int, features: int, dim: int, depth: int, heads: int,
                 mlp_dim: int) -> None:
        super().__init__()
        self.embed = nn.Linear(features, dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, steps, dim))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        layer = nn.TransformerEncoderLayer(dim, heads, mlp_dim, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.classifier = nn.Linear(dim, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.norm(self.encoder(self.embed(x) + self.pos_embed).mean(1)))


def transformer(num_classes: int, in_shape: tuple[int, int], *, dim: int = 64, depth: int = 2, heads: int = 4,
                mlp_dim: int = 128) -> nn.Module:
    """nn.TransformerEncoder sequence classifier with a learned position embedding (each step one token)."""
    steps, features = in_shape
    for field, value in {"dim": dim, "depth": depth, "heads": heads, "mlp_dim": mlp_dim}.items():
        _positive_int("transformer", field, value)
    if dim % heads:
        raise ModelError(f"transformer: dim must be divisible by heads, got dim={dim}, heads={heads}")
    return TransformerClassifier(num_classes, steps, features, dim, depth, heads, mlp_dim)


# The models whose in_shape is (time steps, features).
SEQUENCE_MODELS = {"lstm": lstm, "gru": gru, "transformer": transformer}

# ---------------------------------------------------------------- graph models: in_shape = (nodes, columns)


class GCN(nn.Module):
    """Kipf & Welling's graph convolution network on a dense graph: H <- Â (H W) per layer (ReLU between), then the
    selected nodes' sum of the last layer's output.

    Each sample is a whole graph: x[..., :N] the normalized adjacency Â = D^-1/2 (A + I) D^-1/2, x[..., N:-1] the
    node features, x[..., -1] a selector; the output is sum_i selector_i (Â H W_L)_i, the logits of the one node a
    one-hot selector names (node classification), or a pooled graph readout for a spread one. W are nn.Linear
    (no bias, as in Kipf & Welling's code), applied before Â, so LoRITa composes them as any Linear.
    """

    def __init__(self, num_classes: int, nodes: int, features: int, layers: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.nodes = nodes
        widths = [features] + [hidden] * (layers - 1) + [num_classes]
        self.layers = nn.ModuleList(nn.Linear(a, b, bias=False) for a, b in itertools.pairwise(widths))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        adjacency, h, selector = x[..., :self.nodes], x[..., self.nodes:-1], x[..., -1:]
        for index, layer in enumerate(self.layers):
            if index:
                h = F.relu(h)
            h = adjacency @ layer(self.dropout(h))  # Kipf & Welling drop each layer's input
        return (selector * h).sum(-2)


def gcn(num_classes: int, in_shape: tuple[int, int], *, layers: int = 2, hidden: int = 16,
        dropout: float = 0.0) -> nn.Module:
    """Dense graph convolution network (Kipf & Welling) classifying the node a one-hot selector column names."""
    layers, hidden = _positive_int("gcn", "layers", layers), _positive_int("gcn", "hidden", hidden)
    dropout = _fraction("gcn", "dropout", dropout)
    nodes, columns = in_shape
    features = columns - nodes - 1
    if features < 1:
        raise ModelError(f"gcn: in_shape must be (nodes, nodes + features + 1) with features >= 1 (adjacency, "
                         f"features, selector columns), got {tuple(in_shape)}")
    return GCN(num_classes, nodes, features, layers, hidden, dropout)


GRAPH_MODELS = {"gcn": gcn}
# The form of in_shape each model takes that is not an image's (C, H, W).
SHAPE_FORMS = {**dict.fromkeys(SEQUENCE_MODELS, "(time steps, features)"),
               **dict.fromkeys(GRAPH_MODELS, "(nodes, nodes + features + 1)")}


# ---------------------------------------------------------------- registry

MODELS: dict[str, Callable[..., nn.Module]] = {
    "fcn": fcn,
    "cnn": cnn,
    "vgg16": vgg16,
    "vgg19": vgg19,
    "resnet20": resnet20,
    "resnet56": resnet56,
    "vit": vit,
    "tv_vit": tv_vit,
    **SEQUENCE_MODELS,
    **GRAPH_MODELS,
}


def imports_code(name: str) -> bool:
    """Whether building model `name` imports a module it names (module.path:factory), i.e. runs outside code."""
    return name not in MODELS and not name.startswith("tv:") and ":" in name


def create_model(name: str, num_classes: int, in_shape: tuple[int, ...], **kw: Any) -> nn.Module:
    """Build model `name` (a MODELS key, 'tv:<torchvision name>' or 'module.path:factory') with options kw."""
    num_classes = _positive_int(name, "num_classes", num_classes)
    form = SHAPE_FORMS.get(name, "(C, H, W)")
    valid = isinstance(in_shape, (tuple, list)) and len(in_shape) == (2 if name in SHAPE_FORMS else 3)
    if not valid or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in in_shape):
        raise ModelError(f"{name}: in_shape must be {form} positive integers, got {in_shape!r}")
    in_shape = tuple(in_shape)
    if name in MODELS:
        constructor = MODELS[name]
        allowed = [p.name for p in inspect.signature(constructor).parameters.values() if p.kind is p.KEYWORD_ONLY]
        for key in kw:
            if key not in allowed:
                raise ModelError(f"{name}: unknown option {key!r}{did_you_mean(key, allowed)}; allowed: "
                                 f"{', '.join(allowed) or 'none'}")
        return constructor(num_classes, in_shape, **kw)
    if name.startswith("tv:"):
        return _torchvision_model(name.removeprefix("tv:"), num_classes, in_shape, kw)
    if ":" in name:
        return _factory_model(name, num_classes, in_shape, kw)
    known = ", ".join([*MODELS, "tv:<torchvision name>", "module.path:factory"])
    # A torchvision name without its prefix is the likeliest slip: suggest tv:<name> too.
    names = torchvision.models.list_models(module=torchvision.models)
    near = did_you_mean(name, [*MODELS, *(f"tv:{n}" for n in names)])
    raise ModelError(f"unknown model {name!r}{near}; known: {known}")


# tv: options the suite handles itself; every other one goes to torchvision's builder.
TV_OPTIONS = ("weights", "checkpoint")


def _torchvision_model(name: str, num_classes: int, in_shape: tuple[int, int, int], kw: dict) -> nn.Module:
    names = torchvision.models.list_models(module=torchvision.models)
    if name not in names:
        raise ModelError(
            f"unknown torchvision model {name!r}{did_you_mean(name, names)}; e.g. {', '.join(names[:8])} "
            f"(all {len(names)}: torchvision.models.list_models(module=torchvision.models))"
        )
    # torchvision classifiers hard-code 3 input channels and would fail later, deep inside forward().
    if in_shape[0] != 3:
        raise ModelError(f"tv:{name} needs 3-channel inputs, got in_shape {in_shape}")
    options = {k: v for k, v in kw.items() if k not in TV_OPTIONS}
    if "weights" in kw and "checkpoint" in kw:
        raise ModelError(f"tv:{name}: give model_kwargs.weights or model_kwargs.checkpoint, not both")
    weights = _tv_weights(name, kw["weights"]) if "weights" in kw else None
    if name.startswith("vit_"):  # vit_b_16 ... vit_h_14: the patch size ends the name; the default image is 224
        if "image_size" in options:
            raise ModelError(f"tv:{name}: image_size is in_shape's side; drop model_kwargs.image_size")
        options["image_size"] = _vit_side(f"tv:{name}", in_shape, int(name.rpartition("_")[2]))
        trained_side = weights.meta["min_size"][0] if weights is not None else options["image_size"]
        if trained_side != options["image_size"]:  # the position embedding has one row per patch
            raise ModelError(f"tv:{name}: weights {weights} are for {trained_side}x{trained_side} images, got "
                             f"in_shape {in_shape}")
    try:
        model = torchvision.models.get_model(name, weights=None, num_classes=num_classes, **options)
    except (TypeError, ValueError) as err:  # an option the builder or the model class does not take
        raise ModelError(f"tv:{name}: model_kwargs {sorted(options)} not accepted: {one_line(err)}") from None
    if weights is not None:
        state = _read_state(f"tv:{name}", _tv_weights_file(name, weights))
        _load_state(f"tv:{name} weights {weights}", model, state, other_classes=len(weights.meta["categories"]))
    if "checkpoint" in kw:
        path = Path(str(kw["checkpoint"])).expanduser()
        _load_state(f"tv:{name} checkpoint {path}", model, _read_state(f"tv:{name}", path))
    return model


def architecture(name: str, kw: Mapping[str, Any]) -> dict[str, Any]:
    """The model options that shape the network, without those naming the weights it starts from (tv: weights and
    checkpoint): what rebuilding a trained model needs."""
    return {k: v for k, v in kw.items() if not (name.startswith("tv:") and k in TV_OPTIONS)}


def start_identity(name: str, kw: Mapping[str, Any]) -> dict[str, str]:
    """What the weights a model starts from hold beyond its name and options: a tv: checkpoint's SHA-256 (so that a
    file changed at the same path is trained anew); empty when the model starts from nothing else."""
    if not name.startswith("tv:") or "checkpoint" not in kw:
        return {}
    path = Path(str(kw["checkpoint"])).expanduser()
    try:
        stat = path.stat()
    except OSError:
        return {}  # building the model names the missing file
    return {"checkpoint_sha256": _file_sha256(str(path.resolve()), stat.st_size, stat.st_mtime_ns)}


@functools.lru_cache(maxsize=32)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    # Keyed by size and mtime too: a sweep asks for every run's identity, the file is read once while it is unchanged.
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _tv_weights(name: str, value: Any) -> Any:
    """torchvision's weights enum member that model_kwargs.weights names (DEFAULT, IMAGENET1K_V1, or Enum.MEMBER)."""
    try:
        enum = torchvision.models.get_model_weights(name)
    except (ValueError, KeyError):
        raise ModelError(f"tv:{name}: torchvision has no pretrained weights for it (model_kwargs.weights)") from None
    members = list(enum.__members__)
    member = str(value).rpartition(".")[2]
    if member not in members:
        raise ModelError(f"tv:{name}: model_kwargs.weights must be one of {', '.join(members)}; got {value!r}"
                         f"{did_you_mean(member, members)}")
    return enum[member]


def _tv_weights_file(name: str, weights: Any) -> Path:
    """The weights' file in torch hub's checkpoint folder, downloaded there first when absent (one-line error)."""
    path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlsplit(weights.url).path)
    if not path.is_file():
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.hub.download_url_to_file(weights.url, str(path), progress=False)
        except Exception as err:  # noqa: BLE001 - no network, a proxy, a full disk: all mean "provide the file"
            raise ModelError(f"tv:{name}: weights {weights} are not in the torch hub cache and could not be "
                             f"downloaded ({one_line(err)[:120]}): put {weights.url} at {path}") from None
    return path


def _read_state(model: str, path: Path) -> Mapping[str, Tensor]:
    """The state dict in file `path`, loaded with weights_only=True (a one-line error when it holds none)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - missing file, truncated file, pickled code weights_only refuses
        raise ModelError(f"{model}: cannot load state dict {path}: {one_line(err)[:200]}") from None
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ModelError(f"{model}: {path} does not hold a state dict (a mapping of names to tensors)")
    return state


def _load_state(source: str, model: nn.Module, state: Mapping[str, Tensor], other_classes: int | None = None) -> None:
    """Load `state` into `model`, every key and shape checked; with `other_classes` (pretrained weights of that many
    classes) the tensors whose first dimension is that count and the model's differs are left freshly initialized:
    the classifier, fitted to this data's classes."""
    own = model.state_dict()
    missing, unexpected = [k for k in own if k not in state], [k for k in state if k not in own]
    if missing or unexpected:
        what = f"lacks {missing[0]}" if missing else f"has {unexpected[0]}, which the model does not"
        raise ModelError(f"{source}: does not fit the model: it {what} ({len(missing)} missing, {len(unexpected)} "
                         "unexpected keys)")
    kept = {}
    for key, tensor in state.items():
        if tensor.shape == own[key].shape:
            kept[key] = tensor
        elif other_classes is None or tensor.shape[:1] != (other_classes,) or tensor.shape[1:] != own[key].shape[1:]:
            raise ModelError(f"{source}: {key} has shape {tuple(tensor.shape)} but the model's is "
                             f"{tuple(own[key].shape)}")
    model.load_state_dict(kept, strict=False)


def _factory_model(name: str, num_classes: int, in_shape: tuple[int, int, int], kw: dict) -> nn.Module:
    module_name, _, attr = name.partition(":")
    # The console script puts its own folder first on sys.path, not the current one, where a user's models live.
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.append(os.getcwd())
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except Exception as err:  # noqa: BLE001 - ImportError, AttributeError, or the module's own error on import
        raise ModelError(f"cannot load model factory {name!r}: {one_line(err, kind=True)}") from None
    _check_factory(name, factory, kw)
    model = factory(num_classes=num_classes, in_shape=in_shape, **kw)
    if not isinstance(model, nn.Module):
        raise ModelError(f"model factory {name!r} returned {type(model).__name__}, not a torch.nn.Module")
    return model


def _check_factory(name: str, factory: Any, kw: Mapping[str, Any]) -> None:
    """A one-line ModelError unless `factory` takes num_classes, in_shape and the model_kwargs as keywords."""
    if not callable(factory):
        raise ModelError(f"model factory {name!r} is a {type(factory).__name__}, not a callable")
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return  # a builtin without a signature: the call itself says what it lacks
    needed = ["num_classes", "in_shape", *kw]
    takes = {k for k, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    anything = any(p.kind is p.VAR_KEYWORD for p in params.values())
    lacks = [] if anything else [key for key in needed if key not in takes]
    if lacks:
        raise ModelError(f"model factory {name!r} must take keyword arguments num_classes, in_shape and its "
                         f"model_kwargs (or **kwargs); it lacks {', '.join(lacks)}")
    required = [k for k, p in params.items() if p.default is p.empty and p.kind in (p.POSITIONAL_OR_KEYWORD,
                p.KEYWORD_ONLY, p.POSITIONAL_ONLY) and k not in needed and k not in kw]
    if required:
        raise ModelError(f"model factory {name!r} requires {', '.join(required)}, which the suite does not pass: "
                         "give it a default or set it in model_kwargs")
