"""The latency table: measured forward latency of one layer geometry as its compressed size changes.

An entry holds one layer geometry (kind, channels, kernel, stride, padding, dilation, bias, input size) in one
context (batch size, dtype, device, threads, backend, torch version) and one form: "rank", the pair of thin layers
factorize writes at each rank of a grid, beside the dense layer; or "width", the layer with (in, out) channels on a
grid, as channel pruning leaves it. Entries are measured once and cached on disk one file each (atomic writes: an
interrupted build resumes at the first missing entry), shared by every model and run with that geometry.
Between grid points latency is interpolated (linearly in rank; bilinearly in (in, out), exact where latency is
affine in each width as FLOPs are); measured values are first made monotone, since a smaller layer is never slower
to run than a larger one padded with zeros, and noise must not make a plan's latency rise as it shrinks.
"""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from scipy.interpolate import RegularGridInterpolator
from torch import nn

from benchmarks.config import stable_hash
from benchmarks.files import write_atomic
from benchmarks.latency.timing import Timing, steady_allocator, time_interleaved
from benchmarks.run.environment import cpu_model, synchronize

FORMS = ("rank", "width")
# How an entry's calls run: PyTorch eager on the context's device, or an ONNX Runtime session on the CPU.
BACKENDS = ("eager", "ort")
# Ranks measured, as fractions of the layer's full rank (deduplicated after rounding; 1 is always in).
RANK_FRACTIONS = (0.03, 0.06, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.65, 0.8, 1.0)
# Channel counts measured on each side, as fractions of the layer's own (deduplicated after rounding).
WIDTH_FRACTIONS = (0.1, 0.25, 0.4, 0.6, 0.8, 1.0)
# Format of a cached entry; another value is measured again.
ENTRY_VERSION = 2


@dataclass(frozen=True)
class Geometry:
    """What fixes a Linear/Conv2d layer's latency apart from its weights."""

    kind: str  # "linear" or "conv2d"
    in_channels: int
    out_channels: int
    bias: bool
    input: tuple[int, ...]  # the layer's input for one sample: (C, H, W), or (..., in_features)
    kernel: tuple[int, ...] = ()
    stride: tuple[int, ...] = ()
    padding: str = ""  # repr of the padding: a tuple or "same"/"valid"
    dilation: tuple[int, ...] = ()
    padding_mode: str = ""

    @property
    def full_rank(self) -> int:
        """Singular values of the layer's weight matrix."""
        fan_in = self.in_channels * int(np.prod(self.kernel or (1,)))
        return min(self.out_channels, fan_in)

    def layer(self, in_channels: int, out_channels: int, *, bias: bool | None = None,
              kernel: bool = True) -> nn.Module:
        """A freshly initialised layer of this geometry at other channel counts (a 1x1 conv when not `kernel`)."""
        bias = self.bias if bias is None else bias
        if self.kind == "linear":
            return nn.Linear(in_channels, out_channels, bias=bias)
        if not kernel:
            return nn.Conv2d(in_channels, out_channels, 1, bias=bias)
        padding = eval_padding(self.padding)
        return nn.Conv2d(in_channels, out_channels, self.kernel, self.stride, padding, self.dilation, bias=bias,
                         padding_mode=self.padding_mode)

    def pair(self, rank: int) -> nn.Module:
        """The two thin layers lorita.factorize writes for this layer at `rank`."""
        return nn.Sequential(self.layer(self.in_channels, rank, bias=False),
                             self.layer(rank, self.out_channels, kernel=False))

    def example(self, batch: int, in_channels: int | None = None) -> torch.Tensor:
        """An input of `batch` samples, with `in_channels` in place of the layer's own."""
        shape = list(self.input)
        channel = -1 if self.kind == "linear" else 0
        shape[channel] = self.in_channels if in_channels is None else in_channels
        return torch.randn(batch, *shape)


# A fixed workload timed in every window of the table beside what the window measures: how fast the machine runs
# then. This shared machine's speed drifts between windows far more than within one (measured: dense ResNet-20 at
# batch 128 took 101 to 202 ms in windows a minute apart while its ratio to this conv stayed within 23 to 28), so
# entries measured minutes apart and the network's own measurement are compared in units of the reference's time. (A
# run's window is priced by the uncompressed network timed beside it instead: ModelLatency.predict.)
REFERENCE = Geometry("conv2d", 32, 32, False, (32, 16, 16), (3, 3), (1, 1), "[1, 1]", (1, 1), "zeros")


def eval_padding(text: str) -> str | tuple[int, ...]:
    """A Geometry's padding back as Conv2d takes it."""
    return text if text in ("same", "valid") else tuple(json.loads(text))


