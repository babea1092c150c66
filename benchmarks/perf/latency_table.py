"""How well the latency table predicts measured latency, and how close a speed-up target lands (random-init models).

Per model and batch size: the table is built (timed: its entries measured now, in a fresh cache folder unless
--cache-dir names one), then every method plans its compressed model at `--drop` FLOPs drop and, where --speedup
is given, at that measured speed-up (latency_drop = 1 - 1/S, planned by the table):
  lorita      lorita.collapse(lorita.overparameterize(model, 3)), plan_ranks then factorize (classifier kept)
  svd         the same on the plain random-init model
  l1, ...     baselines.prune of the plain model (classifier kept)
Every plan is then timed side by side with its dense network (benchmarks.latency.time_interleaved), as a run records
its latency, and the table's prediction is set against the measurement: benchmarks.latency.ModelLatency.predict in
that window (the table's ratio of the plan to the dense network, times the dense network's time there, as a run
records `latency_pred_ms`), and in the table's own window (its ms as built).
Where a speed-up target is unreachable, the stated largest reachable speed-up is set against the measured speed-up
of the most compressed plan (every planned layer at rank 1; the pruning criterion's plan at the largest reachable
drop).

    python -m benchmarks.perf.latency_table [--models fcn resnet20 vgg16] [--batches 1 128] [--drop 0.5]
        [--speedup 1.5 --speedup-models resnet20 --speedup-batch 128] [--cache-dir DIR] [--out DIR] [--quick]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

import baselines
import lorita
from benchmarks.latency import LatencyTable, ModelLatency, context, model_latency, time_interleaved
from benchmarks.methods import get_method
from benchmarks.models import create_model
from benchmarks.perf import common

NAME = "latency_table"
MODELS: dict[str, tuple[int, int, int]] = {"fcn": (1, 28, 28), "resnet20": (3, 32, 32), "vgg16": (3, 32, 32)}
METHODS = ("lorita", "svd", "l1", "group_norm", "slim")
QUICK_METHODS = ("svd", "l1")
FACTORS = 3
# A plan's prediction counts as good within this relative error of the measurement (the acceptance).
GOOD = 0.15


def _networks(name: str) -> dict[bool, nn.Module]:
    """The random-init network, plain (False) and as a composing method's training leaves it, collapsed (True)."""
    torch.manual_seed(0)
    plain = create_model(name, 10, MODELS[name]).eval()
    torch.manual_seed(0)
    composed = lorita.collapse(lorita.overparameterize(create_model(name, 10, MODELS[name]), FACTORS)).eval()
    return {False: plain, True: composed}


def _planner(name: str, networks: dict[bool, nn.Module], latency: ModelLatency, example: torch.Tensor
             ) -> Callable[[str, float], nn.Module]:
    """plan(metric, target) -> the compressed model, metric "flops" or "latency"."""
    method = get_method(name)
    network = networks[method.composes]
    exclude = [baselines.classifier_name(network)]
    if method.latency_form == "rank":
        def plan(metric: str, target: float) -> nn.Module:
            if metric == "latency":
                ranks = lorita.plan_ranks(network, "cost_drop", target, cost=latency.plan_cost(), exclude=exclude)
                return lorita.factorize(network, ranks, split=set(ranks))
            ranks = lorita.plan_ranks(network, "flops_drop", target, example_input=example, exclude=exclude)
            return lorita.factorize(network, ranks)
    else:
        def plan(metric: str, target: float) -> nn.Module:
            cost = latency.prune_cost() if metric == "latency" else None
            return baselines.prune(network, name, target, metric=metric, example_input=example,
                                   ignored_layers=exclude, latency=cost)
    return plan


def _most_compressed(name: str, networks: dict[bool, nn.Module], latency: ModelLatency, largest: float,
                     plan: Callable[[str, float], nn.Module]) -> nn.Module:
    method = get_method(name)
    if method.latency_form == "rank":
        network = networks[method.composes]
        cost = latency.plan_cost()
        exclude = baselines.classifier_name(network)
        ranks = {name: 1 for name in lorita.planned_layers(network, [exclude]) if cost.split(name, 1)}
        return lorita.factorize(network, ranks, split=set(ranks))
    return plan("latency", largest - 0.005)


def bench(name: str, batch: int, args: argparse.Namespace, cache: Path) -> list[dict[str, Any]]:
    in_shape = MODELS[name]
    networks = _networks(name)
    table = LatencyTable(cache, context(batch, torch.device("cpu")), rounds=args.rounds)
    started = time.perf_counter()
    latency = model_latency(networks[False], in_shape, table)
    build_s = time.perf_counter() - started
    print(f"{name} batch {batch}: table of {table.measured} entries in {build_s:.1f} s "
          f"(remainder {latency.remainder_ms:.2f} of {latency.base_ms:.2f} ms)", flush=True)
    example = torch.zeros(1, *in_shape)
    plans: list[tuple[dict[str, Any], nn.Module]] = []
    speedup = args.speedup if name in args.speedup_models and batch == args.speedup_batch else None
    for method in args.methods:
        plan = _planner(method, networks, latency, example)
        try:
            plans.append(({"method": method, "target": f"flops_drop {args.drop:g}"}, plan("flops", args.drop)))
        except ValueError as err:
            plans.append(({"method": method, "target": f"flops_drop {args.drop:g}", "failure": str(err)}, None))
        if speedup is not None:
            row = {"method": method, "target": f"speedup {speedup:g}"}
            try:
                plans.append((row, plan("latency", 1 - 1 / speedup)))
            except lorita.UnreachableTarget as err:
                row["stated_largest_speedup"] = 1 / (1 - err.largest)
                plans.append((row, _most_compressed(method, networks, latency, err.largest, plan)))
    x = torch.randn(batch, *in_shape)
    rows = []
    for row, model in plans:
        row = {"model": name, "batch": batch, "table_build_s": build_s, **row}
        if model is not None:
            # Each plan beside its dense network only, as a run records its latency: several networks' activations in
            # one window slow them all (measured: dense ResNet-20 at batch 128, 104 ms alone, 186 ms among 12).
            network = networks[get_method(row["method"]).composes]
            window = time_interleaved([lambda n=network: n(x), lambda m=model: m(x)], rounds=args.rounds)
            dense, timing = window.timings[0].median_ms, window.timings[1]
            row["others_busy"] = window.others_busy
            # In this window (the table's ratio to the dense network, times the dense network timed beside the plan),
            # and in the table's own window.
            predicted, at_build = latency.predict(model, dense), latency.predict(model)
            flops, _ = lorita.count_flops_params(model, example)
            base_flops, _ = lorita.count_flops_params(networks[False], example)
            row.update(measured_ms=timing.median_ms, iqr_ms=timing.iqr_ms, noisy=timing.noisy, predicted_ms=predicted,
                       rel_error=predicted / timing.median_ms - 1, dense_ms=dense, speedup=dense / timing.median_ms,
                       predicted_speedup=latency.base_ms / at_build, flops_drop=1 - flops / base_flops,
                       table_dense_ms=latency.base_ms, predicted_ms_at_build=at_build,
                       rel_error_at_build=at_build / timing.median_ms - 1)
        rows.append(row)
    return rows


