"""Cuttlefish: thin composed layers, ranks scaled to a target, the stable-rank switch, its resume and its records."""

import math
import os
import signal

import pytest
import torch
from support import FAMILIES, ci_for_vgg16, input_shape
from torch import nn

import lorita
from benchmarks import checkpoints, tracking
from benchmarks.config import ConfigError, make_config
from benchmarks.data import load_dataset
from benchmarks.methods import get_method, resolve
from benchmarks.methods.cuttlefish import settled, stable_ranks
from benchmarks.models import create_model
from benchmarks.run import interrupts
from benchmarks.run.pipeline import execute, trained_key
from benchmarks.run.train import Phase, train
from benchmarks.tracking import schema
from lorita.compose import COMPOSED, ComposedConv2d, ComposedLinear
from lorita.counting import count_flops_params


def _cfg(target: float = 0.5, epochs: int = 3, **options):
    return resolve(make_config({"method": "cuttlefish", "target_metric": "flops_drop", "target": target,
                                "method_options": options, "budget": {"epochs": epochs}}))


# ---------------------------------------------------------------- lorita: thin factors, scaled ranks


@pytest.mark.parametrize("layer", [nn.Linear(12, 9), nn.Conv2d(3, 8, 3, stride=2, padding=1)])
def test_low_rank_holds_the_truncated_svd_and_collapses_to_it(layer):
    torch.manual_seed(0)
    layer = layer.double()
    composed = lorita.low_rank(layer, 4)
    assert isinstance(composed, COMPOSED) and composed.factors[0].weight.shape[0] == 4
    u, s, vh = torch.linalg.svd(layer.weight.detach().flatten(1), full_matrices=False)
    best = (u[:, :4] * s[:4]) @ vh[:4]
    plain = lorita.collapse(nn.Sequential(composed))[0]
    assert type(plain) is type(layer) and plain.weight.shape == layer.weight.shape
    torch.testing.assert_close(plain.weight.flatten(1), best, rtol=0, atol=1e-12)
    torch.testing.assert_close(plain.bias, layer.bias, rtol=0, atol=0)
    x = torch.randn(5, 12, dtype=torch.float64) if isinstance(layer, nn.Linear) else torch.randn(2, 3, 7, 7).double()
    for mode in ("activation", "weight"):
        composed.mode = mode
        torch.testing.assert_close(composed(x), plain(x), rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match=r"rank must be an int in \[1, 9\]"):
        lorita.low_rank(nn.Linear(12, 9), 10)


def _chain_macs(widths, rows):
    return rows * sum(a * b for a, b in zip(widths, widths[1:], strict=False))


def test_auto_mode_picks_the_cheaper_path_for_thin_and_square_factors():
    # Square factors: the rule the paper's cost argument gives (out <= rows; in*k*k <= B*H*W), as before widths.
    square = ComposedLinear(64, 10, 3)
    assert square.use_weight_product(torch.randn(128, 64)) and not square.use_weight_product(torch.randn(4, 64))
    conv = ComposedConv2d(nn.Conv2d(64, 32, 3, padding=1), 2)
    assert conv.use_weight_product(torch.randn(8, 64, 32, 32)) and not conv.use_weight_product(torch.randn(1, 64, 4, 4))
    # Thin factors: priced by multiply-adds, the product 256 x 8 x 256 plus rows x 256 x 256 against the chain.
    thin = ComposedLinear(256, 256, 2, width=8)
    for rows in (4, 64, 4096):
        weight_path = 256 * 8 * 256 + rows * 256 * 256
        assert thin.use_weight_product(torch.randn(rows, 256)) == (weight_path <= _chain_macs([256, 8, 256], rows))


