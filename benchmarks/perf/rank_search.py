"""Rank search, threshold against greedy, on trained LoRITa models: accuracy before and after fine-tuning, plan time.

From a sweep file (its models, datasets, seeds, budget, device, cache and lorita options; its name, methods, factors
and targets are replaced), two grids run in experiment `<name>-rank-search`: lorita at N=3 on flops_drop 0.7 and 0.9
with rank_policy threshold (the default) and greedy. rank_policy is no part of the trained model's identity, so both
start from the same cached trained models (a cache the sweep itself filled trains nothing again); finished runs are
skipped. Per run, from the store: acc_compressed (before fine-tuning), acc_finetuned, flops_drop. Plan time: one
lorita.plan_ranks call timed here on a fresh copy of each trained model, collapsed (caches cold, as in a run), on the
run's device, with the batches a run scores greedy cuts on; ranks_match says whether it found the ranks the run
recorded (on another device than the run's, float rounding can tip a greedy choice).

    python -m benchmarks.perf.rank_search --sweep SWEEP.yaml [--targets 0.7 0.9] [--factors 3] [--out DIR]
    python -m benchmarks.perf.rank_search --quick   # a 2-epoch digits FCN in a temporary store: numbers mean nothing
"""

from __future__ import annotations

import argparse
import functools
import math
import statistics
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

import lorita
from benchmarks import tracking
from benchmarks.config import RunConfig, load_yaml
from benchmarks.data import Dataset, load_dataset
from benchmarks.methods import exclude_patterns, get_method
from benchmarks.methods.lowrank import RANK_POLICY_DEFAULT
from benchmarks.perf import common
from benchmarks.run.environment import resolve_device
from benchmarks.run.pipeline import CRITERION_BATCHES, criterion_batches, obtain_trained
from benchmarks.sweeps.driver import run_grid
from benchmarks.sweeps.grid import Sweep, expand, parse_sweep
from benchmarks.tracking import schema
from lorita.ranks import SEARCHES

NAME = "rank_search"
METHOD = "lorita"
TARGETS = (0.7, 0.9)
FACTORS = 3
# --quick: two hidden layers to plan (the classifier stays whole), 64 wide so that one rank moves the FLOPs by about
# 1 % (a 16-wide FCN's ranks are 5 % steps).
QUICK_SWEEP = {"name": "rank-search-quick", "models": [{"name": "fcn", "layers": 3, "width": 64}],
               "datasets": ["digits"], "seeds": [0], "device": "cpu",
               "budget": {"epochs": 2, "finetune_epochs": 1, "batch_size": 64, "lr": 0.05}}
QUICK_TARGETS = (0.5,)
RUN_METRICS = (schema.ACC_TRAINED, schema.ACC_COMPRESSED, schema.ACC_FINETUNED, schema.FLOPS_DROP)


def grid(source: dict[str, Any], experiment: str, policy: str, targets: list[float], factors: int) -> Sweep:
    """The sweep file's lorita runs at `factors` and each flops_drop target, planned by `policy`, in `experiment`."""
    if "tuning" in source:
        raise SystemExit("--sweep: a sweep with a tuning block selects its own values; give one without it")
    options = dict((source.get("method_options") or {}).get(METHOD, {}))
    options.pop("rank_policy", None)
    if policy != RANK_POLICY_DEFAULT:  # the default stays absent: such runs hash as threshold runs did before
        options["rank_policy"] = policy
    return parse_sweep({**source, "name": experiment, "methods": [METHOD], "factors": [factors],
                        "targets": {"flops_drop": targets}, "method_options": {METHOD: options}})


def _finished(experiment: str) -> dict[str, dict[str, Any]]:
    """Each FINISHED run of `experiment` by config hash: its id and metrics (the newest run of a hash)."""
    frame = tracking.search_runs(experiment, f"attributes.status = '{schema.STATUS_FINISHED}'")
    if frame.empty:
        return {}
    frame = frame.sort_values("start_time")
    return {row[f"tags.{schema.TAG_CONFIG_HASH}"]: {"run_id": row["run_id"],
                                                    **{m: _number(row.get(f"metrics.{m}")) for m in RUN_METRICS}}
            for _, row in frame.iterrows()}


def _number(value: Any) -> float | None:
    # A metric a run did not log reads back as NaN (or is absent); the JSON result holds None for it.
    return None if value is None or math.isnan(value) else float(value)


def _quiet(*args: Any) -> None:
    return None


def _row(cfg: RunConfig, policy: str, data: Dataset, device: torch.device,
         finished: dict[str, dict[str, Any]]) -> dict[str, Any]:
    method = get_method(METHOD)
    # Loaded from the cache for each run: lorita's caches (spectra, fvcore profile) start cold, as in a run.
    trained = obtain_trained(cfg, method, data, device, _quiet, _quiet)
    plain = method.uncompressed(cfg, trained.model)
    plan = functools.partial(lorita.plan_ranks, plain, cfg.target_metric, cfg.target,
                             example_input=torch.zeros(1, *data.in_shape, device=device),
                             exclude=exclude_patterns(cfg, plain), search=policy, batches=criterion_batches(cfg, data))
    seconds, ranks = common.timed(plan)
    run = finished.get(cfg.config_hash(), {})
    logged = tracking.load_json(run["run_id"], schema.ARTIFACT_RANKS) if run else None
    return {"model": cfg.model, "dataset": cfg.dataset, "seed": cfg.seed, "target": cfg.target, "policy": policy,
            **{m: run.get(m) for m in RUN_METRICS}, "plan_s": seconds, "ranks": ranks,
            "ranks_match": None if logged is None else logged == ranks, "run_id": run.get("run_id"),
            "cache_hit": trained.cache_hit}


