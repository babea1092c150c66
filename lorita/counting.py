"""The one FLOPs/parameter counter of the suite (fvcore, eval mode, multiply-adds)."""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch
from torch import nn

from lorita.forward import evaluating

with warnings.catch_warnings():
    # fvcore scripts a loss function at import, which torch >= 2.10 reports as deprecated on every start.
    warnings.filterwarnings("ignore", message="`torch.jit.script` is deprecated", category=FutureWarning)
    from fvcore.nn import FlopCountAnalysis, parameter_count
    from fvcore.nn.jit_handles import get_shape


def _sdpa_flop_jit(inputs: list[Any], outputs: list[Any]) -> int:
    # fvcore has no handle for fused attention and would count it as 0: Q·Kᵀ plus attn·V, as multiply-adds.
    q, k, v = (get_shape(t) for t in inputs[:3])
    batch = math.prod(q[:-2])
    length, dim = q[-2], q[-1]
    keys, value_dim = k[-2], v[-1]
    return batch * length * keys * (dim + value_dim)


def _native_mha_flop_jit(inputs: list[Any], outputs: list[Any]) -> int:
    # nn.MultiheadAttention's eval fast path is one fused op that fvcore counts as 0. Count what its slow path counts
    # through aten::linear and aten::bmm: the q, k, v projections, Q·Kᵀ and attn·V over all heads, the out-projection.
    # Schema: (query, key, value, embed_dim, num_head, qkv_weight, qkv_bias, proj_weight, proj_bias, mask, ...).
    q, k, v = (get_shape(t) for t in inputs[:3])
    qkv_weight, proj_weight = get_shape(inputs[5]), get_shape(inputs[7])
    batch = math.prod(q[:-2])
    length, keys = q[-2], k[-2]
    embed = qkv_weight[0] // 3  # packed (3E, E) weight; the heads split E, so heads * head_dim == E
    in_proj = (length * q[-1] + keys * k[-1] + keys * v[-1]) * embed
    products = 2 * length * keys * embed
    out_proj = length * embed * proj_weight[0]
    return batch * (in_proj + products + out_proj)


def _baddbmm_flop_jit(inputs: list[Any], outputs: list[Any]) -> int:
    # The slow path computes Q·Kᵀ with baddbmm when given a mask, which fvcore leaves at 0 while it counts the bmm
    # taken without one; adding the mask is elementwise and, like every elementwise op here, not counted.
    batch, rows, inner = get_shape(inputs[1])
    return batch * rows * inner * get_shape(inputs[2])[-1]


# fvcore's defaults miss the attention ops of F.scaled_dot_product_attention and nn.MultiheadAttention (both paths);
# set once here so every count in the suite sees them.
_EXTRA_HANDLES = {
    "aten::scaled_dot_product_attention": _sdpa_flop_jit,
    "aten::_native_multi_head_attention": _native_mha_flop_jit,
    "aten::baddbmm": _baddbmm_flop_jit,
}


def flops_by_module(model: nn.Module, example_input: torch.Tensor) -> dict[str, int]:
    """fvcore FLOPs (multiply-adds, eval mode, for this input) per module name; "" is the whole model."""
    with evaluating(model), torch.no_grad():
        analysis = FlopCountAnalysis(model, example_input)
        analysis.set_op_handle(**_EXTRA_HANDLES)
        analysis.unsupported_ops_warnings(False)
        analysis.uncalled_modules_warnings(False)
        return {name: int(value) for name, value in analysis.by_module().items()}


def count_flops_params(model: nn.Module, example_input: torch.Tensor) -> tuple[int, int]:
    """FLOPs (fvcore multiply-adds, eval mode, for this input) and parameter count of `model`."""
    return flops_by_module(model, example_input)[""], int(parameter_count(model)[""])
