"""Results on the terminal: a table of a store's finished runs (mean +- std over seeds), and two runs side by side.

`lorita-bench results` and the end of a sweep print `results_table`; `lorita-bench compare` prints `comparison`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence

import pandas as pd

from benchmarks import tracking
from benchmarks.errors import did_you_mean
from benchmarks.methods import METHODS
from benchmarks.tracking import schema

# What a row of the results table is: one operating point of one method under one budget.
_GROUP = ["tags.model", "tags.dataset", "label", "target_label", f"tags.{schema.TAG_BUDGET_HASH}"]
# The final numbers `compare` lists, with how each is shown.
COMPARED = [(schema.ACC_TRAINED, "{:.4f}"), (schema.ACC_COMPRESSED, "{:.4f}"), (schema.ACC_FINETUNED, "{:.4f}"),
            (schema.FLOPS, "{:,.0f}"), (schema.FLOPS_DROP, "{:.1%}"), (schema.PARAMS, "{:,.0f}"),
            (schema.PARAMS_DROP, "{:.1%}"), (schema.LATENCY_MS_B1, "{:.3f} ms"), (schema.TRAIN_TIME_S, "{:.1f} s")]


def _column(frame: pd.DataFrame, name: str) -> pd.Series:
    return frame[name] if name in frame else pd.Series([None] * len(frame), index=frame.index, dtype=object)


def _label(row: Mapping) -> str:
    """The method as reports name it (LoRITa (N=3)), from the run's params; its name when no longer registered."""
    method = METHODS.get(row.get(f"tags.{schema.TAG_METHOD}"))
    if method is None:
        return str(row.get(f"tags.{schema.TAG_METHOD}"))
    prefix = "params.method_options."
    options = {k.removeprefix(prefix): v for k, v in row.items() if k.startswith(prefix) and isinstance(v, str)}
    exclude = row.get("params.exclude")
    exclude = json.loads(exclude) if isinstance(exclude, str) and exclude.startswith("[") else None
    factors = row.get("params.factors")
    return method.display_label(int(factors) if isinstance(factors, str) and factors.isdigit() else 1, options,
                                exclude)


def _target(row: Mapping) -> str:
    metric, target = row.get("params.target_metric"), row.get("params.target")
    if not isinstance(metric, str) or metric in ("None", "") or target in (None, "None"):
        return "-"
    return f"{metric.removesuffix('_drop')} {float(target):.2f}"


def _mean_std(values: pd.Series, fmt: str) -> str:
    values = values.dropna()
    if values.empty:
        return "-"
    # The sample std (n - 1) of the seeds: one seed has none to show.
    spread = f" +- {fmt.format(values.std(ddof=1))}" if len(values) > 1 else ""
    return fmt.format(values.mean()) + spread


def finished_runs(experiment: str | None) -> pd.DataFrame:
    """The benchmark runs (a sweep's parent carries no method tag) of `experiment` (every one when None) that
    FINISHED; a one-line error naming the nearest experiment when it does not exist."""
    if experiment is not None:
        check_experiment(experiment)
    frame = tracking.search_runs(experiment, f"attributes.status = '{schema.STATUS_FINISHED}'")
    return frame[_column(frame, f"tags.{schema.TAG_METHOD}").notna()]


def check_experiment(name: str) -> None:
    """A one-line ValueError (with a "did you mean") unless the store has an active experiment `name`."""
    names = tracking.experiment_names()
    if name not in names:
        raise ValueError(f"no experiment {name!r} in the tracking store {tracking.tracking_uri()}"
                         f"{did_you_mean(name, names)}; it has: {', '.join(names) or 'none'}")


def results_table(frame: pd.DataFrame) -> str:
    """One line per (model, dataset, method, target, budget): runs, achieved drop and accuracies over the seeds."""
    if frame.empty:
        return "no finished runs"
    frame = frame.copy()
    rows = frame.to_dict("records")
    frame["label"] = [_label(row) for row in rows]
    frame["target_label"] = [_target(row) for row in rows]
    for name in _GROUP:
        frame[name] = _column(frame, name).fillna("-")
    reasons = _column(frame, f"tags.{schema.TAG_NOT_APPLICABLE}")
    budgets = frame[f"tags.{schema.TAG_BUDGET_HASH}"].nunique() > 1
    header = ["model", "dataset", "method", "target", *(["budget"] if budgets else []), "runs", "drop achieved",
              "acc trained", "acc compressed", "acc fine-tuned"]
    table = [header]
    ranks = {name: method.report_rank for name, method in METHODS.items()}
    frame["rank"] = [ranks.get(row.get(f"tags.{schema.TAG_METHOD}"), len(ranks)) for row in rows]
    # Reports' order: per model and dataset, the reference first, then each method by its rank, targets ascending.
    frame = frame.sort_values(["tags.model", "tags.dataset", "rank", "label", "target_label"], kind="stable")
    for key, group in frame.groupby(_GROUP, sort=False):
        model, dataset, label, target, budget = key
        metric = group["params.target_metric"].iloc[0] if "params.target_metric" in group else None
        drop_name = f"metrics.{metric}" if isinstance(metric, str) and metric != "None" else None
        reason = reasons[group.index].dropna()
        if not reason.empty:
            numbers = ["n/a", f"n/a: {reason.iloc[0]}", "", ""]
        else:
            drop = _mean_std(_column(group, drop_name), "{:.1%}") if drop_name else "-"
            numbers = [drop, *(_mean_std(_column(group, f"metrics.{name}"), "{:.4f}")
                               for name in (schema.ACC_TRAINED, schema.ACC_COMPRESSED, schema.ACC_FINETUNED))]
        table.append([model, dataset, label, target, *([budget] if budgets else []), str(len(group)), *numbers])
    return _aligned(table) + "\n(mean +- sample std over the runs, one per seed)"


def _aligned(table: Sequence[Sequence[str]]) -> str:
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in table]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:]])


def comparison(run_ids: Iterable[str]) -> str:
    """Runs side by side: what they ran, the config keys in which they differ, and their final numbers."""
    records = [tracking.run_record(run_id) for run_id in run_ids]
    ids = [r["run_id"] for r in records]
    table = [["", *ids]]
    table.append(["status", *(r["status"] for r in records)])
    table.append(["experiment", *(r["experiment"] for r in records)])
    for tag in (schema.TAG_METHOD, schema.TAG_MODEL, schema.TAG_DATASET):
        table.append([tag, *(r["tags"].get(tag, "-") for r in records)])
    keys = sorted({k for r in records for k in r["params"]})
    differing = [k for k in keys if len({r["params"].get(k) for r in records}) > 1]
    shown = {schema.TAG_METHOD, schema.TAG_MODEL, schema.TAG_DATASET}
    table += [[f"  {k}", *(r["params"].get(k, "-") for r in records)] for k in differing if k not in shown]
    for name, fmt in COMPARED:
        values = [r["metrics"].get(name) for r in records]
        if any(v is not None for v in values):
            table.append([name, *("-" if v is None or (isinstance(v, float) and math.isnan(v)) else fmt.format(v)
                                  for v in values)])
    same = "" if differing else "\n(their configs are the same)"
    return _aligned(table) + same
