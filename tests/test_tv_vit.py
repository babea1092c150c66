"""torchvision's VisionTransformer through LoRITa: built from its own arguments (tv_vit) or a builder (tv:vit_b_16),
every weight composed, collapse exact, plans and the factorized form, fvcore counts against a hand formula, a run."""

from __future__ import annotations

import pytest
import torch
from support import TV_VIT, small_tv_vit
from test_counting_attention import _attention_macs, _layer_norm_macs
from torch import nn
from torchvision.models import VisionTransformer

import baselines
import lorita
from benchmarks.config import make_config
from benchmarks.models import ModelError, create_model
from benchmarks.run.pipeline import execute
from benchmarks.tracking import schema
from lorita.attention import LowRankAttention
from lorita.compose import composed_factors, is_composed
from lorita.costs import plan_cost
from lorita.counting import count_flops_params
from lorita.factorize import Factorized

CIFAR = (3, 32, 32)
CLASSES = 10


def _small(dtype: torch.dtype = torch.float32) -> nn.Module:
    torch.manual_seed(0)
    return small_tv_vit().to(dtype)


def _x(batch: int = 3, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.randn(batch, *CIFAR, dtype=dtype, generator=torch.Generator().manual_seed(1))


def _relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def _vit_macs(image: int, patch: int, num_layers: int, num_heads: int, hidden: int, mlp: int, classes: int) -> int:
    """fvcore's multiply-adds of one image through torchvision's ViT: the patch conv, per block attention (in_proj,
    Q·Kᵀ, attn·V, out_proj) and the MLP's two Linears, the head on the class token, and 5 per element of each
    LayerNorm (fvcore's norm handle); softmax, GELU, scaling, dropout and additions count 0."""
    patches = (image // patch) ** 2
    tokens = patches + 1  # the class token
    block = _attention_macs(1, tokens, hidden, num_heads) + tokens * 2 * hidden * mlp
    norms = (2 * num_layers + 1) * _layer_norm_macs(tokens, hidden)  # ln_1, ln_2 per block, then the encoder's ln
    return patches * 3 * patch * patch * hidden + num_layers * block + norms + hidden * classes


def _layer_rows(model: nn.Module, image: int) -> dict[str, int]:
    """Output rows (positions) of each planned layer of the ViT for one image."""
    patches = (image // model.patch_size) ** 2
    return {name: patches if name == "conv_proj" else 1 if name.startswith("heads.") else patches + 1
            for name in lorita.planned_layers(model)}


# ---------------------------------------------------------------- building


def test_tv_vit_is_torchvisions_vision_transformer_with_image_size_from_in_shape():
    model = _small()
    reference = VisionTransformer(image_size=32, num_classes=CLASSES, **TV_VIT)
    assert type(model) is VisionTransformer and model.image_size == 32
    assert {k: v.shape for k, v in model.state_dict().items()} == {k: v.shape for k, v in
                                                                   reference.state_dict().items()}
    assert model(_x(2, torch.float32)).shape == (2, CLASSES)
    # One-channel images (digits): only the patch embedding sees channels; the rest is torchvision's as built.
    gray = create_model("tv_vit", CLASSES, (1, 8, 8), **{**TV_VIT, "patch_size": 4})
    assert (gray.conv_proj.in_channels, gray.conv_proj.kernel_size, gray.seq_length) == (1, (4, 4), 5)
    assert gray(torch.randn(2, 1, 8, 8)).shape == (2, CLASSES)


@pytest.mark.parametrize(("name", "shape", "kw", "message"), [
    ("tv_vit", (3, 32, 30), {}, "tv_vit: torchvision's VisionTransformer takes square images, got 32x30"),
    ("tv_vit", (3, 30, 30), {}, "tv_vit: image side must be divisible by patch_size=4, got 30x30"),
    ("tv_vit", CIFAR, {"hidden_dim": 10, "num_heads": 3}, "tv_vit: hidden_dim must be divisible by num_heads"),
    ("tv_vit", CIFAR, {"num_layers": 0}, "tv_vit: num_layers must be a positive integer, got 0"),
    ("tv_vit", CIFAR, {"dropout": 1.0}, r"tv_vit: dropout must be a number in \[0, 1\), got 1.0"),
    ("tv_vit", CIFAR, {"representation_size": "8"}, "tv_vit: representation_size must be a positive integer"),
    ("tv_vit", CIFAR, {"image_size": 32}, "tv_vit: unknown option 'image_size'; allowed: patch_size, num_layers"),
    ("tv_vit", (32, 32), {}, r"tv_vit: in_shape must be \(C, H, W\)"),
    ("tv:vit_b_16", (3, 40, 40), {}, "tv:vit_b_16: image side must be divisible by patch_size=16, got 40x40"),
    ("tv:vit_b_16", CIFAR, {"image_size": 224}, "tv:vit_b_16: image_size is in_shape's side"),
    ("tv:vit_b_16", CIFAR, {"weights": "DEFAULT"}, r"tv:vit_b_16: weights ViT_B_16_Weights.IMAGENET1K_V1 are for "
                                                   r"224x224 images, got in_shape \(3, 32, 32\)"),
])
def test_bad_options_are_one_line_errors(name, shape, kw, message):
    with pytest.raises(ModelError, match=message) as info:
        create_model(name, CLASSES, shape, **kw)
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------- LoRITa


def _sgd_step(model: nn.Module, x: torch.Tensor) -> None:
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3)
    nn.functional.cross_entropy(model(x), torch.arange(x.shape[0]) % CLASSES).backward()
    opt.step()


def _composed_names(num_layers: int) -> set[str]:
    blocks = [f"encoder.layers.encoder_layer_{i}." for i in range(num_layers)]
    return {"conv_proj", "heads.head", *(block + name for block in blocks for name in
                                         ("self_attention.in_proj_weight", "self_attention.out_proj", "mlp.0",
                                          "mlp.3"))}


@pytest.mark.parametrize("factors", [2, 3])
def test_every_weight_is_composed_and_collapse_is_exact(factors):
    model = _small(torch.float64)
    composed = lorita.overparameterize(model, factors)
    assert set(composed_factors(composed)) == _composed_names(2)
    assert all(len(fs) == factors for fs in composed_factors(composed).values())
    x = _x()
    _sgd_step(composed, x)  # random factors, then a step: the product is neither the init nor an identity
    plain = lorita.collapse(composed)
    assert not is_composed(plain) and type(plain) is VisionTransformer
    assert set(plain.state_dict()) == set(model.state_dict())
    composed.eval()
    plain.eval()
    with torch.no_grad():
        error = _relative_error(composed(x), plain(x))
    assert error < 1e-9, error


def test_the_eval_fast_path_reads_the_composed_weights(monkeypatch):
    # nn.MultiheadAttention's fused eval op takes in_proj_weight and out_proj.weight as arguments: on a composed model
    # each access forms the product of the factors, so the fused op computes what the slow path does.
    composed = lorita.overparameterize(_small(torch.float64), 3).eval()
    calls = []
    native = torch._native_multi_head_attention

    def spy(*args, **kwargs):
        calls.append(1)
        return native(*args, **kwargs)

    monkeypatch.setattr(torch, "_native_multi_head_attention", spy)
    x = _x()
    with torch.no_grad():
        fast = composed(x)
        assert len(calls) == 2, "the fused op must run once per block"
        was = torch.backends.mha.get_fastpath_enabled()
        torch.backends.mha.set_fastpath_enabled(False)
        try:
            slow = composed(x)
        finally:
            torch.backends.mha.set_fastpath_enabled(was)
        assert len(calls) == 2
        reference = lorita.collapse(composed)(x)
    assert _relative_error(fast, slow) < 1e-12 and _relative_error(fast, reference) < 1e-9


def test_plans_name_every_matrix_and_factorize_computes_what_truncate_computes():
    model = _small(torch.float64).eval()
    names = _composed_names(2)
    assert set(lorita.spectra(model)) == names == set(lorita.planned_layers(model))
    ranks = lorita.plan_ranks(model, "uniform", 0.5)
    factorized, truncated = lorita.factorize(model, ranks).eval(), lorita.truncate(model, ranks).eval()
    attention = factorized.encoder.layers.encoder_layer_0.self_attention
    assert isinstance(attention, LowRankAttention) and isinstance(attention.in_proj, Factorized)
    assert isinstance(factorized.conv_proj, Factorized) and isinstance(factorized.heads.head, Factorized)
    x = _x()
    with torch.no_grad():
        tokens = torch.randn(2, 5, 16, dtype=torch.float64)
        out, weights = attention(tokens, tokens, tokens, need_weights=False)  # as torchvision's EncoderBlock calls it
        assert out.shape == (2, 5, 16) and weights is None
        assert _relative_error(factorized(x), truncated(x)) < 1e-9
        assert _relative_error(lorita.unfactorize(factorized)(x), truncated(x)) < 1e-9


# ---------------------------------------------------------------- FLOPs


def test_flops_equal_the_hand_formula_dense_and_factorized():
    model, x = _small().eval(), _x(1, torch.float32)
    expected = _vit_macs(32, 8, 2, 2, 16, 32, CLASSES)
    assert expected == 144240  # as tests/test_counting_attention.py counts torchvision's ViT of these sizes
    flops, params = count_flops_params(model, x)
    assert flops == expected and params == sum(p.numel() for p in model.parameters())
    assert count_flops_params(model, _x(2, torch.float32))[0] == 2 * expected
    # Factorized: each split layer costs rank * (out + fan_in) per row instead of out * fan_in.
    ranks = lorita.plan_ranks(model, "uniform", 0.25)
    rows, layers = _layer_rows(model, 32), lorita.planned_layers(model)
    saved = 0
    for name, rank in ranks.items():
        out, fan_in = layers[name].weight.flatten(1).shape
        if rank * (out + fan_in) < out * fan_in:
            saved += rows[name] * (out * fan_in - rank * (out + fan_in))
    factorized = lorita.factorize(model, ranks)
    assert saved > 0 and count_flops_params(factorized, x)[0] == expected - saved == plan_cost(model, ranks, x)[0]


def test_flops_drop_plan_is_met_within_one_point():
    model, x = _small().eval(), _x(1, torch.float32)
    base, _ = count_flops_params(model, x)
    for target in (0.3, 0.5):
        ranks = lorita.plan_ranks(model, "flops_drop", target, example_input=x)
        drop = 1 - count_flops_params(lorita.factorize(model, ranks), x)[0] / base
        assert abs(drop - target) <= 0.01, (target, drop)


# ---------------------------------------------------------------- pruning, a run


def test_pruning_applies_until_it_reaches_the_residual_stream():
    # The suite's pruning keeps a transformer's residual stream whole only for timm-style attention (a qkv Linear);
    # torchvision's nn.MultiheadAttention is not that, so a deep enough cut prunes hidden_dim, which
    # VisionTransformer.forward reshapes by: the dry run says so in one line, before any training.
    model, x = _small().eval(), _x(1, torch.float32)
    assert baselines.not_applicable(model, "l1", 0.2, example_input=x) is None
    reason = baselines.not_applicable(model, "l1", 0.5, example_input=x)
    assert reason and "\n" not in reason and "VisionTransformer.forward" in reason


def test_a_lorita_run_of_tv_vit_on_digits(store):
    cfg = make_config({"experiment": "tv-vit", "model": "tv_vit", "dataset": "digits", "method": "lorita",
                       "factors": 2, "target_metric": "flops_drop", "target": 0.3, "device": "cpu",
                       "model_kwargs": {"patch_size": 4, "num_layers": 1, "num_heads": 2, "hidden_dim": 16,
                                        "mlp_dim": 32},
                       "cache_dir": str(store / "cache"),
                       "budget": {"epochs": 2, "finetune_epochs": 1, "batch_size": 64, "lr": 0.05}})
    result = execute(cfg, latency=False)
    assert result.status == schema.STATUS_FINISHED
    assert abs(result.metrics[schema.FLOPS_DROP] - 0.3) <= 0.01
    assert result.metrics[schema.ACC_TRAINED] > 0.2  # 2 epochs of a random-init ViT on 10 classes: above chance


# ---------------------------------------------------------------- the real vit_b_16


@pytest.mark.slow  # 86 M parameters (plus 0.1 G of square factors) in float64: about a minute on two cores
def test_vit_b_16_composes_collapses_exactly_and_counts_the_hand_formula():
    torch.manual_seed(0)
    model = create_model("tv:vit_b_16", 1000, (3, 224, 224))
    assert sum(p.numel() for p in model.parameters()) == 86_567_656
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    flops, _ = count_flops_params(model, x)
    assert flops == _vit_macs(224, 16, 12, 12, 768, 3072, 1000)
    composed = lorita.overparameterize(model.double(), 2).eval()
    assert set(composed_factors(composed)) == _composed_names(12)
    with torch.no_grad():
        error = _relative_error(composed(x.double()), lorita.collapse(composed).eval()(x.double()))
    assert error < 1e-9, error