def test_scaled_ranks_are_proportional_capped_and_meet_the_target():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(100, 80), nn.ReLU(), nn.Linear(80, 80), nn.ReLU(), nn.Linear(80, 60))
    x = torch.randn(1, 100)
    shares = {"0": 40.0, "2": 20.0, "4": 5.0}
    ranks = lorita.scaled_ranks(model, shares, "flops_drop", 0.5, example_input=x)
    flops, _ = lorita.costs.plan_cost(model, ranks, x)
    assert abs(1 - flops / count_flops_params(model, x)[0] - 0.5) <= 0.01
    scale = ranks["0"] / 40
    assert all(abs(ranks[name] - scale * share) <= 1 for name, share in shares.items())  # one factor, rounded
    # A share past the full rank is capped there; a layer left out stays as it is.
    capped = lorita.scaled_ranks(model, {"0": 1000.0, "2": 1.0}, "params_drop", 0.05)
    assert capped["0"] == 80 and set(capped) == {"0", "2"}
    with pytest.raises(ValueError, match="shares names '9'"):
        lorita.scaled_ranks(model, {"9": 1.0}, "flops_drop", 0.5, example_input=x)
    with pytest.raises(ValueError, match=r"shares\['0'\] must be a number > 0"):
        lorita.scaled_ranks(model, {"0": 0}, "flops_drop", 0.5, example_input=x)
    with pytest.raises(ValueError, match="policy must be one of flops_drop, params_drop, cost_drop"):
        lorita.scaled_ranks(model, shares, "energy", 0.5)


# ---------------------------------------------------------------- the switch and its ranks


def test_settled_needs_window_epochs_of_small_changes_and_stays_settled():
    assert not settled([], 3, 0.1) and not settled([50, 40, 40], 3, 0.1)  # too few epochs
    assert not settled([50.0 - i for i in range(10)], 3, 0.1)  # falls one rank every epoch
    assert settled([20.0] * 5, 3, 0.1)
    assert settled([20.0, 20.0, 20.0, 20.0, 10.0], 3, 0.1)  # settled once, settled since
    assert settled([20.9, 20.1, 20.5, 20.0], 3, 0.1)  # the integer stable rank is what is smoothed


def _spread(layer: nn.Linear, values: list[float]) -> None:
    # Give `layer` exactly these singular values (stable rank sum(s^2) / s_max^2).
    with torch.no_grad():
        u, _, vh = torch.linalg.svd(layer.weight, full_matrices=False)
        s = torch.zeros(min(layer.weight.shape))
        s[:len(values)] = torch.tensor(values)
        layer.weight.copy_((u * s) @ vh)


def test_the_switch_comes_when_stable_ranks_settle_at_scaled_stable_ranks_meeting_the_target():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    x = torch.zeros(2, 64)
    _spread(model[0], [1.0] * 32)  # stable rank 32 at init: scale 64 / 32 = 2
    _spread(model[2], [1.0] * 16)  # 16: scale 4
    cfg = _cfg(0.5, epochs=10)
    switch = get_method("cuttlefish").switch(cfg, model, x)
    assert stable_ranks(model, ["0", "2"]) == pytest.approx({"0": 32.0, "2": 16.0}, rel=1e-5)
    _spread(model[0], [1.0] * 10)  # trained on: stable ranks 10 and 8, scaled 20 and 32
    _spread(model[2], [1.0] * 8)
    moving = [switch.measure(model)]
    assert moving[0] == pytest.approx({"stable_rank/0": 10.0, "stable_rank/2": 8.0}, rel=1e-5)
    assert switch.decide(model, moving) is None  # one epoch: not yet
    assert switch.decide(model, moving * 2) is None
    change = switch.decide(model, moving * 4)  # constant since: settled
    assert change is not None
    ranks = change["ranks"]
    expected = lorita.scaled_ranks(model, {"0": 20, "2": 32}, "flops_drop", 0.5, example_input=x)
    assert ranks == expected and ranks["2"] > ranks["0"]
    switch.apply(model, change)
    assert [type(model[i]) for i in (0, 2)] == [ComposedLinear, ComposedLinear]
    assert {name: model.get_submodule(name).factors[0].out_features for name in ranks} == ranks
    flops = count_flops_params(lorita.factorize(lorita.collapse(model), ranks), x)[0]
    dense = count_flops_params(lorita.collapse(model), x)[0]
    assert abs(1 - flops / dense - 0.5) <= 0.01


def test_the_switch_comes_at_max_warmup_when_ranks_never_settle_and_at_a_forced_epoch():
    torch.manual_seed(0)
    model = create_model("fcn", 10, (1, 8, 8), layers=3, width=64)
    x = torch.zeros(2, 1, 8, 8)
    switch = get_method("cuttlefish").switch(_cfg(0.5, epochs=10, max_warmup=0.3), model, x)
    falling = [{f"stable_rank/{name}": 60.0 - 3 * i for name in ("1", "4")} for i in range(5)]
    assert [switch.decide(model, falling[:n]) is not None for n in range(1, 5)] == [False, False, True, True]
    forced = get_method("cuttlefish").switch(_cfg(0.5, epochs=10, warmup=0), model, x)
    assert forced.decide(model, [])["ranks"]


