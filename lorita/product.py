"""A weight that its module reads itself, trained as a product of factors (torch.nn.utils.parametrize).

The module keeps reading one dense weight, so nn.LSTM's fused kernel and nn.MultiheadAttention's fused paths keep
running; the weight is formed from the factors on each access, and autograd reaches every factor.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.utils import parametrize

from lorita.linalg import reduced_svd


class Product(nn.Module):
    """Parametrization W = F_N ... F_1 of an out x in weight; F_1 (original0) is width x in, F_N out x width."""

    def __init__(self, factors: int, width: int) -> None:
        super().__init__()
        self.factors, self.width = factors, width

    def forward(self, *factors: torch.Tensor) -> torch.Tensor:
        weight = factors[-1]
        for factor in reversed(factors[:-1]):
            weight = weight @ factor
        return weight

    def right_inverse(self, weight: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Factors whose product is `weight` (its best rank-`width` approximation when narrower), values shared."""
        shapes = factor_shapes(*weight.shape, self.factors, self.width)
        values = spectral_values(weight.detach().to("cpu", torch.float64), shapes)
        return tuple(v.to(dtype=weight.dtype, device=weight.device) for v in values)


def factor_shapes(out: int, fan_in: int, factors: int, width: int) -> list[tuple[int, int]]:
    """Shapes of the factors of an out x fan_in product, first applied first: width x in, width x width, out x width."""
    sizes = [fan_in] + [width] * (factors - 1) + [out]
    return [(b, a) for a, b in zip(sizes, sizes[1:], strict=False)]


def spectral_values(matrix: torch.Tensor, shapes: list[tuple[int, int]]) -> list[torch.Tensor]:
    """Factor matrices (float64) of `shapes` whose product is `matrix`'s best approximation of the first's width.

    From the SVD U S V^T: S^(1/N) V^T first, S^(1/N) between, U S^(1/N) last (Khodak et al.'s spectral init).
    """
    u, s, vh = reduced_svd(matrix)
    rank = min(len(s), shapes[0][0])
    root = s[:rank].pow(1 / len(shapes))
    # Every inner width is at least the kept rank; the rows and columns beyond it start at zero and, their gradient
    # being zero, stay zero: the factorization is Khodak et al.'s rank min(out, fan_in) U V^T, zero-padded as in
    # their code.
    values = [torch.zeros(shape, dtype=torch.float64) for shape in shapes]
    values[0][:rank] = root[:, None] * vh[:rank]
    for middle in values[1:-1]:
        middle[:rank, :rank] = torch.diag(root)
    values[-1][:, :rank] = u[:, :rank] * root
    return values


def compose_(owner: nn.Module, param: str, factors: int, *, width: int, init: str) -> None:
    """Make `owner.<param>` a product of `factors` trainable factors, in place.

    init "spectral": the factors hold the weight's SVD (exact at full width); "default": each factor drawn as
    nn.Linear draws a weight of its shape (kaiming-uniform, bound 1/sqrt(its inputs)), as ComposedLinear's are.
    """
    weight = getattr(owner, param)
    requires_grad = weight.requires_grad
    parametrize.register_parametrization(owner, param, Product(factors, width))
    if isinstance(owner, nn.RNNBase):
        _copy_detached(type(owner))
    originals = factor_tensors(owner, param)
    with torch.no_grad():
        for factor in originals:
            if init == "default":
                nn.init.kaiming_uniform_(factor, a=math.sqrt(5))
            factor.requires_grad_(requires_grad)


def is_product(owner: nn.Module, param: str) -> bool:
    """Whether `owner.<param>` is a Product of factors."""
    return parametrize.is_parametrized(owner, param) and any(
        isinstance(p, Product) for p in owner.parametrizations[param])


def has_products(module: nn.Module) -> bool:
    """Whether any weight of `module` itself (not its children) is a Product of factors."""
    return parametrize.is_parametrized(module) and any(is_product(module, name) for name in module.parametrizations)


def factor_tensors(owner: nn.Module, param: str) -> list[nn.Parameter]:
    """The trainable factors of a Product weight, first applied first."""
    plist = owner.parametrizations[param]
    return [getattr(plist, f"original{i}") for i in range(plist[0].factors)]


@torch.no_grad()
def collapse_(owner: nn.Module) -> None:
    """Replace every Product weight of `owner` by a plain parameter holding the product (formed in float64), in place.

    remove_parametrizations would edit the class parametrize made for `owner`, which every deep copy of the composed
    model shares (the copies would lose their weights): `owner` gets its original class back instead.
    """
    names = list(owner.parametrizations)
    if not all(is_product(owner, name) for name in names):
        raise ValueError(f"{type(owner).__name__} holds parametrizations other than lorita's products: "
                         f"{', '.join(names)}")
    plain = {}
    for name in names:
        factors = factor_tensors(owner, name)
        product = owner.parametrizations[name][0](*(f.detach().double() for f in factors))
        plain[name] = nn.Parameter(product.to(factors[0].dtype), requires_grad=factors[-1].requires_grad)
    owner.__class__ = type(owner).__bases__[0]  # parametrize's class derives from the original alone
    del owner.parametrizations
    for name, parameter in plain.items():
        owner.register_parameter(name, parameter)
    if isinstance(owner, nn.RNNBase):
        owner._init_flat_weights()  # the fused op reads the plain parameters again


def _copy_detached(parametrized: type) -> None:
    """Let deepcopy copy a parametrized nn.RNNBase (the class parametrize made for it), once per class.

    nn.RNNBase keeps the weights it last formed in _flat_weights (every forward, .to(), .cuda() forms them); formed
    from factors they are non-leaf tensors, which deepcopy refuses. Detached first, they copy; the next forward finds
    them stale (its weights are formed anew on each access) and forms them again.
    """
    if getattr(parametrized, "_lorita_detaching", False):
        return
    copy_parametrized = parametrized.__deepcopy__

    def deepcopy(self: nn.RNNBase, memo: dict) -> nn.RNNBase:
        self._flat_weights = [None if w is None else w.detach() for w in self._flat_weights]
        return copy_parametrized(self, memo)

    parametrized.__deepcopy__ = deepcopy
    parametrized._lorita_detaching = True
