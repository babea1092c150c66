"""Low-rank training baselines: nuclear norm and Frobenius decay, spectral init, the optimizer's exemptions."""

import pytest
import torch
from support import FAMILIES, ci_for_vgg16, input_shape
from torch import nn

import lorita
from benchmarks.config import ConfigError, make_config
from benchmarks.data import load_dataset
from benchmarks.methods import get_method, resolve
from benchmarks.models import create_model
from benchmarks.run.pipeline import execute, trained_key
from benchmarks.run.train import Phase, make_optimizer, train
from benchmarks.tracking import schema
from lorita.compose import COMPOSED
from lorita.counting import count_flops_params


def _cfg(method: str, target: float = 0.5, **options):
    return resolve(make_config({"method": method, "target_metric": "flops_drop", "target": target,
                                "method_options": options}))


def _tiny(dtype: torch.dtype = torch.float32) -> nn.Sequential:
    # A conv (5 x 18, wide), a wide Linear (7 x 20), a tall one (12 x 7) and the classifier (kept whole).
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 5, 3), nn.Flatten(), nn.Linear(20, 7), nn.Linear(7, 12),
                         nn.Linear(12, 3)).to(dtype)


def _x(dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(4, 2, 4, 4, generator=torch.Generator().manual_seed(1), dtype=dtype)


def _backward(model: nn.Module, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    nn.functional.cross_entropy(model(_x(dtype)), torch.tensor([0, 1, 2, 0])).backward()
    return {name: p.grad.clone() for name, p in model.named_parameters()}


def _added_by_hook(method: str, model: nn.Module, dtype: torch.dtype = torch.float32, **options) -> dict:
    """What the method's training hook adds to every parameter's gradient after one backward."""
    cfg = _cfg(method, **options)
    hook = get_method(method).training_hook(cfg, model, _x(dtype)[:1])
    before = _backward(model, dtype)
    hook()
    return {name: p.grad - before[name] for name, p in model.named_parameters()}


# ---------------------------------------------------------------- nuclear norm


def test_nuclear_hook_adds_reg_times_u_vt_and_nothing_to_the_classifier():
    model = _tiny()
    added = _added_by_hook("nuclear", model, reg=0.03)
    for name in ("0", "2", "3"):  # the conv, the wide and the tall Linear
        weight = model.get_parameter(f"{name}.weight").detach().double().flatten(1)
        u, _, vh = torch.linalg.svd(weight, full_matrices=False)
        torch.testing.assert_close(added[f"{name}.weight"].double().flatten(1), 0.03 * u @ vh, rtol=0, atol=1e-6)
    assert all(not added[name].any() for name in added if name.startswith("4.") or name.endswith("bias"))


def test_nuclear_hook_respects_a_configured_exclusion():
    model = _tiny()
    cfg = resolve(make_config({"method": "nuclear", "target_metric": "flops_drop", "target": 0.5,
                               "exclude": ["3"]}))
    hook = get_method("nuclear").training_hook(cfg, model, _x()[:1])
    before = _backward(model)
    hook()
    changed = {name for name, p in model.named_parameters() if not torch.equal(p.grad, before[name])}
    assert changed == {"0.weight", "2.weight", "4.weight"}  # with exclude set, the classifier is compressed too


def test_nuclear_reg_is_a_tunable_option_and_names_its_trained_model():
    method = get_method("nuclear")
    assert method.tunable == ("reg",) and not method.plain_training
    assert trained_key(_cfg("nuclear"), "data") == trained_key(_cfg("nuclear", reg=1e-3), "data")
    assert trained_key(_cfg("nuclear"), "data") != trained_key(_cfg("nuclear", reg=1e-2), "data")
    assert trained_key(_cfg("nuclear"), "data") != trained_key(_cfg("svd"), "data")


# ---------------------------------------------------------------- Frobenius decay


def test_frobenius_hook_adds_the_gradient_of_half_decay_times_the_squared_product_norm():
    model = get_method("frob_decay").build_for_training(_cfg("frob_decay", init="default"), _tiny(torch.float64))
    added = _added_by_hook("frob_decay", model, torch.float64, init="default", decay=0.2)
    layers = {name: m for name, m in model.named_modules() if isinstance(m, COMPOSED)}
    assert {type(m).__name__ for m in layers.values()} == {"ComposedConv2d", "ComposedLinear"}
    expected = {}
    for name, layer in layers.items():
        factors = [factor.weight for factor in layer.factors]
        penalty = 0.2 / 2 * layer.product_weight().pow(2).sum()
        for index, grad in enumerate(torch.autograd.grad(penalty, factors)):
            expected[f"{name}.factors.{index}.weight"] = grad
    for name, grad in added.items():
        if name in expected:
            torch.testing.assert_close(grad, expected[name], rtol=1e-10, atol=1e-12)
        else:  # biases
            assert not grad.any(), name


def test_frob_decay_factors_get_no_weight_decay_and_every_other_parameter_the_budgets():
    cfg = resolve(make_config({"method": "frob_decay", "target_metric": "flops_drop", "target": 0.5,
                               "model": "cnn", "budget": {"weight_decay": 3e-3}}))
    method = get_method("frob_decay")
    torch.manual_seed(0)
    model = method.build_for_training(cfg, FAMILIES["cnn"]())
    phase = Phase(epochs=1, lr=0.1, schedule="constant", optimizer="sgd", momentum=0.9, weight_decay=3e-3,
                  label_smoothing=0.0, batch_size=8, augment=False)
    optimizer = make_optimizer(model, phase, method.no_decay(cfg, model))
    decay = {id(p): group["weight_decay"] for group in optimizer.param_groups for p in group["params"]}
    factors = {id(f.weight) for m in model.modules() if isinstance(m, COMPOSED) for f in m.factors}
    assert len(factors) == 2 * 4 and len(decay) == len(list(model.parameters()))
    assert all(decay[id(p)] == (0.0 if id(p) in factors else 3e-3) for p in model.parameters())
    # A method exempting nothing keeps the one group of every parameter it always had.
    plain = FAMILIES["cnn"]()
    groups = make_optimizer(plain, phase, get_method("svd").no_decay(cfg, plain)).param_groups
    assert len(groups) == 1 and groups[0]["params"] == list(plain.parameters()) and groups[0]["weight_decay"] == 3e-3


def test_a_two_group_checkpoint_resumes_and_another_setup_is_refused(tmp_path, capsys):
    data = load_dataset("digits")
    cfg = _cfg("frob_decay")
    method = get_method("frob_decay")
    phase = Phase(epochs=1, lr=0.05, schedule="constant", optimizer="sgd", momentum=0.9, weight_decay=1e-3,
                  label_smoothing=0.0, batch_size=256, augment=False)

    def model():
        torch.manual_seed(0)
        return method.build_for_training(cfg, nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(),
                                                           nn.Linear(16, 10)))

    first = model()
    train(first, data, phase, seed=0, checkpoint=tmp_path / "ck.pt", no_decay=method.no_decay(cfg, first))
    again = model()
    history = train(again, data, Phase(**{**phase.__dict__, "epochs": 2}), seed=0, checkpoint=tmp_path / "ck.pt",
                    no_decay=method.no_decay(cfg, again))
    assert len(history) == 2 and "resuming from epoch 1" in capsys.readouterr().out
    train(model(), data, phase, seed=0, checkpoint=tmp_path / "ck.pt")  # one group now: not this checkpoint's
    assert "written for another optimizer setup" in capsys.readouterr().out


def test_frob_decay_defaults_and_family():
    method = get_method("frob_decay")
    assert set(method.tunable) == {"decay"} and not method.composes and not method.plain_training
    default = _cfg("frob_decay")
    assert method.family(default) == {"family": "frob_decay", "init": "spectral", "decay": 1e-3}  # the budget's
    assert trained_key(default, "d") == trained_key(_cfg("frob_decay", init="spectral", decay=1e-3), "d")
    assert trained_key(default, "d") != trained_key(_cfg("frob_decay", init="default"), "d")
    assert trained_key(default, "d") != trained_key(_cfg("frob_decay", decay=1e-2), "d")
    with pytest.raises(ConfigError, match="method_options.decay must be a number >= 0"):
        _cfg("frob_decay", decay=-1.0)
    # decay 0: no penalty, and still no weight decay on the factors.
    undecayed = _cfg("frob_decay", decay=0.0)
    model = method.build_for_training(undecayed, _tiny())
    assert method.training_hook(undecayed, model, _x()[:1]) is None
    assert len(method.no_decay(undecayed, model)) == 2 * 4


# ---------------------------------------------------------------- spectral init


@pytest.mark.parametrize("factors", [2, 3])
def test_spectral_init_composes_the_dense_weights_exactly(factors):
    # The Linear 20 -> 7 and the conv 1 -> 12 (12 x 9) have inner widths above their rank: zero-padded factors.
    torch.manual_seed(0)
    dense = nn.Sequential(nn.Conv2d(1, 12, 3), nn.Flatten(), nn.Linear(12 * 4, 20), nn.Linear(20, 7))
    x = torch.randn(3, 1, 4, 4)
    spectral = lorita.overparameterize(dense, factors, init="spectral")
    collapsed = lorita.collapse(spectral)
    for (name, got), want in zip(collapsed.state_dict().items(), dense.state_dict().values(), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6, msg=name)
    torch.testing.assert_close(spectral(x), dense(x), rtol=1e-5, atol=1e-5)
    default = lorita.collapse(lorita.overparameterize(dense, factors))
    assert not torch.allclose(default[3].weight, dense[3].weight, atol=1e-2)


@pytest.mark.parametrize(("method", "options"), [("frob_decay", {}), ("lorita", {"init": "spectral"})])
def test_spectral_padding_stays_zero_in_training(method, options):
    cfg = _cfg(method, **options)
    found = get_method(method)
    torch.manual_seed(0)
    model = found.build_for_training(cfg, nn.Sequential(nn.Linear(20, 7), nn.ReLU(), nn.Linear(7, 3)))
    factors = [factor.weight for factor in model[0].factors]  # 20 x 20 (x N-1), then 7 x 20: rank 7

    def padding() -> list[torch.Tensor]:  # the rows beyond rank 7 of all but the last, its columns beyond 7
        return [w[7:] for w in factors[:-1]] + [w[:, 7:] for w in factors[1:]]

    assert len(factors) == {"frob_decay": 2, "lorita": 3}[method]
    assert not any(block.any() for block in padding()) and factors[0][:7].all()
    optimizer = make_optimizer(model, Phase(epochs=1, lr=0.1, schedule="constant", optimizer="sgd", momentum=0.9,
                                            weight_decay=1e-3, label_smoothing=0.0, batch_size=8, augment=False),
                               found.no_decay(cfg, model))
    hook = found.training_hook(cfg, model, torch.zeros(1, 20))
    for _ in range(5):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(torch.randn(8, 20)), torch.randint(0, 3, (8,))).backward()
        if hook is not None:
            hook()
        optimizer.step()
    assert not any(block.any() for block in padding())
    assert all(w[:7, :7].any() for w in factors)


