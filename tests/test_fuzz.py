"""Property-based: random wrong types and values fed to the config loader, the sweep parser and the CLI give a
clean one-line error naming the field, never a traceback from deep inside."""

import contextlib
import dataclasses
import io
import math
from unittest import mock

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from benchmarks.cli import main
from benchmarks.config import Budget, ConfigError, RunConfig, make_config
from benchmarks.methods import METHODS, resolve
from benchmarks.run.pipeline import RunResult
from benchmarks.sweeps.grid import SWEEP_KEYS, expand, parse_sweep

RUN_KEYS = [f.name for f in dataclasses.fields(RunConfig)]
BUDGET_KEYS = [f.name for f in dataclasses.fields(Budget)]
# Every name an error may cite: the keys of a run, a budget, a method's options and a sweep file.
PRUNE_OPTIONS = list(dict.fromkeys(key for m in METHODS.values() for key in m.options))
FIELD_NAMES = [*RUN_KEYS, *BUDGET_KEYS, *PRUNE_OPTIONS, *SWEEP_KEYS, "the file"]

scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(),
                    st.text(max_size=8), st.sampled_from(["sgd", "lorita", "l1", "fcn", "digits", "cpu", "1e-3",
                                                          "flops_drop", "nan", "inf", "-1"]))
values = st.one_of(scalars, st.lists(scalars, max_size=3), st.dictionaries(st.text(max_size=6), scalars, max_size=3))
budgets = st.dictionaries(st.sampled_from([*BUDGET_KEYS, "epoch"]), values, max_size=4)
method_options = st.dictionaries(st.sampled_from([*PRUNE_OPTIONS, "nope"]), values, max_size=3)
configs = st.dictionaries(st.sampled_from([*RUN_KEYS, "modle", "budget"]), values, max_size=5).flatmap(
    lambda data: st.fixed_dictionaries({}, optional={"budget": budgets | values, "method_options": method_options})
    .map(lambda extra: {**data, **extra}))


def _assert_clean(err: Exception) -> None:
    message = str(err)
    assert "\n" not in message, message
    assert any(name in message for name in FIELD_NAMES), message


@settings(max_examples=300, deadline=None)
@given(configs)
def test_config_loader_fails_in_one_line_naming_the_field(data):
    try:
        cfg = resolve(make_config(data))
    except ConfigError as err:
        _assert_clean(err)
        return
    numbers = [v for v in dataclasses.asdict(cfg.budget).values() if isinstance(v, float)] + [cfg.target or 0.0]
    assert all(math.isfinite(v) for v in numbers)


sweeps = st.fixed_dictionaries(
    {"name": st.text(max_size=5) | values, "models": st.lists(st.sampled_from(["fcn", "cnn"]) | values, max_size=2),
     "datasets": st.lists(st.just("digits") | values, max_size=2),
     "methods": st.lists(st.sampled_from(["dense", "lorita", "l1", "svd"]) | values, max_size=3)},
    optional={"factors": values, "targets": values | st.dictionaries(st.sampled_from(["flops_drop", "x"]), values),
              "seeds": values, "budget": budgets | values, "method_options": values, "device": values,
              "nme": values})


@settings(max_examples=300, deadline=None)
@given(sweeps)
def test_sweep_parser_fails_in_one_line_naming_the_field(data):
    try:
        expand(parse_sweep(data))
    except ConfigError as err:
        _assert_clean(err)


FLAGS = ["--model", "--dataset", "--method", "--factors", "--epochs", "--finetune-epochs", "--seed", "--device",
         "--target-flops-drop", "--target-params-drop", "--experiment", "--set", "--set", "--data-root"]
tokens = st.one_of(st.text(st.characters(blacklist_categories=["Cs"]), max_size=10), st.integers().map(str),
                   st.floats().map(str), st.sampled_from(["budget.lr=-1", "budget=3", "experiment.x=1", "x=",
                                                          "=1", "model_kwargs.width=nan", "factors=0"]))
argvs = st.lists(st.tuples(st.sampled_from(FLAGS), tokens), max_size=5).map(
    lambda pairs: ["run", *[part for pair in pairs for part in pair]])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(argvs)
def test_cli_fails_in_one_line_before_any_training(argv):
    err = io.StringIO()
    started = []

    def execute(cfg, **_):  # what execute does before training starts; then it stops
        started.append(resolve(cfg))
        return RunResult(started[-1], "stub", "FINISHED")

    with mock.patch("benchmarks.run.pipeline.execute", execute), contextlib.redirect_stderr(err), \
            contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(argv)
        except SystemExit as exit_:  # argparse's own usage errors
            code = exit_.code
    text = err.getvalue()
    assert "Traceback" not in text
    if code == 0:
        assert len(started) == 1
        return
    assert code == 2 and not started, text
    errors = [line for line in text.splitlines() if "error:" in line]
    assert len(errors) == 1, text
