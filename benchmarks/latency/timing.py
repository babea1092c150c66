"""Timing forward calls side by side: warm-up, calibrated samples, interleaved rounds, median and spread.

Every latency the suite records comes from `time_interleaved`: the latency table's grid points and a run's
compressed and uncompressed model alike. Calls timed together take their samples in turns (round-robin), so that
drift in the machine's speed (other processes, frequency changes) falls on all of them, and the CPU time that other
processes used during the window is measured from /proc/stat deltas, less this process's own CPU time.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

# A point whose interquartile range exceeds this share of its median is measured again, then flagged.
MAX_SPREAD = 0.10
# Another process's CPU use above this share of the machine during a window tags the measurement as under load.
LOADED_SHARE = 0.25
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


@dataclass(frozen=True)
class Timing:
    """One call's latency: median and interquartile range of its samples (ms per call), and whether it is trusted."""

    median_ms: float
    iqr_ms: float
    samples: int
    noisy: bool  # the spread stayed above MAX_SPREAD after re-measuring

    @property
    def spread(self) -> float:
        """IQR over median."""
        return self.iqr_ms / self.median_ms if self.median_ms > 0 else 0.0


@dataclass(frozen=True)
class Window:
    """Timings of calls measured together, and the share of the machine's CPU time others used meanwhile."""

    timings: list[Timing]
    others_busy: float | None  # None where /proc/stat is not readable

    @property
    def under_load(self) -> bool:
        """Whether other processes used more than LOADED_SHARE of the CPUs during the window."""
        return self.others_busy is not None and self.others_busy > LOADED_SHARE


# glibc malloc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_MAX = -1, -2, -4
_steady: bool | None = None


def steady_allocator() -> bool:
    """Keep glibc's malloc from handing freed memory back to the system for the rest of the process; whether it took.

    By default a large buffer (an activation at batch 128) is mmap-ed and unmapped on free, or the heap's top trimmed,
    by thresholds that move with the allocation history, so the same layer page-faults on its output in one window and
    not in another: measured here, ResNet-20's layers timed alone at batch 128 summed to 1.21-1.86x their time inside
    the network, 0.79-1.02x with the memory kept (what jemalloc and tcmalloc do, and PyTorch's CPU tuning guide
    recommends), a buffer then reused without faults wherever it is timed. Applied by the first timing window or
    latency-table context of a process (a latency-target run's: before it trains), whose memory then stays at its peak.
    """
    global _steady
    if _steady is None:
        _steady = False
        name = ctypes.util.find_library("c")
        libc = ctypes.CDLL(name) if name else None
        if libc is not None and hasattr(libc, "mallopt") and hasattr(libc, "gnu_get_libc_version"):
            _steady = all(libc.mallopt(param, value) == 1 for param, value in
                          ((_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 2**31 - 1), (_M_TOP_PAD, 256 << 20)))
    return _steady


def _machine_ticks() -> tuple[int, int] | None:
    """(busy, total) clock ticks of all CPUs from /proc/stat; None where there is none."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def _own_ticks() -> float:
    times = os.times()
    return (times.user + times.system) * _CLOCK_TICKS


class _Load:
    """The share of all CPUs' time other processes used between start and stop (this process's own CPU time,
    every thread of it, subtracted from the machine's busy time)."""

    def __init__(self) -> None:
        self._machine, self._own = _machine_ticks(), _own_ticks()

    def others(self) -> float | None:
        machine, own = _machine_ticks(), _own_ticks()
        if machine is None or self._machine is None or machine[1] <= self._machine[1]:
            return None
        busy = machine[0] - self._machine[0] - (own - self._own)
        return min(1.0, max(0.0, busy / (machine[1] - self._machine[1])))


def _calls_per_sample(call: Callable[[], object], sync: Callable[[], None], min_sample_s: float) -> int:
    # Fast calls are repeated inside one sample so that the timer's resolution and the loop's own cost do not count.
    count = 1
    while True:
        started = time.perf_counter()
        for _ in range(count):
            call()
        sync()
        elapsed = time.perf_counter() - started
        if elapsed >= min_sample_s or count >= 1 << 16:
            return count
        count = max(count * 2, int(count * min_sample_s / max(elapsed, 1e-9)) + 1)


def _rounds(calls: Sequence[Callable[[], object]], counts: Sequence[int], rounds: int,
            sync: Callable[[], None]) -> list[list[float]]:
    samples: list[list[float]] = [[] for _ in calls]
    for _ in range(rounds):
        for index, (call, count) in enumerate(zip(calls, counts, strict=True)):
            # One untimed call first, so that a sample sees the call's steady state (its input in cache, its buffers'
            # sizes in the allocator), as a layer inside a network and back-to-back inference do, not the state the
            # previous call of the window left. Measured here, ResNet-20's thin pair at batch 128 after other calls:
            # 6.0 to 8.1 ms between windows; primed: 6.0 to 6.3 ms.
            call()
            sync()
            started = time.perf_counter()
            for _ in range(count):
                call()
            sync()
            samples[index].append((time.perf_counter() - started) * 1000 / count)
    return samples


def _timing(samples: list[float], noisy: bool) -> Timing:
    q1, median, q3 = np.percentile(samples, [25, 50, 75])
    return Timing(float(median), float(q3 - q1), len(samples), noisy)


@torch.no_grad()
def time_interleaved(calls: Sequence[Callable[[], object]], *, rounds: int = 9, warmup: int = 2,
                     min_sample_s: float = 0.002, sync: Callable[[], None] = lambda: None) -> Window:
    """Median and IQR of each call's wall time, its samples taken in turns; calls too noisy are timed again.

    Each call runs `warmup` times, then is repeated inside a sample until a sample lasts `min_sample_s`; `rounds`
    rounds take one sample of every call in turn, each sample right after one untimed call of its own. A call whose
    IQR is above MAX_SPREAD of its median gets `rounds` fresh rounds (again interleaved with the other noisy ones); if
    it is still above, its Timing is `noisy`.
    `sync` waits for queued device work (a GPU) so that a sample covers it.
    """
    steady_allocator()
    load = _Load()
    for call in calls:
        for _ in range(warmup):
            call()
    sync()
    counts = [_calls_per_sample(call, sync, min_sample_s) for call in calls]
    timings = [_timing(s, False) for s in _rounds(calls, counts, rounds, sync)]
    again = [i for i, t in enumerate(timings) if t.spread > MAX_SPREAD]
    if again:
        fresh = _rounds([calls[i] for i in again], [counts[i] for i in again], rounds, sync)
        for i, samples in zip(again, fresh, strict=True):
            timing = _timing(samples, False)
            timings[i] = _timing(samples, timing.spread > MAX_SPREAD)
    return Window(timings, load.others())
