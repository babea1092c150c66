"""Tuning trials from the tracking store: a tidy row per trial, each study's selected values, best-so-far histories.

A tuned sweep `E` records its trials in the experiment `E-tuning` (schema.TUNING_SUFFIX), nested under a parent run
whose selected.json holds each study's selection; the reported grid's runs live in `E` like any sweep's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from benchmarks import tracking
from benchmarks.tracking import schema
from reports import collect

TRIAL_COLUMNS = ["run_id", "status", "study", "trial", "objective", "diverged", "values", "weight_decay", "parent"]
# What a study's row takes from its selected trial's: the label and style figures give the method, and its group.
FROM_TRIAL = ["label", "method", "method_rank", "factors", "reference", "model_label", "dataset", "budget_hash"]
STUDY_COLUMNS = ["study", *FROM_TRIAL, "values", "objective", "trial", "complete", "not_finished", "source"]
# Where a study's selection came from: the tuner's record of it, or the best FINISHED trial run when that is gone.
FROM_SELECTED, FROM_TRIALS = schema.ARTIFACT_SELECTED, "trial runs"


@dataclass(frozen=True)
class TuningRuns:
    """What the tuning stages behind a report recorded: a row per trial and a row per study."""

    trials: pd.DataFrame
    studies: pd.DataFrame


def _trial_row(row: dict[str, Any]) -> dict[str, Any]:
    values = collect.prefixed(row, f"params.{schema.TUNED_PARAM_PREFIX}")
    decay = values.get("weight_decay", row.get("params.budget.weight_decay"))
    return {**collect.tidy_row(row), "study": row[f"tags.{schema.TAG_STUDY}"],
            "trial": int(row[f"tags.{schema.TAG_TRIAL}"]), "objective": row.get(f"metrics.{schema.OBJECTIVE}", np.nan),
            "diverged": row.get(f"tags.{schema.TAG_DIVERGED}") == "true", "values": values,
            "weight_decay": float(decay) if decay is not None else np.nan,
            "parent": row.get(f"tags.{schema.TAG_PARENT_RUN_ID}")}


def _selections(raw: pd.DataFrame, parents: set[str]) -> list[tuple[str, dict[str, Any]]]:
    """(parent run id, its selected.json) of the tuning parents that have one, newest first."""
    rows = raw[raw["run_id"].isin(parents)].sort_values("start_time", ascending=False)
    found = []
    for run_id in rows["run_id"]:
        try:
            found.append((run_id, tracking.load_json(run_id, schema.ARTIFACT_SELECTED)))
        except tracking.MissingArtifact:
            continue  # a tuning that failed or was stopped selected nothing
    return found


def _study_row(trials: pd.DataFrame, selections: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    """A study's selection: from the newest of its parents' selected.json, else its best FINISHED trial."""
    study = trials["study"].iloc[0]
    done = trials[(trials["status"] == schema.STATUS_FINISHED) & trials["objective"].notna()]
    parents = set(trials["parent"].dropna())
    recorded = next((chosen[study] for run_id, chosen in selections if run_id in parents and study in chosen), None)
    if recorded is not None:
        choice = {"values": recorded["values"], "objective": float(recorded["objective"]),
                  "trial": int(recorded["trial"]), "complete": int(recorded["trials"]), "source": FROM_SELECTED}
    elif not done.empty:
        # Optuna's best trial: the highest objective, the first of equals.
        best = done.sort_values(["objective", "trial"], ascending=[False, True]).iloc[0]
        choice = {"values": best["values"], "objective": float(best["objective"]), "trial": int(best["trial"]),
                  "complete": len(done), "source": FROM_TRIALS}
    else:
        choice = {"values": {}, "objective": np.nan, "trial": None, "complete": 0, "source": None}
    # The study's label is its selected trial's: the label the tuned runs it selected for carry in every figure.
    chosen = done[done["trial"] == choice["trial"]]
    first = (chosen if not chosen.empty else done if not done.empty else trials).iloc[0]
    return {"study": study, **{key: first[key] for key in FROM_TRIAL}, **choice,
            "not_finished": int(trials["status"].isin(collect.NOT_FINISHED).sum())}


def load_tuning(experiment: str | None = None, model: str | None = None, dataset: str | None = None) -> TuningRuns:
    """The trials and studies of `experiment`'s tuning stage (of every tuning stage when None), filtered as runs are."""
    raw = tracking.search_runs(None if experiment is None else experiment + schema.TUNING_SUFFIX)
    rows = collect.method_rows(raw, model, dataset)
    rows = rows[collect.is_trial(rows)]
    if rows.empty:
        return TuningRuns(pd.DataFrame(columns=TRIAL_COLUMNS), pd.DataFrame(columns=STUDY_COLUMNS))
    trials = pd.DataFrame([_trial_row(row) for row in rows.to_dict("records")])
    trials = trials.sort_values(["study", "trial", "start_time"], ignore_index=True)
    selections = _selections(raw, set(trials["parent"].dropna()))
    studies = pd.DataFrame([_study_row(part, selections) for _, part in trials.groupby("study", sort=False)])
    # Int64: a study without a finished trial has no selected trial, and the others keep integer numbers.
    studies = studies.assign(trial=studies["trial"].astype("Int64"), order=studies["label"].map(
        collect.label_order(studies)))
    return TuningRuns(trials, studies.sort_values([*collect.GROUP, "order"], ignore_index=True).drop(columns="order"))


def best_so_far(trials: pd.DataFrame) -> pd.DataFrame:
    """The FINISHED trials by study and trial number, with `best`: the highest objective up to each trial."""
    done = trials[(trials["status"] == schema.STATUS_FINISHED) & trials["objective"].notna()]
    done = done.sort_values(["study", "trial"], ignore_index=True)
    return done.assign(best=done.groupby("study")["objective"].cummax())
