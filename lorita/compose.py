"""Over-parameterize layers as products of linear factors (LoRITa training) and collapse them back."""

from __future__ import annotations

import copy
import itertools
import math
import warnings
from collections.abc import Sequence
from fnmatch import fnmatch

import torch
import torch.nn.functional as F
from torch import nn

from lorita.matrices import read_matrices
from lorita.product import collapse_, compose_, factor_tensors, has_products, is_product, spectral_values

MODES = ("auto", "activation", "weight")
# How the factors start: PyTorch's default init each, or from the SVD of the layer's own weight (Khodak et al.).
INITS = ("default", "spectral")
# A single factor beyond this is almost always a mistake (torchvision VGG's 25088-input classifier
# would need a 25088x25088 square factor: 630 M parameters).
MAX_FACTOR_PARAMS = 50_000_000
# Modules that read their Linear children's `.weight` directly instead of calling them, so replacing
# those Linears would silently change nothing (or break the module).
_WEIGHT_READERS = (nn.MultiheadAttention,)
_WEIGHT_READER_NAMES = ("ShiftedWindowAttention", "ShiftedWindowAttentionV2")


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}; got {mode!r}")


def _chain_cost(widths: Sequence[int]) -> int:
    # Multiply-adds per position of applying the factors one after another: sum of d_i * d_(i+1).
    return sum(a * b for a, b in itertools.pairwise(widths))


class ComposedLinear(nn.Module):
    """A Linear(in->out) written as `factors` maps: in->width, `factors-2` width x width, then width->out.

    width defaults to in (LoRITa's square in x in factors); a smaller width makes the product rank-`width` at most
    (a factorized layer as low-rank training methods train it).
    """

    def __init__(self, in_features: int, out_features: int, factors: int, bias: bool = True,
                 mode: str = "auto", device=None, dtype=None, width: int | None = None) -> None:
        super().__init__()
        _check_mode(mode)
        self.in_features, self.out_features, self.mode = in_features, out_features, mode
        width = in_features if width is None else width
        kw = {"device": device, "dtype": dtype}
        sizes = [in_features] + [width] * (factors - 1) + [out_features]
        self.factors = nn.ModuleList([nn.Linear(a, b, bias=bias and i == factors - 1, **kw)
                                      for i, (a, b) in enumerate(itertools.pairwise(sizes))])

    def widths(self) -> list[int]:
        """in, then each factor's output width, ending with out."""
        return [self.in_features] + [factor.out_features for factor in self.factors]

    @property
    def bias(self) -> torch.Tensor | None:
        return self.factors[-1].bias

    def product_weight(self) -> torch.Tensor:
        """The collapsed weight W_N ... W_1 (out x in)."""
        weight = self.factors[-1].weight
        for factor in reversed(self.factors[:-1]):
            weight = weight @ factor.weight
        return weight

    def use_weight_product(self, x: torch.Tensor) -> bool:
        """Whether multiplying the weights first costs fewer multiply-adds than chaining activations."""
        if self.mode != "auto":
            return self.mode == "weight"
        rows = x.numel() // self.in_features
        # With square factors this is out <= rows (per extra factor, activations rows*in^2, weights out*in^2).
        widths = self.widths()
        # product_weight multiplies out x d_(i+1) by each d_(i+1) x d_i from the last factor back.
        product = self.out_features * _chain_cost(widths[:-1])
        return product + rows * self.in_features * self.out_features <= rows * _chain_cost(widths)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_weight_product(x):
            return F.linear(x, self.product_weight(), self.bias)
        for factor in self.factors:
            x = factor(x)
        return x

    def extra_repr(self) -> str:
        return (f"{self.in_features}, {self.out_features}, factors={len(self.factors)}, "
                f"width={self.factors[0].out_features}, mode={self.mode}")


