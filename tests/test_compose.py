"""overparameterize / collapse: exactness against the composed network, modes, structure, errors."""

import math
import warnings

import pytest
import torch
from sklearn.datasets import load_digits
from support import FAMILIES, input_shape, outputs_and_grads_by_mode, sgd_epochs
from torch import nn

from lorita import collapse, overparameterize, spectra
from lorita.compose import ComposedConv2d, ComposedLinear
from lorita.product import is_product


def _relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def _sgd_step(model: nn.Module, x: torch.Tensor) -> None:
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3)
    loss = nn.functional.cross_entropy(model(x), torch.arange(x.shape[0]) % 10)
    loss.backward()
    opt.step()


@pytest.mark.parametrize("family", FAMILIES)
def test_collapse_equals_composed_after_a_step(family):
    torch.manual_seed(0)
    model = overparameterize(FAMILIES[family]().double(), 3)
    x = torch.randn(input_shape(family, 4), dtype=torch.float64)
    _sgd_step(model, x)
    plain = collapse(model)
    assert not any(isinstance(m, (ComposedLinear, ComposedConv2d)) for m in plain.modules())
    assert type(plain) is type(model)
    model.eval()
    plain.eval()
    with torch.no_grad():
        assert _relative_error(plain(x), model(x)) < 1e-9


@pytest.mark.parametrize("family", ["fcn", "resnet20_a", "vit"])
def test_modes_give_equal_outputs_and_gradients(family):
    torch.manual_seed(0)
    model = overparameterize(FAMILIES[family]().double(), 3).eval()
    x = torch.randn(input_shape(family, 2), dtype=torch.float64)
    results = outputs_and_grads_by_mode(model, x)
    ref_out, ref_grads = results["activation"]
    for mode in ("weight", "auto"):
        out, grads = results[mode]
        assert _relative_error(out, ref_out) < 1e-10
        assert [g is None for g in grads] == [g is None for g in ref_grads]
        for g, ref in zip(grads, ref_grads, strict=True):
            if ref is not None:
                assert _relative_error(g, ref) < 1e-10


def test_authors_shapes_and_default_init():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.Flatten(), nn.Linear(8 * 4 * 4, 5))
    composed = overparameterize(model, 3)
    conv, linear = composed[0], composed[2]
    assert [tuple(f.weight.shape) for f in conv.factors] == [(8, 3, 3, 3), (8, 8, 1, 1), (8, 8, 1, 1)]
    assert [f.bias is not None for f in conv.factors] == [False, False, True]
    assert conv.factors[0].stride == (2, 2) and conv.factors[0].padding == (1, 1)
    assert [tuple(f.weight.shape) for f in linear.factors] == [(128, 128), (128, 128), (5, 128)]
    assert [f.bias is not None for f in linear.factors] == [False, False, True]
    # PyTorch's default init is kaiming-uniform with bound 1/sqrt(fan_in): each factor is drawn for its own shape.
    for factor in [*conv.factors, *linear.factors]:
        bound = 1 / math.sqrt(factor.weight[0].numel())
        assert 0.7 * bound < factor.weight.abs().max().item() <= bound
    assert composed(torch.randn(2, 3, 8, 8)).shape == (2, 5)


def test_auto_picks_the_cheaper_product_per_layer():
    linear = overparameterize(nn.Sequential(nn.Linear(64, 10)), 2)[0]
    assert linear.use_weight_product(torch.randn(128, 64))  # out=10 < rows=128
    assert not linear.use_weight_product(torch.randn(4, 64))  # rows=4 < out=10
    conv = overparameterize(nn.Sequential(nn.Conv2d(64, 64, 3, padding=1)), 2)[0]
    assert conv.use_weight_product(torch.randn(8, 64, 32, 32))  # in*k*k=576 < B*H*W=8192
    assert not conv.use_weight_product(torch.randn(1, 64, 4, 4))  # 576 > 16


def test_factors_one_keeps_the_function_and_input_is_untouched():
    torch.manual_seed(0)
    model = FAMILIES["fcn"]().eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    same = overparameterize(model, 1).eval()
    x = torch.randn(4, 1, 8, 8)
    assert torch.equal(same(x), model(x))
    overparameterize(model, 3)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_collapse_keeps_batchnorm_statistics_and_leaves_input_alone():
    torch.manual_seed(0)
    model = overparameterize(FAMILIES["fcn"](), 2)
    _sgd_step(model, torch.randn(8, 1, 8, 8))
    plain = collapse(model)
    assert isinstance(model[1], ComposedLinear)
    for name, buf in model.named_buffers():
        assert torch.equal(buf, plain.get_buffer(name))


def test_include_exclude_and_skipped_layers_warn_once():
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4), nn.Conv2d(4, 4, 3, groups=2))
    composed = overparameterize(model, 2, exclude=["1"])
    assert isinstance(composed[0], ComposedLinear) and isinstance(composed[1], nn.Linear)
    only = overparameterize(model, 2, include=["1"])
    assert isinstance(only[0], nn.Linear) and isinstance(only[1], ComposedLinear)

    class Attn(nn.Module):
        def __init__(self):
            super().__init__()
            self.mha = nn.MultiheadAttention(8, 2, batch_first=True)
            self.fc = nn.Linear(8, 8)

        def forward(self, x):
            return self.fc(self.mha(x, x, x)[0])

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = overparameterize(Attn(), 2)
        overparameterize(model, 2)
    messages = [str(w.message) for w in caught]
    # The attention's projections, which it reads itself, are composed in place (lorita.product): no warning.
    assert len(messages) == 1
    assert "groups=2" in messages[0]
    assert isinstance(out.fc, ComposedLinear) and type(out.mha.out_proj) is not ComposedLinear
    assert is_product(out.mha.out_proj, "weight") and is_product(out.mha, "in_proj_weight")
    assert out(torch.randn(2, 3, 8)).shape == (2, 3, 8)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: overparameterize(nn.Linear(2, 2), 0), "factors must be an integer >= 1"),
        (lambda: overparameterize(nn.Linear(2, 2), 2.0), "factors must be an integer >= 1"),
        (lambda: overparameterize(nn.Linear(2, 2), True), "factors must be an integer >= 1"),
        (lambda: overparameterize("net", 2), "model must be a torch.nn.Module"),
        (lambda: overparameterize(nn.Linear(2, 2), 2, mode="fast"), "mode must be one of auto, activation, weight"),
        (lambda: overparameterize(nn.Linear(2, 2), 2, exclude="fc"), "exclude must be a list"),
        (lambda: overparameterize(overparameterize(nn.Linear(2, 2), 2), 2), "collapse"),
        (lambda: overparameterize(nn.Sequential(nn.Linear(8000, 2)), 2), "layer '0'.*exclude=\\['0'\\]"),
    ],
)
def test_bad_input_is_a_clear_value_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def _trained_fcn_spectrum_count(factors: int) -> int:
    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
    y = torch.tensor(digits.target)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 128), nn.BatchNorm1d(128), nn.ReLU(), nn.Linear(128, 128),
                          nn.BatchNorm1d(128), nn.ReLU(), nn.Linear(128, 10), nn.BatchNorm1d(10))
    model = overparameterize(model, factors)
    sgd_epochs(model, x, y, lr=0.05)
    return sum(int((s > 1e-2 * s[0]).sum()) for s in spectra(model).values())


def test_composition_induces_low_rank_on_digits():
    dense, lorita = _trained_fcn_spectrum_count(1), _trained_fcn_spectrum_count(3)
    assert lorita < 0.7 * dense, (lorita, dense)