def test_frob_decay_starts_from_the_dense_init_and_lorita_takes_the_same_init_option():
    model = FAMILIES["cnn"]()
    for method, options in (("frob_decay", {}), ("lorita", {"init": "spectral"})):
        cfg = _cfg(method, **options)
        trained = get_method(method).build_for_training(cfg, model)
        for name, param in get_method(method).uncompressed(cfg, trained).named_parameters():
            torch.testing.assert_close(param, model.get_parameter(name), rtol=1e-5, atol=1e-6)
    # Absent, lorita's init is the default: the same trained model as before the option existed, and as default.
    assert trained_key(_cfg("lorita"), "d") == trained_key(_cfg("lorita", init="default"), "d")
    assert trained_key(_cfg("lorita"), "d") != trained_key(_cfg("lorita", init="spectral"), "d")
    assert get_method("lorita").family(_cfg("lorita")) == {"family": "lorita", "factors": 3}
    with pytest.raises(ConfigError, match="method_options.init must be one of default, spectral; got 'svd'"):
        _cfg("lorita", init="svd")
    with pytest.raises(ConfigError,
                       match="unknown key 'method_options.scope' for lorita; allowed: init, rank_policy, steps"):
        _cfg("lorita", scope="global")
    with pytest.raises(ValueError, match="init must be one of default, spectral"):
        lorita.overparameterize(model, 2, init="orthogonal")


