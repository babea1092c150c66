"""Measured latency as a target: the latency table, timing side by side, and a network's predicted latency."""

from __future__ import annotations

import torch
from torch import nn

from benchmarks.config import RunConfig
from benchmarks.latency.model import ModelLatency, cache_folder, model_latency
from benchmarks.latency.table import FORMS, LatencyTable, MissingEntry, context
from benchmarks.latency.timing import Timing, Window, steady_allocator, time_interleaved

__all__ = ["FORMS", "LatencyTable", "MissingEntry", "ModelLatency", "Timing", "Window", "context", "for_run",
           "model_latency", "steady_allocator", "time_interleaved"]


def for_run(cfg: RunConfig, model: nn.Module, in_shape: tuple[int, ...], device: torch.device,
            forms: tuple[str, ...], *, measure: bool = True) -> ModelLatency:
    """The latency model of a run's uncompressed network at its latency batch and backend (cached entries reused,
    missing ones measured now, or a MissingEntry when not `measure`)."""
    table = LatencyTable(cache_folder(cfg.cache_dir), context(cfg.latency_batch, device, cfg.latency_backend),
                         measure=measure)
    return model_latency(model, in_shape, table, forms)
