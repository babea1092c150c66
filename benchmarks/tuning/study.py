"""A method's study: exactly `trials` trials, whichever processes, executors or machines run them.

Optuna's own trial count is per process, and a waiting trial has been seen handed to two SQLite workers, so a
trial starts only under the suite's claim on its study, after counting COMPLETE trials plus RUNNING ones whose
process lives (each running trial holds a claim of its own, taken before the study's claim is let go). A RUNNING
trial whose claim is free lost its process: it is failed at once, not after a heartbeat grace period, and its
values are queued again, so the retry trains the same model and resumes from the dead trial's checkpoints.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution
from optuna.trial import FrozenTrial, TrialState

from benchmarks import tracking
from benchmarks.config import stable_hash
from benchmarks.errors import one_line
from benchmarks.methods import SearchRange
from benchmarks.run import claims
from benchmarks.tracking import schema
from benchmarks.tuning.space import Dimension, Tuning
from benchmarks.tuning.storage import open_storage
from benchmarks.tuning.trial import run_trial
from benchmarks.tuning.units import Unit

# A trial's user attribute naming the trial whose values it retries.
RETRY_OF = "retry_of"
DIVERGED = "diverged"
# Outcomes of one attempt to run a study's next trial.
RAN, FULL, HELD, FAILED, STOPPED = "ran", "full", "held", "failed", "stopped"


@dataclass(frozen=True)
class TrialTask:
    """What a worker needs to run one more trial of a study (picklable: it crosses processes and Ray)."""

    unit: Unit
    storage: str
    tuning: Tuning
    parent_run_id: str | None


@dataclass(frozen=True)
class Outcome:
    """How an attempt ended: RAN (trial `number` scored `objective`), FULL (the study has its trials), HELD (the rest
    run elsewhere), FAILED (trial `number` raised `error`) or STOPPED (the worker was stopping)."""

    unit: str  # the unit's key
    status: str
    number: int | None = None
    objective: float | None = None
    error: str | None = None


@dataclass(frozen=True)
class Progress:
    complete: int
    live: int


def distributions(space: dict[str, Dimension]) -> dict[str, BaseDistribution]:
    """The Optuna distribution of every searched knob."""
    return {key: FloatDistribution(dim.low, dim.high, log=dim.log) if isinstance(dim, SearchRange)
            else CategoricalDistribution(list(dim)) for key, dim in space.items()}


def _tpe(seed: int, trials: int) -> optuna.samplers.BaseSampler:
    # Optuna's default of 10 random start-up trials would make a 10-trial study a random search.
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(1, trials // 3))


def _random(seed: int, trials: int) -> optuna.samplers.BaseSampler:
    return optuna.samplers.RandomSampler(seed=seed)


SAMPLERS = {"tpe": _tpe, "random": _random}


def _sampler(tuning: Tuning, study: str, asked: int) -> optuna.samplers.BaseSampler:
    # Seeded by the study and the number of trials asked before: the same sequence of values whichever process
    # asks, and no two processes starting from one random state.
    seed = int(stable_hash([tuning.seed, study, asked]), 16) % 2**32
    return SAMPLERS[tuning.sampler](seed, tuning.trials)


def create(unit: Unit, storage: str) -> None:
    """Create the unit's study (maximising its objective) unless it exists."""
    optuna.create_study(study_name=unit.study, storage=open_storage(storage), direction="maximize",
                        load_if_exists=True)


def _load(unit: Unit, storage: str, sampler: optuna.samplers.BaseSampler | None = None) -> optuna.Study:
    return optuna.load_study(study_name=unit.study, storage=open_storage(storage), sampler=sampler)


def _trial_claim(unit: Unit, number: int) -> str:
    return f"tuning-trial-{stable_hash([unit.study, number])}"


def _study_claim(unit: Unit) -> str:
    return f"tuning-study-{stable_hash(unit.study)}"


