"""Low-rank tools: spectra, rank plans, the analytic cost model against fvcore, factorize/truncate, bad input."""

import functools
import re
import time

import pytest
import torch
from support import FAMILIES, ci_for_vgg16, input_shape
from torch import nn

from lorita.attention import LowRankAttention
from lorita.compose import overparameterize
from lorita.costs import plan_cost
from lorita.counting import count_flops_params
from lorita.factorize import Factorized, factorize, truncate
from lorita.ranks import POLICIES, plan_ranks
from lorita.spectra import spectra

SMALL = [f for f in FAMILIES if f != "vgg16"]  # vgg16 is the acceptance model, priced in its own tests



def _fresh(family: str) -> nn.Module:
    torch.manual_seed(0)
    return FAMILIES[family]().eval()


@functools.cache
def _shared(family: str) -> nn.Module:
    """One instance per family for tests that only read it (its spectra and fvcore base stay cached)."""
    return _fresh(family)


def _input(family: str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(input_shape(family, 1), generator=torch.Generator().manual_seed(1),
                       dtype=dtype)


def _matrix_layers(model: nn.Module) -> dict[str, nn.Module]:
    return {n: m for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))}


def _svd_truncation(weight: torch.Tensor, rank: int) -> torch.Tensor:
    u, s, vh = torch.linalg.svd(weight.detach().double().flatten(1), full_matrices=False)
    return (u[:, :rank] * s[:rank]) @ vh[:rank]


def _with_singular_values(values: list[float], out: int, fan_in: int, seed: int) -> nn.Linear:
    """A Linear(fan_in -> out) whose weight has exactly the singular values `values` (float64)."""
    g = torch.Generator().manual_seed(seed)
    left = torch.linalg.qr(torch.randn(out, len(values), generator=g, dtype=torch.float64)).Q
    right = torch.linalg.qr(torch.randn(fan_in, len(values), generator=g, dtype=torch.float64)).Q
    layer = nn.Linear(fan_in, out, dtype=torch.float64)
    with torch.no_grad():
        layer.weight.copy_(left @ torch.diag(torch.tensor(values, dtype=torch.float64)) @ right.T)
    return layer


def _known_spectra() -> nn.Sequential:
    # Normalized: "0" -> 1, .75, .5, .25; "1" -> 1, .1, .01, .001; "2" -> 1, 1.
    return nn.Sequential(_with_singular_values([4, 3, 2, 1], 4, 8, seed=0),
                         _with_singular_values([10, 1, 0.1, 0.01], 8, 4, seed=1),
                         _with_singular_values([1, 1], 2, 8, seed=2))


# ---------------------------------------------------------------- spectra


def _assert_singular_values(got: torch.Tensor, weight: torch.Tensor) -> None:
    assert got.dtype == torch.float64 and got.device.type == "cpu"
    torch.testing.assert_close(got, torch.linalg.svdvals(weight.detach().double().flatten(1)), rtol=1e-6, atol=0)


@pytest.mark.parametrize("family", SMALL)
def test_spectra_equal_svdvals(family):
    model = _shared(family)
    values = spectra(model)
    layers = _matrix_layers(model)
    assert list(values) == list(layers)
    for name, layer in layers.items():
        _assert_singular_values(values[name], layer.weight)


def test_spectra_of_grouped_conv_view_the_weight_per_group():
    model = nn.Sequential(nn.Conv2d(4, 6, 3, groups=2), nn.Conv2d(6, 6, 3, groups=6))
    values = spectra(model)
    assert [len(v) for v in values.values()] == [6, 6]  # 6 x 2*3*3 and 6 x 1*3*3
    for name, layer in _matrix_layers(model).items():
        _assert_singular_values(values[name], layer.weight)


def test_spectra_of_a_composed_model_are_those_of_the_products():
    plain = _shared("cnn")
    composed = overparameterize(plain, 3)
    values = spectra(composed)
    assert list(values) == list(_matrix_layers(plain))  # the composed layers' names, not their factors'
    for name, got in values.items():
        _assert_singular_values(got, composed.get_submodule(name).product_weight())


def test_spectra_are_cached_until_a_parameter_changes():
    model = _fresh("cnn")
    first = spectra(model)
    assert spectra(model)["0"] is first["0"]
    model.train()
    nn.functional.cross_entropy(model(_input("cnn")), torch.tensor([1, 2])).backward()
    torch.optim.SGD(model.parameters(), lr=0.5).step()
    after_step = spectra(model)
    assert not torch.equal(after_step["0"], first["0"])
    _assert_singular_values(after_step["0"], model[0].weight)
    with torch.no_grad():
        model[-1].weight.mul_(2)
    torch.testing.assert_close(spectra(model)["11"], 2 * after_step["11"], rtol=1e-12, atol=0)


