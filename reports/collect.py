"""Runs from the tracking store as one tidy frame (a row per run), the comparison groups, and seed statistics."""

from __future__ import annotations

import fnmatch
import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from benchmarks import tracking
from benchmarks.config import BUDGET_FIELDS, stable_hash
from benchmarks.methods import METHODS
from benchmarks.tracking import schema
from reports import latency

RESULT_METRICS = (schema.ACC_TRAINED, schema.ACC_COMPRESSED, schema.ACC_FINETUNED, schema.FLOPS, schema.PARAMS,
                  schema.FLOPS_BASE, schema.PARAMS_BASE, schema.FLOPS_DROP, schema.PARAMS_DROP, schema.TRAIN_TIME_S)
ENV_TAGS = (schema.TAG_TORCH_VERSION, schema.TAG_GIT_COMMIT, schema.TAG_CPU_MODEL, schema.TAG_GPU_NAME)
# Runs that may share one table and one figure: same network, data and budget.
GROUP = ["model_label", "dataset", "budget_hash"]
# Runs on one imported checkpoint (lorita-bench import-authors): a section of their own, never a comparison's rows.
IMPORTED_GROUP = [*GROUP, "trained_from"]
# What makes two finished runs the same measurement (a rerun or the same config in another experiment).
MEASUREMENT = [*IMPORTED_GROUP, "label", "target_metric", "target", "seed"]
NOT_FINISHED = (schema.STATUS_FAILED, schema.STATUS_KILLED)
# Where a method no longer registered (a store written by another version) comes in report order: last.
_UNKNOWN_RANK = 99


def _parse(text: Any) -> Any:
    """A recorded param back to its value: JSON where it parses ("3", "[32, 64]"), None for "None"."""
    if not isinstance(text, str) or text == "None":
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _text(value: Any) -> str | None:
    """A tag's value, None where the run has none (NaN in a frame of other runs' tags)."""
    return value if isinstance(value, str) else None


def prefixed(row: dict[str, Any], prefix: str) -> dict[str, Any]:
    """{key: value} of the params under one prefix (e.g. params.model_kwargs.) that this run recorded."""
    return {key.removeprefix(prefix): _parse(value) for key, value in sorted(row.items())
            if key.startswith(prefix) and isinstance(value, str)}


def model_label(model: str, kwargs: dict[str, Any]) -> str:
    """fcn (layers=3, width=64): the network a comparison is about."""
    options = ", ".join(f"{key}={value}" for key, value in kwargs.items())
    return f"{model} ({options})" if options else model


def _method_columns(method: str, factors: int, options: dict[str, Any], exclude: Any) -> dict[str, Any]:
    """What the registry says of a run's method, as data: its label, report rank, and what kind of reference it is."""
    found = METHODS.get(method)
    if found is None:
        # Still reportable: its code name as label, no reference role.
        extras = [f"{key}={value}" for key, value in options.items()]
        return {"label": f"{method} ({', '.join(extras)})" if extras else method, "method_rank": _UNKNOWN_RANK,
                "reference": False, "plain_training": False}
    return {"label": found.display_label(factors, options, exclude), "method_rank": found.report_rank,
            "reference": not found.compresses, "plain_training": found.plain_training}


def _fixed_options(row: dict[str, Any], method: str) -> dict[str, Any]:
    """The run's method options less those a tuning searched: the Tuning section's table shows what each selected,
    and a label carrying 1.8965502067309053e-06 says nothing a reader can compare."""
    options = prefixed(row, "params.method_options.")
    searched = {key.split(".")[0] for key in prefixed(row, "params.tuning.space.")}
    searched |= {key.split(".")[0] for key in prefixed(row, f"params.tuning.space.{method}.")}
    return {key: value for key, value in options.items() if key not in searched}


