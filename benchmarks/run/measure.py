"""Measurements of a model: forward latency, the time of a training step, and accuracy versus kept singular values."""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

import lorita
from benchmarks.run.environment import synchronize
from benchmarks.tracking import schema

# Latency is flagged as measured under load when other work used more than this fraction of the CPUs just before.
LOADED_BUSY = 0.25
LOAD_WINDOW_S = 0.25
# The paper's curve: fractions of each layer's singular values kept, without fine-tuning.
KEEP_FRACTIONS = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05)


@torch.no_grad()
def latency_ms(model: nn.Module, in_shape: tuple[int, ...], batch: int, device: torch.device,
               *, budget_s: float = 1.0, min_repeats: int = 5, max_repeats: int = 50) -> float:
    """Median wall time of one eval-mode forward at `batch` on `device`, after warm-up."""
    model = copy.deepcopy(model).to(device).eval()
    x = torch.randn(batch, *in_shape, device=device)
    for _ in range(2):
        model(x)
    synchronize(device)
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < max_repeats and (len(times) < min_repeats or time.perf_counter() - started < budget_s):
        t0 = time.perf_counter()
        model(x)
        synchronize(device)
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def latency_metrics(model: nn.Module, in_shape: tuple[int, ...], device: torch.device) -> dict[str, float]:
    """Median forward latency at batch 1 and 128 on the CPU, and on the GPU when the run has one."""
    cpu = torch.device("cpu")
    out = {schema.LATENCY_MS_B1: latency_ms(model, in_shape, 1, cpu),
           schema.LATENCY_MS_B128: latency_ms(model, in_shape, 128, cpu)}
    if device.type == "cuda":
        out[schema.LATENCY_MS_B1_GPU] = latency_ms(model, in_shape, 1, device)
        out[schema.LATENCY_MS_B128_GPU] = latency_ms(model, in_shape, 128, device)
    return out


def _cpu_times() -> tuple[int, int] | None:
    """(idle, total) jiffies of all CPUs from /proc/stat; None where there is none."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    return fields[3] + fields[4], sum(fields)  # idle + iowait


def cpu_busy(window_s: float = LOAD_WINDOW_S) -> float | None:
    """Fraction of the machine's CPU time other work used over `window_s` (this process sleeps meanwhile)."""
    before = _cpu_times()
    time.sleep(window_s)
    after = _cpu_times()
    if before is None or after is None or after[1] == before[1]:
        return None
    return 1.0 - (after[0] - before[0]) / (after[1] - before[1])


def load_tags() -> dict[str, str]:
    """Tags saying how busy the CPU was just before a latency measurement: a busy machine's timings are flagged."""
    busy = cpu_busy()
    if busy is None:
        return {}
    return {schema.TAG_LATENCY_CPU_BUSY: f"{busy:.2f}",
            schema.TAG_LATENCY_UNDER_LOAD: "true" if busy > LOADED_BUSY else "false"}


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
