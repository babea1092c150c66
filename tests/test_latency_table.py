"""The latency table: timing side by side, cached entries, interpolation, and plans priced by measured latency."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

import baselines
import lorita
from benchmarks.latency import LatencyTable, MissingEntry, context, model_latency, time_interleaved
from benchmarks.latency import table as table_module
from benchmarks.latency.model import ModelLatency, layer_geometries
from benchmarks.latency.table import RankCurve, WidthGrid, geometry
from lorita.costs import PlanCost


@pytest.fixture
def tiny_grids(monkeypatch):
    """Three-point grids and few rounds: the default tests time tiny layers only."""
    monkeypatch.setattr(table_module, "RANK_FRACTIONS", (0.25, 0.5, 1.0))
    monkeypatch.setattr(table_module, "WIDTH_FRACTIONS", (0.5, 1.0))


def _fcn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 24), nn.ReLU(), nn.Linear(24, 24), nn.ReLU(), nn.Linear(24, 4))


def test_time_interleaved_reports_every_call_and_flags_an_unsteady_one():
    a, b = torch.randn(64, 64), torch.randn(256, 256)
    calls = iter(range(10**9))

    def unsteady():  # every third call 64 times the work: its spread stays far above 10 %
        m = b if next(calls) % 3 == 0 else a
        return m @ m

    window = time_interleaved([lambda: a @ a, unsteady], rounds=8, min_sample_s=0.0)
    steady, noisy = window.timings
    assert steady.samples == 8 and steady.median_ms > 0
    assert noisy.noisy and noisy.spread > 0.1
    assert noisy.samples == 8  # measured again: the fresh rounds replace the first
    assert window.others_busy is None or 0.0 <= window.others_busy <= 1.0


def test_each_sample_follows_an_untimed_call_of_its_own():
    order = []
    window = time_interleaved([lambda: order.append("a"), lambda: order.append("b")], rounds=3, warmup=1,
                              min_sample_s=0.0)
    assert [t.samples for t in window.timings] == [3, 3]
    # warm-up a, b; one calibration call each; then per round: a primed, a timed, b primed, b timed (and as many
    # fresh rounds of the calls whose spread, for calls this short, stayed above the limit)
    assert order[:16] == ["a", "b", "a", "b"] + ["a", "a", "b", "b"] * 3
    again = order[16:]
    assert all(again[i] == again[i + 1] for i in range(0, len(again), 2)) and len(again) in (0, 6, 12)


def _mapped_bytes() -> int:
    """Bytes glibc's malloc holds in mmap-ed blocks (mallinfo2, glibc 2.33 and later)."""
    import ctypes
    import ctypes.util

    class MallInfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                         "fsmblks", "uordblks", "fordblks", "keepcost")]

    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    libc.mallinfo2.restype = MallInfo2
    return libc.mallinfo2().hblkhd


def test_timing_keeps_large_buffers_out_of_mmap():
    from benchmarks.latency import steady_allocator

    time_interleaved([lambda: None], rounds=1)  # every timing window applies it
    if not steady_allocator():
        pytest.skip("not glibc's malloc")
    before = _mapped_bytes()
    block = torch.ones(16 << 20)  # 64 MiB: above any mmap threshold glibc would set by itself
    assert _mapped_bytes() - before < block.numel() * block.element_size() // 2
    assert context(8, torch.device("cpu")).allocator == "steady"


def test_rank_curve_interpolates_and_never_rises_as_rank_falls():
    curve = RankCurve(ranks=[1, 4, 8], pair_ms=[2.0, 1.0, 3.0], dense_ms=2.5, noisy=False, ref_ms=1.0)
    assert curve.pair(8) == 3.0
    assert curve.pair(6) == pytest.approx(2.0)  # between the monotone values 1.0 (rank 4) and 3.0 (rank 8)
    assert curve.pair(1) == curve.pair(2) == 1.0  # rank 1 measured slower than rank 4: noise, never a plan's gain


def test_width_grid_is_exact_for_latency_affine_in_each_width():
    def cost(i, o):
        return 0.01 * i * o + 0.2 * i + 0.1 * o + 1.0

    ins, outs = [4, 8, 16], [2, 6, 10]
    grid = WidthGrid(ins, outs, [[cost(i, o) for o in outs] for i in ins], noisy=False, ref_ms=1.0)
    lookup = grid.interpolator()
    i, o = np.array([5, 12, 16, 4]), np.array([3, 7, 10, 2])
    np.testing.assert_allclose(lookup(i, o), cost(i, o), rtol=1e-12)
    assert grid.at(3, 1) == pytest.approx(cost(4, 2))  # below the grid: clamped to its smallest point