def geometry(layer: nn.Linear | nn.Conv2d, input_shape: tuple[int, ...]) -> Geometry:
    """The geometry of `layer` called on inputs of `input_shape` (one sample, no batch dimension)."""
    if isinstance(layer, nn.Linear):
        return Geometry("linear", layer.in_features, layer.out_features, layer.bias is not None, tuple(input_shape))
    padding = layer.padding if isinstance(layer.padding, str) else json.dumps(list(layer.padding))
    return Geometry("conv2d", layer.in_channels, layer.out_channels, layer.bias is not None, tuple(input_shape),
                    tuple(layer.kernel_size), tuple(layer.stride), padding, tuple(layer.dilation), layer.padding_mode)


@dataclass(frozen=True)
class Context:
    """Where and how an entry is measured: latencies from another context are not comparable."""

    batch: int
    device: str  # the CPU model and threads, or the GPU's name
    backend: str = "eager"
    # How idle OpenMP threads wait (benchmarks.cli sets PASSIVE): spinning or sleeping changes small layers' latency.
    omp_wait: str = "default"
    # "steady" where the timing harness keeps glibc's malloc from returning memory (timing.steady_allocator).
    allocator: str = "default"
    dtype: str = "float32"
    torch: str = torch.__version__

    @property
    def torch_device(self) -> torch.device:
        """The device the entry's layers run on."""
        return torch.device("cuda" if self.device.startswith("cuda") else "cpu")


def context(batch: int, device: torch.device, backend: str = "eager") -> Context:
    """The measuring context of this process: batch size, device (CPU model and thread count, or GPU) and backend."""
    if backend not in BACKENDS:
        raise ValueError(f"latency backend must be one of {', '.join(BACKENDS)}; got {backend!r}")
    if device.type == "cuda" and backend != "ort":  # ONNX Runtime's sessions here run on the CPU
        name = f"cuda:{torch.cuda.get_device_name(device)}"
    else:
        name = f"cpu:{cpu_model() or platform.machine()}:{torch.get_num_threads()}threads"
    return Context(batch, name, backend, os.environ.get("OMP_WAIT_POLICY", "default").lower(),
                   "steady" if steady_allocator() else "default")


def _grid(full: int, fractions: tuple[float, ...]) -> list[int]:
    return sorted({max(1, min(full, round(full * f))) for f in fractions} | {full})


@dataclass(frozen=True)
class RankCurve:
    """Latency of a layer's thin pair as a function of rank, and of the dense layer, in ms."""

    ranks: list[int]
    pair_ms: list[float]
    dense_ms: float
    noisy: bool
    ref_ms: float  # the reference workload's time in the entry's window

    def pair(self, rank: int) -> float:
        """Interpolated latency of the pair at `rank` (monotone in rank)."""
        monotone = np.minimum.accumulate(np.asarray(self.pair_ms)[::-1])[::-1]
        return float(np.interp(rank, self.ranks, monotone))


@dataclass(frozen=True)
class WidthGrid:
    """Latency of a layer at (in, out) channel counts on a grid, in ms."""

    ins: list[int]
    outs: list[int]
    ms: list[list[float]]  # [in index][out index]
    noisy: bool
    ref_ms: float  # the reference workload's time in the entry's window

    def interpolator(self) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
        """Vectorised latency at (in, out) arrays, clamped to the grid (monotone along both widths)."""
        values = np.asarray(self.ms, dtype=float)
        values = np.minimum.accumulate(values[::-1], axis=0)[::-1]
        values = np.minimum.accumulate(values[:, ::-1], axis=1)[:, ::-1]
        ins, outs = np.asarray(self.ins, dtype=float), np.asarray(self.outs, dtype=float)
        if len(ins) == 1 or len(outs) == 1:  # a one-point axis: interpolate along the other only
            flat = values.reshape(-1)
            axis, width = (outs, 1) if len(ins) == 1 else (ins, 0)
            return lambda i, o: np.interp(np.asarray(o if width else i, dtype=float), axis, flat)
        grid = RegularGridInterpolator((ins, outs), values)

        def lookup(i: np.ndarray, o: np.ndarray) -> np.ndarray:
            i, o = np.broadcast_arrays(np.asarray(i, dtype=float), np.asarray(o, dtype=float))
            points = np.stack([np.clip(i, ins[0], ins[-1]), np.clip(o, outs[0], outs[-1])], axis=-1)
            return grid(points.reshape(-1, 2)).reshape(i.shape)

        return lookup

    def at(self, in_channels: int, out_channels: int) -> float:
        """Interpolated latency at one (in, out)."""
        return float(self.interpolator()(np.asarray(in_channels), np.asarray(out_channels)))


