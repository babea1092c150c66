"""baselines: registry, budget-exact structured pruning, regularizers, structure round trip and errors."""

from __future__ import annotations

import functools
import json
import re
import time

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import baselines
from benchmarks.models import PadShortcut, create_model
from lorita.counting import count_flops_params

PRUNING = list(baselines.METHODS)
TARGETS = (0.3, 0.5, 0.7)
CIFAR = (3, 32, 32)
VIT = {"dim": 48, "depth": 2, "heads": 3, "mlp_dim": 96}



def _inputs(shape=CIFAR, batch=2, seed=0) -> torch.Tensor:
    return torch.randn(batch, *shape, generator=torch.Generator().manual_seed(seed))


def _batches(shape=CIFAR, count=2) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(1)
    return [(torch.randn(2, *shape, generator=gen), torch.randint(0, 10, (2,), generator=gen)) for _ in range(count)]


@functools.cache
def _model(name: str, shape=CIFAR, **kw) -> nn.Module:
    # Shared between tests: prune() must never modify its input (checked below).
    torch.manual_seed(0)
    return create_model(name, 10, shape, **kw)


def _drop(pruned: nn.Module, base: nn.Module, x: torch.Tensor, metric: str = "flops") -> float:
    index = 0 if metric == "flops" else 1
    return 1.0 - count_flops_params(pruned, x)[index] / count_flops_params(base, x)[index]


def _check(name: str, method: str, target: float, metric: str = "flops", **options) -> nn.Module:
    base, x = _model(name), _inputs()
    pruned = baselines.prune(base, method, target, metric=metric, example_input=x, train_batches=_batches(),
                             **options)
    assert abs(_drop(pruned, base, x, metric) - target) <= 0.01, (name, method, target, metric)
    pruned.eval()
    with torch.no_grad():
        assert pruned(x).shape == (2, 10)
    return pruned


def _kept_rows(base: nn.Module, pruned: nn.Module, layer: str) -> set[int]:
    """Original indices of the output channels of `layer` that survived (its inputs must be unpruned)."""
    original = base.get_submodule(layer).weight.detach().flatten(1)
    survived = pruned.get_submodule(layer).weight.detach().flatten(1)
    assert survived.shape[1] == original.shape[1]
    matches = (survived[:, None, :] == original[None, :, :]).all(-1)
    assert bool(matches.any(1).all())
    return {int(i) for i in matches.float().argmax(1)}


# ---------------------------------------------------------------- registry


def test_registry_lists_every_method_with_its_needs():
    assert set(PRUNING) == {"l1", "l2", "group_norm", "slim", "group_sl", "taylor", "hessian", "lamp", "fpgm",
                            "random"}
    assert "svd" not in baselines.METHODS  # benchmarks registers it as a low-rank method
    assert {n for n, s in baselines.METHODS.items() if s.regularized_training} == {"slim", "group_sl"}
    assert {n for n, s in baselines.METHODS.items() if s.needs_data} == {"taylor", "hessian"}
    assert baselines.METHODS["slim"].default_reg == 1e-5 and baselines.METHODS["group_sl"].default_reg == 5e-4
    for spec in baselines.METHODS.values():
        assert all(text and "\n" not in text for text in (spec.description, spec.label, spec.citation)), spec.name
    assert baselines.METHODS["l1"].label == "L1 norm" and baselines.METHODS["l1"].citation == "Li et al., ICLR 2017"
    # Each criterion is its own torch-pruning configuration.
    configs = {name: type(spec.importance(0)).__name__ for name, spec in baselines.METHODS.items()}
    assert configs["slim"] == "BNScaleImportance" and configs["taylor"] == "TaylorImportance"
    assert configs["hessian"] == "HessianImportance" and configs["lamp"] == "LAMPImportance"
    assert configs["random"] == "SeededRandomImportance"
    l1, l2, group, group_sl = (baselines.get_method(name).importance(0) for name in ("l1", "l2", "group_norm",
                                                                                       "group_sl"))
    assert (l1.p, l1.group_reduction, l1.normalizer) == (1, "first", None)
    assert (l2.p, l2.group_reduction, l2.normalizer) == (2, "first", None)
    assert (group.p, group.group_reduction, group_sl.normalizer) == (2, "mean", "max")
    pruners = {name: spec.pruner.__name__ for name, spec in baselines.METHODS.items()}
    assert pruners["slim"] == "BNScalePruner" and pruners["group_norm"] == pruners["group_sl"] == "GroupNormPruner"
    assert {n for n, s in baselines.METHODS.items() if s.batchnorm_scales} == {"slim"}


