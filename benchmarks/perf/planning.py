"""Time of rank planning: singular values (lorita.spectra), plan_ranks flops_drop (first and cached), fvcore.

On each model (CIFAR input, batch-1 example, classifier excluded as the harness does):
  spectra      lorita.spectra uncached: the cache is invalidated before every call by an in-place no-op update of
               one parameter (its version moves, as after an optimizer step)
  plan first   the first plan_ranks(..., "flops_drop", t) with the singular values cached: it also profiles the
               model once (fvcore count plus one hooked forward)
  plan cached  plan_ranks for each t with singular values and profile cached
  fvcore       lorita.count_flops_params alone, for comparison
  svdvals      torch.linalg.svdvals (float64) of every layer's weight matrix, timed once, for reference

    python -m benchmarks.perf.planning [--out DIR] [--quick] [--models vgg16 resnet56] [--repeats R]
"""

from __future__ import annotations

import argparse
from typing import Any

import torch

import lorita
from baselines import classifier_name
from benchmarks.models import create_model
from benchmarks.perf import common
from lorita._validate import lowrank_layers
from lorita.spectra import weight_matrix

NAME = "planning"
TARGETS = (0.3, 0.5, 0.7)
LIMITS_S = {"spectra_s": 0.5, "plan_cached_s": 0.5}  # targets of the Performance issue
MODELS = ("vgg16", "resnet56")
QUICK_MODELS = ("cnn",)


@torch.no_grad()
def invalidate(model: torch.nn.Module) -> None:
    """Make lorita's per-model cache stale without changing the function (bumps a parameter's version)."""
    next(model.parameters()).add_(0)


def svdvals_all(model: torch.nn.Module) -> None:
    for layer in lowrank_layers(model).values():
        torch.linalg.svdvals(weight_matrix(layer.weight).detach().double())


def bench_model(name: str, repeats: int) -> dict[str, Any]:
    torch.manual_seed(0)
    model = create_model(name, 10, (3, 32, 32)).eval()
    x = torch.zeros(1, 3, 32, 32)
    exclude = [classifier_name(model)]

    def fresh_spectra():
        invalidate(model)
        return lorita.spectra(model)

    spectra_s, _ = common.timed(fresh_spectra, repeats)
    invalidate(model)
    lorita.spectra(model)  # singular values cached, profile not yet
    plan_first_s, _ = common.timed(lambda: lorita.plan_ranks(model, "flops_drop", TARGETS[0], example_input=x,
                                                             exclude=exclude))
    cached = {}
    for target in TARGETS:
        seconds, ranks = common.timed(lambda t=target: lorita.plan_ranks(model, "flops_drop", t, example_input=x,
                                                                         exclude=exclude), repeats)
        cached[str(target)] = seconds
    fvcore_s, (flops, params) = common.timed(lambda: lorita.count_flops_params(model, x), repeats)
    svdvals_s, _ = common.timed(lambda: svdvals_all(model))  # once: a reference, and slow (a minute on VGG-16)
    plan_cached_s = max(cached.values())
    row = {"model": name, "layers": len(lowrank_layers(model)), "flops": flops, "params": params,
           "spectra_s": spectra_s, "plan_first_s": plan_first_s, "plan_cached_s_by_target": cached,
           "plan_cached_s": plan_cached_s, "fvcore_s": fvcore_s, "svdvals_float64_s": svdvals_s}
    row["met"] = {key: row[key] < limit for key, limit in LIMITS_S.items()}
    return row


def run(args: argparse.Namespace) -> dict[str, Any]:
    rows = []
    for name in args.models:
        rows.append(bench_model(name, args.repeats))
        print(f"  {name}: spectra {rows[-1]['spectra_s']:.3f} s, plan cached {rows[-1]['plan_cached_s']:.4f} s",
              flush=True)
    settings = {"quick": args.quick, "models": args.models, "repeats": args.repeats, "targets": list(TARGETS),
                "policy": "flops_drop", "example_input": [1, 3, 32, 32], "limits_s": LIMITS_S}
    return common.result(NAME, settings, rows)


def markdown(result: dict[str, Any]) -> str:
    s = result["settings"]

    def verdict(r, key):
        return f"{r[key]:.3f}" + ("" if r["met"][key] else " (MISSED)")

    rows = [[r["model"], r["layers"], verdict(r, "spectra_s"), f"{r['plan_first_s']:.3f}",
             " / ".join(f"{v:.4f}" for v in r["plan_cached_s_by_target"].values()), f"{r['fvcore_s']:.3f}",
             f"{r['svdvals_float64_s']:.3f}"] for r in result["rows"]]
    targets = " / ".join(str(t) for t in s["targets"])
    head = (f"### Rank planning (seconds, CIFAR models, batch-1 example input, median of {s['repeats']})\n\n"
            f"singular values: lorita.spectra uncached (target < {s['limits_s']['spectra_s']} s). plan_ranks "
            f"flops_drop at t = {targets}: first call (includes the one fvcore profile), then cached (target < "
            f"{s['limits_s']['plan_cached_s']} s). fvcore: count_flops_params alone. svdvals: "
            "torch.linalg.svdvals float64 of all layers (one call), for reference.\n\n")
    return head + common.table(["model", "layers", "singular values", "plan_ranks first",
                                f"plan_ranks cached (t = {targets})", "fvcore count", "svdvals float64"], rows)


def build_parser() -> argparse.ArgumentParser:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=None, help=f"default {' '.join(MODELS)}")
    p.add_argument("--repeats", type=int, default=None, help="calls per median (default 5; 1 with --quick)")
    return p


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = common.setup(build_parser().parse_args(argv))
    args.models = args.models or list(QUICK_MODELS if args.quick else MODELS)
    args.repeats = args.repeats or (1 if args.quick else 5)
    return common.finish(NAME, run(args), args.out, markdown)


if __name__ == "__main__":
    main()
