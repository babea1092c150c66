"""Links from the report to its runs in the MLflow UI."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from benchmarks import tracking
from reports.tables import target_title

# Where `lorita-bench ui` serves a local store by default.
DEFAULT_UI = "http://127.0.0.1:5000"


@dataclass(frozen=True)
class RunLink:
    """One run behind a table or figure: what it is, and its page in the MLflow UI."""

    text: str
    url: str


def ui_base(ui_url: str | None = None) -> str:
    """The MLflow UI the links point at: `ui_url`, else the tracking server itself, else `lorita-bench ui`'s."""
    if ui_url:
        return ui_url.rstrip("/")
    uri = tracking.tracking_uri()
    return uri.rstrip("/") if tracking.is_http(uri) else DEFAULT_UI


def run_url(base: str, experiment_id: str, run_id: str) -> str:
    """The run's page in the MLflow UI at `base`."""
    return tracking.ui_page(base, f"experiments/{experiment_id}/runs/{run_id}")


def describe(row: pd.Series) -> str:
    """LoRITa (N=2), FLOPs drop target 50 %, seed 1: a run as a link's text."""
    parts = [str(row["label"])]
    if not pd.isna(row["target"]):
        parts.append(target_title(row["target_metric"], row["target"]))
    parts.append(f"seed {row['seed']}")
    return ", ".join(parts)


def run_links(runs: pd.DataFrame, base: str) -> list[RunLink]:
    """A link per run, in the order of `runs`."""
    return [RunLink(describe(row), run_url(base, str(row["experiment_id"]), str(row["run_id"])))
            for _, row in runs.iterrows()]