def tidy_row(row: dict[str, Any]) -> dict[str, Any]:
    """One search_runs row of a method's run as the report's columns: names, labels, settings, metrics, budget."""
    kwargs = prefixed(row, "params.model_kwargs.")
    model = row[f"tags.{schema.TAG_MODEL}"]
    method = row[f"tags.{schema.TAG_METHOD}"]
    factors = int(_parse(row.get("params.factors")) or 1)
    target = _parse(row.get("params.target"))
    # The imported checkpoint's SHA-256; absent (NaN in a frame of other runs' tags) for a model trained here.
    trained_from = row.get(f"tags.{schema.TAG_TRAINED_FROM}")
    out = {
        "run_id": row["run_id"], "run_name": row.get(f"tags.{schema.TAG_RUN_NAME}"),
        "experiment": row.get("params.experiment"), "experiment_id": row.get("experiment_id"),
        "status": row["status"], "start_time": row["start_time"],
        "config_hash": row.get(f"tags.{schema.TAG_CONFIG_HASH}"),
        "error": row.get(f"tags.{schema.TAG_ERROR}"), "model": model,
        "model_kwargs": json.dumps(kwargs, sort_keys=True), "model_label": model_label(model, kwargs),
        "dataset": row[f"tags.{schema.TAG_DATASET}"], "budget_hash": row.get(f"tags.{schema.TAG_BUDGET_HASH}"),
        "method": method, "factors": factors,
        **_method_columns(method, factors, _fixed_options(row, method), _parse(row.get("params.exclude"))),
        "target_metric": _parse(row.get("params.target_metric")),
        "target": float(target) if target is not None else np.nan,
        "seed": int(_parse(row.get("params.seed")) or 0),
        "tuned": row.get(f"tags.{schema.TAG_TUNED}") == "true",
        "exclude": json.dumps(_parse(row.get("params.exclude"))),
        "trained_from": trained_from if isinstance(trained_from, str) else None,
        "not_applicable": _text(row.get(f"tags.{schema.TAG_NOT_APPLICABLE}")),
        "under_load": row.get(f"tags.{schema.TAG_LATENCY_UNDER_LOAD}") == "true",
        "data_root": _parse(row.get("params.data_root")),
        "latency_batch": latency.recorded_batch(row),
    }
    out.update({name: row.get(f"metrics.{name}", np.nan) for name in RESULT_METRICS})
    # Whatever latency metrics the run recorded (old runs: latency_ms_b1 and _b128 only).
    out.update({key.removeprefix("metrics."): value for key, value in row.items()
                if key.startswith("metrics.") and latency.is_latency(key.removeprefix("metrics."))})
    out.update({name: row.get(f"tags.{name}") for name in ENV_TAGS})
    out.update({f"budget.{name}": row.get(f"params.budget.{name}") for name in BUDGET_FIELDS})
    return out


def method_rows(raw: pd.DataFrame, model: str | None = None, dataset: str | None = None) -> pd.DataFrame:
    """The rows of a search_runs frame that record a method's run, of `model` and `dataset` when given."""
    method_col, model_col, dataset_col = (f"tags.{t}" for t in (schema.TAG_METHOD, schema.TAG_MODEL,
                                                                  schema.TAG_DATASET))
    if raw.empty or method_col not in raw:
        return raw.iloc[0:0]
    # A sweep's or a tuning's parent run carries no method tag: it is bookkeeping, not a run of a method.
    keep = raw[method_col].notna()
    if model is not None:
        keep &= raw[model_col] == model
    if dataset is not None:
        keep &= raw[dataset_col] == dataset
    return raw[keep]


def is_trial(raw: pd.DataFrame) -> pd.Series:
    """Which rows of a search_runs frame are tuning trials (they carry a study tag)."""
    column = f"tags.{schema.TAG_STUDY}"
    return raw[column].notna() if column in raw else pd.Series(False, index=raw.index)


def load_runs(experiment: str | None = None, model: str | None = None, dataset: str | None = None) -> pd.DataFrame:
    """Every benchmark run (any status) matching the filters, one tidy row per run, newest first."""
    raw = method_rows(tracking.search_runs(experiment), model, dataset)
    # A tuning trial carries its method's tags and the tuned runs' budget hash, but scores validation data: it is
    # never a result (reports.tuning reads trials).
    rows = [tidy_row(row) for row in raw[~is_trial(raw)].to_dict("records")]
    frame = pd.DataFrame(rows, columns=None if rows else ["run_id", "status"])
    return frame.sort_values("start_time", ascending=False, ignore_index=True) if rows else frame


def not_applicable(frame: pd.DataFrame) -> pd.Series:
    """Which runs record that their method cannot compress their model (tag not_applicable: the reason)."""
    return frame["not_applicable"].notna() if "not_applicable" in frame else pd.Series(False, index=frame.index)


