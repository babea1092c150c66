"""The authors' greedy rank search (plan_ranks search="greedy"), rank_policy and steps for the low-rank methods."""

import re

import pytest
import torch
import torch.nn.functional as F
from support import FAMILIES
from torch import nn

import lorita
from baselines import classifier_name
from benchmarks.config import ConfigError, make_config
from benchmarks.methods import get_method, resolve
from benchmarks.methods.lowrank import compress_lowrank
from benchmarks.models import create_model
from benchmarks.run.pipeline import execute, load_model, trained_key, training_group
from benchmarks.tracking import schema
from lorita.factorize import Factorized
from lorita.ranks import DROP_TOLERANCE

LOWRANK_METHODS = ("lorita", "svd", "nuclear", "frob_decay")
# Scoring inputs per family: ResNet-20 at 8 x 8 so that its ~200 rounds of 19 forward passes take seconds.
SHAPES = {"fcn": (4, 1, 8, 8), "cnn": (4, 3, 16, 16), "resnet20_a": (1, 3, 8, 8)}


def _wide_cnn() -> nn.Module:
    # The support family's cnn at twice the width: there one rank of the first conv moves the FLOPs by 6.3 %, and the
    # threshold search misses 0.3 (and 0.5) by more than the tolerance.
    return create_model("cnn", 10, (3, 16, 16), channels=(16, 32), hidden=64)


def _batches(shape: tuple[int, ...], count: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(shape, generator=g), torch.randint(0, 10, (shape[0],), generator=g)) for _ in range(count)]


def _drop(model: nn.Module, ranks: dict[str, int], x: torch.Tensor, index: int) -> float:
    # index 0: FLOPs, 1: params, as count_flops_params counts the factorized model against the model.
    after, before = (lorita.count_flops_params(m, x)[index] for m in (lorita.factorize(model, ranks), model))
    return 1 - after / before


# ---------------------------------------------------------------- the search


@pytest.mark.parametrize("target", [0.5, 0.7])
@pytest.mark.parametrize("family", ["fcn", "cnn", "resnet20_a"])
def test_greedy_meets_the_target_within_one_point_by_fvcore(family, target):
    torch.manual_seed(0)
    model = FAMILIES[family]().eval()
    shape = SHAPES[family]
    x = torch.zeros(1, *shape[1:])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ranks = lorita.plan_ranks(model, "flops_drop", target, example_input=x, exclude=[classifier_name(model)],
                              search="greedy", batches=_batches(shape))
    assert abs(_drop(model, ranks, x, 0) - target) <= DROP_TOLERANCE
    assert set(ranks) == set(lorita.planned_layers(model, [classifier_name(model)]))
    # The cuts were tried on a copy: the caller's model is as it was.
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_greedy_meets_a_params_target_with_a_loss_of_its_own():
    torch.manual_seed(0)
    model = FAMILIES["fcn"]().eval()
    x, batches = torch.zeros(1, 1, 8, 8), _batches(SHAPES["fcn"], count=2)
    calls = []

    def loss_fn(output, target):
        calls.append(output.shape[0])
        return F.cross_entropy(output, target)

    ranks = lorita.plan_ranks(model, "params_drop", 0.6, search="greedy", batches=iter(batches), loss_fn=loss_fn,
                              exclude=[classifier_name(model)])
    assert abs(_drop(model, ranks, x, 1) - 0.6) <= DROP_TOLERANCE
    assert calls and len(calls) % len(batches) == 0  # every trial scores every batch (a generator is read once)