def test_geometry_pair_is_what_factorize_writes():
    torch.manual_seed(0)
    for layer, shape in [(nn.Linear(12, 9), (5, 12)), (nn.Conv2d(3, 8, 3, stride=2, padding=1), (3, 10, 10))]:
        model = nn.Sequential(layer)
        geom = geometry(layer, shape)
        written = lorita.factorize(model, {"0": 2}, split={"0"})[0]
        timed = geom.pair(2)
        assert [type(m) for m in written] == [type(m) for m in timed]
        for a, b in zip(written, timed, strict=True):
            assert a.weight.shape == b.weight.shape and (a.bias is None) == (b.bias is None)
            if isinstance(a, nn.Conv2d):
                assert (a.stride, a.padding, a.dilation) == (b.stride, b.padding, b.dilation)
        assert timed(geom.example(2)).shape == written(geom.example(2)).shape


def test_entries_are_cached_one_file_each_and_read_without_measuring(tmp_path, tiny_grids):
    ctx = context(4, torch.device("cpu"))
    model = _fcn()
    first = LatencyTable(tmp_path, ctx, rounds=3)
    built = model_latency(model, (1, 4, 4), first)
    assert first.measured == 6  # three layers, two forms
    files = sorted(p.name for p in first.folder.glob("*.json"))
    assert len(files) == 7 and sum(name.startswith("network-") for name in files) == 1
    again = LatencyTable(tmp_path, ctx, measure=False)
    read = model_latency(model, (1, 4, 4), again)
    assert again.measured == 0 and read.base_ms == built.base_ms
    # An interrupted build resumes at the first missing entry: only that one is measured again.
    (first.folder / files[0]).unlink()
    with pytest.raises(MissingEntry):
        model_latency(model, (1, 4, 4), LatencyTable(tmp_path, ctx, measure=False))
    resumed = LatencyTable(tmp_path, ctx, rounds=3)
    model_latency(model, (1, 4, 4), resumed)
    assert resumed.measured == (0 if files[0].startswith("network-") else 1)
    # Another batch size is another context: its own folder.
    assert LatencyTable(tmp_path, context(8, torch.device("cpu"))).folder != first.folder
    entry = json.loads(next(first.folder.glob("rank-*.json")).read_text())
    assert entry["context"]["batch"] == 4 and entry["form"] == "rank" and len(entry["pair_ms"]) == len(entry["ranks"])


def test_unknown_backend_is_one_line():
    with pytest.raises(ValueError, match=f"latency backend must be one of {', '.join(table_module.BACKENDS)}; "
                                         "got 'tensorrt'"):
        context(4, torch.device("cpu"), "tensorrt")


def test_a_layer_called_twice_is_refused():
    shared = nn.Linear(4, 4)
    with pytest.raises(ValueError, match="layer '0' runs 2 times per forward"):
        layer_geometries(nn.Sequential(shared, shared), (4,))


def _synthetic(model: nn.Module, in_shape: tuple[int, ...]) -> ModelLatency:
    """A latency model whose entries follow a known law: a layer costs in*out (ms / 1000), a pair r*(in+out)."""
    geometries, activations = layer_geometries(model, in_shape)
    curves, grids, dense = {}, {}, {}
    for name, g in geometries.items():
        ranks = list(range(1, g.full_rank + 1))
        dense[name] = g.in_channels * g.out_channels / 1000
        curves[name] = RankCurve(ranks, [r * (g.in_channels + g.out_channels) / 1000 for r in ranks], dense[name],
                                 False, 1.0)
        ins, outs = [1, g.in_channels], [1, g.out_channels]
        grids[name] = WidthGrid(ins, outs, [[i * o / 1000 for o in outs] for i in ins], False, 1.0)
    return ModelLatency(geometries, activations, dense, remainder_ms=0.5, scaled_ms=0.0, rank_curves=curves,
                        width_grids=grids, measured_ms=0.5 + sum(dense.values()))


def test_a_latency_plan_meets_its_target_by_the_table_and_splits_only_faster_pairs():
    model = _fcn()
    latency = _synthetic(model, (1, 4, 4))
    cost = latency.plan_cost()
    ranks = lorita.plan_ranks(model, "cost_drop", 0.3, cost=cost, exclude=["5"])
    assert ranks and all(cost.split(name, r) for name, r in ranks.items())
    compressed = lorita.factorize(model, ranks, split=set(ranks))
    achieved = 1 - latency.predict(compressed) / latency.base_ms
    assert abs(achieved - 0.3) <= 0.01
    expected = latency.base_ms - sum(latency.dense_ms[n] - r * (g.in_channels + g.out_channels) / 1000
                                     for n, r in ranks.items() for g in [latency.geometries[n]])
    assert latency.predict(compressed) == pytest.approx(expected)
    with pytest.raises(lorita.UnreachableTarget, match="largest reachable drop") as info:
        lorita.plan_ranks(model, "cost_drop", 0.95, cost=cost, exclude=["5"])
    assert 0 < info.value.largest < 0.95