# ---------------------------------------------------------------- cost model


def _mixed_plan(model: nn.Module) -> dict[str, int]:
    # Alternate a rank that splits (a quarter) with one truncated in place (three quarters) across layers.
    return {name: max(1, len(s) // 4 if index % 2 == 0 else 3 * len(s) // 4)
            for index, (name, s) in enumerate(spectra(model).items())}


@pytest.mark.parametrize("family", SMALL)
def test_analytic_cost_equals_fvcore_on_the_factorized_model(family):
    model, x = _shared(family), _input(family)
    plans = [_mixed_plan(model), plan_ranks(model, "uniform", 0.1), plan_ranks(model, "energy", 0.95)]
    kinds = set()
    for ranks in plans:
        factorized = factorize(model, ranks)
        kinds |= {type(factorized.get_submodule(name)) for name in ranks}
        assert plan_cost(model, ranks, x) == count_flops_params(factorized, x)
    assert Factorized in kinds and kinds - {Factorized}  # both the two-layer and the one-layer form priced


# ---------------------------------------------------------------- flops_drop / params_drop


@pytest.mark.parametrize("family", ci_for_vgg16(["vgg16", "resnet20_a"]))
def test_flops_drop_is_met_within_one_point_by_fvcore(family):
    model, x = _shared(family), _input(family)
    start = time.perf_counter()
    spectra(model)
    spectra_s = time.perf_counter() - start
    start = time.perf_counter()
    base, _ = count_flops_params(model, x)
    fvcore_s = time.perf_counter() - start
    plan_ranks(model, "flops_drop", 0.5, example_input=x)  # fills the fvcore base and layer shapes cache
    for target in (0.3, 0.5, 0.7):
        start = time.perf_counter()
        ranks = plan_ranks(model, "flops_drop", target, example_input=x)
        plan_s = time.perf_counter() - start
        flops, _ = count_flops_params(factorize(model, ranks), x)
        print(f"{family} flops_drop={target}: drop {1 - flops / base:.4f}, plan_ranks {plan_s * 1e3:.1f} ms cached "
              f"(spectra {spectra_s:.2f} s, one fvcore count {fvcore_s:.2f} s)")
        assert abs(1 - flops / base - target) <= 0.01


def test_params_drop_is_met_within_one_point_by_fvcore():
    model, x = _shared("resnet20_b"), _input("resnet20_b")
    _, base = count_flops_params(model, x)
    for target in (0.2, 0.6):
        _, params = count_flops_params(factorize(model, plan_ranks(model, "params_drop", target)), x)
        assert abs(1 - params / base - target) <= 0.01


def test_excluded_layers_stay_whole_and_still_count():
    model, x = _shared("resnet20_a"), _input("resnet20_a")
    ranks = plan_ranks(model, "flops_drop", 0.4, example_input=x, exclude=["conv1", "layer1.*"])
    assert set(ranks) == {n for n in _matrix_layers(model) if n != "conv1" and not n.startswith("layer1.")}
    base, _ = count_flops_params(model, x)
    flops, _ = count_flops_params(factorize(model, ranks), x)
    assert abs(1 - flops / base - 0.4) <= 0.01


def _single_linear() -> nn.Module:
    # 4x4 without bias: rank 1 costs 8 multiply-adds per row (drop 0.5), rank >= 2 stays dense (drop 0).
    return nn.Sequential(nn.Linear(4, 4, bias=False))


def test_unreachable_drop_states_the_largest_reachable_drop():
    with pytest.raises(ValueError, match=re.escape("target=0.7 for flops_drop is unreachable: the largest "
                                                   "reachable drop is 0.500")):
        plan_ranks(_single_linear(), "flops_drop", 0.7, example_input=torch.randn(3, 4))
    with pytest.raises(ValueError, match=re.escape("target=0.25 for params_drop cannot be met within 0.01: the "
                                                   "nearest reachable drops are 0.000 and 0.500")):
        plan_ranks(_single_linear(), "params_drop", 0.25)
    assert plan_ranks(_single_linear(), "params_drop", 0.495) == {"0": 1}


# ---------------------------------------------------------------- factorize / truncate


def test_full_ranks_give_the_same_function():
    model, x = _fresh("resnet20_b").double(), _input("resnet20_b", torch.float64)
    full = {name: len(s) for name, s in spectra(model).items()}
    for compressed in (factorize(model, full), truncate(model, full)):
        torch.testing.assert_close(compressed(x), model(x), rtol=1e-12, atol=1e-12)


def test_truncate_is_the_svd_truncation_and_leaves_the_rest():
    model = _fresh("cnn").double()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ranks = {"0": 2, "4": 7, "9": 3}
    truncated = truncate(model, ranks)
    assert [type(m) for m in truncated.modules()] == [type(m) for m in model.modules()]
    for name, param in truncated.named_parameters():
        layer = name.rpartition(".")[0]
        if layer in ranks and name.endswith("weight"):
            expected = _svd_truncation(model.get_submodule(layer).weight, ranks[layer])
            torch.testing.assert_close(param.detach().flatten(1), expected, rtol=1e-12, atol=1e-12)
        else:
            assert torch.equal(param, model.get_parameter(name))
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # the input is not modified


def test_factorize_computes_what_truncate_computes_and_trains():
    model, x = _fresh("resnet20_b").double(), _input("resnet20_b", torch.float64)
    # 16x144 conv: rank 3 splits (3*160 < 2304), rank 15 does not (2400); the 1x1 shortcut 32x16 at rank 4 splits.
    ranks = {"conv1": 3, "layer1.0.conv1": 15, "layer2.0.shortcut.0": 4, "linear": 2}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    factorized, truncated = factorize(model, ranks), truncate(model, ranks)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # the input is not modified
    torch.testing.assert_close(factorized(x), truncated(x), rtol=1e-10, atol=1e-10)

    pair = factorized.get_submodule("conv1")
    assert isinstance(pair, nn.Sequential)
    first, second = pair
    original = model.conv1
    assert (first.in_channels, first.out_channels, first.kernel_size, first.stride, first.padding, first.bias) == (
        3, 3, original.kernel_size, original.stride, original.padding, None)
    assert (second.in_channels, second.out_channels, second.kernel_size) == (3, 16, (1, 1))
    shortcut = factorized.get_submodule("layer2.0.shortcut.0")
    assert isinstance(shortcut, nn.Sequential) and shortcut[0].stride == (2, 2)
    linear = factorized.get_submodule("linear")
    assert [(m.in_features, m.out_features, m.bias is not None) for m in linear] == [(64, 2, False), (2, 10, True)]
    assert torch.equal(linear[1].bias, model.linear.bias)
    # Singular values split evenly: each factor carries sqrt(S).
    s = spectra(model)["linear"][:2]
    torch.testing.assert_close(torch.linalg.svdvals(linear[0].weight), s.sqrt())
    torch.testing.assert_close(torch.linalg.svdvals(linear[1].weight), s.sqrt())
    kept = factorized.get_submodule("layer1.0.conv1")
    assert type(kept) is nn.Conv2d and torch.linalg.matrix_rank(kept.weight.flatten(1)) == 15

    factorized.train()
    nn.functional.cross_entropy(factorized(x), torch.tensor([3])).backward()
    assert all(p.grad is not None for p in factorized.parameters())


@pytest.mark.parametrize(("rank", "kind"), [(1, Factorized), (2, nn.Linear)])
def test_two_layers_only_when_strictly_cheaper(rank, kind):
    # Linear 4->4: two layers cost rank*(4+4); at rank 2 that equals the dense 16, so it stays one layer.
    assert type(factorize(_single_linear(), {"0": rank})[0]) is kind


def test_factorize_keeps_dtype_and_device_and_conv_options():
    conv = nn.Conv2d(3, 8, 3, stride=2, padding=2, dilation=2, padding_mode="reflect", bias=True,
                     dtype=torch.float64)
    model = nn.Sequential(conv)
    pair = factorize(model, {"0": 2})[0]
    assert [(m.weight.dtype, m.weight.device) for m in pair] == [(torch.float64, conv.weight.device)] * 2
    first = pair[0]
    assert (first.stride, first.padding, first.dilation, first.padding_mode) == ((2, 2), (2, 2), (2, 2), "reflect")
    x = torch.randn(1, 3, 12, 12, dtype=torch.float64)
    torch.testing.assert_close(pair(x), truncate(model, {"0": 2})(x), rtol=1e-10, atol=1e-10)


# ---------------------------------------------------------------- policies on known singular values


@pytest.mark.parametrize(("policy", "target", "expected"), [
    ("uniform", 0.5, {"0": 2, "1": 2, "2": 1}),
    ("uniform", 0.3, {"0": 1, "1": 1, "2": 1}),  # floor(0.6) = 0 -> at least 1
    ("uniform", 1.0, {"0": 4, "1": 4, "2": 2}),
    ("energy", 25 / 30, {"0": 2, "1": 1, "2": 2}),  # "0": 16+9 of 30 exactly
    ("energy", 0.9, {"0": 3, "1": 1, "2": 2}),
    ("energy", 1.0, {"0": 4, "1": 4, "2": 2}),
    ("global", 0.5, {"0": 2, "1": 1, "2": 2}),  # keep 5 of 10: the four 1s and 0.75
    ("global", 0.7, {"0": 4, "1": 1, "2": 2}),  # keep 7: and 0.5, 0.25
    ("global", 1.0, {"0": 4, "1": 4, "2": 2}),
])
def test_policy_semantics_on_known_singular_values(policy, target, expected):
    assert plan_ranks(_known_spectra(), policy, target) == expected


def test_exclude_leaves_layers_out_of_the_plan_and_the_pool():
    # Without "1", the pool is 1, .75, .5, .25, 1, 1: half of it is the three 1s.
    assert plan_ranks(_known_spectra(), "global", 0.5, exclude=["1"]) == {"0": 1, "2": 2}


def test_weights_a_parent_reads_are_planned_and_split_through_the_parent():
    class WithAttention(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = nn.MultiheadAttention(8, 2)
            self.fc = nn.Linear(8, 3)

    model = WithAttention()
    assert set(plan_ranks(model, "uniform", 0.5)) == {"attn.in_proj_weight", "attn.out_proj", "fc"}
    # Replacing out_proj alone would change nothing (the attention reads its weight): the attention takes its form.
    assert isinstance(factorize(model, {"attn.out_proj": 2}).attn, LowRankAttention)


# ---------------------------------------------------------------- bad input


def test_bad_policy_and_targets():
    model, x = _known_spectra(), torch.randn(2, 8, dtype=torch.float64)
    with pytest.raises(ValueError, match=re.escape(f"policy must be one of {', '.join(POLICIES)}; got 'svd'")):
        plan_ranks(model, "svd", 0.5)
    for policy in ("uniform", "global", "energy"):
        for target in (0, -0.1, 1.01, float("nan"), True, "0.5"):
            with pytest.raises(ValueError, match=re.escape(f"target must be a number in (0, 1] for policy '{policy}'")):
                plan_ranks(model, policy, target)
    for policy in ("flops_drop", "params_drop"):
        for target in (0, 1, 1.5):
            with pytest.raises(ValueError, match=re.escape(f"target must be a number in (0, 1) for policy '{policy}'")):
                plan_ranks(model, policy, target, example_input=x)
    with pytest.raises(ValueError, match="example_input is required for policy 'flops_drop'"):
        plan_ranks(model, "flops_drop", 0.5)
    with pytest.raises(ValueError, match="exclude must be a list"):
        plan_ranks(model, "uniform", 0.5, exclude="0")


@pytest.mark.parametrize(("ranks", "message"), [
    ({"nope": 1}, "ranks names 'nope', which is not a layer that can be factorized"),
    ({"1": 1}, "ranks names '1', which is not a layer"),  # a BatchNorm
    ({"2": 1}, "ranks names '2', which is not a layer"),  # a grouped conv
    ({"0": 0}, re.escape("ranks['0'] must be an int in [1, 4]; got 0")),
    ({"0": 5}, re.escape("ranks['0'] must be an int in [1, 4]; got 5")),
    ({"0": 2.0}, re.escape("ranks['0'] must be an int in [1, 4]; got 2.0")),
    ({"0": True}, re.escape("ranks['0'] must be an int in [1, 4]; got True")),
    ([("0", 1)], "ranks must be a mapping"),
])
def test_bad_ranks(ranks, message):
    model = nn.Sequential(nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 4, 3, groups=2))
    for tool in (factorize, truncate, lambda m, r: plan_cost(m, r, torch.randn(1, 2, 8, 8))):
        with pytest.raises(ValueError, match=message):
            tool(model, ranks)


def test_composed_models_must_be_collapsed_first():
    composed = overparameterize(_shared("cnn"), 2)
    message = re.escape("model is still composed: call lorita.collapse(model) first")
    with pytest.raises(ValueError, match=message):
        plan_ranks(composed, "uniform", 0.5)
    for tool in (factorize, truncate):
        with pytest.raises(ValueError, match=message):
            tool(composed, {"0": 1})
