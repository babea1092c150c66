"""Latency as the report reads it: which latency metrics runs recorded, at which batch sizes, and speed-ups.

Runs record what their version measured: old runs `latency_ms_b1` and `latency_ms_b128` alone, newer ones the spread
(`latency_iqr_ms_b<B>`), the uncompressed model measured beside it (`latency_base_ms_b<B>`), the measured speed-up
(`speedup_b<B>`), a latency table's prediction (`latency_pred_ms_b<B>`; runs of 2026-12-01 also `latency_ref_ms_b<B>`,
the table's reference workload timed in the same window) and the CPU share others used. Everything here works from
whichever of these a run has.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd

from benchmarks.tracking import schema

# kind of a latency metric (schema.latency_at) or "speedup" (schema.speedup_at), its batch, its backend suffix.
_NAME = re.compile(r"(?:latency_(?P<kind>ms|iqr_ms|pred_ms|ref_ms|base_ms|busy)|(?P<speedup>speedup))_b(?P<batch>\d+)"
                   r"(?P<suffix>_gpu|_ort)?")
# The param naming the batch of a latency target and of the latency beside batch 1 (config latency_batch); absent
# (older runs): the largest batch recorded.
BATCH_PARAMS = ("latency_batch",)


def is_latency(name: str) -> bool:
    """Whether `name` is one of the latency or speed-up metrics a run records."""
    return _NAME.fullmatch(name) is not None


def batches(runs: pd.DataFrame) -> list[int]:
    """The batch sizes at which any of `runs` recorded a median CPU latency, ascending."""
    found = set()
    for column in runs.columns:
        match = _NAME.fullmatch(str(column))
        if match and match["kind"] == "ms" and not match["suffix"] and runs[column].notna().any():
            found.add(int(match["batch"]))
    return sorted(found)


def recorded_batch(row: dict) -> int | None:
    """The latency batch a search_runs row's params name, if any."""
    for name in BATCH_PARAMS:
        value = row.get(f"params.{name}")
        if isinstance(value, str) and value.isdigit():
            return int(value)
    return None


def configured_batch(runs: pd.DataFrame) -> int | None:
    """The batch a latency target was set at (a recorded param), else the largest recorded batch above 1."""
    named = runs["latency_batch"].dropna() if "latency_batch" in runs else pd.Series(dtype=float)
    if not named.empty:
        return int(named.max())
    above = [b for b in batches(runs) if b > 1]
    return above[-1] if above else None


def shown_batches(runs: pd.DataFrame) -> list[int]:
    """The batches the tables and figures show: 1 and the configured batch, where recorded."""
    recorded = batches(runs)
    wanted = [1, configured_batch(runs)]
    return [b for b in dict.fromkeys(wanted) if b is not None and b in recorded]


def column(runs: pd.DataFrame, name: str) -> pd.Series:
    """A metric's column, all NaN where no run recorded it."""
    return runs[name] if name in runs else pd.Series(np.nan, index=runs.index)


def speedups(runs: pd.DataFrame, batch: int) -> pd.Series:
    """Measured speed-up of each run at `batch`: its recorded speedup_b<B> (the uncompressed model timed beside it),
    else the uncompressed reference run's latency of the same comparison and seed over the run's; NaN without either.
    The reference itself is 1."""
    recorded = column(runs, schema.speedup_at(batch))
    median = column(runs, schema.latency_at("ms", batch))
    reference = runs["reference"].astype(bool)
    keys = ["model_label", "dataset", "budget_hash", "seed"]
    dense = runs[reference].assign(_ref=median[reference]).drop_duplicates(keys)[[*keys, "_ref"]]
    base = runs[keys].merge(dense, on=keys, how="left")["_ref"].to_numpy()
    derived = pd.Series(base / median.to_numpy(), index=runs.index)
    out = recorded.where(recorded.notna(), derived)
    return out.where(~reference, 1.0)


def has_recorded_speedup(runs: pd.DataFrame, batch: int) -> bool:
    """Whether any run recorded its speed-up at `batch` side by side (rather than it being derived)."""
    return bool(column(runs, schema.speedup_at(batch)).notna().any())


def ms_text(value: float) -> str:
    """A latency in ms with 3 significant digits (0.0123, 1.23, 123)."""
    if math.isnan(value):
        return "—"
    return f"{value:.3g}" if value < 1000 else f"{value:.0f}"