# ---------------------------------------------------------------- budgets


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("method", PRUNING)
def test_every_method_hits_flops_targets_on_resnet20(method, target):
    _check("resnet20", method, target)


SUBSET = [("vgg16", "l1", 0.7), ("vgg16", "group_norm", 0.3), ("vgg16", "slim", 0.5), ("vgg16", "taylor", 0.7),
          ("vgg16", "lamp", 0.5), ("resnet56", "l2", 0.5), ("resnet56", "group_sl", 0.7),
          ("resnet56", "hessian", 0.3), ("resnet56", "fpgm", 0.5), ("resnet56", "random", 0.7)]


@pytest.mark.parametrize(("name", "method", "target"), SUBSET)
def test_methods_hit_flops_targets_on_vgg16_and_resnet56(name, method, target):
    _check(name, method, target)


@pytest.mark.parametrize("method", ["l1", "taylor"])
def test_params_targets(method):
    for target in TARGETS:
        _check("resnet20", method, target, metric="params")


@pytest.mark.parametrize("scope", ["global", "uniform"])
def test_scopes_hit_targets(scope):
    _check("vgg16", "l2", 0.5, scope=scope)


@pytest.mark.slow
def test_full_grid():
    """Every method x {vgg16, resnet20, resnet56} x {0.3, 0.5, 0.7} FLOPs drop, and params drop on resnet20."""
    start = time.perf_counter()
    for name in ("vgg16", "resnet20", "resnet56"):
        for method in PRUNING:
            for target in TARGETS:
                _check(name, method, target)
    for method in PRUNING:
        for target in TARGETS:
            _check("resnet20", method, target, metric="params")
    print(f"full grid: {time.perf_counter() - start:.1f} s")


@pytest.mark.parametrize(("name", "shape", "kw"), [
    ("fcn", (1, 8, 8), {}),
    ("cnn", (1, 8, 8), {}),
    ("vit", CIFAR, VIT),
    ("tv:resnet18", CIFAR, {}),
])
@pytest.mark.parametrize("method", ["l1", "group_norm", "taylor"])
def test_other_architectures_prune_and_run(name, shape, kw, method):
    base, x = _model(name, shape, **kw), _inputs(shape)
    pruned = baselines.prune(base, method, 0.5, example_input=x, train_batches=_batches(shape))
    assert abs(_drop(pruned, base, x) - 0.5) <= 0.01
    pruned.eval()
    with torch.no_grad():
        assert pruned(x).shape == (2, 10)


def test_vit_keeps_its_residual_stream_and_can_drop_whole_heads():
    base, x = _model("vit", **VIT), _inputs()
    dims = baselines.prune(base, "group_norm", 0.5, example_input=x)
    heads = baselines.prune(base, "group_norm", 0.5, example_input=x, prune_heads=True)
    for pruned in (dims, heads):
        assert pruned.patch_embed.out_channels == 48 and pruned.head.in_features == 48
        assert pruned.cls_token.shape[-1] == pruned.pos_embed.shape[-1] == 48
        for block in pruned.blocks:
            assert block.attn.proj.out_features == block.mlp.fc2.out_features == 48
            assert block.attn.qkv.out_features % (3 * block.attn.num_heads) == 0
    assert [b.attn.num_heads for b in dims.blocks] == [3, 3]
    assert sum(b.attn.num_heads for b in heads.blocks) < 6
    assert sum(b.attn.qkv.out_features for b in dims.blocks) < 2 * 144
    assert abs(_drop(heads, base, x) - 0.5) <= 0.01