def run(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as fresh:
        cache = Path(args.cache_dir or fresh)
        rows = [row for name in args.models for batch in args.batches for row in bench(name, batch, args, cache)]
    settings = {"quick": args.quick, "models": args.models, "batches": args.batches, "methods": args.methods,
                "drop": args.drop, "speedup": args.speedup, "speedup_models": args.speedup_models,
                "speedup_batch": args.speedup_batch, "rounds": args.rounds, "factors": FACTORS}
    return common.result(NAME, settings, rows)


def markdown(result: dict[str, Any]) -> str:
    rows, flops_rows = [], [r for r in result["rows"] if r["target"].startswith("flops") and "failure" not in r]
    good = sum(abs(r["rel_error"]) <= GOOD for r in flops_rows)
    good_at_build = sum(abs(r["rel_error_at_build"]) <= GOOD for r in flops_rows)
    for r in result["rows"]:
        if "measured_ms" not in r:
            rows.append([r["model"], r["batch"], r["method"], r["target"], "", "", "", "", "", r.get("failure", "")])
            continue
        stated = r.get("stated_largest_speedup")
        rows.append([r["model"], r["batch"], r["method"], r["target"], f"{100 * r['flops_drop']:.1f}%",
                     f"{r['predicted_ms']:.2f}", f"{r['measured_ms']:.2f} ± {r['iqr_ms']:.2f}"
                     + (" (noisy)" if r["noisy"] else ""),
                     f"{100 * r['rel_error']:+.1f}% ({100 * r['rel_error_at_build']:+.1f}%)",
                     f"{r['speedup']:.2f}x (table {r['predicted_speedup']:.2f}x)",
                     "" if stated is None else f"unreachable: stated largest {stated:.2f}x"])
    builds = {(r["model"], r["batch"]): r["table_build_s"] for r in result["rows"]}
    busy = [r["others_busy"] for r in result["rows"] if r.get("others_busy") is not None]
    head = (f"### Latency table: predicted against measured end-to-end latency (CPU, random init)\n\n"
            f"{common.machine_line(result['machine'])} Plans within ±{100 * GOOD:.0f} %: {good} of "
            f"{len(flops_rows)} at the FLOPs target, the prediction in each plan's window (the table's ratio to the "
            f"dense network times the dense network timed beside the plan, as runs record it); {good_at_build} of "
            f"{len(flops_rows)} in the table's own window (its ms as built, in brackets). Table build: "
            + ", ".join(f"{m} b{b} {s:.0f} s" for (m, b), s in builds.items())
            + (f". Other processes' CPU share during the timing windows: up to {max(busy):.2f}." if busy else ".")
            + "\n\n")
    return head + common.table(["model", "batch", "method", "target", "FLOPs drop", "predicted ms",
                                "measured ms (IQR)", "error (as built)", "measured speed-up", "note"], rows)


def build_parser() -> argparse.ArgumentParser:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", choices=list(MODELS), default=None)
    p.add_argument("--batches", nargs="+", type=int, default=None, help="default 1 128 (1 8 with --quick)")
    p.add_argument("--methods", nargs="+", default=None, help=f"default {' '.join(METHODS)} "
                   f"({' '.join(QUICK_METHODS)} with --quick)")
    p.add_argument("--drop", type=float, default=0.5, help="FLOPs-drop target of every plan (default 0.5)")
    p.add_argument("--speedup", type=float, default=None, help="also plan this measured speed-up (e.g. 1.5)")
    p.add_argument("--speedup-models", nargs="+", default=["resnet20"], help="models the speed-up is planned for")
    p.add_argument("--speedup-batch", type=int, default=128)
    p.add_argument("--rounds", type=int, default=None, help="timing rounds (default 9; 3 with --quick)")
    p.add_argument("--cache-dir", type=Path, default=None, help="keep the table here (default: a fresh temp folder)")
    return p


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = common.setup(build_parser().parse_args(argv))
    quick = args.quick
    args.models = args.models or (["fcn"] if quick else list(MODELS))
    args.batches = args.batches or ([1, 8] if quick else [1, 128])
    args.rounds = args.rounds or (3 if quick else 9)
    args.methods = args.methods or list(QUICK_METHODS if quick else METHODS)
    return common.finish(NAME, run(args), args.out, markdown)


if __name__ == "__main__":
    main()
