"""`lorita-bench runs delete --failed`: remove a store's failed and killed runs (MLflow's soft delete).

Only benchmark runs are touched (a sweep's parent run has no method tag, and a rerun of the sweep ends it again);
runs tagged not applicable are never touched, whatever their status. Checkpoints stay, so a killed run still
resumes, unless `purge`: then its fine-tuning checkpoints and its unfinished training checkpoint go too, each only
while no process runs or trains that config.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import yaml
from filelock import FileLock, Timeout

from benchmarks import checkpoints, tracking
from benchmarks.config import make_config
from benchmarks.results import check_experiment
from benchmarks.run import claims
from benchmarks.run.pipeline import finetune_dir, run_key, trained_dir
from benchmarks.tracking import schema

# The statuses `--failed` removes: a run that raised, and one stopped (Ctrl-C, SIGTERM, its process died).
REMOVED = (schema.STATUS_FAILED, schema.STATUS_KILLED)


@dataclass(frozen=True)
class Doomed:
    """A run `delete` removes: its id, experiment, name, status and error line."""

    run_id: str
    experiment: str
    name: str
    status: str
    error: str


def failed_runs(experiment: str | None) -> list[Doomed]:
    """The FAILED and KILLED benchmark runs of `experiment` (every experiment when None), oldest first."""
    if experiment is not None:
        check_experiment(experiment)
    names = [experiment] if experiment is not None else tracking.experiment_names()
    found = []
    for name in names:
        frame = tracking.search_runs(name)
        for column in (f"tags.{schema.TAG_METHOD}", f"tags.{schema.TAG_NOT_APPLICABLE}", f"tags.{schema.TAG_ERROR}",
                       f"tags.{schema.TAG_RUN_NAME}"):
            if column not in frame:
                frame[column] = None
        keep = (frame["status"].isin(REMOVED) & frame[f"tags.{schema.TAG_METHOD}"].notna()
                & frame[f"tags.{schema.TAG_NOT_APPLICABLE}"].isna())
        for row in frame[keep].sort_values("start_time").to_dict("records"):
            error = row[f"tags.{schema.TAG_ERROR}"]
            found.append(Doomed(row["run_id"], name, row[f"tags.{schema.TAG_RUN_NAME}"] or "-", row["status"],
                                error if isinstance(error, str) and not pd.isna(error) else "-"))
    return found


def listing(runs: list[Doomed]) -> str:
    """One line per run: status, experiment, id, name and the error that ended it."""
    return "\n".join(f"  {r.status:<8} {r.experiment}  {r.run_id}  {r.name}: {r.error[:120]}" for r in runs)


def _purge(run_id: str) -> list[str]:
    """Remove the run's checkpoints unless its config is being run or trained now; what was removed or kept."""
    try:
        cfg = make_config(yaml.safe_load(tracking.load_text(run_id, schema.ARTIFACT_CONFIG)))
    except (ValueError, yaml.YAMLError, TypeError) as err:
        return [f"checkpoints of run {run_id} kept: its config cannot be read back ({str(err)[:100]})"]
    data = tracking.run_record(run_id)["tags"].get(schema.TAG_DATA_FINGERPRINT)
    if data is None:
        return [f"checkpoints of run {run_id} kept: it records no data fingerprint"]
    done = []
    with claims.claimed(run_key(cfg, data), wait=False) as mine:
        if not mine:
            return [f"checkpoints of run {run_id} kept: another process runs its config now"]
        folder = finetune_dir(cfg, data)
        if folder.exists():
            shutil.rmtree(folder, ignore_errors=True)
            done.append(f"removed {folder}")
    done += _purge_training(trained_dir(cfg, data))
    return done


def _purge_training(folder: Path) -> list[str]:
    """Remove an unfinished training's checkpoint (a finished one's cached model stays for every run it serves)."""
    checkpoint = folder / "checkpoint.pt"
    if not checkpoint.exists():
        return []
    try:
        with FileLock(str(folder / ".lock"), timeout=0):
            checkpoints.remove(checkpoint)
    except Timeout:
        return [f"kept {checkpoint}: a process trains that model now"]
    return [f"removed {checkpoint}"]


def delete_failed(experiment: str | None, *, dry_run: bool, purge: bool) -> str:
    """Soft-delete the failed and killed runs (listing them only when `dry_run`); what was done, to print."""
    runs = failed_runs(experiment)
    where = f"experiment {experiment!r}" if experiment is not None else "the store"
    if not runs:
        return f"no failed or killed runs in {where} ({tracking.tracking_uri()})"
    if dry_run:
        return (f"would delete {len(runs)} run{'s' * (len(runs) != 1)} of {where} (dry run; nothing changed):\n"
                + listing(runs))
    lines = []
    for run in runs:
        if purge:
            lines += _purge(run.run_id)
        tracking.delete_run(run.run_id)
    kept = "their checkpoints removed where no process uses them" if purge else (
        "checkpoints kept (--purge removes them)")
    return "\n".join([f"deleted {len(runs)} run{'s' * (len(runs) != 1)} of {where} (MLflow's soft delete: "
                      f"`mlflow gc` removes them for good); {kept}:", listing(runs), *lines])