def test_progressive_rounds_measure_against_the_original():
    base, x = _model("resnet20"), _inputs()
    reference = count_flops_params(base, x)
    half = baselines.prune(base, "group_norm", 0.35, example_input=x, reference=reference)
    full = baselines.prune(half, "group_norm", 0.7, example_input=x, reference=reference)
    assert abs(_drop(half, base, x) - 0.35) <= 0.01 and abs(_drop(full, base, x) - 0.7) <= 0.01
    assert baselines.progressive_targets(0.7, 2) == [0.35, 0.7]
    stepped = baselines.prune(base, "l1", 0.6, example_input=x, steps=3)
    assert abs(_drop(stepped, base, x) - 0.6) <= 0.01
    # Already within a point of the target: returned unchanged (a copy).
    same = baselines.prune(full, "group_norm", 0.7, example_input=x, reference=reference)
    assert same is not full and count_flops_params(same, x) == count_flops_params(full, x)
    with pytest.raises(ValueError, match="already exceeded"):
        baselines.prune(full, "group_norm", 0.5, example_input=x, reference=reference)


def test_prune_never_modifies_its_input():
    base, x = _model("resnet20"), _inputs()
    before = {k: v.clone() for k, v in base.state_dict().items()}
    baselines.prune(base, "taylor", 0.5, example_input=x, train_batches=_batches())
    after = base.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for p in base.parameters())


# ---------------------------------------------------------------- what is pruned


@pytest.mark.parametrize(("name", "shape", "kw", "expected"), [
    ("vgg16", CIFAR, {}, "classifier"),
    ("resnet20", CIFAR, {}, "linear"),
    ("vit", CIFAR, VIT, "head"),
    ("fcn", (1, 8, 8), {}, "10"),
    ("cnn", (1, 8, 8), {}, "9"),
    ("tv:resnet18", CIFAR, {}, "fc"),
])
def test_classifier_is_found_and_never_loses_outputs(name, shape, kw, expected):
    base, x = _model(name, shape, **kw), _inputs(shape)
    assert baselines.classifier_name(base) == expected
    assert baselines.classifier_name(base, x) == expected
    pruned = baselines.prune(base, "random", 0.7, example_input=x)
    assert pruned.get_submodule(expected).out_features == 10
    assert pruned.get_submodule(expected).in_features <= base.get_submodule(expected).in_features


def test_zero_padding_resnet_prunes_only_inside_its_blocks():
    base, x = _model("resnet20"), _inputs()
    pruned = baselines.prune(base, "group_norm", 0.7, example_input=x)
    assert pruned.conv1.out_channels == 16
    for stage, width in ((pruned.layer1, 16), (pruned.layer2, 32), (pruned.layer3, 64)):
        for block in stage:
            assert isinstance(block.shortcut, (PadShortcut, nn.Sequential))
            assert block.conv2.out_channels == width and block.bn2.num_features == width
            assert block.conv1.out_channels == block.conv2.in_channels <= width
    assert sum(b.conv1.out_channels for s in (pruned.layer1, pruned.layer2, pruned.layer3) for b in s) < 336


def test_projection_resnet_prunes_the_residual_stream_too():
    torch.manual_seed(0)
    base, x = create_model("resnet20", 10, CIFAR, shortcut="B"), _inputs()
    pruned = baselines.prune(base, "group_norm", 0.6, example_input=x)
    assert abs(_drop(pruned, base, x) - 0.6) <= 0.01
    assert pruned.conv1.out_channels < 16 or pruned.layer3[0].conv2.out_channels < 64


def test_methods_choose_different_channels():
    base, x = _model("vgg16"), _inputs()
    kept = {
        method: _kept_rows(base, baselines.prune(base, method, 0.5, example_input=x, scope="uniform", seed=seed),
                           "features.0")
        for method, seed in (("l1", 0), ("l2", 0), ("group_norm", 0), ("random", 0))
    }
    assert len({frozenset(v) for v in (kept["l1"], kept["group_norm"], kept["random"])}) == 3
    # l1 / l2 keep exactly the filters of largest L1 / L2 norm of the layer itself (Li et al.).
    weight = base.features[0].weight.detach().flatten(1)
    for method, norms in (("l1", weight.abs().sum(1)), ("l2", weight.pow(2).sum(1))):
        top = set(torch.argsort(norms, descending=True)[: len(kept[method])].tolist())
        assert kept[method] == top
    # random is seeded: the same seed repeats, another seed differs.
    again = baselines.prune(base, "random", 0.5, example_input=x, scope="uniform", seed=0)
    other = baselines.prune(base, "random", 0.5, example_input=x, scope="uniform", seed=1)
    assert _kept_rows(base, again, "features.0") == kept["random"]
    assert _kept_rows(base, other, "features.0") != kept["random"]