def _close_dead(study: optuna.Study, unit: Unit, trial: FrozenTrial) -> None:
    """Fail a RUNNING trial whose process died, queue its values again and end its MLflow run KILLED."""
    study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
    study.enqueue_trial(trial.params, user_attrs={RETRY_OF: trial.number})
    experiment = unit.configs[0].experiment
    found = tracking.search_runs(experiment, f"tags.{schema.TAG_STUDY} = '{unit.study}' and "
                                             f"tags.{schema.TAG_TRIAL} = '{trial.number}' and "
                                             f"attributes.status = '{schema.STATUS_RUNNING}'")
    for run_id in found.get("run_id", []):
        tracking.end_run(run_id, schema.STATUS_KILLED, error="its process died; its values are tried again")


def _progress(study: optuna.Study, unit: Unit) -> Progress:
    """COMPLETE and live RUNNING trials, after failing (and requeueing) the RUNNING ones whose process died.

    The caller holds the study's claim: no trial is being started meanwhile.
    """
    complete = live = 0
    for trial in study.get_trials(deepcopy=False):
        if trial.state == TrialState.COMPLETE:
            complete += 1
        elif trial.state == TrialState.RUNNING:
            with claims.claimed(_trial_claim(unit, trial.number), wait=False) as free:
                if free:
                    _close_dead(study, unit, trial)
                else:
                    live += 1
    return Progress(complete, live)


def progress(unit: Unit, storage: str) -> Progress:
    """The study's COMPLETE and live RUNNING trials (dead ones failed and requeued on the way)."""
    with claims.claimed(_study_claim(unit), wait=True):
        return _progress(_load(unit, storage), unit)


def run_next(task: TrialTask) -> Outcome:
    """Run the study's next trial, unless it has (or others are running) all its trials."""
    unit, tuning = task.unit, task.tuning
    with contextlib.ExitStack() as stack:
        with claims.claimed(_study_claim(unit), wait=True):
            study = _load(unit, task.storage)
            counts = _progress(study, unit)
            if counts.complete >= tuning.trials:
                return Outcome(unit.key, FULL)
            if counts.complete + counts.live >= tuning.trials:
                return Outcome(unit.key, HELD)
            study.sampler = _sampler(tuning, unit.study, len(study.get_trials(deepcopy=False)))
            trial = study.ask(distributions(unit.space))
            # Taken before the study's claim is let go: a counter never sees this trial RUNNING without it.
            if not stack.enter_context(claims.claimed(_trial_claim(unit, trial.number), wait=False)):
                raise RuntimeError(f"trial {trial.number} of study {unit.study} is claimed by another process")
        return _run(study, unit, trial, task)


def _run(study: optuna.Study, unit: Unit, trial: optuna.Trial, task: TrialTask) -> Outcome:
    values: dict[str, Any] = dict(trial.params)
    retry_of = trial.user_attrs.get(RETRY_OF)
    try:
        result = run_trial(unit, values, trial.number, objective=task.tuning.objective,
                           parent_run_id=task.parent_run_id, retry_of=retry_of)
    except KeyboardInterrupt:
        # Stopped, not failed: the same values are tried again by the next command, from their checkpoints.
        study.tell(trial, state=TrialState.FAIL)
        study.enqueue_trial(values, user_attrs={RETRY_OF: trial.number})
        raise
    except Exception as err:  # noqa: BLE001 - recorded in the study and the store; the tuner reports it
        study.tell(trial, state=TrialState.FAIL)
        return Outcome(unit.key, FAILED, trial.number, error=one_line(err, kind=True))
    if result.diverged:
        trial.set_user_attr(DIVERGED, True)
    study.tell(trial, result.objective)
    return Outcome(unit.key, RAN, trial.number, result.objective)


@dataclass(frozen=True)
class Best:
    """A finished study's selected values."""

    values: dict[str, Any]
    objective: float
    number: int
    complete: int


def best(unit: Unit, storage: str) -> Best:
    """The study's best COMPLETE trial (the first of equals)."""
    study = _load(unit, storage)
    trial = study.best_trial
    complete = sum(t.state == TrialState.COMPLETE for t in study.get_trials(deepcopy=False))
    return Best(dict(trial.params), float(trial.value), trial.number, complete)
