"""Equal-budget tuning: the block checked at the door, identities, no test data read, exact trial counts, retries."""

import dataclasses

import optuna
import pytest
import torch
from optuna.trial import TrialState
from support import TINY, benchmark_runs, write_sweep

import benchmarks.tuning.trial as trial_module
from benchmarks import tracking
from benchmarks.config import ConfigError
from benchmarks.data import load_dataset
from benchmarks.run.pipeline import trained_key
from benchmarks.run.train import NonFiniteLoss
from benchmarks.sweeps.driver import run_sweep
from benchmarks.sweeps.grid import load_sweep, parse_sweep
from benchmarks.tracking import schema
from benchmarks.tuning import study as studies
from benchmarks.tuning.storage import open_storage, prepare, storage_url
from benchmarks.tuning.units import tuned_runs, units

SPACE = {"lr": {"low": 0.01, "high": 0.1, "log": True}, "weight_decay": {"low": 1e-5, "high": 1e-3, "log": True},
         "factors": [2, 3]}
DENSE_SPACE = {k: v for k, v in SPACE.items() if k != "factors"}
TUNED = {**{k: v for k, v in TINY.items() if k != "factors"}, "methods": ["dense", "svd", "lorita", "slim"],
         "models": [{"name": "fcn", "layers": 2, "width": 16}],
         "tuning": {"trials": 2, "space": SPACE}}


def _sweep(**changes):
    return parse_sweep({**TUNED, "name": "t", **changes})


def _tuning(**changes):
    return _sweep(tuning={"trials": 2, "space": SPACE, **changes})


@pytest.mark.parametrize("changes, message", [
    ({"space": {"epochs": {"low": 1, "high": 5}}}, "tuning.space.epochs is refused: budget.epochs defines the equal"),
    ({"space": {"batch_size": [32, 64]}}, "tuning.space.batch_size is refused"),
    ({"space": {"val_fraction": [0.1]}}, "tuning.space.val_fraction is refused"),
    ({"space": {"optimizer": ["sgd"]}}, "tuning.space.optimizer is refused"),
    ({"space": {"lrr": [0.1]}}, "unknown key 'tuning.space.lrr'; allowed: lr, finetune_lr"),
    ({"space": {"svd": {"factors": [2, 3]}}}, "tuning.space.svd.factors: factors applies to composing methods only"),
    ({"space": {"lr": {"low": 0.1, "high": 0.01}}}, "tuning.space.lr: low must be below high"),
    ({"space": {"lr": {"low": 0.1, "high": 0.1}}}, "tuning.space.lr: low must be below high"),
    ({"space": {"weight_decay": {"low": 0, "high": 0.01, "log": True}}}, "a log range needs low > 0"),
    ({"space": {"momentum": {"low": 0.5, "high": 1.5}}}, "tuning.space.momentum.high must be a number in [0, 1)"),
    ({"space": {"lr": {"low": 0.01}}}, "tuning.space.lr needs high"),
    ({"space": {"factors": {"low": 2, "high": 3}}}, "tuning.space.factors must be a list of choices"),
    ({"space": {"factors": [0, 2]}}, "tuning.space.factors choices must each be an integer >= 1"),
    ({"space": {"slim": {"reg": {"low": -1, "high": 1}}}}, "tuning.space.slim.reg.low must be a number > 0"),
    ({"space": {"slim": {"lr": [0.1]}}}, "budget.lr is searched for every method alike"),
    ({"trials": 0}, "tuning.trials must be an integer >= 1"),
    ({"sampler": "grid"}, "tuning.sampler must be one of tpe, random"),
    ({"val_fraction": 0}, "tuning.val_fraction must be a number in (0, 1)"),
    ({"objective": {"flops_drop": 0.9}}, "tuning.objective must be mean or one of the grid's targets"),
    ({"objective": "median"}, "tuning.objective must be mean"),
    ({"sample": "tpe"}, "unknown key 'tuning.sample'"),
])
def test_a_bad_tuning_block_fails_in_one_line_naming_the_key(changes, message):
    with pytest.raises(ConfigError, match=None) as err:
        _tuning(**changes)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_searched_knob_is_not_also_a_grid_axis():
    with pytest.raises(ConfigError, match="budget.lr is searched by tuning.space.lr"):
        _sweep(budget={**TINY["budget"], "lr": [0.01, 0.1]})
    with pytest.raises(ConfigError, match="factors is searched by tuning.space"):
        _sweep(factors=[2])
    with pytest.raises(ConfigError, match="budget.val_fraction is set by tuning.val_fraction"):
        _sweep(budget={**TINY["budget"], "val_fraction": 0.2})
    with pytest.raises(ConfigError, match="factors applies to composing methods only"):
        _sweep(methods=["dense", "svd"], tuning={"trials": 2, "space": {"factors": [2]}})


