"""The one FLOPs/parameter counter of the suite (fvcore, eval mode, multiply-adds).

The convention: each matrix product (linear, conv, matmul, bmm, einsum) counts its multiply-adds, biases not
counted; so do the fused attention and recurrent ops, through the handles below. Norms count fvcore's estimate per
element: layer_norm 5 (4 without an affine), eval batch_norm 2 (1); adaptive_avg_pool2d 1 per input element. Every
other op counts 0: activations (ReLU, GELU, Tanh), softmax, attention's scaling and masks, additions, products with
a constant or elementwise, dropout, slicing and concatenation.
"""

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


def _recurrent_flop_jit(inputs: list[Any], outputs: list[Any]) -> int:
    # aten::lstm / gru / rnn_tanh / rnn_relu run every layer and direction over the whole sequence in one op, which
    # fvcore counts as 0. Each 2-D weight of its flat weight list (weight_ih, weight_hh, and an LSTM's weight_hr) is
    # applied once per time step and sequence: rows x out x in multiply-adds; gates and biases are elementwise.
    # Schemas: .input(input, hx, params, ...), batch_first or not, (time, batch) rows either way; .data(data,
    # batch_sizes, hx, params, ...) for a PackedSequence, counted at its padded length: longest x batch.
    first = get_shape(inputs[1])
    packed = first is not None and len(first) == 1  # batch_sizes, where the .input schema has the state
    params = inputs[3 if packed else 2].node().inputs()
    if packed:
        hx = inputs[2]
        state = get_shape(hx) if get_shape(hx) is not None else get_shape(next(iter(hx.node().inputs())))
        rows = first[0] * state[1]
    else:
        rows = math.prod(get_shape(inputs[0])[:-1])
    return rows * sum(math.prod(shape) for shape in map(get_shape, params) if len(shape) == 2)


# fvcore's defaults miss the attention ops of F.scaled_dot_product_attention and nn.MultiheadAttention (both paths)
# and the fused recurrent ops; set once here so every count in the suite sees them.
_EXTRA_HANDLES = {
    "aten::scaled_dot_product_attention": _sdpa_flop_jit,
    "aten::_native_multi_head_attention": _native_mha_flop_jit,
    "aten::baddbmm": _baddbmm_flop_jit,
    **{f"aten::{op}": _recurrent_flop_jit for op in ("lstm", "gru", "rnn_tanh", "rnn_relu")},
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