def test_ignored_layers_are_kept_whole():
    base, x = _model("vgg16"), _inputs()
    pruned = baselines.prune(base, "l1", 0.5, example_input=x, ignored_layers=["features.0", "features.1?"])
    assert pruned.features[0].out_channels == 64
    assert pruned.features[10].out_channels == 128 and pruned.features[14].out_channels == 256
    assert abs(_drop(pruned, base, x) - 0.5) <= 0.01
    with pytest.raises(ValueError, match="matches no module"):
        baselines.prune(base, "l1", 0.5, example_input=x, ignored_layers=["nope"])


def test_structure_round_trip_rebuilds_the_pruned_model():
    for name, kw, options in (("resnet20", {}, {}), ("vit", VIT, {"prune_heads": True})):
        base, x = _model(name, **kw), _inputs()
        pruned = baselines.prune(base, "group_norm", 0.5, example_input=x, **options).eval()
        structure = json.loads(json.dumps(baselines.pruned_structure(pruned)))
        torch.manual_seed(1)
        rebuilt = baselines.apply_structure(create_model(name, 10, CIFAR, **kw), structure)
        rebuilt.load_state_dict(pruned.state_dict())
        rebuilt.eval()
        with torch.no_grad():
            assert torch.allclose(rebuilt(x), pruned(x))


# ---------------------------------------------------------------- regularizers


def _grads_after_backward(model: nn.Module) -> dict[str, torch.Tensor]:
    x, y = _batches()[0]
    model.zero_grad()
    F.cross_entropy(model(x), y).backward()
    return {name: p.grad.clone() for name, p in model.named_parameters()}


def test_slim_regularizer_adds_l1_subgradient_to_prunable_batchnorm_scales():
    torch.manual_seed(0)
    model, x = create_model("resnet20", 10, CIFAR), _inputs()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(-1, 1)
    regularizer = baselines.sparsity_regularizer(model, "slim", example_input=x, reg=0.01)
    before = _grads_after_backward(model)
    regularizer()
    params = dict(model.named_parameters())
    for name, grad in before.items():
        delta = params[name].grad - grad
        if re.fullmatch(r"layer\d\.\d\.bn1\.weight", name):
            assert torch.allclose(delta, 0.01 * torch.sign(params[name].detach()))
        else:  # convs, biases, the classifier and the residual stream's BatchNorms
            assert torch.equal(delta, torch.zeros_like(delta)), name


def test_group_sl_regularizer_shrinks_whole_prunable_groups():
    torch.manual_seed(0)
    model, x = create_model("resnet20", 10, CIFAR), _inputs()
    regularizer = baselines.sparsity_regularizer(model, "group_sl", example_input=x, reg=0.01)
    before = _grads_after_backward(model)
    regularizer()
    params = dict(model.named_parameters())
    changed = set()
    for name, grad in before.items():
        delta = params[name].grad - grad
        if not torch.equal(delta, torch.zeros_like(delta)):
            changed.add(name)
            weight = params[name].detach()
            # reg * gamma * w with gamma in [1, 2**4]: pulls every weight of the group towards zero.
            ratio = delta[weight.abs() > 1e-2] / weight[weight.abs() > 1e-2]
            assert 0.01 * (1 - 1e-4) <= ratio.min() and ratio.max() <= 0.16 * (1 + 1e-4), name
    prunable = {f"layer{s}.{b}.{p}.weight" for s in (1, 2, 3) for b in range(3) for p in ("conv1", "bn1", "conv2")}
    assert changed == prunable


def test_regularizers_only_for_regularized_methods():
    model, x = _model("resnet20"), _inputs()
    assert all(baselines.sparsity_regularizer(model, m, example_input=x) is None
               for m in baselines.METHODS if not baselines.METHODS[m].regularized_training)
    assert baselines.sparsity_regularizer(model, "slim", example_input=x).reg == 1e-5
    assert baselines.sparsity_regularizer(model, "group_sl", example_input=x).reg == 5e-4
    with pytest.raises(ValueError, match="reg must be a positive"):
        baselines.sparsity_regularizer(model, "slim", example_input=x, reg=0)
    with pytest.raises(ValueError, match="BatchNorm"):
        baselines.sparsity_regularizer(_model("vit", **VIT), "slim", example_input=x)


# ---------------------------------------------------------------- errors