class ComposedConv2d(nn.Module):
    """A k x k Conv2d(in->width) followed by `factors-1` 1x1 convs (width x width, the last width->out), bias last.

    width defaults to out (LoRITa's square out x out 1x1 factors); a smaller one bounds the product's rank by it.
    """

    def __init__(self, conv: nn.Conv2d, factors: int, mode: str = "auto", width: int | None = None) -> None:
        super().__init__()
        _check_mode(mode)
        self.mode = mode
        out, has_bias = conv.out_channels, conv.bias is not None
        self.out_channels = out
        width = out if width is None or factors == 1 else width
        kw = {"device": conv.weight.device, "dtype": conv.weight.dtype}
        first = nn.Conv2d(conv.in_channels, width, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                          bias=has_bias and factors == 1, padding_mode=conv.padding_mode, **kw)
        sizes = [width] * (factors - 1) + [out]
        pointwise = [nn.Conv2d(a, b, 1, bias=has_bias and i == factors - 2, **kw)
                     for i, (a, b) in enumerate(itertools.pairwise(sizes))]
        self.factors = nn.ModuleList([first, *pointwise])

    @property
    def bias(self) -> torch.Tensor | None:
        return self.factors[-1].bias

    def product_weight(self) -> torch.Tensor:
        """The collapsed k x k kernel: every 1x1 factor folded into the first conv's output channels."""
        first = self.factors[0].weight
        weight = first.flatten(1)
        for factor in self.factors[1:]:
            weight = factor.weight.flatten(1) @ weight
        return weight.view(self.out_channels, *first.shape[1:])

    def use_weight_product(self, x: torch.Tensor) -> bool:
        """Whether multiplying the weights first costs fewer multiply-adds than chaining activations."""
        if self.mode != "auto":
            return self.mode == "weight"
        first = self.factors[0]
        batch = x.numel() // (x.shape[-3] * x.shape[-2] * x.shape[-1])
        positions = batch * math.prod(conv_output_size(first, x.shape[-2], x.shape[-1]))
        fan_in = first.weight[0].numel()
        # With square factors this is in*k*k <= B*H_out*W_out (per extra factor, activations B*H_out*W_out*out^2,
        # weights out^2*in*k*k).
        widths = [fan_in] + [factor.out_channels for factor in self.factors]
        # product_weight folds each 1x1 d_(j+1) x d_j into the d_j x in*k*k kernel, from the first factor on.
        product = fan_in * _chain_cost(widths[1:])
        return product + positions * fan_in * self.out_channels <= positions * _chain_cost(widths)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        first = self.factors[0]
        if self.use_weight_product(x):
            return first._conv_forward(x, self.product_weight(), self.bias)
        for factor in self.factors:
            x = factor(x)
        return x

    def extra_repr(self) -> str:
        first = self.factors[0]
        return (f"{first.in_channels}, {self.out_channels}, kernel_size={first.kernel_size}, "
                f"stride={first.stride}, factors={len(self.factors)}, width={first.out_channels}, mode={self.mode}")


COMPOSED = (ComposedLinear, ComposedConv2d)


def conv_output_size(conv: nn.Conv2d, height: int, width: int) -> tuple[int, int]:
    """Output height and width of `conv` for an input of height x width."""
    if conv.padding == "same":
        return height, width
    padding = (0, 0) if conv.padding == "valid" else conv.padding
    return tuple((size + 2 * p - d * (k - 1) - 1) // s + 1 for size, k, s, p, d in
                 zip((height, width), conv.kernel_size, conv.stride, padding, conv.dilation, strict=True))


def is_composed(model: nn.Module) -> bool:
    """True when `model` still holds LoRITa composed layers or weights (collapse it before compressing)."""
    return any(isinstance(m, COMPOSED) or has_products(m) for m in model.modules())


def composed_factors(model: nn.Module) -> dict[str, list[torch.Tensor]]:
    """The factor weights of every composed layer and composed read-directly matrix, first applied first, by name."""
    factors = {name: [f.weight for f in module.factors] for name, module in model.named_modules()
               if isinstance(module, COMPOSED)}
    factors.update({name: factor_tensors(m.owner, m.slot.param) for name, m in read_matrices(model).items()
                    if is_product(m.owner, m.slot.param)})
    return factors


def matches_any(name: str, patterns: Sequence[str] | None) -> bool:
    """Whether a module name matches any of the glob patterns."""
    return any(fnmatch(name, p) for p in patterns or ())


def check_patterns(arg: str, patterns: Sequence[str] | None) -> None:
    """One-line ValueError unless `patterns` is None or a list of glob strings."""
    if patterns is not None and (isinstance(patterns, str) or
                                 not all(isinstance(p, str) for p in patterns)):
        raise ValueError(f"{arg} must be a list of module-name glob patterns (e.g. ['classifier*']); "
                         f"got {patterns!r}")


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def weight_read_directly(model: nn.Module) -> set[str]:
    """Names of Linears whose weight a parent reads itself (MultiheadAttention, the encoder layer's fast path, Swin):
    replacing them breaks it. Those lorita.matrices lists are composed and compressed as matrices."""
    names = {name for name, m in read_matrices(model).items() if m.slot.param == "weight"}
    for name, module in model.named_modules():
        if isinstance(module, _WEIGHT_READERS) or type(module).__name__ in _WEIGHT_READER_NAMES:
            prefix = f"{name}." if name else ""
            names.update(prefix + n for n, m in module.named_modules() if isinstance(m, nn.Linear) and n)
    return names


