"""A recurrent layer (nn.LSTM, nn.GRU, nn.RNN) whose input and hidden projections are modules: factorize's form.

The fused kernels take dense weights only, so a layer whose projections are two thin matrix products runs its
recurrence here, step by step: each step's input projections for the whole sequence at once, the hidden one per step.
The gates are PyTorch's (LSTM i, f, g, o; GRU r, z, n with r applied to the hidden projection and its bias).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import PackedSequence

from lorita.matrices import GATES, projection_weight


def _suffix(layer: int, direction: int) -> str:
    return f"l{layer}" + ("_reverse" if direction else "")


class LowRankRNN(nn.Module):
    """The recurrence of `rnn`, its projections `proj["ih_l0"]`, `proj["hh_l0_reverse"]`, ... being x -> W x + b.

    Takes and returns what `rnn` does for padded (batched or unbatched) input; a PackedSequence is refused.
    """

    def __init__(self, rnn: nn.RNNBase, projections: dict[str, nn.Module]) -> None:
        super().__init__()
        self.mode, self.input_size, self.hidden_size = rnn.mode, rnn.input_size, rnn.hidden_size
        self.num_layers, self.bias, self.batch_first = rnn.num_layers, rnn.bias, rnn.batch_first
        self.dropout, self.bidirectional = rnn.dropout, rnn.bidirectional
        self.proj = nn.ModuleDict(projections)
        self.train(rnn.training)

    def _step(self, gi: torch.Tensor, gh: torch.Tensor, h: torch.Tensor, c: torch.Tensor | None):
        if self.mode == "LSTM":
            i, f, g, o = (gi + gh).chunk(4, -1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            return torch.sigmoid(o) * torch.tanh(c), c
        if self.mode == "GRU":
            ri, zi, ni = gi.chunk(3, -1)
            rh, zh, nh = gh.chunk(3, -1)
            r, z = torch.sigmoid(ri + rh), torch.sigmoid(zi + zh)
            n = torch.tanh(ni + r * nh)
            return (1 - z) * n + z * h, None
        act = torch.tanh if self.mode == "RNN_TANH" else torch.relu
        return act(gi + gh), None

    def forward(self, x: torch.Tensor, hx=None):
        if isinstance(x, PackedSequence):
            raise ValueError("LowRankRNN takes padded input (batch, time, features) or (time, batch, features); got "
                             "a PackedSequence")
        lstm, directions = self.mode == "LSTM", 2 if self.bidirectional else 1
        batched = x.dim() == 3
        if not batched:  # one sequence: a batch of one, as nn.RNNBase does
            x = x.unsqueeze(1)
            if hx is not None:
                hx = tuple(t.unsqueeze(1) for t in hx) if lstm else hx.unsqueeze(1)
        elif self.batch_first:
            x = x.transpose(0, 1)  # (time, batch, features) from here on
        if hx is None:
            zeros = x.new_zeros(self.num_layers * directions, x.shape[1], self.hidden_size)
            hx = (zeros, zeros) if lstm else zeros
        h0, c0 = hx if lstm else (hx, None)
        finals_h, finals_c, layer_input = [], [], x
        for layer in range(self.num_layers):
            outputs = []
            for direction in range(directions):
                index, suffix = layer * directions + direction, _suffix(layer, direction)
                gi = self.proj[f"ih_{suffix}"](layer_input)  # every step's input projection at once
                hidden = self.proj[f"hh_{suffix}"]
                h, c = h0[index], None if c0 is None else c0[index]
                steps = range(len(x) - 1, -1, -1) if direction else range(len(x))
                out = [None] * len(x)
                for t in steps:
                    h, c = self._step(gi[t], hidden(h), h, c)
                    out[t] = h
                outputs.append(torch.stack(out))
                finals_h.append(h)
                finals_c.append(c)
            layer_input = torch.cat(outputs, -1)
            if self.dropout and self.training and layer < self.num_layers - 1:
                layer_input = F.dropout(layer_input, self.dropout, training=True)
        state = torch.stack(finals_h)
        if lstm:
            state = (state, torch.stack(finals_c))
        if not batched:
            return layer_input.squeeze(1), tuple(s.squeeze(1) for s in state) if lstm else state.squeeze(1)
        return (layer_input.transpose(0, 1) if self.batch_first else layer_input), state

    @torch.no_grad()
    def merged(self) -> nn.RNNBase:
        """The nn.LSTM / nn.GRU / nn.RNN computing the same function, each projection's product as its weight."""
        kinds = {"LSTM": (nn.LSTM, {}), "GRU": (nn.GRU, {}), "RNN_TANH": (nn.RNN, {"nonlinearity": "tanh"}),
                 "RNN_RELU": (nn.RNN, {"nonlinearity": "relu"})}
        kind, extra = kinds[self.mode]
        reference = next(self.parameters())
        rnn = kind(self.input_size, self.hidden_size, self.num_layers, bias=self.bias, batch_first=self.batch_first,
                   dropout=self.dropout, bidirectional=self.bidirectional, device=reference.device,
                   dtype=reference.dtype, **extra)
        for key, projection in self.proj.items():
            weight, bias = projection_weight(projection)
            getattr(rnn, f"weight_{key}").copy_(weight)
            if bias is not None:
                getattr(rnn, f"bias_{key}").copy_(bias)
        rnn.requires_grad_(reference.requires_grad)
        rnn.train(self.training)
        return rnn

    def extra_repr(self) -> str:
        return (f"{self.mode}, {self.input_size}, {self.hidden_size}, num_layers={self.num_layers}, "
                f"bidirectional={self.bidirectional}, gates={GATES[self.mode]}")