def _low_rank_pair(low: int) -> nn.Sequential:
    """Two hidden 16 x 16 Linears and a classifier; layer `low` has rank 5 exactly, the other full rank."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4)).double()
    with torch.no_grad():
        u, s, vh = torch.linalg.svd(model[low].weight)
        model[low].weight.copy_((u[:, :5] * s[:5]) @ vh[:5])
    return model.eval()


@pytest.mark.parametrize(("low", "full"), [(0, 2), (2, 0)])
def test_each_round_keeps_the_cut_whose_network_has_the_lowest_loss(low, full):
    # A 16 x 16 layer starts at 16 with a step of 2 and first cuts to 7, the highest rank two layers are cheaper at;
    # for the exactly rank-5 layer the cuts to 7 and to 5 cost no loss, for the other every cut does (the score is the
    # distance to the model's own outputs). Greedy must spend both rounds on the low-rank layer, wherever it sits.
    model = _low_rank_pair(low)
    x = torch.randn(32, 16, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with torch.no_grad():
        batches = [(x, model(x))]
    base = sum(p.numel() for p in model.parameters())
    target = (16 * 16 - 5 * (16 + 16)) / base  # the params saved by layer `low` at rank 5, the rest whole
    ranks = lorita.plan_ranks(model, "params_drop", target, search="greedy", batches=batches, loss_fn=F.mse_loss,
                              exclude=["4"])
    assert ranks == {str(low): 5, str(full): 16}


def test_bad_search_arguments_are_one_line_errors():
    torch.manual_seed(0)
    model, x = FAMILIES["fcn"]().eval(), torch.zeros(1, 1, 8, 8)
    batches = _batches(SHAPES["fcn"], count=2)
    cases = [
        ({"search": "random"}, "search must be one of threshold, greedy; got 'random'"),
        ({"policy": "uniform", "search": "greedy", "batches": batches},
         "search 'greedy' cuts until a drop target is met: it needs policy flops_drop or params_drop; got 'uniform'"),
        ({"search": "greedy"}, "search 'greedy' needs batches: training (input, target) batches"),
        ({"search": "greedy", "batches": []}, "search 'greedy' needs batches"),
        ({"search": "greedy", "batches": batches, "target": 0.99},
         "target=0.99 for flops_drop is unreachable: the largest reachable drop is"),
    ]
    for kwargs, message in cases:
        args = {"policy": "flops_drop", "target": 0.5, **kwargs}
        with pytest.raises(ValueError, match=re.escape(message)) as err:
            lorita.plan_ranks(model, args.pop("policy"), args.pop("target"), example_input=x, **args)
        assert "\n" not in str(err.value)
    # Linear(8, 8): 72 parameters, 16 r + 8 at rank r <= 3, so the drops reachable are 0.222, 0.444 and 0.667.
    single = nn.Sequential(nn.Linear(8, 8))
    with pytest.raises(ValueError, match=re.escape("target=0.33 for params_drop cannot be met within 0.01 by search "
                                                   "'greedy': it stopped at a drop of 0.222")):
        lorita.plan_ranks(single, "params_drop", 0.33, search="greedy",
                          batches=[(torch.randn(2, 8), torch.tensor([0, 1]))])


# ---------------------------------------------------------------- a second round plans on the product


def test_unfactorize_multiplies_the_pairs_back_and_leaves_the_rest():
    torch.manual_seed(0)
    model = FAMILIES["cnn"]().eval()
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    ranks = {name: max(1, min(layer.weight.flatten(1).shape) // 3)
             for name, layer in lorita.planned_layers(model).items()}
    factorized = lorita.factorize(model, ranks)
    assert any(isinstance(m, Factorized) for m in factorized.modules())
    merged = lorita.unfactorize(factorized)
    assert not any(isinstance(m, Factorized) for m in merged.modules())
    assert [type(m) for m in merged.modules()] == [type(m) for m in model.modules()]
    with torch.no_grad():
        torch.testing.assert_close(merged(x), lorita.truncate(model, ranks)(x), rtol=1e-4, atol=1e-5)
    # A Sequential the model had already is not a pair factorize wrote: it stays as it is.
    own = nn.Sequential(nn.Sequential(nn.Linear(4, 2, bias=False), nn.Linear(2, 4)))
    assert type(lorita.unfactorize(own)[0]) is nn.Sequential


@pytest.mark.parametrize("policy", ["threshold", "greedy"])
def test_a_second_round_meets_its_target_against_the_uncompressed_model(policy):
    torch.manual_seed(0)
    model = _wide_cnn().eval()
    x = torch.zeros(1, 3, 16, 16)
    cfg = resolve(make_config({"method": "svd", "target_metric": "flops_drop", "target": 0.6,
                               "method_options": {"rank_policy": policy, "steps": 2}}))
    kw = {"reference": lorita.count_flops_params(model, x), "example": x, "train_batches": _batches(SHAPES["cnn"]),
          "trained": model}
    first, _ = compress_lowrank(cfg, model, target=0.3, **kw)
    second, structure = compress_lowrank(cfg, first, target=0.6, **kw)
    assert abs(1 - lorita.count_flops_params(second, x)[0] / kw["reference"][0] - 0.6) <= DROP_TOLERANCE
    # The structure names the uncompressed model's layers: a fresh network rebuilds into the second round's shape.
    assert lorita.factorize(_wide_cnn(), structure["ranks"]).state_dict().keys() == second.state_dict().keys()


# ---------------------------------------------------------------- the options


def _cfg(method: str, **options):
    return resolve(make_config({"method": method, "target_metric": "flops_drop", "target": 0.5,
                                "method_options": options}))


@pytest.mark.parametrize("method", LOWRANK_METHODS)
def test_rank_policy_and_steps_are_checked_options_of_every_low_rank_method(method):
    with pytest.raises(ConfigError, match=re.escape("config: method_options.rank_policy must be one of threshold, "
                                                    "greedy; got 'best'")):
        _cfg(method, rank_policy="best")
    with pytest.raises(ConfigError, match=re.escape("config: method_options.steps must be an integer >= 1; got 0")):
        _cfg(method, steps=0)
    assert get_method(method).steps(_cfg(method, steps=3)) == 3
    assert get_method(method).steps(_cfg(method)) == 1


@pytest.mark.parametrize("method", LOWRANK_METHODS)
def test_rank_policy_and_steps_enter_the_config_hash_but_not_the_trained_model(method):
    default, greedy = _cfg(method), _cfg(method, rank_policy="greedy", steps=2)
    assert trained_key(greedy, "d") == trained_key(default, "d")
    assert training_group(greedy) == training_group(default)
    assert greedy.config_hash() != default.config_hash()


# ---------------------------------------------------------------- end to end


def test_a_lorita_run_in_two_greedy_rounds_meets_the_target(store, monkeypatch):
    planned = []
    plan_ranks = lorita.plan_ranks

    def recording(model, policy, target, **kw):
        if "search" in kw:  # compression's plans, not the trained model's accuracy-at-keep curve
            planned.append((target, kw["search"], any(isinstance(m, Factorized) for m in model.modules())))
        return plan_ranks(model, policy, target, **kw)

    monkeypatch.setattr(lorita, "plan_ranks", recording)
    cfg = make_config({"experiment": "greedy-steps", "model": "fcn", "model_kwargs": {"layers": 2, "width": 16},
                       "dataset": "digits", "method": "lorita", "factors": 2, "target_metric": "flops_drop",
                       "target": 0.5, "method_options": {"rank_policy": "greedy", "steps": 2},
                       "cache_dir": str(store / "cache"), "device": "cpu",
                       "budget": {"epochs": 2, "finetune_epochs": 2, "batch_size": 64, "lr": 0.05}})
    result = execute(cfg, latency=False)
    assert result.status == schema.STATUS_FINISHED
    assert planned == [(0.25, "greedy", False), (0.5, "greedy", False)]
    assert abs(result.metrics[schema.FLOPS_DROP] - 0.5) <= DROP_TOLERANCE
    assert result.metrics[schema.ACC_FINETUNED] > 0.5
    # The recorded structure rebuilds the second round's model from a fresh network.
    assert any(isinstance(m, Factorized) for m in load_model(result.run_id, cfg).modules())