def _check_model(model) -> None:
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module; got {type(model).__name__}")


def overparameterize(model: nn.Module, factors: int, *, include: Sequence[str] | None = None,
                     exclude: Sequence[str] | None = None, mode: str = "auto", init: str = "default") -> nn.Module:
    """A copy of `model` whose Linear/Conv2d layers are each a product of `factors` linear maps.

    The weights a module reads itself (lorita.matrices: nn.LSTM/GRU/RNN's weight_ih_l*/weight_hh_l*,
    nn.MultiheadAttention's in_proj_weight and out_proj, nn.TransformerEncoderLayer's linear1/linear2) become products
    of `factors` factors too, through torch.nn.utils.parametrize (lorita.product): the module keeps its type and its
    fused kernels, and forms each weight from its factors (mode "weight") on every forward.

    init: "default" draws every factor with PyTorch's default init; "spectral" (Khodak, Tenenholtz, Mackey, Fusi,
    ICLR 2021) sets them from the SVD W = U S V^T of the layer's own weight, U S^(1/N) last, S^(1/N) V^T first and
    S^(1/N) between, and keeps the layer's bias: the composed model computes exactly what `model` computes.
    """
    _check_model(model)
    if isinstance(factors, bool) or not isinstance(factors, int) or factors < 1:
        raise ValueError(f"factors must be an integer >= 1 (the paper's N); got {factors!r}")
    _check_mode(mode)
    if init not in INITS:
        raise ValueError(f"init must be one of {', '.join(INITS)}; got {init!r}")
    check_patterns("include", include)
    check_patterns("exclude", exclude)
    if is_composed(model):
        raise ValueError("model is already composed; call lorita.collapse(model) first")
    model = copy.deepcopy(model)
    if factors == 1:
        return model
    read_directly, matrices = weight_read_directly(model), read_matrices(model)

    def chosen(name: str) -> bool:
        return (include is None or matches_any(name, include)) and not matches_any(name, exclude)

    skipped, targets = [], []
    for name, module in model.named_modules():
        if not isinstance(module, (nn.Linear, nn.Conv2d)) or isinstance(module, COMPOSED) or name in matrices:
            continue
        if not chosen(name):
            continue
        if name in read_directly:
            skipped.append(f"{name} (weight read directly by its parent)")
        elif isinstance(module, nn.Conv2d) and module.groups != 1:
            skipped.append(f"{name} (groups={module.groups})")
        else:
            targets.append((name, module))
    for name, module in targets:
        composed = _compose(name, module, factors, mode)
        if init == "spectral":
            _spectral_(composed, module)
        _set_module(model, name, composed)
    for name, matrix in matrices.items():
        if chosen(name):
            width = _square_width(name, matrix.weight.shape[1])
            compose_(matrix.owner, matrix.slot.param, factors, width=width, init=init)
    if skipped:
        warnings.warn(f"overparameterize left {len(skipped)} layer(s) alone: {', '.join(skipped)}", stacklevel=2)
    return model


def _square_width(name: str, width: int) -> int:
    if width**2 > MAX_FACTOR_PARAMS:
        raise ValueError(f"layer {name!r}: a {width}x{width} factor would hold {width**2 / 1e6:.0f} M parameters "
                         f"(limit {MAX_FACTOR_PARAMS / 1e6:.0f} M); leave it out with exclude=[{name!r}]")
    return width


def _compose(name: str, module: nn.Module, factors: int, mode: str) -> nn.Module:
    # The square factor is in x in for a Linear (and a read-directly matrix) and out x out (1x1) for a conv.
    _square_width(name, module.in_features if isinstance(module, nn.Linear) else module.out_channels)
    if isinstance(module, nn.Linear):
        return ComposedLinear(module.in_features, module.out_features, factors, bias=module.bias is not None,
                              mode=mode, device=module.weight.device, dtype=module.weight.dtype)
    return ComposedConv2d(module, factors, mode)