def test_every_method_gets_its_knobs_and_its_registered_options():
    sweep = _sweep()
    spaces = {u.name: set(u.space) for u in units(sweep)}
    assert spaces == {"fcn-digits-dense": {"lr", "weight_decay"}, "fcn-digits-svd": {"lr", "weight_decay"},
                      "fcn-digits-lorita": {"lr", "weight_decay", "factors"},
                      "fcn-digits-slim": {"lr", "weight_decay", "reg"}}
    # slim's strength is searched over its registered range, and the block's identity says so.
    assert sweep.tuning.identity()["space"]["slim"]["reg"]["log"] is True


def test_a_tuned_comparison_shares_one_budget_hash_that_names_the_tuning():
    sweep = _sweep()
    found = units(sweep)
    selected = {u.key: {"lr": 0.02 + i / 100, "weight_decay": 1e-4, **({"factors": 2} if "factors" in u.space else {}),
                        **({"reg": 1e-5} if "reg" in u.space else {})} for i, u in enumerate(found)}
    runs = tuned_runs(sweep, selected)
    assert {cfg.budget_hash() for cfg in runs} == {runs[0].budget_hash()}
    assert runs[0].budget_hash() != runs[0].budget.hash()
    other = parse_sweep({**TUNED, "name": "t", "tuning": {"trials": 3, "space": SPACE}})
    assert tuned_runs(other, {u.key: selected[u.key] for u in units(other)})[0].budget_hash() != runs[0].budget_hash()
    # The selected values enter the config hash; the split seed enters the trained-model key.
    lrs = {cfg.method: cfg.budget.lr for cfg in runs}
    assert len(set(lrs.values())) == 4 and all(cfg.budget.val_fraction == 0.1 for cfg in runs)
    moved = dataclasses.replace(runs[0], split_seed=1)
    assert trained_key(moved, "f") != trained_key(runs[0], "f")
    assert moved.config_hash() != runs[0].config_hash()


def test_storage_lives_beside_a_sqlite_store_and_a_server_needs_one_named(tmp_path):
    assert storage_url(None, f"sqlite:///{tmp_path}/mlflow.db") == f"sqlite:///{tmp_path}/mlflow-optuna.db"
    with pytest.raises(ConfigError, match="tuning.storage must name a PostgreSQL URL"):
        storage_url(None, "http://127.0.0.1:5000")
    with pytest.raises(ConfigError, match="is the MLflow database"):
        storage_url(f"sqlite:///{tmp_path}/mlflow.db", f"sqlite:///{tmp_path}/mlflow.db")
    with pytest.raises(ConfigError, match="must be a postgresql:// URL or a journal file"):
        storage_url(f"sqlite:///{tmp_path}/o.db", "http://127.0.0.1:5000")
    assert storage_url("shared/optuna.log", "http://127.0.0.1:5000").endswith("/shared/optuna.log")
    assert storage_url("postgresql://u@h/db", "http://h:5000") == "postgresql://u@h/db"


