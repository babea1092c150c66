"""Config loading and validation: one clear line naming the key, before any data is loaded."""

import pytest

from benchmarks.cli import build_parser, config_from_args
from benchmarks.config import Budget, ConfigError, RunConfig, apply_overrides, load_yaml, make_config


def test_defaults_are_the_authors_cnn_recipe():
    b = Budget()
    assert (b.optimizer, b.lr, b.momentum, b.weight_decay, b.batch_size, b.label_smoothing) == (
        "sgd", 0.01, 0.9, 1e-3, 128, 0.1)
    assert (b.schedule, b.plateau_factor, b.plateau_patience) == ("plateau", 0.1, 15)


def test_hashes_are_stable_and_seed_is_not_in_the_budget():
    a = make_config({"seed": 0, "budget": {"lr": 0.05}})
    b = make_config({"seed": 1, "budget": {"lr": 0.05}})
    assert a.budget.hash() == b.budget.hash()
    assert a.config_hash() != b.config_hash()
    assert make_config({"seed": 0, "budget": {"lr": 0.05}, "device": "cpu"}).config_hash() == a.config_hash()
    assert make_config({"budget": {"lr": 0.1}}).budget.hash() != a.budget.hash()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"modle": "fcn"}, "unknown key 'modle'; allowed: experiment, model"),
        ({"budget": {"lrr": 1}}, "unknown key 'budget.lrr'"),
        ({"budget": {"lr": -1}}, "budget.lr must be a number in \\(0, 100\\]; got -1"),
        ({"budget": {"lr": "fast"}}, "budget.lr must be a number in \\(0, 100\\]; got 'fast'"),
        # Finite but absurd: it would train nothing but NaN.
        ({"budget": {"lr": 1e308}}, "budget.lr must be a number in \\(0, 100\\]; got 1e\\+308"),
        ({"budget": {"finetune_lr": 1e308}}, "budget.finetune_lr must be a number in \\(0, 100\\]"),
        ({"seed": 2**63}, "seed must be an integer in \\[0, 2\\*\\*63 - 1\\]; got 9223372036854775808"),
        ({"experiment": "x" * 501}, "experiment must be a non-empty string of at most 500 characters; got 'xxx.*"
                                    "\\(503 characters\\)"),
        ({"budget": {"epochs": 2.5}}, "budget.epochs must be an integer >= 0"),
        ({"budget": {"epochs": True}}, "budget.epochs must be an integer >= 0"),
        ({"budget": {"optimizer": "lbfgs"}}, "budget.optimizer must be one of sgd, adam, adamw"),
        ({"target": 1.5}, "target must be a number in \\(0, 1\\)"),
        ({"target_metric": "latency"}, "target_metric must be one of flops_drop, params_drop"),
        ({"factors": 0}, "factors must be an integer >= 1"),
        ({"budget": []}, "budget must be a mapping"),
        ({"exclude": "linear"}, "exclude must be a list of module-name glob patterns"),
        ({"device": "tpu"}, "device must be auto, cpu, cuda or cuda:N"),
    ],
)
def test_bad_values_name_the_key_and_what_is_allowed(data, message):
    with pytest.raises(ConfigError, match=message) as info:
        make_config(data)
    assert "\n" not in str(info.value)


def test_yaml_numbers_in_exponent_form_are_accepted(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("model: fcn\nbudget:\n  weight_decay: 1e-4\n  lr: 5e-2\n")
    cfg = make_config(load_yaml(path))
    assert cfg.budget.weight_decay == 1e-4 and cfg.budget.lr == 0.05


def test_missing_or_broken_yaml_is_one_line(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_yaml(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [fcn\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_yaml(bad)


def test_flags_override_file_and_set_overrides_flags(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("model: cnn\nmethod: l1\nbudget: {epochs: 3, lr: 0.1}\n")
    args = build_parser().parse_args(["run", "--config", str(path), "--model", "fcn", "--epochs", "7",
                                      "--target-flops-drop", "0.5", "--set", "budget.lr=0.2",
                                      "--set", "method_options={scope: uniform}"])
    cfg = config_from_args(args)
    assert isinstance(cfg, RunConfig)
    assert (cfg.model, cfg.method, cfg.budget.epochs, cfg.budget.lr) == ("fcn", "l1", 7, 0.2)
    assert (cfg.target_metric, cfg.target, cfg.method_options) == ("flops_drop", 0.5, {"scope": "uniform"})


def test_apply_overrides_refuses_to_descend_into_a_value():
    with pytest.raises(ConfigError, match="not a mapping"):
        apply_overrides({"model": "fcn"}, {"model.width": 3})


def test_shipped_configs_load():
    from pathlib import Path

    from benchmarks.sweeps.grid import expand, parse_sweep

    folder = Path(__file__).parent.parent / "benchmarks" / "configs"
    for path in folder.glob("*.yaml"):
        data = load_yaml(path)
        if "name" in data:  # a sweep file
            assert expand(parse_sweep(data)), path
        else:
            make_config(data)


def test_yaml_aliases_are_refused_before_they_expand(tmp_path):
    # "Billion laughs": nine levels of nine aliases would be 9**9 items once a config is copied or hashed.
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("\n".join(lines) + "\n")
    with pytest.raises(ConfigError, match=r"bomb.yaml line 2: YAML aliases \(\*a0\) are not accepted") as info:
        load_yaml(bomb)
    assert "\n" not in str(info.value)


def test_a_sweep_name_longer_than_mlflow_allows_is_refused():
    from benchmarks.sweeps.grid import parse_sweep

    with pytest.raises(ConfigError, match="sweep: name must be a non-empty string of at most 500 characters"):
        parse_sweep({"name": "n" * 501, "models": ["fcn"], "datasets": ["digits"], "methods": ["dense"]})