# ---------------------------------------------------------------- the target


# FAMILIES' cnn (8 and 16 channels) cannot meet 30 % within a point whatever the method (svd neither): its first
# conv, 8 x 27, holds most of the FLOPs in steps of an eighth. The demo's cnn on digits can.
TARGET_FAMILIES = {"fcn": (FAMILIES["fcn"], input_shape("fcn", 1)),
                   "cnn": (lambda: create_model("cnn", 10, (1, 8, 8), channels=(32, 64)), (1, 1, 8, 8)),
                   **{family: (FAMILIES[family], input_shape(family, 1)) for family in ("resnet20_a", "vgg16")}}


@pytest.mark.parametrize("family", ci_for_vgg16(TARGET_FAMILIES))
@pytest.mark.parametrize("method", ["nuclear", "frob_decay"])
def test_flops_drop_is_met_within_one_point_by_fvcore(method, family):
    build, shape = TARGET_FAMILIES[family]
    torch.manual_seed(0)
    dense = build().eval()
    x = torch.randn(shape)
    cfg = _cfg(method)
    found = get_method(method)
    trained = found.build_for_training(cfg, dense).eval()
    base = found.uncompressed(cfg, trained).eval()
    flops_base, params_base = count_flops_params(base, x)
    for target in (0.3, 0.5, 0.7):
        compressed, structure = found.compress(_cfg(method, target), base, target=target,
                                               reference=(flops_base, params_base), example=x, train_batches=[],
                                               trained=trained)
        flops, _ = count_flops_params(compressed, x)
        assert abs(1 - flops / flops_base - target) <= 0.01, (target, flops / flops_base)
        assert structure["ranks"]


# ---------------------------------------------------------------- end to end


@pytest.mark.parametrize("method", ["nuclear", "frob_decay"])
def test_a_run_trains_compresses_and_meets_the_target(store, method):
    cfg = make_config({"experiment": "lowrank-training", "model": "fcn", "model_kwargs": {"layers": 2, "width": 16},
                       "dataset": "digits", "method": method, "target_metric": "flops_drop", "target": 0.5,
                       "cache_dir": str(store / "cache"), "device": "cpu",
                       "budget": {"epochs": 2, "finetune_epochs": 1, "batch_size": 64, "lr": 0.05}})
    result = execute(cfg, latency=False)
    assert result.status == schema.STATUS_FINISHED
    assert abs(result.metrics[schema.FLOPS_DROP] - 0.5) <= 0.01
    assert result.metrics[schema.ACC_FINETUNED] > 0.5
