"""Measurements of a model: forward latency, the time of a training step, and accuracy versus kept singular values."""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

import lorita
from benchmarks import export
from benchmarks.export import available as ort_available
from benchmarks.latency import ModelLatency, Window, time_interleaved
from benchmarks.run.environment import synchronize
from benchmarks.tracking import schema

# The paper's curve: fractions of each layer's singular values kept, without fine-tuning.
KEEP_FRACTIONS = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05)
# The suffix of latency metrics measured through ONNX Runtime (schema.latency_at).
ORT_SUFFIX = "_ort"


@dataclass(frozen=True)
class LatencyRecord:
    """A run's latency metrics (with spreads, the uncompressed network's and the speed-up) and its load tags."""

    metrics: dict[str, float]
    tags: dict[str, str]


def _window(calls: list[Callable[[], object]], where: torch.device, size: int, suffix: str,
            metrics: dict[str, float], predicted: tuple[nn.Module, ModelLatency] | None = None) -> Window:
    """Time the compressed and the uncompressed model's calls side by side and record them under `suffix`; with
    `predicted` (the compressed model and its latency model), the table's prediction for this window: its ratio of
    the compressed model to the uncompressed one, times the uncompressed one's time here."""
    window = time_interleaved(calls, sync=lambda: synchronize(where))
    mine, theirs = window.timings
    metrics[schema.latency_at("ms", size, suffix)] = mine.median_ms
    metrics[schema.latency_at("iqr_ms", size, suffix)] = mine.iqr_ms
    metrics[schema.latency_at("base_ms", size, suffix)] = theirs.median_ms
    metrics[schema.speedup_at(size, suffix)] = theirs.median_ms / mine.median_ms
    if predicted is not None:
        model, latency = predicted
        metrics[schema.latency_at("pred_ms", size, suffix)] = latency.predict(model, theirs.median_ms)
    if window.others_busy is not None:
        metrics[schema.latency_at("busy", size, suffix)] = window.others_busy
    return window


def latency_metrics(model: nn.Module, base: nn.Module, in_shape: tuple[int, ...], device: torch.device, batch: int,
                    predicted: ModelLatency | None = None, backend: str = "eager") -> LatencyRecord:
    """Forward latency of `model` beside the uncompressed `base`, at batch 1 and `batch`, on the CPU and the GPU
    when the run has one, and with backend "ort" through ONNX Runtime on the CPU too (suffix "_ort"): each pair timed
    side by side in one window (benchmarks.latency.time_interleaved), with the share of the CPUs other processes used
    during it; `predicted`'s table prediction at `batch` beside it, in the window of the table's backend and device,
    at the speed the uncompressed model ran in that window.

    The achieved latency_drop is 1 - latency / base latency at `batch` on the run's device (backend "eager") or
    through ONNX Runtime (backend "ort": the backend its latency table was measured with).
    """
    metrics: dict[str, float] = {}
    windows: list[Window] = []
    sizes = sorted({1, batch})
    devices = [(torch.device("cpu"), "")] + ([(device, "_gpu")] if device.type == "cuda" else [])
    suffix = ORT_SUFFIX if backend == "ort" else devices[-1][1]

    def table(size: int, where_suffix: str) -> tuple[nn.Module, ModelLatency] | None:
        return (model, predicted) if predicted is not None and (size, where_suffix) == (batch, suffix) else None

    for where, device_suffix in devices:
        pair = [copy.deepcopy(m).to(where).eval() for m in (model, base)]
        for size in sizes:
            x = torch.randn(size, *in_shape, device=where)
            windows.append(_window([lambda m=m, x=x: m(x) for m in pair], where, size, device_suffix, metrics,
                                   table(size, device_suffix)))
    if backend == "ort":
        if not ort_available():
            raise export.ExportError(f"latency_backend ort needs ONNX Runtime, which is not installed: {export.EXTRA}")
        # One export per model, of any batch size: exporting (seconds) is slower than the timing itself, so only runs
        # that ask for the backend pay for it.
        sessions = [export.ort_session(copy.deepcopy(m), torch.randn(2, *in_shape)) for m in (model, base)]
        for size in sizes:
            x = torch.randn(size, *in_shape)
            windows.append(_window([s.call(x) for s in sessions], torch.device("cpu"), size, ORT_SUFFIX, metrics,
                                   table(size, ORT_SUFFIX)))
    metrics[schema.LATENCY_DROP] = 1 - 1 / metrics[schema.speedup_at(batch, suffix)]
    busy = [w.others_busy for w in windows if w.others_busy is not None]
    tags = {} if not busy else {schema.TAG_LATENCY_CPU_BUSY: f"{max(busy):.2f}",
                                schema.TAG_LATENCY_UNDER_LOAD: "true" if any(w.under_load for w in windows)
                                else "false"}
    return LatencyRecord(metrics, tags)


def training_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Callable[[], None]:
    """A closure doing one training step (forward, label-smoothed CE, backward, SGD step) on a fixed batch."""
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-4)
    criterion = nn.CrossEntropyLoss(label_smoothing=0.1)
    model.train()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        criterion(model(x), y).backward()
        optimizer.step()

    return step


def step_seconds(step: Callable[[], None], device: torch.device, *, warmup: int = 1, repeats: int = 3) -> float:
    """Median wall time of `step` (GPU work included) over `repeats` calls after `warmup` ones."""
    times = []
    for index in range(warmup + repeats):
        synchronize(device)
        started = time.perf_counter()
        step()
        synchronize(device)
        if index >= warmup:
            times.append(time.perf_counter() - started)
    return statistics.median(times)


def keep_curve(model: nn.Module, evaluate: Callable[[nn.Module], float], exclude: list[str]) -> dict[int, float]:
    """Test accuracy after uniform truncation to each kept fraction, keyed by percent kept."""
    curve = {}
    for keep in KEEP_FRACTIONS:
        ranks = lorita.plan_ranks(model, "uniform", keep, exclude=exclude)
        curve[round(keep * 100)] = evaluate(lorita.truncate(model, ranks))
    return curve