def test_bad_options_are_refused_before_anything_runs():
    with pytest.raises(ConfigError, match="method_options.warmup must be below budget.epochs"):
        _cfg(epochs=3, warmup=3)
    with pytest.raises(ConfigError, match=r"method_options.window must be an int >= 2"):
        _cfg(window=1)
    with pytest.raises(ConfigError, match=r"method_options.max_warmup must be a number in \(0, 1\]"):
        _cfg(max_warmup=0)
    with pytest.raises(ConfigError, match="method_options.warmup must be 'auto'"):
        _cfg(warmup="soon")


def test_the_trained_model_depends_on_the_target():
    assert trained_key(_cfg(0.5), "d") != trained_key(_cfg(0.7), "d")
    assert trained_key(_cfg(0.5), "d") == trained_key(_cfg(0.5, warmup="auto", window=3), "d")
    assert trained_key(_cfg(0.5), "d") != trained_key(_cfg(0.5, window=4), "d")


# ---------------------------------------------------------------- the target, switch forced at epoch 0

TARGET_FAMILIES = {"fcn": (FAMILIES["fcn"], input_shape("fcn", 1)),
                   "cnn": (lambda: create_model("cnn", 10, (1, 8, 8), channels=(32, 64)), (1, 1, 8, 8)),
                   **{family: (FAMILIES[family], input_shape(family, 1)) for family in ("resnet20_a", "vgg16")}}


