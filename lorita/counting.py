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


def flops_by_module(model: nn.Module, example_input: torch.Tensor) -> dict[str, int]:
    """fvcore FLOPs (multiply-adds, eval mode, for this input) per module name; "" is the whole model."""
    with evaluating(model), torch.no_grad():
        analysis = FlopCountAnalysis(model, example_input)
        analysis.set_op_handle("aten::scaled_dot_product_attention", _sdpa_flop_jit)
        analysis.unsupported_ops_warnings(False)
        analysis.uncalled_modules_warnings(False)
        return {name: int(value) for name, value in analysis.by_module().items()}


def count_flops_params(model: nn.Module, example_input: torch.Tensor) -> tuple[int, int]:
    """FLOPs (fvcore multiply-adds, eval mode, for this input) and parameter count of `model`."""
    return flops_by_module(model, example_input)[""], int(parameter_count(model)[""])
