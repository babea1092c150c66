"""One tuning trial: train with the sampled values, compress to each target, fine-tune, score on validation data.

A trial sees the data through `data.validation_view`: the validation split stands where the test split was and
the test split is gone, so no test image is ever forwarded while tuning. Its trained model and fine-tuning
checkpoints live in the same cache as any run's (keyed by the view's fingerprint), so a retried trial resumes
from what a killed one saved. Each trial is one MLflow run in the experiment `<sweep>-tuning`.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from typing import Any

import yaml

from benchmarks import tracking
from benchmarks.config import LATENCY_DROP, config_to_dict
from benchmarks.data import load_dataset, validation_view
from benchmarks.errors import one_line
from benchmarks.methods import get_method
from benchmarks.run import claims, speed
from benchmarks.run.environment import check_writable, environment_tags, resolve_device
from benchmarks.run.pipeline import (
    compress_and_finetune,
    finetune_dir,
    model_size,
    obtain_trained,
    run_key,
    training_group,
)
from benchmarks.run.train import NonFiniteLoss, evaluate
from benchmarks.tracking import schema
from benchmarks.tuning.units import Unit, apply

# The objective of a trial whose loss became NaN or infinite: it still spends one of the method's trials (the
# budget stays equal) and tells the sampler the region is bad; tagged diverged.
DIVERGED_OBJECTIVE = 0.0


@dataclass(frozen=True)
class TrialResult:
    """A trial's objective and its validation accuracies by metric name."""

    objective: float
    metrics: dict[str, float]
    diverged: bool
    run_id: str


def _as_validation(metrics: dict[str, float]) -> dict[str, float]:
    # Through the view, the training curve's "test" accuracy is validation accuracy: logged as what it is.
    names = schema.TRAINING
    return {(names.val_acc if key == names.test_acc else key): value for key, value in metrics.items()}


def _score(unit: Unit, values: dict[str, Any], objective: tuple[str, float] | None,
           run_id: str) -> dict[str, float]:
    """Train (once per trained model the targets need), compress to each target and fine-tune: the validation
    accuracies (and the objective)."""
    configs = [apply(cfg, values) for cfg in unit.configs]
    first = configs[0]
    method = get_method(first.method)
    device = resolve_device(first.device)
    check_writable(first.cache_dir)
    data = validation_view(load_dataset(first.dataset, data_root=first.data_root,
                                        val_fraction=first.budget.val_fraction, seed=first.split, device=device,
                                        cache_dir=first.cache_dir, options=first.dataset_kwargs))

    def log(metrics: dict[str, float], step: int) -> None:
        tracking.log_metrics(run_id, _as_validation(metrics), step=step)

    def log_history(history: list[dict[str, float]]) -> None:
        tracking.log_history(run_id, [_as_validation(h) for h in history])

    def silent(*_: object) -> None:
        pass

    # Most methods train once for every target; one whose trained model depends on the target (Cuttlefish) trains
    # once per target, and the trial's curves are those of its first training.
    trainings: dict[str, tuple] = {}
    metrics: dict[str, float] = {}
    finetuned = {}
    for cfg in configs:
        group = training_group(cfg)
        if group not in trainings:
            first_training = not trainings
            trained = obtain_trained(cfg, method, data, device, *((log, log_history) if first_training
                                                                  else (silent, silent)))
            if first_training:
                metrics[schema.VAL_ACC_TRAINED] = trained.meta["acc_trained"]
            if not method.compresses:
                return {**metrics, schema.OBJECTIVE: metrics[schema.VAL_ACC_TRAINED]}
            base = method.uncompressed(cfg, trained.model)
            trainings[group] = (trained, base, model_size(base, data, device))
        trained, base, reference = trainings[group]
        # Two trials that sampled the same values (choices only) share these checkpoints: one at a time.
        with claims.claimed(f"trial-{run_key(cfg, data.fingerprint)}", wait=True):
            # A latency target's table was built before the trials (the sweep's driver): read here.
            latency = (speed.cached(cfg, method, base, data.in_shape, device, measure=True)
                       if cfg.target_metric == LATENCY_DROP else None)
            model, _, acc_compressed = compress_and_finetune(cfg, method, data, base, device,
                                                             silent, reference, trained.model, latency)
            shutil.rmtree(finetune_dir(cfg, data.fingerprint), ignore_errors=True)
        acc = evaluate(model, data.test_x, data.test_y, data)  # the view's test split: validation data
        finetuned[cfg.target_metric, cfg.target] = acc
        metrics[schema.val_acc_at(cfg.target_metric, cfg.target)] = acc
        metrics[schema.val_acc_at(cfg.target_metric, cfg.target, finetuned=False)] = acc_compressed
    score = finetuned[objective] if objective is not None else sum(finetuned.values()) / len(finetuned)
    return {**metrics, schema.OBJECTIVE: score}


def run_trial(unit: Unit, values: dict[str, Any], number: int, *, objective: tuple[str, float] | None,
              parent_run_id: str | None, retry_of: int | None = None) -> TrialResult:
    """Run trial `number` of `unit` with `values`, recorded as an MLflow run; a failure is recorded and re-raised."""
    cfg = apply(unit.configs[0], values)
    device = resolve_device(cfg.device)
    # No config_hash tag: a trial is no reported run, and find_run must never take it for one.
    tags = {schema.TAG_METHOD: cfg.method, schema.TAG_MODEL: cfg.model, schema.TAG_DATASET: cfg.dataset,
            schema.TAG_FACTORS: str(cfg.factors), schema.TAG_BUDGET_HASH: cfg.budget_hash(),
            schema.TAG_STUDY: unit.study, schema.TAG_TRIAL: str(number), schema.TAG_RUNNER: claims.runner(),
            **environment_tags(device)}
    if retry_of is not None:
        tags[schema.TAG_RETRY_OF] = str(retry_of)
    params = {**{k: v for k, v in config_to_dict(cfg).items() if k not in ("target", "target_metric")},
              "trial": number, **{f"{schema.TUNED_PARAM_PREFIX}{k}": v for k, v in values.items()}}
    run_id = tracking.start_run(cfg.experiment, f"{unit.name}-trial{number}", params=params, tags=tags,
                                parent_run_id=parent_run_id)
    with tracking.recorded(run_id):
        tracking.log_text(run_id, schema.ARTIFACT_CONFIG, yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
        try:
            metrics, diverged = _score(unit, values, objective, run_id), False
        except NonFiniteLoss as err:
            metrics, diverged = {schema.OBJECTIVE: DIVERGED_OBJECTIVE}, True
            tracking.set_tags(run_id, {schema.TAG_DIVERGED: "true", schema.TAG_ERROR: one_line(err)})
        tracking.log_metrics(run_id, metrics)
    return TrialResult(metrics[schema.OBJECTIVE], metrics, diverged, run_id)
