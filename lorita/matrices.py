"""The weight matrices a module reads itself (recurrent layers, attention, the encoder layer's fused path), named.

A Linear or Conv2d that is called as a module is a layer of its own; these weights are not: nn.LSTM/GRU/RNN hand
their weight_ih_l*/weight_hh_l* to one fused op, nn.MultiheadAttention its packed in_proj_weight and out_proj.weight,
and nn.TransformerEncoderLayer's eval fast path its linear1/linear2 weights. A rank plan names each such matrix:
`<module>.<parameter>` (e.g. "rnn.weight_hh_l0_reverse", "encoder.layers.0.self_attn.in_proj_weight"), or the Linear's
own name when it is a Linear's weight ("encoder.layers.0.self_attn.out_proj", "encoder.layers.0.linear1").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence

# Gate blocks stacked in each recurrent weight (rows = gates * hidden_size), by nn.RNNBase.mode.
GATES = {"LSTM": 4, "GRU": 3, "RNN_TANH": 1, "RNN_RELU": 1}


@dataclass(frozen=True)
class Slot:
    """One matrix of a reader: its key after the reader's name, the owner's path in the reader, the parameters."""

    key: str
    owner: str  # "" when the reader holds the parameter itself
    param: str
    bias: str | None


@dataclass(frozen=True)
class Matrix:
    """A weight matrix (out x in, applied as W x + b) that its `reader` module reads itself; `owner` holds it."""

    reader: nn.Module
    reader_name: str
    slot: Slot

    @property
    def owner(self) -> nn.Module:
        return self.reader.get_submodule(self.slot.owner) if self.slot.owner else self.reader

    @property
    def weight(self) -> torch.Tensor:
        """The weight as the reader sees it (on a composed model, the product of its factors)."""
        return getattr(self.owner, self.slot.param)

    @property
    def bias(self) -> torch.Tensor | None:
        return None if self.slot.bias is None else getattr(self.owner, self.slot.bias)


def _rnn_slots(rnn: nn.RNNBase) -> list[Slot]:
    if rnn.mode not in GATES or rnn.proj_size:  # an LSTM with projections is left to its fused op
        return []
    return [Slot(name, "", name, f"bias_{name.removeprefix('weight_')}" if rnn.bias else None)
            for name in rnn._flat_weights_names if name.startswith("weight_")]


def _attention_slots(mha: nn.MultiheadAttention) -> list[Slot]:
    # Separate q/k/v weights (kdim or vdim != embed_dim), bias_k/bias_v and add_zero_attn have no factorized form.
    if not mha._qkv_same_embed_dim or mha.bias_k is not None or mha.add_zero_attn:
        return []
    return [Slot("in_proj_weight", "", "in_proj_weight", "in_proj_bias"),
            Slot("out_proj", "out_proj", "weight", "bias")]


def _encoder_slots(layer: nn.TransformerEncoderLayer) -> list[Slot]:
    return [Slot(name, name, "weight", "bias") for name in ("linear1", "linear2")]


# Each reader type and its matrices. The encoder layer reads its own Linears only on its fused eval path.
READERS: dict[type, Callable[[nn.Module], list[Slot]]] = {
    nn.RNNBase: _rnn_slots,
    nn.MultiheadAttention: _attention_slots,
    nn.TransformerEncoderLayer: _encoder_slots,
}


def _slots(module: nn.Module) -> list[Slot]:
    return next((slots(module) for kind, slots in READERS.items() if isinstance(module, kind)), [])


def read_matrices(model: nn.Module) -> dict[str, Matrix]:
    """Every matrix of `model` that a reader module reads itself, keyed as a rank plan names it."""
    matrices = {}
    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        for slot in _slots(module):
            key = prefix + (slot.owner if slot.owner and slot.param == "weight" else slot.key)
            matrices[key] = Matrix(module, name, slot)
    return matrices


def input_rows(args: tuple) -> int:
    """Rows a reader applies each of its matrices to in one call: positions (tokens, or time steps x batch).

    A PackedSequence counts at its padded length, longest sequence x batch, as fvcore counts recurrent ops.
    """
    x = args[0]
    if isinstance(x, PackedSequence):
        return len(x.batch_sizes) * int(x.batch_sizes[0])
    return x.numel() // x.shape[-1]


def projection_weight(projection: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(weight, bias) that `projection` (a Linear, or factorize's pair) applies; the product formed in float64."""
    linears = [projection] if isinstance(projection, nn.Linear) else list(projection)
    weight = linears[-1].weight.detach().double()
    for linear in reversed(linears[:-1]):
        weight = weight @ linear.weight.detach().double()
    return weight.to(linears[-1].weight.dtype), linears[-1].bias