def test_cost_drop_needs_its_cost_and_only_it():
    model = _fcn()
    with pytest.raises(ValueError, match="cost .* is what policy 'cost_drop' plans against"):
        lorita.plan_ranks(model, "cost_drop", 0.3)
    with pytest.raises(ValueError, match="got policy 'flops_drop' with cost given"):
        lorita.plan_ranks(model, "flops_drop", 0.3, example_input=torch.zeros(1, 16),
                          cost=PlanCost(1.0, lambda name, rank: 1.0))


def test_pruning_to_a_latency_target_prices_channels_by_the_table():
    model = _fcn()
    latency = _synthetic(model, (1, 4, 4))
    pruned = baselines.prune(model, "l1", 0.4, metric="latency", example_input=torch.zeros(1, 1, 4, 4),
                             latency=latency.prune_cost())
    achieved = 1 - latency.predict(pruned) / latency.base_ms
    assert abs(achieved - 0.4) <= baselines.TOLERANCE
    widths = baselines.layer_widths(pruned)
    expected = 0.5 + sum(float(i) * float(o) / 1000 for i, o in widths.values())
    assert latency.predict(pruned) == pytest.approx(expected)
    with pytest.raises(ValueError, match="latency .* is what metric 'latency' prices plans by"):
        baselines.prune(model, "l1", 0.4, metric="latency", example_input=torch.zeros(1, 1, 4, 4))
    with pytest.raises(lorita.UnreachableTarget) as info:
        baselines.prune(model, "l1", 0.99, metric="latency", example_input=torch.zeros(1, 1, 4, 4),
                        latency=latency.prune_cost())
    assert 0 < info.value.largest < 0.99


def _flops_window(scale):
    """A stand-in for time_interleaved: the i-th call 'takes' its multiply-adds / 1e6 ms times scale(calls, i)."""
    from torch.utils.flop_counter import FlopCounterMode

    from benchmarks.latency import Timing, Window

    def timed(calls, **_):
        out = []
        for index, call in enumerate(calls):
            with FlopCounterMode(display=False) as counter:
                call()
            out.append(Timing(counter.get_total_flops() / 1e6 * scale(calls, index), 0.0, 1, False))
        return Window(out, 0.0)

    return timed


def test_layers_slower_alone_than_in_the_network_are_scaled_to_its_time(tmp_path, tiny_grids, monkeypatch):
    model = _fcn()
    # The network's window (its full and half batch, then the reference) runs the network at half its layers' cost
    # alone while the reference keeps its speed: no drift, the layers alone do outlast the network.
    network = {"now": False}
    monkeypatch.setattr(table_module, "time_interleaved", _flops_window(
        lambda calls, i: 0.5 if network["now"] and i < len(calls) - 1 else 1.0))
    table = LatencyTable(tmp_path / "alone", context(4, torch.device("cpu")))
    for geom in layer_geometries(model, (1, 4, 4))[0].values():
        table.rank_curve(geom)
    network["now"] = True
    alone = model_latency(model, (1, 4, 4), table, ("rank",))
    # Every entry is halved, no remainder is left.
    assert alone.remainder_ms == 0.0 and alone.base_ms == pytest.approx(alone.measured_ms)
    unscaled = table.rank_curve(alone.geometries["1"])
    assert alone.rank_curves["1"].pair(4) == pytest.approx(unscaled.pair(4) / 2)
    assert alone.dense_ms["1"] == pytest.approx(unscaled.dense_ms / 2)


def test_a_prediction_follows_the_network_timed_in_its_window(tmp_path, tiny_grids, monkeypatch):
    model = _fcn()
    monkeypatch.setattr(table_module, "time_interleaved", _flops_window(lambda calls, i: 1.0))
    latency = model_latency(model, (1, 4, 4), LatencyTable(tmp_path / "t", context(4, torch.device("cpu"))),
                            ("rank",))
    compressed = lorita.factorize(model, {"1": 2}, split={"1"})
    at_build = latency.predict(compressed)
    assert at_build < latency.base_ms
    assert latency.predict(compressed, latency.base_ms) == pytest.approx(at_build)
    # A window in which the uncompressed network took 1.3 times as long: the machine runs slower, so does the plan.
    assert latency.predict(compressed, 1.3 * latency.base_ms) == pytest.approx(1.3 * at_build)
    # Entries measured while the machine ran at another speed are brought to the network window's speed.
    slow = [2.0]  # every call of every window twice as slow: the reference shows it
    monkeypatch.setattr(table_module, "time_interleaved", _flops_window(lambda calls, i: slow[0]))
    drifted = model_latency(model, (1, 4, 4), LatencyTable(tmp_path / "d", context(4, torch.device("cpu"))),
                            ("rank",))
    assert drifted.base_ms == pytest.approx(2 * latency.base_ms)
    assert drifted.predict(compressed) / drifted.base_ms == pytest.approx(at_build / latency.base_ms)