def finished(frame: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """FINISHED runs and ended not-applicable runs, the newest of each repeated measurement kept; and how many older
    repeats were left out."""
    ended = frame["status"] != schema.STATUS_RUNNING
    done = frame[(frame["status"] == schema.STATUS_FINISHED) | (not_applicable(frame) & ended)]
    # load_runs sorts newest first; drop_duplicates counts NaN targets (dense) as equal, as wanted here.
    kept = done.drop_duplicates(MEASUREMENT, keep="first", ignore_index=True)
    return kept, len(done) - len(kept)


def failures(frame: pd.DataFrame) -> pd.DataFrame:
    """The FAILED and KILLED runs whose config did not finish later (a resumed or repeated run) and that are not
    marked not applicable (those are results: n/a with the reason)."""
    ended = frame[frame["status"].isin(NOT_FINISHED) & ~not_applicable(frame)]
    done = frame[frame["status"] == schema.STATUS_FINISHED]
    last_done = done.groupby("config_hash")["start_time"].max()
    finished_after = ended["config_hash"].map(last_done) > ended["start_time"]
    return ended[~finished_after.fillna(False).astype(bool)].reset_index(drop=True)


def label_order(runs: pd.DataFrame) -> dict[str, tuple[int, int, str]]:
    """{label: sort key} of the runs' labels: the registry's report rank, then factors, then the label."""
    rows = runs.drop_duplicates("label")
    return {row.label: (int(row.method_rank), int(row.factors), row.label) for row in rows.itertuples()}


def ordered_labels(runs: pd.DataFrame) -> list[str]:
    """The runs' distinct labels in report order (the reference first, then as the registry ranks them)."""
    order = label_order(runs)
    return sorted(order, key=order.__getitem__)


def reference_labels(runs: pd.DataFrame) -> set[str]:
    """Labels of the uncompressed reference runs among `runs`."""
    return set(runs.loc[runs["reference"].astype(bool), "label"])


def check_one_comparison(runs: pd.DataFrame) -> None:
    """Refuse (ValueError) runs of different budgets, models or datasets: they are not one comparison."""
    for column, what in (("model_label", "models"), ("dataset", "datasets")):
        if runs[column].nunique() > 1:
            raise ValueError(f"runs of different {what} cannot share one table: {sorted(runs[column].unique())}")
    hashes = sorted(runs["budget_hash"].dropna().unique())
    if len(hashes) <= 1:
        return
    differing = [f"{name} ({' vs '.join(sorted(runs[f'budget.{name}'].dropna().astype(str).unique()))})"
                 for name in BUDGET_FIELDS if runs[f"budget.{name}"].nunique() > 1]
    fields = ", ".join(differing) if differing else "no recorded budget field (the budget definition changed)"
    raise ValueError(f"runs with different budgets cannot share one table: budget hashes {', '.join(hashes)} "
                     f"differ in {fields}")


def seed_stats(runs: pd.DataFrame, by: list[str], values: list[str]) -> pd.DataFrame:
    """Mean, sample std (NaN for one seed) and seed count of `values` per `by` group."""
    grouped = runs.groupby(by, dropna=False, sort=False)
    stats = grouped[values].agg(["mean", "std"])
    stats.columns = [f"{value}_{stat}" for value, stat in stats.columns]
    stats["n"] = grouped.size()
    return stats.reset_index()


def trained_models(runs: pd.DataFrame) -> pd.DataFrame:
    """One run per trained model (factors, seed) of a group whose training is the budget alone: a model per N."""
    candidates = runs[runs["plain_training"].astype(bool)]
    # Prefer the reference run itself; any plainly trained run of the seed has the same trained model.
    ranked = candidates.assign(rank=(~candidates["reference"].astype(bool)).astype(int)).sort_values(
        ["factors", "seed", "rank"], kind="stable")
    return ranked.drop_duplicates(["factors", "seed"]).drop(columns="rank").reset_index(drop=True)


def train_times(runs: pd.DataFrame) -> pd.DataFrame:
    """Training time of every trained model of a group: factors, seed, seconds."""
    models = trained_models(runs)
    models = models[models[schema.TRAIN_TIME_S].notna()]
    return pd.DataFrame({"factors": models["factors"].to_numpy(), "seed": models["seed"].to_numpy(),
                         "seconds": models[schema.TRAIN_TIME_S].to_numpy(dtype=float)})


def train_time_ratios(runs: pd.DataFrame) -> pd.DataFrame:
    """Training time of the composed models (N > 1) over the plain model's of the same seed: factors, seed, ratio."""
    times = train_times(runs)
    dense = times[times["factors"] == 1].set_index("seed")["seconds"]
    lorita = times[(times["factors"] > 1) & times["seed"].isin(dense.index)]
    ratio = lorita["seconds"].to_numpy() / dense.loc[lorita["seed"]].to_numpy()
    return pd.DataFrame({"factors": lorita["factors"].to_numpy(), "seed": lorita["seed"].to_numpy(), "ratio": ratio})


@dataclass(frozen=True)
class ArtifactGone:
    """A run the report left out of what needs one of its artifacts, because the store no longer has it."""

    run_id: str
    run_name: str | None
    artifact: str

    def __str__(self) -> str:
        return f"run {self.run_name} ({self.run_id}) has no {self.artifact}"


Spectra = dict[int, dict[int, dict[str, list[float]]]]


def load_spectra(runs: pd.DataFrame) -> tuple[Spectra, list[ArtifactGone]]:
    """{factors: {seed: {layer: singular values}}} of every trained model of a group whose spectra the store still
    has; and the runs whose spectra are gone."""
    spectra: Spectra = {}
    missing = []
    for row in trained_models(runs).sort_values(["factors", "seed"]).itertuples():
        try:
            spectra.setdefault(int(row.factors), {})[int(row.seed)] = tracking.load_json(row.run_id,
                                                                                        schema.ARTIFACT_SPECTRA)
        except tracking.MissingArtifact:
            missing.append(ArtifactGone(row.run_id, row.run_name, schema.ARTIFACT_SPECTRA))
    return spectra, missing


def compressed_layers(runs: pd.DataFrame, layers: list[str]) -> list[str]:
    """The layers of `layers` (a spectra file's, in registration order) that compression of these runs may truncate:
    none the runs' exclude globs name; without exclude, all but the classifier, which every model of the registry
    registers last (baselines.classifier_name)."""
    patterns = {pattern for text in runs["exclude"] for pattern in (json.loads(text) or [])}
    if runs["exclude"].map(json.loads).isna().any():
        layers = layers[:-1]
    return [layer for layer in layers if not any(fnmatch.fnmatchcase(layer, p) for p in patterns)]


def load_keep_curves(runs: pd.DataFrame) -> pd.DataFrame:
    """acc_at_keep of every trained model of a group: columns factors, seed, percent, acc."""
    rows = [{"factors": int(row.factors), "seed": int(row.seed), "percent": step, "acc": value}
            for row in trained_models(runs).itertuples()
            for step, value in tracking.metric_history(row.run_id, schema.ACC_AT_KEEP)]
    return pd.DataFrame(rows, columns=["factors", "seed", "percent", "acc"])


def weight_decay_ablations(runs: pd.DataFrame) -> list[pd.DataFrame]:
    """Sets of untuned runs of one network and dataset whose budgets differ only in weight_decay (>= 2 values)."""
    # A tuned run's weight decay is what its method's study selected, not a setting varied on purpose.
    runs = runs[~runs["tuned"].astype(bool)]
    if runs.empty:
        return []
    others = [f"budget.{name}" for name in BUDGET_FIELDS if name != "weight_decay"]
    rest = runs[others].astype(str).apply(lambda row: stable_hash(list(row)), axis=1)
    found = []
    for _, part in runs.assign(budget_rest=rest).groupby(["model_label", "dataset", "budget_rest"], sort=True):
        decay = pd.to_numeric(part["budget.weight_decay"], errors="coerce")
        if decay.nunique() >= 2:
            found.append(part.assign(weight_decay=decay))
    return found


def depth_ablations(runs: pd.DataFrame) -> list[pd.DataFrame]:
    """Sets of runs of one model, dataset and budget whose model kwargs differ only in `layers` (>= 2 values)."""
    kwargs = runs["model_kwargs"].map(json.loads)
    deep = runs[kwargs.map(lambda k: isinstance(k.get("layers"), int))]
    if deep.empty:
        return []
    kwargs = kwargs[deep.index]
    deep = deep.assign(layers=kwargs.map(lambda k: k["layers"]),
                       rest=kwargs.map(lambda k: json.dumps({**k, "layers": None}, sort_keys=True)))
    return [part for _, part in deep.groupby(["model", "dataset", "budget_hash", "rest"], sort=True)
            if part["layers"].nunique() >= 2]