@pytest.mark.parametrize("family", ci_for_vgg16(TARGET_FAMILIES))
def test_flops_drop_is_met_within_one_point_by_fvcore(family):
    build, shape = TARGET_FAMILIES[family]
    method = get_method("cuttlefish")
    x = torch.randn(shape)
    for target in (0.3, 0.5, 0.7):
        torch.manual_seed(0)
        model = build().eval()
        cfg = _cfg(target, warmup=0)
        switch = method.switch(cfg, model, x)
        switch.apply(model, switch.decide(model, []))
        base = method.uncompressed(cfg, model)
        reference = count_flops_params(base, x)
        compressed, structure = method.compress(cfg, base, target=target, reference=reference, example=x,
                                                train_batches=[], trained=model)
        flops, _ = count_flops_params(compressed, x)
        assert abs(1 - flops / reference[0] - target) <= 0.01, (target, flops / reference[0])
        assert structure["ranks"] and all(isinstance(m, COMPOSED) for name in structure["ranks"]
                                          for m in [model.get_submodule(name)])
        # The compressed model is the trained factorized one (the product refactorized at its own ranks).
        with torch.no_grad():
            torch.testing.assert_close(compressed(x), model(x), rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------- training across the switch

PHASE = Phase(epochs=3, lr=0.05, schedule="cosine", optimizer="sgd", momentum=0.9, weight_decay=1e-3,
              label_smoothing=0.0, batch_size=128, augment=False)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", seed=0)


def _model_and_switch(warmup: int = 1):
    torch.manual_seed(0)
    model = create_model("fcn", 10, (1, 8, 8), layers=3, width=64)
    return model, get_method("cuttlefish").switch(_cfg(0.5, epochs=PHASE.epochs, warmup=warmup), model,
                                                  torch.zeros(2, 1, 8, 8))


def _same(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _without_times(history):
    return [{k: v for k, v in h.items() if k != "epoch_time_s"} for h in history]


@pytest.mark.parametrize(("warmup", "switched"), [(1, 1), ("auto", 2)])  # auto: 3 epochs cannot settle; at the cap
def test_training_switches_rebuilds_the_optimizer_and_keeps_the_schedule(digits, warmup, switched):
    model, switch = _model_and_switch(warmup=warmup)
    history = train(model, digits, PHASE, seed=0, switch=switch)
    assert switch.made["epoch"] == switched and switch.made["ranks"]
    assert all(isinstance(model.get_submodule(name), COMPOSED) for name in switch.made["ranks"])
    assert all(f"stable_rank/{name}" in h for h in history for name in ("1", "4"))
    # Cosine over 3 epochs: the rate after the switch continues the one schedule (the lr each epoch trained at).
    lrs = [h["lr"] for h in history]
    assert lrs == pytest.approx([0.05 * (1 + math.cos(math.pi * e / 3)) / 2 for e in (0, 1, 2)])
    assert history[-1]["test_acc"] > 0.8


@pytest.mark.parametrize("at_epoch", [1, 2])  # the Ctrl-C before the switch (epoch 2 not started), and after it
def test_a_run_stopped_after_the_switch_resumes_bit_identically(digits, tmp_path, at_epoch):
    ref_model, ref_switch = _model_and_switch()
    ref_history = train(ref_model, digits, PHASE, seed=0, switch=ref_switch)
    steps = math.ceil(len(digits.train_y) / PHASE.batch_size)
    at = steps * (at_epoch - 1) + 3
    calls = []

    def ctrl_c():
        calls.append(1)
        if len(calls) == at:
            os.kill(os.getpid(), signal.SIGINT)

    checkpoint = tmp_path / "checkpoint.pt"
    model, switch = _model_and_switch()
    with interrupts.installed(), pytest.raises(KeyboardInterrupt):
        train(model, digits, PHASE, seed=0, checkpoint=checkpoint, after_backward=ctrl_c, switch=switch)
    saved = checkpoints.load(checkpoint)
    assert (saved["switch"] is not None) == (at_epoch == 2)
    model, switch = _model_and_switch()
    history = train(model, digits, PHASE, seed=0, checkpoint=checkpoint, switch=switch)
    assert switch.made == ref_switch.made
    assert _without_times(history) == _without_times(ref_history)
    _same(model, ref_model)


def test_a_checkpoint_after_a_switch_is_refused_by_a_training_without_one(digits, tmp_path, capsys):
    model, switch = _model_and_switch(warmup=1)
    train(model, digits, Phase(**{**PHASE.__dict__, "epochs": 2}), seed=0, checkpoint=tmp_path / "ck.pt",
          switch=switch)
    plain, _ = _model_and_switch()
    before = {k: v.clone() for k, v in plain.state_dict().items()}
    train(plain, digits, Phase(**{**PHASE.__dict__, "epochs": 1}), seed=0, checkpoint=tmp_path / "ck.pt")
    assert "change of structure this training does not make" in capsys.readouterr().out
    assert plain.state_dict().keys() == before.keys()  # still the dense network


# ---------------------------------------------------------------- end to end


def test_a_run_records_the_switch_and_a_cached_training_comes_back_factorized(store):
    base = {"experiment": "cuttlefish", "model": "fcn", "model_kwargs": {"layers": 2, "width": 64},
            "dataset": "digits", "method": "cuttlefish", "target_metric": "flops_drop", "target": 0.5,
            "method_options": {"warmup": 1}, "cache_dir": str(store / "cache"), "device": "cpu",
            "budget": {"epochs": 3, "finetune_epochs": 1, "batch_size": 64, "lr": 0.05}}
    result = execute(make_config(base), latency=False)
    assert result.status == schema.STATUS_FINISHED and not result.cache_hit
    assert abs(result.metrics[schema.FLOPS_DROP] - 0.5) <= 0.01
    assert result.metrics[schema.ACC_COMPRESSED] == pytest.approx(result.metrics[schema.ACC_TRAINED], abs=2e-3)
    run = tracking.client().get_run(result.run_id)
    assert run.data.metrics[schema.SWITCH_EPOCH] == 1
    record = tracking.load_json(result.run_id, schema.ARTIFACT_SWITCH)
    assert record["epoch"] == 1 and record["ranks"] == tracking.load_json(result.run_id, schema.ARTIFACT_RANKS)
    assert any(key.startswith(schema.STABLE_RANK_PREFIX) for key in run.data.metrics)
    # Another experiment reuses the cached training: rebuilt factorized, the same numbers.
    again = execute(make_config({**base, "experiment": "cuttlefish-again"}), latency=False)
    assert again.cache_hit and again.metrics[schema.ACC_TRAINED] == result.metrics[schema.ACC_TRAINED]
    assert again.metrics[schema.ACC_FINETUNED] == result.metrics[schema.ACC_FINETUNED]
