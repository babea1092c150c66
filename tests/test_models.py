import pytest
import torch
from torch import nn

from benchmarks.models import MODELS, ModelError, PadShortcut, create_model

DIGIT = (1, 8, 8)
CIFAR = (3, 32, 32)
SMALL_VIT = dict(dim=32, depth=2, heads=2, mlp_dim=64)


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    ("name", "shape", "kw"),
    [
        ("fcn", DIGIT, {}),
        ("cnn", DIGIT, {"hidden": 16}),
        ("vgg16", CIFAR, {}),
        ("vgg19", CIFAR, {}),
        ("resnet20", CIFAR, {}),
        ("resnet20", CIFAR, {"shortcut": "B"}),
        ("resnet56", CIFAR, {}),
        ("vit", CIFAR, SMALL_VIT),
        ("tv:resnet18", CIFAR, {}),
    ],
)
def test_output_shape(name, shape, kw):
    model = create_model(name, 7, shape, **kw).eval()
    with torch.no_grad():
        assert model(torch.randn(2, *shape)).shape == (2, 7)


def test_resnet20_parameter_count_and_shortcuts():
    model = create_model("resnet20", 10, CIFAR)
    assert _count(model) == 269_722
    first = model.layer2[0]
    assert isinstance(first.shortcut, PadShortcut) and first.shortcut.pad == 8
    assert isinstance(model.layer1[0].shortcut, nn.Sequential) and len(model.layer1[0].shortcut) == 0
    assert first.conv1.stride == (2, 2) and first.conv1.bias is None


def test_fcn_structure_and_parameter_count():
    layers, width, classes = 3, 16, 10
    model = create_model("fcn", classes, DIGIT, layers=layers, width=width)
    dims = [64] + [width] * (layers - 1) + [classes]
    # Each layer: Linear weight + bias, BatchNorm1d weight + bias.
    expected = sum(a * b + b + 2 * b for a, b in zip(dims, dims[1:], strict=False))
    assert _count(model) == expected
    assert sum(isinstance(m, nn.Linear) for m in model) == layers
    assert isinstance(model[-1], nn.BatchNorm1d) and sum(isinstance(m, nn.ReLU) for m in model) == layers - 1


def test_vgg16_has_one_linear_and_13_convs():
    model = create_model("vgg16", 10, CIFAR)
    assert [type(m) for m in model.modules()].count(nn.Conv2d) == 13
    assert [type(m) for m in model.modules()].count(nn.Linear) == 1


def test_vit_attention_follows_pruned_widths():
    model = create_model("vit", 10, CIFAR, **SMALL_VIT).eval()
    attn = model.blocks[0].attn
    # Shrink to one head of width 8, as structured head pruning would.
    attn.qkv = nn.Linear(32, 3 * 8)
    attn.proj = nn.Linear(8, 32)
    attn.num_heads = 1
    with torch.no_grad():
        assert model(torch.randn(2, *CIFAR)).shape == (2, 10)


def test_unknown_name_lists_known_names():
    with pytest.raises(ValueError, match=r"unknown model 'resnet18' \(did you mean 'tv:resnet18'\?\); known: fcn, cnn, "
                                         "vgg16") as info:
        create_model("resnet18", 10, CIFAR)
    assert all(name in str(info.value) for name in MODELS)


def test_vgg_states_minimum_input():
    with pytest.raises(ModelError, match="vgg16 needs inputs of at least 32x32, got 8x8"):
        create_model("vgg16", 10, DIGIT)


def test_unknown_option_names_allowed_ones():
    with pytest.raises(ValueError, match="fcn: unknown option 'depth'; allowed: layers, width"):
        create_model("fcn", 10, DIGIT, depth=3)


@pytest.mark.parametrize(
    ("name", "shape", "kw", "message"),
    [
        ("resnet20", (3, 4, 4), {}, "at least 8x8"),
        ("cnn", (1, 2, 2), {}, "2 pooling stages needs inputs of at least 4x4"),
        ("vit", (3, 30, 30), {}, "divisible by patch_size=4"),
        ("resnet20", CIFAR, {"shortcut": "C"}, "shortcut must be 'A' or 'B'"),
        ("tv:not_a_model", CIFAR, {}, "unknown torchvision model 'not_a_model'; e.g. alexnet"),
        ("no_such_module:factory", CIFAR, {}, "cannot load model factory"),
        ("fcn", (8, 8), {}, r"in_shape must be \(C, H, W\)"),
        ("fcn", DIGIT, {"layers": 0}, "layers must be a positive integer"),
    ],
)
def test_bad_options(name, shape, kw, message):
    with pytest.raises(ModelError, match=message):
        create_model(name, 10, shape, **kw)


def test_factory_path():
    model = create_model("benchmarks.models:cnn", 5, DIGIT, channels=(4,))
    assert model(torch.randn(2, *DIGIT)).shape == (2, 5)
