"""The report's Tuning section, from a tiny real tuned sweep: selected values, history and weight-decay figures."""

import numpy as np
import pandas as pd
import pytest
from support import write_sweep

from benchmarks import tracking
from benchmarks.sweeps.driver import run_sweep
from benchmarks.tracking import schema
from reports import collect, figures, tables, tuning
from reports.build import build_report

TUNED = "tuned"  # a tuned sweep, and later an untuned one of the same name: one experiment holds both
PLAIN = "plain"  # an untuned sweep alone: no tuning experiment
# Two trials per method of a 3-layer, 64-wide FCN on digits: the whole module runs in seconds.
GRID = {"models": [{"name": "fcn", "layers": 3, "width": 64}], "datasets": ["digits"],
        "methods": ["dense", "svd", "lorita"], "targets": {"flops_drop": [0.5]}, "seeds": [0], "device": "cpu",
        "budget": {"epochs": 2, "finetune_epochs": 1, "lr": 0.05, "batch_size": 64, "schedule": "cosine",
                   "finetune_lr": 0.005}}
# The untuned sweeps: the reference alone, enough to hold untuned runs and cheap to report (no compressed runs).
UNTUNED = {**GRID, "methods": ["dense"]}
TUNING = {"trials": 2, "space": {"lr": {"low": 0.01, "high": 0.1, "log": True},
                                 "weight_decay": {"low": 1e-5, "high": 1e-3, "log": True}, "factors": [2, 3]}}


@pytest.fixture(scope="module")
def swept(store) -> None:
    """The tuned sweep, the untuned one into the same experiment, and the plain one."""
    assert run_sweep(write_sweep(store, TUNED, GRID, tuning=TUNING)) == 0
    # The same sweep name without a tuning block: its runs land in the tuned runs' experiment.
    assert run_sweep(write_sweep(store, TUNED, UNTUNED)) == 0
    assert run_sweep(write_sweep(store, PLAIN, UNTUNED)) == 0


@pytest.fixture(scope="module")
def built(swept, tmp_path_factory) -> dict:
    """The reports of the tuned and the plain experiment."""
    return {name: build_report(tmp_path_factory.mktemp(name), experiment=name) for name in (TUNED, PLAIN)}


@pytest.fixture(scope="module")
def found(swept) -> tuning.TuningRuns:
    return tuning.load_tuning(TUNED)


def _selected() -> dict:
    runs = tracking.search_runs(TUNED + schema.TUNING_SUFFIX)
    parent = runs[runs[f"tags.{schema.TAG_GRID_HASH}"].notna()].sort_values("start_time").iloc[-1]
    return tracking.load_json(parent["run_id"], schema.ARTIFACT_SELECTED)


def _stems(summary, kind: str) -> list[str]:
    return [p.stem for p in summary.figures if p.suffix == ".png" and p.stem.startswith(kind)]


def test_selected_values_are_those_of_selected_json(found, built):
    selected = _selected()
    studies = found.studies
    assert len(studies) == len(selected) == len(GRID["methods"])
    assert set(studies["method"]) == set(GRID["methods"])
    assert (studies["source"] == tuning.FROM_SELECTED).all()
    grid = tables.selected_grid(studies, "caption")
    knobs = grid.header[4:-3]
    assert set(knobs) == set(TUNING["space"])
    for study, row in zip(studies.itertuples(), grid.sections[0].rows, strict=True):
        chosen = selected[study.study]
        assert study.method == chosen["method"] and study.values == chosen["values"]
        assert (study.objective, study.trial, study.complete) == (chosen["objective"], chosen["trial"],
                                                                  chosen["trials"])
        assert row[0] == study.label
        assert row[4:-3] == [tables.knob_text(chosen["values"][k]) if k in chosen["values"] else "—" for k in knobs]
        assert row[-3:] == [f"{100 * chosen['objective']:.1f}", str(chosen["trial"]), str(chosen["trials"])]
    assert any(p.name == "tuning_selected.tex" for p in built[TUNED].tables)


