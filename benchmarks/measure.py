"""Measurements of a finished model: latency and the accuracy-versus-kept-singular-values curve."""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

import lorita

# The paper's curve: fractions of each layer's singular values kept, without fine-tuning.
KEEP_FRACTIONS = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def latency_ms(model: nn.Module, in_shape: tuple[int, ...], batch: int, device: torch.device,
               *, budget_s: float = 1.0, min_repeats: int = 5, max_repeats: int = 50) -> float:
    """Median wall time of one eval-mode forward at `batch` on `device`, after warm-up."""
    model = copy.deepcopy(model).to(device).eval()
    x = torch.randn(batch, *in_shape, device=device)
    for _ in range(2):
        model(x)
    _sync(device)
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < max_repeats and (len(times) < min_repeats or time.perf_counter() - started < budget_s):
        t0 = time.perf_counter()
        model(x)
        _sync(device)
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def keep_curve(model: nn.Module, evaluate: Callable[[nn.Module], float], exclude: list[str]) -> dict[int, float]:
    """Test accuracy after uniform truncation to each kept fraction, keyed by percent kept."""
    curve = {}
    for keep in KEEP_FRACTIONS:
        ranks = lorita.plan_ranks(model, "uniform", keep, exclude=exclude)
        curve[round(keep * 100)] = evaluate(lorita.truncate(model, ranks))
    return curve
