"""Measured inference speed-up of LoRITa-factorized and pruned models next to their FLOPs speed-up, at equal FLOPs drop.

Per model (random init: only the shapes matter for speed) and FLOPs-drop target:
  dense       lorita.collapse(lorita.overparameterize(model, 3)): the structure LoRITa training ends with
  lorita      plan_ranks(dense, "flops_drop", t, classifier excluded) then lorita.factorize
  l1, ...     baselines.prune(dense, method, t, metric="flops") (classifier kept)
Latency is benchmarks.latency.time_interleaved (eval-mode forward, median after warm-up, every variant sampled in turn
each round) at each batch size on the CPU and, when torch.cuda.is_available(), on the GPU.
measured speed-up = dense latency / latency; FLOPs speed-up = dense FLOPs / FLOPs (fvcore, batch 1).

    python -m benchmarks.perf.inference [--out DIR] [--quick] [--models ...] [--drops 0.5 0.7] [--devices cpu cuda]
"""

from __future__ import annotations

import argparse
from typing import Any

import torch

import baselines
import lorita
from benchmarks.latency import time_interleaved
from benchmarks.models import create_model
from benchmarks.perf import common
from benchmarks.run.environment import synchronize

NAME = "inference"
MODELS: dict[str, tuple[int, int, int]] = {"vgg16": (3, 32, 32), "resnet20": (3, 32, 32), "fcn": (1, 28, 28)}
QUICK_MODELS = ("fcn",)
PRUNERS = ("l1", "group_norm")
FACTORS = 3


def variants(name: str, drops: list[float], pruners: list[str]) -> list[dict[str, Any]]:
    """Every compressed version of model `name` (plus dense), each with its FLOPs, parameters and any error."""
    in_shape = MODELS[name]
    torch.manual_seed(0)
    dense = lorita.collapse(lorita.overparameterize(create_model(name, 10, in_shape), FACTORS)).eval()
    x = torch.zeros(1, *in_shape)
    exclude = [baselines.classifier_name(dense)]
    out = [{"method": "dense", "target": None, "model": dense}]
    for drop in drops:
        def factorized(t=drop):
            return lorita.factorize(dense, lorita.plan_ranks(dense, "flops_drop", t, example_input=x, exclude=exclude))

        builders = [("lorita", factorized)]
        builders += [(p, lambda p=p, t=drop: baselines.prune(dense, p, t, metric="flops", example_input=x))
                     for p in pruners]
        for method, build in builders:
            try:
                out.append({"method": method, "target": drop, "model": build().eval()})
            except (ValueError, RuntimeError) as err:  # an unreachable target is a result, not a crash
                out.append({"method": method, "target": drop, "model": None, "error": str(err).splitlines()[0]})
    for v in out:
        if v["model"] is not None:
            v["flops"], v["params"] = lorita.count_flops_params(v["model"], x)
    return out


def bench_model(name: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    models = variants(name, args.drops, args.pruners)
    dense_flops = models[0]["flops"]
    rows = []
    for device in args.devices:
        for batch in args.batches:
            x = torch.randn(batch, *MODELS[name], device=device)
            present = [v for v in models if v["model"] is not None]
            on_device = [v["model"].to(device).eval() for v in present]
            window = time_interleaved([lambda m=m, x=x: m(x) for m in on_device], rounds=args.rounds,
                                      sync=lambda d=device: synchronize(d))
            measured_ms = {id(v): t.median_ms for v, t in zip(present, window.timings, strict=True)}
            dense_ms = measured_ms[id(models[0])]
            for v in models:
                measured = measured_ms.get(id(v))
                rows.append({
                    "model": name, "method": v["method"], "target_drop": v["target"], "device": str(device),
                    "batch": batch, "flops": v.get("flops"), "params": v.get("params"),
                    "flops_drop": None if v["model"] is None else 1 - v["flops"] / dense_flops,
                    "latency_ms": measured,
                    "speedup": None if measured is None else dense_ms / measured,
                    "flops_speedup": None if v["model"] is None else dense_flops / v["flops"],
                    "error": v.get("error"),
                })
            print(f"  {name} {device} batch {batch}: dense {dense_ms:.2f} ms", flush=True)
    return rows


def run(args: argparse.Namespace) -> dict[str, Any]:
    rows = []
    for name in args.models:
        rows += bench_model(name, args)
    settings = {"quick": args.quick, "models": args.models, "drops": args.drops, "pruners": args.pruners,
                "factors": FACTORS, "batches": args.batches, "devices": [str(d) for d in args.devices],
                "rounds": args.rounds}
    return common.result(NAME, settings, rows)


def markdown(result: dict[str, Any]) -> str:
    s = result["settings"]
    settings = [(d, b) for d in s["devices"] for b in s["batches"]]
    groups: dict[tuple, dict[tuple, dict]] = {}
    for r in result["rows"]:
        groups.setdefault((r["model"], r["method"], r["target_drop"]), {})[(r["device"], r["batch"])] = r
    rows = []
    for (model, method, target), by_setting in groups.items():
        first = next(iter(by_setting.values()))
        if first["error"]:
            rows.append([model, method, target, "unreachable: " + first["error"][:80], "", *("" for _ in settings)])
            continue
        cells = []
        for setting in settings:
            r = by_setting.get(setting)
            cells.append("" if r is None else f"{r['speedup']:.2f}x ({r['latency_ms']:.2f} ms)")
        drop = "" if target is None else f"{100 * first['flops_drop']:.1f}%"
        rows.append([model, method, "" if target is None else target, drop, f"{first['flops_speedup']:.2f}x",
                     *cells])
    head = (f"### Inference at equal FLOPs drop (random-init models, LoRITa factors={s['factors']}; median of "
            f"{s['rounds']} interleaved round(s))\n\n"
            "Each measured column: dense latency / model latency (model latency). FLOPs speed-up: dense FLOPs / "
            "model FLOPs (fvcore, batch 1).\n\n")
    return head + common.table(["model", "method", "target drop", "FLOPs drop", "FLOPs speed-up",
                                *(f"{d} b{b} measured" for d, b in settings)], rows)


def build_parser() -> argparse.ArgumentParser:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", choices=list(MODELS), default=None)
    p.add_argument("--drops", nargs="+", type=float, default=None,
                   help="FLOPs-drop targets (default 0.5 0.7; 0.5 with --quick)")
    p.add_argument("--pruners", nargs="+", default=list(PRUNERS))
    p.add_argument("--batches", nargs="+", type=int, default=None, help="default 1 128 (1 8 with --quick)")
    p.add_argument("--devices", nargs="+", type=common.device_arg, default=None,
                   help="default: cpu, plus cuda when available")
    p.add_argument("--rounds", type=int, default=None, help="samples per variant (default 9; 3 with --quick)")
    return p


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = common.setup(build_parser().parse_args(argv))
    args.models = args.models or list(QUICK_MODELS if args.quick else MODELS)
    args.drops = args.drops or ([0.5] if args.quick else [0.5, 0.7])
    args.batches = args.batches or ([1, 8] if args.quick else [1, 128])
    args.devices = args.devices or [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    args.rounds = args.rounds or (3 if args.quick else 9)
    return common.finish(NAME, run(args), args.out, markdown)


if __name__ == "__main__":
    main()
