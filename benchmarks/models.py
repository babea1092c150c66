"""Model registry: the paper's FCN, VGG and CIFAR ResNets, a small CNN and ViT, torchvision and custom factories."""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn


class ModelError(ValueError):
    """A model name or option is invalid (one-line message)."""


def _positive_int(model: str, field: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ModelError(f"{model}: {field} must be a positive integer, got {value!r}")
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


# ---------------------------------------------------------------- registry

MODELS: dict[str, Callable[..., nn.Module]] = {
    "fcn": fcn,
    "cnn": cnn,
    "vgg16": vgg16,
    "vgg19": vgg19,
    "resnet20": resnet20,
    "resnet56": resnet56,
    "vit": vit,
}


def imports_code(name: str) -> bool:
    """Whether building model `name` imports a module it names (module.path:factory), i.e. runs outside code."""
    return name not in MODELS and not name.startswith("tv:") and ":" in name


def create_model(name: str, num_classes: int, in_shape: tuple[int, int, int], **kw: Any) -> nn.Module:
    """Build model `name` (a MODELS key, 'tv:<torchvision name>' or 'module.path:factory') with options kw."""
    num_classes = _positive_int(name, "num_classes", num_classes)
    valid = isinstance(in_shape, (tuple, list)) and len(in_shape) == 3
    if not valid or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in in_shape):
        raise ModelError(f"{name}: in_shape must be (C, H, W) positive integers, got {in_shape!r}")
    in_shape = (in_shape[0], in_shape[1], in_shape[2])
    if name in MODELS:
        constructor = MODELS[name]
        allowed = [p.name for p in inspect.signature(constructor).parameters.values() if p.kind is p.KEYWORD_ONLY]
        for key in kw:
            if key not in allowed:
                raise ModelError(f"{name}: unknown option {key!r}; allowed: {', '.join(allowed) or 'none'}")
        return constructor(num_classes, in_shape, **kw)
    if name.startswith("tv:"):
        return _torchvision_model(name.removeprefix("tv:"), num_classes, in_shape, kw)
    if ":" in name:
        return _factory_model(name, num_classes, in_shape, kw)
    known = ", ".join([*MODELS, "tv:<torchvision name>", "module.path:factory"])
    raise ModelError(f"unknown model {name!r}; known: {known}")


def _torchvision_model(name: str, num_classes: int, in_shape: tuple[int, int, int], kw: dict) -> nn.Module:
    names = torchvision.models.list_models(module=torchvision.models)
    if name not in names:
        raise ModelError(
            f"unknown torchvision model {name!r}; e.g. {', '.join(names[:8])} "
            f"(all {len(names)}: torchvision.models.list_models(module=torchvision.models))"
        )
    # torchvision classifiers hard-code 3 input channels and would fail later, deep inside forward().
    if in_shape[0] != 3:
        raise ModelError(f"tv:{name} needs 3-channel inputs, got in_shape {in_shape}")
    return torchvision.models.get_model(name, weights=None, num_classes=num_classes, **kw)


def _factory_model(name: str, num_classes: int, in_shape: tuple[int, int, int], kw: dict) -> nn.Module:
    module_name, _, attr = name.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise ModelError(f"cannot load model factory {name!r}: {err}") from err
    return factory(num_classes=num_classes, in_shape=in_shape, **kw)
