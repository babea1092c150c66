"""A whole network's latency predicted from the table: its Linear/Conv2d layers' entries plus a measured remainder.

The remainder (activations, norms, pooling, the framework's own overhead) is the uncompressed network's measured
latency less the sum of its layers' dense entries, measured once per network and context and cached beside the
table. Low-rank compression leaves every activation outside the thin pairs as it was, so the remainder stays; channel
pruning narrows the activations too, so the part of the remainder that scales with them (measured: the network's
latency at half its batch tells the fixed overhead from the part that grows with the data) shrinks with the output
widths of the layers, weighted by their activation sizes. Where the layers timed alone add up to more than the
network (a negative remainder), their entries are scaled to the network's time instead.

Every window of the table (each entry's, the network's) also times the table's reference workload: entries are
brought to the machine's speed during the network's window by the ratio of the reference's times, since this shared
machine's speed drifts between windows. A run's window is priced by the uncompressed network itself, timed beside the
compressed one as every run records it: the prediction is the table's ratio of the compressed form to the network,
times the network's time in that window (`predict(model, base_ms)`). Within one window, copies of a network agree
within 5 % while the same network reads up to 40 % apart between windows, and a small conv as the reference did not
follow what slows a network of small layers (measured: FCN at batch 1, 0.16 to 0.22 ms between windows).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

import baselines
import lorita
from benchmarks.config import stable_hash
from benchmarks.files import write_atomic
from benchmarks.latency.table import Geometry, LatencyTable, MissingEntry, RankCurve, WidthGrid, geometry
from lorita.costs import PlanCost
from lorita.factorize import Factorized
from lorita.forward import probe

# Format of a cached remainder; another value is measured again.
REMAINDER_VERSION = 2


def layer_geometries(model: nn.Module, in_shape: tuple[int, ...]) -> tuple[dict[str, Geometry], dict[str, int]]:
    """Each Linear/Conv2d (groups=1) layer's geometry on one sample of `in_shape`, and the output elements it makes.

    A layer called more than once (weights shared) is refused: one entry would stand for several calls.
    """
    # The matrices a module reads itself (recurrent, attention: lorita.matrices) are no layer of their own to time.
    layers = {name: layer for name, layer in lorita.planned_layers(model).items() if isinstance(layer, nn.Module)}
    shapes: dict[str, list[tuple[tuple[int, ...], int]]] = {name: [] for name in layers}

    def record(name: str):
        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            shapes[name].append((tuple(args[0].shape[1:]), output[0].numel()))

        return hook

    probe(model, torch.zeros(1, *in_shape), {layer: record(name) for name, layer in layers.items()})
    geometries, activations = {}, {}
    for name, calls in shapes.items():
        if len(calls) > 1:
            raise ValueError(f"layer {name!r} runs {len(calls)} times per forward: the latency table prices a layer "
                             "by one call; exclude it or use another target")
        if calls:  # a layer the forward never calls costs nothing
            geometries[name] = geometry(layers[name], calls[0][0])
            activations[name] = calls[0][1]
    return geometries, activations


@dataclass
class ModelLatency:
    """Predicted latency (ms, one forward at the table's batch) of a network and of its compressed forms."""

    geometries: dict[str, Geometry]
    activations: dict[str, int]  # output elements of each layer for one sample
    dense_ms: dict[str, float]
    remainder_ms: float
    scaled_ms: float  # the part of the remainder that grows with the activations
    rank_curves: dict[str, RankCurve]
    width_grids: dict[str, WidthGrid]
    measured_ms: float  # the uncompressed network, measured whole: every ms above is at the speed of its window

    @property
    def base_ms(self) -> float:
        """The uncompressed network's prediction (its measured latency, by construction)."""
        return self.remainder_ms + sum(self.dense_ms.values())

    def _pair_ms(self, name: str, rank: int | None) -> float:
        return self.dense_ms[name] if rank is None else self.rank_curves[name].pair(rank)

    def plan_cost(self) -> PlanCost:
        """What lorita.plan_ranks plans against for a latency target (policy cost_drop)."""
        if not self.rank_curves:
            raise ValueError("this latency model has no rank entries: build it with forms including 'rank'")
        return PlanCost(self.base_ms, self._pair_ms)

    def prune_cost(self) -> baselines.LatencyCost:
        """What baselines.prune plans against for a latency target (metric latency)."""
        if not self.width_grids:
            raise ValueError("this latency model has no width entries: build it with forms including 'width'")
        lookups = {name: grid.interpolator() for name, grid in self.width_grids.items()}
        total = sum(self.activations.values()) or 1

        def predict(widths: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
            ms = self.remainder_ms - self.scaled_ms
            for name, geom in self.geometries.items():
                if name not in widths:
                    ms = ms + self.dense_ms[name] + self.scaled_ms * self.activations[name] / total
                    continue
                i, o = widths[name]
                ms = ms + lookups[name](i, o) + self.scaled_ms * (self.activations[name] / total) * (
                    np.asarray(o, dtype=float) / geom.out_channels)
            return np.asarray(ms)

        return baselines.LatencyCost(self.base_ms, predict)

    def predict(self, compressed: nn.Module, base_ms: float | None = None) -> float:
        """The table's latency for a compressed form of the network (factorized pairs, pruned or whole layers) in a
        window where the uncompressed network took `base_ms` (default: the table's own measurement of it)."""
        return self._predict(compressed) * (1.0 if base_ms is None else base_ms / self.base_ms)

    def _predict(self, compressed: nn.Module) -> float:
        widths, ranks = {}, {}
        for name, geom in self.geometries.items():
            try:
                module = compressed.get_submodule(name)
            except AttributeError:
                raise ValueError(f"the compressed model has no layer {name!r} of the network it came from") from None
            if isinstance(module, Factorized):
                ranks[name] = _out(module[0])
            elif (_in(module), _out(module)) != (geom.in_channels, geom.out_channels):
                widths[name] = (np.asarray(_in(module)), np.asarray(_out(module)))
        if widths and ranks:
            raise ValueError("a model both factorized and pruned is not one the latency table predicts")
        if widths:
            return float(self.prune_cost().predict(widths))
        return self.base_ms - sum(self.dense_ms[name] - self.rank_curves[name].pair(r) for name, r in ranks.items())

    @property
    def noisy(self) -> bool:
        """Whether an entry stayed above the spread limit after re-measuring."""
        entries = [*self.rank_curves.values(), *self.width_grids.values()]
        return any(e.noisy for e in entries)


def _in(module: nn.Module) -> int:
    return module.in_features if isinstance(module, nn.Linear) else module.in_channels


def _out(module: nn.Module) -> int:
    return module.out_features if isinstance(module, nn.Linear) else module.out_channels


def _network(table: LatencyTable, model: nn.Module, in_shape: tuple[int, ...]) -> dict[str, float]:
    """The network's measured latency at the table's batch and at half of it, cached by structure and context."""
    key = stable_hash({"structure": repr(model), "in_shape": list(in_shape), "version": REMAINDER_VERSION})
    path = table.folder / f"network-{key}.json"
    try:
        cached = json.loads(path.read_text())
        if cached.get("version") == REMAINDER_VERSION:
            return cached
    except (OSError, ValueError):
        pass
    if not table.measure:
        raise MissingEntry(f"no network entry for {key} in {table.folder}")
    device = table.ctx.torch_device
    model = model.to(device).eval()
    batch = table.ctx.batch
    half = max(1, batch // 2)
    full_x, half_x = torch.randn(batch, *in_shape, device=device), torch.randn(half, *in_shape, device=device)
    timings, ref_ms = table.measure_window([table.call(model, full_x), table.call(model, half_x)])
    full_ms, half_ms = (t.median_ms for t in timings)
    entry = {"version": REMAINDER_VERSION, "measured_ms": full_ms, "half_ms": half_ms, "ref_ms": ref_ms,
             "noisy": any(t.noisy for t in timings)}
    write_atomic(path, lambda tmp: tmp.write_text(json.dumps(entry)))
    return entry


def model_latency(model: nn.Module, in_shape: tuple[int, ...], table: LatencyTable,
                  forms: tuple[str, ...] = ("rank", "width")) -> ModelLatency:
    """The latency model of an uncompressed `model` (its weights do not matter), measuring missing entries now."""
    model = model.cpu().eval()
    geometries, activations = layer_geometries(model, in_shape)
    rank_curves = {name: table.rank_curve(geom) for name, geom in geometries.items()} if "rank" in forms else {}
    width_grids = {name: table.width_grid(geom) for name, geom in geometries.items()} if "width" in forms else {}
    measured = _network(table, model, in_shape)
    ref_ms = measured["ref_ms"]
    rank_curves = {name: _scaled_curve(c, ref_ms / c.ref_ms, ref_ms) for name, c in rank_curves.items()}
    width_grids = {name: _scaled_grid(g, ref_ms / g.ref_ms, ref_ms) for name, g in width_grids.items()}
    dense = {name: rank_curves[name].dense_ms if name in rank_curves
             else width_grids[name].at(geom.in_channels, geom.out_channels) for name, geom in geometries.items()}
    total = measured["measured_ms"]
    remainder = total - sum(dense.values())
    if remainder < 0:
        # The layers timed alone take longer than the whole network (measured: ResNet-20 at batch 128 on this
        # project's CPU, 1.5x); the entries are then scaled to the network's own time, and no remainder is left.
        factor = total / sum(dense.values())
        rank_curves = {name: _scaled_curve(c, factor, c.ref_ms) for name, c in rank_curves.items()}
        width_grids = {name: _scaled_grid(g, factor, g.ref_ms) for name, g in width_grids.items()}
        dense = {name: ms * factor for name, ms in dense.items()}
        remainder = 0.0
    # Latency ~ fixed + batch * per sample: twice the half-batch time less the full one is the fixed part; the rest of
    # the remainder is taken to grow with the data in the same proportion as the whole network's time.
    growing = 1 - min(1.0, max(0.0, 2 * measured["half_ms"] - total) / total)
    return ModelLatency(geometries, activations, dense, remainder, remainder * growing, rank_curves, width_grids,
                        total)


def _scaled_curve(curve: RankCurve, factor: float, ref_ms: float) -> RankCurve:
    return dataclasses.replace(curve, pair_ms=[ms * factor for ms in curve.pair_ms], dense_ms=curve.dense_ms * factor,
                               ref_ms=ref_ms)


def _scaled_grid(grid: WidthGrid, factor: float, ref_ms: float) -> WidthGrid:
    return dataclasses.replace(grid, ms=[[ms * factor for ms in row] for row in grid.ms], ref_ms=ref_ms)


def cache_folder(cache_dir: str | Path) -> Path:
    """Where a cache directory keeps its latency tables."""
    return Path(cache_dir) / "latency"
