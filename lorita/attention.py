"""Self-attention whose projections are modules (factorize's form of nn.MultiheadAttention), and the encoder layer
that calls it.

nn.MultiheadAttention hands its packed in_proj_weight and out_proj.weight to one fused op, and
nn.TransformerEncoderLayer's eval fast path hands those and its linear1/linear2 weights to another; a projection that
is two thin matrix products fits neither. LowRankAttention computes q, k, v = in_proj(x) (a Linear, or factorize's
thin pair, E -> 3E), F.scaled_dot_product_attention over the heads, then out_proj.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lorita.matrices import projection_weight


def _additive(mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    # nn.MultiheadAttention's masks: True (or -inf) where attention is not allowed.
    if mask is None or mask.dtype != torch.bool:
        return mask
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(mask, float("-inf"))


class LowRankAttention(nn.Module):
    """nn.MultiheadAttention's self-attention (query is key is value) with `in_proj` and `out_proj` as modules."""

    def __init__(self, mha: nn.MultiheadAttention, in_proj: nn.Module, out_proj: nn.Module) -> None:
        super().__init__()
        self.embed_dim, self.num_heads, self.dropout = mha.embed_dim, mha.num_heads, mha.dropout
        self.batch_first = mha.batch_first  # nn.TransformerEncoder reads it
        self.in_proj, self.out_proj = in_proj, out_proj
        self.train(mha.training)

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                key_padding_mask: torch.Tensor | None = None, need_weights: bool = True,
                attn_mask: torch.Tensor | None = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[torch.Tensor, None]:
        if not (query is key and key is value):
            raise ValueError("LowRankAttention computes self-attention: query, key and value must be one tensor")
        if need_weights:
            raise ValueError("LowRankAttention returns no attention weights: call it with need_weights=False")
        if query.dim() != 3:
            raise ValueError(f"LowRankAttention takes batched input (3 dimensions); got shape {tuple(query.shape)}")
        x = query if self.batch_first else query.transpose(0, 1)
        batch, length, _ = x.shape
        heads = self.num_heads
        q, k, v = self.in_proj(x).view(batch, length, 3, heads, -1).permute(2, 0, 3, 1, 4)
        mask = _additive(attn_mask, x.dtype)
        if mask is not None and mask.dim() == 3:  # (batch * heads, L, S), as nn.MultiheadAttention takes it
            mask = mask.view(batch, heads, length, length)
        padding = _additive(key_padding_mask, x.dtype)
        if padding is not None:
            padding = padding.view(batch, 1, 1, length)
            mask = padding if mask is None else mask + padding
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0,
                                             is_causal=is_causal and mask is None)
        out = self.out_proj(out.transpose(1, 2).reshape(batch, length, self.embed_dim))
        return (out if self.batch_first else out.transpose(0, 1)), None

    @torch.no_grad()
    def merged(self) -> nn.MultiheadAttention:
        """The nn.MultiheadAttention computing the same function, each projection's product as its weight."""
        in_weight, in_bias = projection_weight(self.in_proj)
        out_weight, out_bias = projection_weight(self.out_proj)
        mha = nn.MultiheadAttention(self.embed_dim, self.num_heads, dropout=self.dropout, bias=in_bias is not None,
                                    batch_first=self.batch_first, device=in_weight.device, dtype=in_weight.dtype)
        mha.in_proj_weight.copy_(in_weight)
        mha.out_proj.weight.copy_(out_weight)
        if in_bias is not None:
            mha.in_proj_bias.copy_(in_bias)
            mha.out_proj.bias.copy_(out_bias)
        mha.requires_grad_(next(self.parameters()).requires_grad)
        mha.train(self.training)
        return mha

    def extra_repr(self) -> str:
        return f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, batch_first={self.batch_first}"


class LowRankEncoderLayer(nn.TransformerEncoderLayer):
    """nn.TransformerEncoderLayer without its fused eval path, which reads linear1, linear2 and self_attn's packed
    weights itself: every mode runs PyTorch's own composition of self_attn, linear1 and linear2 as modules."""

    def forward(self, src: torch.Tensor, src_mask: torch.Tensor | None = None,
                src_key_padding_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        x = src
        if self.norm_first:
            x = x + self._sa_block(self.norm1(x), src_mask, src_key_padding_mask, is_causal=is_causal)
            return x + self._ff_block(self.norm2(x))
        x = self.norm1(x + self._sa_block(x, src_mask, src_key_padding_mask, is_causal=is_causal))
        return self.norm2(x + self._ff_block(x))

    def merged(self) -> nn.TransformerEncoderLayer:
        """The layer as an nn.TransformerEncoderLayer again (its children already merged), in place."""
        self.__class__ = nn.TransformerEncoderLayer
        return self


def release_fast_paths_(model: nn.Module) -> None:
    """Make each nn.TransformerEncoderLayer of `model` holding a module its fast path cannot read a
    LowRankEncoderLayer, in place (same attributes and state; only the forward differs)."""
    for layer in model.modules():
        if type(layer) is nn.TransformerEncoderLayer and (
                isinstance(layer.self_attn, LowRankAttention)
                or not all(isinstance(getattr(layer, name), nn.Linear) for name in ("linear1", "linear2"))):
            layer.__class__ = LowRankEncoderLayer
