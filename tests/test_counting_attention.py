"""fvcore counts of nn.MultiheadAttention: fast path, slow path and the models built on it, against hand formulas."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch
from torch import nn
from torchvision.models import VisionTransformer

from lorita.counting import count_flops_params

BATCH, LENGTH, EMBED, HEADS = 2, 5, 16, 2


def _attention_macs(batch: int, length: int, embed: int, heads: int) -> int:
    """Self-attention multiply-adds as fvcore counts a linear layer; softmax, scaling and masks are not counted."""
    head_dim = embed // heads
    in_proj = length * embed * 3 * embed
    scores = heads * length * length * head_dim  # Q·Kᵀ
    mix = heads * length * length * head_dim  # attn·V
    out_proj = length * embed * embed
    return batch * (in_proj + scores + mix + out_proj)


def _layer_norm_macs(tokens: int, width: int) -> int:
    # fvcore's norm handle: 5 per element with an affine weight and bias (it counts norms though not other elementwise).
    return 5 * tokens * width


class SelfAttention(nn.Module):
    """nn.MultiheadAttention called on one tensor, the way encoder layers call it; returns the output only."""

    def __init__(self, need_weights: bool, mask: torch.Tensor | None = None) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.attn = nn.MultiheadAttention(EMBED, HEADS, batch_first=True)
        self.need_weights = need_weights
        self.mask = mask

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attn(x, x, x, need_weights=self.need_weights, attn_mask=self.mask)[0]


@contextmanager
def _native_calls(monkeypatch: pytest.MonkeyPatch, fast: bool) -> Iterator[list[int]]:
    """Force MHA's fast path on or off and record each call of the fused op, to prove which path was counted."""
    calls: list[int] = []
    native = torch._native_multi_head_attention

    def spy(*args, **kwargs):
        calls.append(1)
        return native(*args, **kwargs)

    was_enabled = torch.backends.mha.get_fastpath_enabled()
    monkeypatch.setattr(torch, "_native_multi_head_attention", spy)
    torch.backends.mha.set_fastpath_enabled(fast)
    try:
        yield calls
    finally:
        torch.backends.mha.set_fastpath_enabled(was_enabled)


def _count(model: nn.Module, x: torch.Tensor, monkeypatch: pytest.MonkeyPatch, fast: bool) -> int:
    with _native_calls(monkeypatch, fast) as calls:
        flops, _ = count_flops_params(model, x)
    assert bool(calls) == fast, "the path under test was not the one taken"
    return flops


def test_fast_path_matches_hand_formula(monkeypatch):
    # Eval mode, no grad: the fused aten::_native_multi_head_attention, which fvcore alone counts as 0.
    x = torch.randn(BATCH, LENGTH, EMBED)
    expected = _attention_macs(BATCH, LENGTH, EMBED, HEADS)
    assert expected == 2 * (5 * 16 * 48 + 2 * 5 * 5 * 8 + 2 * 5 * 5 * 8 + 5 * 16 * 16) == 11840
    assert _count(SelfAttention(need_weights=False).eval(), x, monkeypatch, fast=True) == expected


@pytest.mark.parametrize("need_weights", [False, True], ids=["sdpa", "bmm"])
@pytest.mark.parametrize("causal", [False, True], ids=["nomask", "mask"])
def test_slow_path_matches_fast_path(monkeypatch, need_weights, causal):
    # The slow path emits linear + scaled_dot_product_attention, or linear + bmm (baddbmm with a mask) when the
    # weights are asked for; a model left in training mode is counted in eval mode, so its path is the fast one.
    x = torch.randn(BATCH, LENGTH, EMBED)
    mask = torch.ones(LENGTH, LENGTH, dtype=torch.bool).triu(1) if causal else None
    model = SelfAttention(need_weights, mask)
    fast = _count(model.train(), x, monkeypatch, fast=True)
    assert model.training, "counting must restore the training flag"
    slow = _count(model, x, monkeypatch, fast=False)
    assert fast == slow == _attention_macs(BATCH, LENGTH, EMBED, HEADS)


def test_torchvision_vit_matches_hand_formula():
    torch.manual_seed(0)
    image, patch, layers, hidden, mlp, classes = 32, 8, 2, 16, 32, 10
    model = VisionTransformer(image_size=image, patch_size=patch, num_layers=layers, num_heads=HEADS,
                              hidden_dim=hidden, mlp_dim=mlp, num_classes=classes)
    patches = (image // patch) ** 2
    tokens = patches + 1  # the class token
    patch_conv = patches * 3 * patch * patch * hidden
    per_layer = (_layer_norm_macs(tokens, hidden) + _attention_macs(1, tokens, hidden, HEADS)
                 + _layer_norm_macs(tokens, hidden) + tokens * (hidden * mlp + mlp * hidden))
    final_norm = _layer_norm_macs(tokens, hidden)  # torchvision normalizes every token, then takes the class token
    head = hidden * classes
    expected = patch_conv + layers * per_layer + final_norm + head
    assert _attention_macs(1, tokens, hidden, HEADS) == 26656
    assert expected == 144240
    flops, params = count_flops_params(model, torch.randn(1, 3, image, image))
    assert flops != 90928, "attention counted as 0 again"
    assert flops == expected
    assert params == sum(p.numel() for p in model.parameters())


def test_transformer_encoder_layer_matches_hand_formula():
    torch.manual_seed(0)
    feedforward = 32
    layer = nn.TransformerEncoderLayer(EMBED, HEADS, feedforward, batch_first=True).eval()
    x = torch.randn(BATCH, LENGTH, EMBED)
    tokens = BATCH * LENGTH
    expected = (_attention_macs(BATCH, LENGTH, EMBED, HEADS) + tokens * (EMBED * feedforward + feedforward * EMBED)
                + 2 * _layer_norm_macs(tokens, EMBED))
    assert expected == 11840 + 10240 + 1600
    assert count_flops_params(layer, x)[0] == expected