class MissingEntry(LookupError):
    """An entry a table that may not measure does not hold."""


class LatencyTable:
    """Entries of one context under `folder` (one JSON file each), measured on first use unless not `measure`."""

    def __init__(self, folder: str | Path, ctx: Context, *, rounds: int = 9, measure: bool = True) -> None:
        self.ctx = ctx
        self.folder = Path(folder) / stable_hash(asdict(ctx))
        self.rounds = rounds
        self.measure = measure
        self.measured = 0  # entries this table measured (not read from disk), for progress messages
        self._reference: Callable[[], object] | None = None

    def _path(self, geom: Geometry, form: str) -> Path:
        return self.folder / f"{form}-{stable_hash(asdict(geom))}.json"

    def has(self, geom: Geometry, form: str) -> bool:
        """Whether the entry is on disk already."""
        return self._read(geom, form) is not None

    def _read(self, geom: Geometry, form: str) -> dict | None:
        try:
            entry = json.loads(self._path(geom, form).read_text())
        except (OSError, ValueError):
            return None
        return entry if isinstance(entry, dict) and entry.get("version") == ENTRY_VERSION else None

    def reference(self) -> Callable[[], object]:
        """The reference workload (REFERENCE at the table's batch) as this table's backend runs it."""
        if self._reference is None:
            self._reference = self.call(REFERENCE.layer(REFERENCE.in_channels, REFERENCE.out_channels),
                                        REFERENCE.example(self.ctx.batch))
        return self._reference

    def measure_window(self, calls: list[Callable[[], object]]) -> tuple[list[Timing], float]:
        """The calls' timings, taken side by side with the reference's, and the reference's median (ms)."""
        device = self.ctx.torch_device
        timings = time_interleaved([*calls, self.reference()], rounds=self.rounds,
                                   sync=lambda: synchronize(device)).timings
        return timings[:-1], timings[-1].median_ms

    def call(self, module: nn.Module, x: torch.Tensor) -> Callable[[], object]:
        """A forward of `module` on `x` in this table's backend, as the timing harness takes it."""
        if self.ctx.backend == "ort":
            from benchmarks.export.ort import ort_session

            return ort_session(module.eval(), x, dynamic=False).call(x)
        device = self.ctx.torch_device
        module, x = module.to(device).eval(), x.to(device)
        return lambda: module(x)

    def _entry(self, geom: Geometry, form: str) -> dict:
        entry = self._read(geom, form)
        if entry is not None:
            return entry
        if not self.measure:
            raise MissingEntry(f"no {form} entry for {geom} in {self.folder}")
        batch = self.ctx.batch
        if form == "rank":
            ranks = _grid(geom.full_rank, RANK_FRACTIONS)
            calls = [self.call(geom.layer(geom.in_channels, geom.out_channels), geom.example(batch))]
            calls += [self.call(geom.pair(r), geom.example(batch)) for r in ranks]
            timings, ref_ms = self.measure_window(calls)
            points = {"ranks": ranks, "pair_ms": [t.median_ms for t in timings[1:]], "dense_ms": timings[0].median_ms}
        elif form == "width":
            ins, outs = _grid(geom.in_channels, WIDTH_FRACTIONS), _grid(geom.out_channels, WIDTH_FRACTIONS)
            calls = [self.call(geom.layer(i, o), geom.example(batch, i)) for i in ins for o in outs]
            timings, ref_ms = self.measure_window(calls)
            medians = [t.median_ms for t in timings]
            points = {"ins": ins, "outs": outs, "ms": [medians[k * len(outs):(k + 1) * len(outs)]
                                                       for k in range(len(ins))]}
        else:
            raise ValueError(f"latency table form must be one of {', '.join(FORMS)}; got {form!r}")
        entry = {"version": ENTRY_VERSION, "context": asdict(self.ctx), "geometry": asdict(geom), "form": form,
                 "noisy": any(t.noisy for t in timings), "spread": max(t.spread for t in timings), "ref_ms": ref_ms,
                 **points}
        write_atomic(self._path(geom, form), lambda tmp: tmp.write_text(json.dumps(entry)))
        self.measured += 1
        return entry

    def rank_curve(self, geom: Geometry) -> RankCurve:
        """The entry of `geom`'s thin pairs by rank, measured now when missing."""
        e = self._entry(geom, "rank")
        return RankCurve(e["ranks"], e["pair_ms"], e["dense_ms"], e["noisy"], e["ref_ms"])

    def width_grid(self, geom: Geometry) -> WidthGrid:
        """The entry of `geom` at pruned widths, measured now when missing."""
        e = self._entry(geom, "width")
        return WidthGrid(e["ins"], e["outs"], e["ms"], e["noisy"], e["ref_ms"])