def test_unknown_method_lists_the_registry():
    for call in (lambda: baselines.prune(_model("resnet20"), "l3", 0.5, example_input=_inputs()),
                 lambda: baselines.sparsity_regularizer(_model("resnet20"), "l3", example_input=_inputs())):
        with pytest.raises(ValueError, match="unknown method 'l3'") as err:
            call()
        assert all(name in str(err.value) for name in baselines.METHODS)


@pytest.mark.parametrize("target", [0, 1, 1.0, -0.2, 1.5, True, "0.5"])
def test_target_outside_unit_interval(target):
    with pytest.raises(ValueError, match=r"target must be a fraction in \(0, 1\)"):
        baselines.prune(_model("resnet20"), "l1", target, example_input=_inputs())


def test_unreachable_target_states_the_largest_reachable_drop():
    base, x = _model("resnet20"), _inputs()
    pattern = r"target=0\.99 for flops_drop is unreachable: the largest reachable drop is (0\.\d{3})"
    with pytest.raises(ValueError, match=pattern) as err:
        baselines.prune(base, "l1", 0.99, example_input=x)
    largest = float(re.search(pattern, str(err.value)).group(1))
    assert 0.75 < largest < 0.99
    reachable = baselines.prune(base, "l1", largest - 0.01, example_input=x)
    assert abs(_drop(reachable, base, x) - (largest - 0.01)) <= 0.01
    with pytest.raises(ValueError, match="largest reachable drop is 0.000"):
        baselines.prune(_model("vit", **VIT), "slim", 0.5, example_input=x)


def test_svd_is_not_a_pruning_method():
    with pytest.raises(ValueError, match="unknown method 'svd'"):
        baselines.prune(_model("resnet20"), "svd", 0.5, example_input=_inputs())


@pytest.mark.parametrize("method", ["taylor", "hessian"])
def test_data_driven_criteria_need_train_batches(method):
    with pytest.raises(ValueError, match=f"method '{method}' needs train_batches"):
        baselines.prune(_model("resnet20"), method, 0.5, example_input=_inputs())
    with pytest.raises(ValueError, match="yielded no batch"):
        baselines.prune(_model("resnet20"), method, 0.5, example_input=_inputs(), train_batches=[])


class _HiddenPadBlock(nn.Module):
    """A zero-padding residual block whose shortcut is not called `shortcut`: the rule cannot see it."""

    def __init__(self, planes_in: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(planes_in, planes, 3, stride, 1, bias=False)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.skip = PadShortcut(planes // 4) if stride != 1 else nn.Identity()

    def forward(self, x):
        return F.relu(self.conv2(F.relu(self.conv1(x))) + self.skip(x))


class _HiddenPadNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, 1, 1)
        self.block1 = _HiddenPadBlock(16, 16, 1)
        self.block2 = _HiddenPadBlock(16, 32, 2)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        return self.fc(F.adaptive_avg_pool2d(self.block2(self.block1(self.stem(x))), 1).flatten(1))


class _Broken(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.fc = nn.Linear(7, 10)

    def forward(self, x):
        return self.fc(self.conv(x).flatten(1))


def test_models_torch_pruning_cannot_handle_fail_naming_the_layer():
    x = _inputs()
    # The fixed zero-padding ties block2's output width to the stem's: torch-pruning's index mapping breaks...
    with pytest.raises(baselines.PruningError, match=r"fails to score the channels of layer block2\.conv2 \(Conv2d\)"):
        baselines.prune(_HiddenPadNet(), "l1", 0.5, example_input=x)
    # ... or (random scores touch no weights) the pruned model fails at forward.
    with pytest.raises(baselines.PruningError, match=r"fails at forward in layer block2 \(_HiddenPadBlock\)"):
        baselines.prune(_HiddenPadNet(), "random", 0.5, example_input=x)
    with pytest.raises(baselines.PruningError, match=r"torch-pruning cannot trace _Broken: .*layer fc \(Linear\)"):
        baselines.prune(_Broken(), "l1", 0.5, example_input=x)
    # Keeping the layers that feed the padded residual whole makes it prunable.
    pruned = baselines.prune(_HiddenPadNet(), "l1", 0.3, example_input=x,
                             ignored_layers=["stem", "block*.conv2"])
    assert pruned.stem.out_channels == 16