@torch.no_grad()
def _spectral_(composed: nn.Module, layer: nn.Linear | nn.Conv2d) -> None:
    """Set the factors of `composed` so that their product is `layer`'s weight, its singular values shared evenly.

    Factors narrower than the weight's rank hold its best approximation of their width (the truncated SVD).
    """
    values = spectral_values(layer.weight.detach().to("cpu", torch.float64).flatten(1),
                             [tuple(factor.weight.flatten(1).shape) for factor in composed.factors])
    for factor, value in zip(composed.factors, values, strict=True):
        factor.weight.copy_(value.reshape(factor.weight.shape))
    if layer.bias is not None:
        composed.factors[-1].bias.copy_(layer.bias)


def low_rank(layer: nn.Linear | nn.Conv2d, rank: int, *, mode: str = "auto") -> nn.Module:
    """`layer` as two trainable factors of inner width `rank` holding its best rank-`rank` approximation.

    U S^(1/2) and S^(1/2) V^T of the truncated SVD (a Linear: in->rank->out; a conv: its k x k conv into `rank`
    channels, then a 1x1 conv): a composed layer that collapse() multiplies back, as low-rank training (Cuttlefish)
    switches a full-rank layer to factors.
    """
    limit = min(layer.weight.flatten(1).shape)
    if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= limit:
        raise ValueError(f"rank must be an int in [1, {limit}]; got {rank!r}")
    _check_mode(mode)
    if isinstance(layer, nn.Linear):
        composed = ComposedLinear(layer.in_features, layer.out_features, 2, bias=layer.bias is not None, mode=mode,
                                  device=layer.weight.device, dtype=layer.weight.dtype, width=rank)
    elif isinstance(layer, nn.Conv2d) and layer.groups == 1:
        composed = ComposedConv2d(layer, 2, mode, width=rank)
    else:
        raise ValueError(f"layer must be a Linear or a Conv2d with groups=1; got {layer!r}")
    _spectral_(composed, layer)
    composed.train(layer.training)
    for factor in composed.factors:
        factor.requires_grad_(layer.weight.requires_grad)
    return composed


def make_low_rank_(model: nn.Module, name: str, rank: int, *, mode: str = "auto") -> None:
    """In place, the layer or read-directly matrix `name` of `model` as two factors of width `rank` (see low_rank)."""
    matrix = read_matrices(model).get(name)
    if matrix is None:
        model.set_submodule(name, low_rank(model.get_submodule(name), rank, mode=mode))
        return
    limit = min(matrix.weight.shape)
    if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= limit:
        raise ValueError(f"rank must be an int in [1, {limit}]; got {rank!r}")
    compose_(matrix.owner, matrix.slot.param, 2, width=rank, init="spectral")


def set_mode(model: nn.Module, mode: str) -> nn.Module:
    """Switch every composed layer of `model` to `mode` in place (same function, other cost)."""
    _check_mode(mode)
    for module in model.modules():
        if isinstance(module, COMPOSED):
            module.mode = mode
    return model


@torch.no_grad()
def collapse(model: nn.Module) -> nn.Module:
    """A new model with the original structure: each composed layer becomes one layer holding the product."""
    _check_model(model)
    model = copy.deepcopy(model)
    for name, module in list(model.named_modules()):
        if isinstance(module, COMPOSED):
            _set_module(model, name, _collapsed(module))
    for module in list(model.modules()):
        if has_products(module):
            collapse_(module)
    return model


def _collapsed(module: nn.Module) -> nn.Module:
    last = module.factors[-1]
    dtype, device = last.weight.dtype, last.weight.device
    # The product is formed in float64 so collapsing adds no error beyond the final rounding.
    weight = _as_float64(module).product_weight().to(dtype)
    if isinstance(module, ComposedLinear):
        plain = nn.Linear(module.in_features, module.out_features, bias=last.bias is not None,
                          device=device, dtype=dtype)
    else:
        first = module.factors[0]
        plain = nn.Conv2d(first.in_channels, module.out_channels, first.kernel_size, first.stride, first.padding,
                          first.dilation, bias=last.bias is not None, padding_mode=first.padding_mode,
                          device=device, dtype=dtype)
    plain.weight.copy_(weight)
    if last.bias is not None:
        plain.bias.copy_(last.bias)
    plain.train(module.training)
    return plain


def _as_float64(module: nn.Module) -> nn.Module:
    return module if module.factors[0].weight.dtype == torch.float64 else copy.deepcopy(module).double()