class _Unreadable(torch.Tensor):
    """A test split that raises on any use: len(), indexing, a forward, a copy."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        raise AssertionError(f"the test split was read during tuning ({getattr(func, '__name__', func)})")


def test_tuning_never_reads_the_test_split(store, monkeypatch):
    real = load_dataset

    def poisoned(*args, **kwargs):
        data = real(*args, **kwargs)
        return dataclasses.replace(data, test_x=data.test_x.as_subclass(_Unreadable),
                                   test_y=data.test_y.as_subclass(_Unreadable))

    monkeypatch.setattr(trial_module, "load_dataset", poisoned)
    path = write_sweep(store, "no-test", TUNED, methods=["dense", "lorita", "slim"])
    from benchmarks.tuning.tuner import tune

    selection = tune(load_sweep(path))
    assert selection.code == 0
    trials = tracking.search_runs("no-test" + schema.TUNING_SUFFIX, "attributes.status = 'FINISHED'")
    assert len(trials[trials[f"tags.{schema.TAG_TRIAL}"].notna()]) == 6


@pytest.fixture(scope="module")
def tuned(store):
    path = write_sweep(store, "tuned", TUNED)
    assert run_sweep(path) == 0
    return path


def _study_trials(path: str) -> dict[str, list]:
    sweep = load_sweep(path)
    url = storage_url(sweep.tuning.storage)
    return {u.name: optuna.load_study(study_name=u.study, storage=open_storage(url)).get_trials() for u in units(sweep)}


def test_a_tuned_sweep_runs_each_study_to_its_trials_then_the_grid_with_the_selection(store, tuned):
    trials = _study_trials(tuned)
    assert {name: [t.state for t in ts] for name, ts in trials.items()} == {
        name: [TrialState.COMPLETE] * 2 for name in trials}
    runs = benchmark_runs("tuned")
    assert len(runs) == 1 + 3 and set(runs[f"tags.{schema.TAG_TUNED}"]) == {"true"}
    assert runs[f"tags.{schema.TAG_BUDGET_HASH}"].nunique() == 1
    selected = tracking.search_runs("tuned" + schema.TUNING_SUFFIX, f"tags.{schema.TAG_GRID_HASH} != ''")
    chosen = tracking.load_json(selected.iloc[0]["run_id"], schema.ARTIFACT_SELECTED)
    for _, run in runs.iterrows():
        study = next(v for v in chosen.values() if v["method"] == run[f"tags.{schema.TAG_METHOD}"])
        assert float(run["params.budget.lr"]) == pytest.approx(study["values"]["lr"])
        assert float(run["params.budget.val_fraction"]) == 0.1 and run["params.split_seed"] == "0"
        best = max(t.value for t in trials[study["name"]])
        assert study["objective"] == best
    # Trials are runs of their own experiment, never of the grid's.
    trial_runs = tracking.search_runs("tuned" + schema.TUNING_SUFFIX)
    trial_runs = trial_runs[trial_runs[f"tags.{schema.TAG_TRIAL}"].notna()]
    assert len(trial_runs) == 8 and f"tags.{schema.TAG_CONFIG_HASH}" not in trial_runs
    assert trial_runs[f"metrics.{schema.OBJECTIVE}"].notna().all()


def test_the_same_tuned_command_again_runs_nothing(store, tuned, capsys):
    assert run_sweep(tuned) == 0
    out = capsys.readouterr().out
    assert "fcn-digits-dense     2/2" in out and "0 trials left" in out
    assert "0 finished, 4 skipped" in out
    assert sum(len(ts) for ts in _study_trials(tuned).values()) == 8


def _dense_study(store, name: str) -> studies.TrialTask:
    """A one-trial dense study, created, and the task that runs its next trial."""
    path = write_sweep(store, name, TUNED, methods=["dense"], tuning={"trials": 1, "space": DENSE_SPACE})
    sweep = load_sweep(path)
    unit, = units(sweep)
    task = studies.TrialTask(unit, storage_url(sweep.tuning.storage), sweep.tuning, None)
    prepare(task.storage)
    studies.create(task.unit, task.storage)
    return task


def test_a_trial_whose_process_died_is_failed_at_once_and_retried_with_its_values(store):
    task = _dense_study(store, "dead")
    study = optuna.load_study(study_name=task.unit.study, storage=open_storage(task.storage))
    # A trial asked by a process that died before telling: RUNNING, its claim free, its MLflow run RUNNING.
    dead = study.ask(studies.distributions(task.unit.space))
    experiment = task.unit.configs[0].experiment
    run_id = tracking.start_run(experiment, "dead", params={}, tags={schema.TAG_STUDY: task.unit.study,
                                                                   schema.TAG_TRIAL: str(dead.number)})
    outcome = studies.run_next(task)
    assert outcome.status == studies.RAN and outcome.number == dead.number + 1
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE]
    assert trials[1].params == trials[0].params and trials[1].user_attrs[studies.RETRY_OF] == dead.number
    assert tracking.client().get_run(run_id).info.status == schema.STATUS_KILLED
    retry = tracking.search_runs(experiment, f"tags.{schema.TAG_TRIAL} = '{outcome.number}'")
    assert retry.iloc[0][f"tags.{schema.TAG_RETRY_OF}"] == str(dead.number)
    assert studies.run_next(task).status == studies.FULL  # exactly `trials` COMPLETE


def test_an_interrupted_trial_is_queued_again_with_its_values(store, monkeypatch):
    task = _dense_study(store, "stopped")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(studies, "run_trial", interrupted)
    with pytest.raises(KeyboardInterrupt):
        studies.run_next(task)
    study = optuna.load_study(study_name=task.unit.study, storage=open_storage(task.storage))
    first, queued = study.get_trials()
    assert (first.state, queued.state) == (TrialState.FAIL, TrialState.WAITING)
    monkeypatch.undo()
    assert studies.run_next(task).status == studies.RAN
    assert study.get_trials()[1].params == first.params


def test_a_diverged_trial_spends_its_trial_with_objective_zero(store, monkeypatch):
    task = _dense_study(store, "nan")

    def diverges(*args, **kwargs):
        raise NonFiniteLoss("loss is nan at epoch 1 (train)")

    monkeypatch.setattr(trial_module, "_score", diverges)
    outcome = studies.run_next(task)
    assert (outcome.status, outcome.objective) == (studies.RAN, trial_module.DIVERGED_OBJECTIVE)
    assert studies.run_next(task).status == studies.FULL
    run = tracking.search_runs(task.unit.configs[0].experiment).iloc[0]
    assert run[f"tags.{schema.TAG_DIVERGED}"] == "true" and "loss is nan" in run[f"tags.{schema.TAG_ERROR}"]