def measure(runs: dict[str, list[RunConfig]], experiment: str) -> list[dict[str, Any]]:
    """One row per run: its recorded accuracies and drop, and plan_ranks timed on its trained model."""
    finished = _finished(experiment)
    rows, loaded = [], {}
    for policy, configs in runs.items():
        for cfg in configs:
            device = resolve_device(cfg.device)
            key = (cfg.dataset, cfg.data_root, cfg.budget.val_fraction, cfg.split, str(device),
                   repr(sorted(cfg.dataset_kwargs.items())))
            if key not in loaded:
                loaded[key] = load_dataset(cfg.dataset, data_root=cfg.data_root, val_fraction=cfg.budget.val_fraction,
                                           seed=cfg.split, device=device, cache_dir=cfg.cache_dir,
                                           options=cfg.dataset_kwargs)
            rows.append(_row(cfg, policy, loaded[key], device, finished))
    return rows


@contextmanager
def _quick_store() -> Iterator[dict[str, Any]]:
    """A throw-away store and cache for --quick, and its sweep."""
    with tempfile.TemporaryDirectory() as folder, tracking.environment(
            {"MLFLOW_TRACKING_URI": f"sqlite:///{Path(folder) / 'mlflow.db'}"}):
        yield {**QUICK_SWEEP, "cache_dir": str(Path(folder) / "cache")}


def run(args: argparse.Namespace, source: dict[str, Any]) -> dict[str, Any]:
    experiment = args.experiment or f"{source['name']}-rank-search"
    sweeps = {policy: grid(source, experiment, policy, args.targets, args.factors) for policy in SEARCHES}
    codes = {policy: run_grid(sweep) for policy, sweep in sweeps.items()}  # finished runs are skipped
    rows = measure({policy: expand(sweep) for policy, sweep in sweeps.items()}, experiment)
    settings = {"quick": args.quick, "sweep": str(args.sweep), "experiment": experiment, "method": METHOD,
                "factors": args.factors, "targets": list(args.targets), "policies": list(SEARCHES),
                "scoring_batches": CRITERION_BATCHES, "grid_exit_codes": codes}
    return common.result(NAME, settings, rows)


def _mean(values: list[Any]) -> float | None:
    present = [v for v in values if v is not None and v == v]  # NaN: a run that logged none
    return statistics.mean(present) if present else None


def markdown(result: dict[str, Any]) -> str:
    s = result["settings"]
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in result["rows"]:
        groups.setdefault((r["model"], r["dataset"], r["target"], r["policy"]), []).append(r)
    rows = []
    for (model, dataset, target, policy), members in groups.items():
        matched = [r["ranks_match"] for r in members if r["ranks_match"] is not None]
        rows.append([model, dataset, target, policy, len(members),
                     common.fmt(_mean([r[schema.ACC_COMPRESSED] for r in members]), 4),
                     common.fmt(_mean([r[schema.ACC_FINETUNED] for r in members]), 4),
                     common.fmt(_mean([r[schema.FLOPS_DROP] for r in members]), 3),
                     common.fmt(_mean([r["plan_s"] for r in members]), 2),
                     f"{sum(matched)}/{len(matched)}"])
    head = (f"### Rank search: threshold vs greedy (LoRITa N={s['factors']}, flops_drop, mean over seeds)\n\n"
            f"Runs of experiment `{s['experiment']}`: test accuracy after compression (before fine-tuning) and after "
            f"the fine-tuning budget, and the FLOPs drop (fvcore). plan_ranks: one call on a fresh copy of the "
            f"trained model, greedy scoring {s['scoring_batches']} training batches; ranks: runs whose recorded "
            "ranks this call reproduced.\n\n")
    return head + common.table(["model", "dataset", "target", "rank_policy", "seeds", "acc before fine-tune",
                                "acc after fine-tune", "FLOPs drop", "plan_ranks s", "ranks"], rows)


def build_parser() -> argparse.ArgumentParser:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--sweep", type=Path, help="sweep file whose models, data, seeds and budget to use (not with "
                                              "--quick)")
    p.add_argument("--experiment", help="MLflow experiment of the runs (default: <sweep name>-rank-search)")
    p.add_argument("--targets", type=float, nargs="+", default=None, help=f"flops_drop targets (default "
                                                                          f"{' '.join(map(str, TARGETS))})")
    p.add_argument("--factors", type=int, default=FACTORS, help=f"LoRITa's N (default {FACTORS})")
    return p


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = common.setup(build_parser().parse_args(argv))
    if args.quick == (args.sweep is not None):
        raise SystemExit("give --sweep SWEEP.yaml, or --quick for a smoke run on a tiny model")
    if not args.quick:
        args.targets = args.targets or list(TARGETS)
        return common.finish(NAME, run(args, load_yaml(str(args.sweep))), args.out, markdown)
    args.targets = args.targets or list(QUICK_TARGETS)
    with _quick_store() as source:
        return common.finish(NAME, run(args, source), args.out, markdown)


if __name__ == "__main__":
    main()