def test_without_selected_json_the_best_trial_run_is_taken(found, swept, monkeypatch):
    def gone(run_id, name):
        raise tracking.MissingArtifact(run_id, name, tracking.tracking_uri())

    monkeypatch.setattr(tracking, "load_json", gone)
    derived = tuning.load_tuning(TUNED).studies
    assert (derived["source"] == tuning.FROM_TRIALS).all()
    pd.testing.assert_frame_equal(derived.drop(columns="source"), found.studies.drop(columns="source"))


def test_history_is_one_non_decreasing_line_per_study(found, built):
    assert len(_stems(built[TUNED], "tuning_history__")) == 1
    history = tuning.best_so_far(found.trials)
    assert len(history) == TUNING["trials"] * len(found.studies)
    lines = figures.history_figure(history, found.studies, "history").axes[0].get_lines()
    assert len(lines) == len(found.studies)
    for line, study in zip(lines, found.studies.itertuples(), strict=True):
        best = np.asarray(line.get_ydata(), dtype=float)
        assert len(best) == TUNING["trials"] and (np.diff(best) >= 0).all()
        assert best[-1] == pytest.approx(100 * study.objective)


def test_weight_decay_figure_has_a_panel_per_study_and_shows_divergence(found, built):
    assert len(_stems(built[TUNED], "tuning_weight_decay__")) == 1
    trials = found.trials.copy()
    trials.loc[0, ["diverged", "objective"]] = [True, 0.0]
    fig = figures.decay_figure(trials, found.studies, "decay")
    assert len(fig.axes) == len(found.studies)
    assert all(ax.get_xscale() == "log" for ax in fig.axes)
    labels = [c.get_label() for ax in fig.axes for c in ax.collections]
    assert labels.count("diverged (objective 0)") == 1 and labels.count("selected") == len(found.studies)


def test_the_report_has_a_tuning_section(built):
    text = built[TUNED].markdown.read_text()
    section = text[text.index("## Tuning"):]
    assert "### Selected values per method" in section and "test split" in section
    assert "validation" in section and "Optimisation history" in section and "weight decay" in section
    assert "<h2>Tuning</h2>" in built[TUNED].html.read_text()


def test_an_untuned_experiment_has_no_tuning_section(built):
    summary = built[PLAIN]
    assert "## Tuning" not in summary.markdown.read_text()
    assert not _stems(summary, "tuning_") and not any("tuning" in p.name for p in summary.tables)
    assert tuning.load_tuning(PLAIN).trials.empty


def test_tuned_and_untuned_runs_never_share_a_table(found, built):
    done = collect.finished(collect.load_runs(TUNED))[0]
    groups = [part for _, part in done.groupby(collect.GROUP)]
    assert sorted(part["tuned"].iloc[0] for part in groups) == [False, True]
    assert all(part["tuned"].nunique() == 1 for part in groups)
    assert built[TUNED].markdown.read_text().count("Tuned comparison") == 1
    # Trial runs carry the tuned runs' budget hash: read as runs they would join the tuned table.
    assert not set(found.trials["run_id"]) & set(collect.load_runs()["run_id"])
    assert set(tuning.load_tuning().studies["study"]) == set(found.studies["study"])
    # Tuned runs whose budgets differ in weight decay alone are no weight-decay ablation.
    tuned = done[done["tuned"]].copy()
    for name in collect.BUDGET_FIELDS:
        if name != "weight_decay":
            tuned[f"budget.{name}"] = tuned[f"budget.{name}"].iloc[0]
    assert tuned["budget.weight_decay"].nunique() > 1
    assert collect.weight_decay_ablations(tuned) == []


def test_a_tuned_runs_label_leaves_out_the_options_its_tuning_searched():
    row = {"run_id": "r", "status": "FINISHED", "start_time": 0, f"tags.{schema.TAG_MODEL}": "fcn",
           f"tags.{schema.TAG_METHOD}": "slim", f"tags.{schema.TAG_DATASET}": "digits", "params.factors": "1",
           "params.method_options.reg": "1.8965502067309053e-06", "params.method_options.steps": "2",
           "params.tuning.space.slim.reg.low": "1e-06", "params.tuning.space.lr.low": "0.001"}
    assert collect.tidy_row(row)["label"] == "Network slimming (steps=2)"
    untuned = {k: v for k, v in row.items() if "tuning" not in k}
    assert collect.tidy_row(untuned)["label"] == "Network slimming (reg=1.8965502067309053e-06, steps=2)"
