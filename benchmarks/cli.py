"""`lorita-bench`: run one benchmark or a grid, reproduce the paper, list methods, open the MLflow UI."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from importlib.metadata import entry_points

from benchmarks.config import DEFAULT_CACHE_DIR, EXECUTORS, apply_overrides, load_yaml, make_config, parse_assignment
from benchmarks.errors import one_line
from benchmarks.run import interrupts

# Set for this process before MLflow is imported (it reads it then): usage telemetry would only add a background
# thread and failed calls to benchmarks that often run offline. A user's own setting wins.
PROCESS_DEFAULTS = {"MLFLOW_DISABLE_TELEMETRY": "true"}

COMMANDS_GROUP = "lorita_bench.commands"
# Commands that checkpoint what they train, so that running them again continues.
RESUMABLE_COMMANDS = ("run", "sweep", "reproduce")
# Flags that set a config key directly (flag dest -> dotted config key).
FLAG_KEYS = {
    "experiment": "experiment", "model": "model", "dataset": "dataset", "data_root": "data_root",
    "method": "method", "factors": "factors", "epochs": "budget.epochs",
    "finetune_epochs": "budget.finetune_epochs", "seed": "seed", "device": "device", "cache_dir": "cache_dir",
}


def _run_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("run", help="train, compress, fine-tune, measure and record one benchmark run",
                       description="One method at one compression target under one budget. Flags override "
                                   "--config, --set overrides both.")
    p.add_argument("--config", help="YAML file of run settings (see benchmarks/configs/)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set budget.lr=0.05 (repeatable)")
    p.add_argument("--experiment", help="MLflow experiment name (default lorita-bench)")
    p.add_argument("--model", help="fcn, cnn, vgg16, vgg19, resnet20, resnet56, vit, tv:<name>, module:factory")
    p.add_argument("--dataset", help="digits (offline default), mnist, cifar10, cifar100, imagefolder:<path>")
    p.add_argument("--data-root", help="where torchvision datasets live")
    p.add_argument("--method", help="dense, lorita, svd or a pruning method (see `lorita-bench methods`)")
    p.add_argument("--factors", type=int, help="LoRITa's N: layers trained as products of N maps (default 3)")
    target = p.add_mutually_exclusive_group()
    target.add_argument("--target-flops-drop", type=float, metavar="T", help="compress until FLOPs drop by T")
    target.add_argument("--target-params-drop", type=float, metavar="T", help="compress until params drop by T")
    p.add_argument("--epochs", type=int, help="training epochs (budget.epochs)")
    p.add_argument("--finetune-epochs", type=int, help="fine-tuning epochs (budget.finetune_epochs)")
    p.add_argument("--seed", type=int)
    p.add_argument("--device", help="auto (default), cpu, cuda, cuda:N")
    p.add_argument("--cache-dir", help=f"trained-model cache and checkpoints (default {DEFAULT_CACHE_DIR})")
    p.add_argument("--force", action="store_true", help="run again even if this config already FINISHED")
    p.add_argument("--no-latency", action="store_true", help="skip the latency measurement")
    return p


def _methods(args: argparse.Namespace) -> int:
    from benchmarks.methods import METHODS

    for method in METHODS.values():
        print(f"{method.name:<12} {method.description}")
    return 0


def _ui(args: argparse.Namespace) -> int:
    from benchmarks import tracking

    tracking.serve_ui(args.host, args.port)
    return 0


def _sync(args: argparse.Namespace) -> int:
    from benchmarks import tracking
    from benchmarks.tracking import outbox

    result = tracking.sync()
    if not (result.sent or result.waiting or result.refused):
        print(f"nothing to send: the outbox {outbox.folder()} is empty")
        return 0
    if result.sent:
        print(f"sent every kept record of {len(result.sent)} run{'s' * (len(result.sent) != 1)}: "
              f"{', '.join(result.sent)}")
    for line in result.refused:
        print(f"lorita-bench: refused by the tracking server: {line}", file=sys.stderr)
    if result.waiting:
        print(f"lorita-bench: {len(result.waiting)} run(s) still waiting in {outbox.folder()}: the tracking server "
              "does not answer; run lorita-bench sync again when it does", file=sys.stderr)
    return 1 if result.waiting or result.refused else 0


def _reproduce(args: argparse.Namespace) -> int:
    from benchmarks.sweeps.reproduce import reproduce

    only = [b.strip() for b in args.blocks.split(",") if b.strip()] if args.blocks else None
    return reproduce(preset=args.preset, data_root=args.data_root, only=only, jobs=args.jobs,
                     plan_only=args.plan_only, executor=args.executor, address=args.address)


def _sweep(args: argparse.Namespace) -> int:
    from benchmarks.sweeps.driver import run_sweep

    return run_sweep(args.config, jobs=args.jobs, executor=args.executor, address=args.address,
                     local_cpus=args.local_cpus, cpus_per_run=args.cpus_per_run, gpus_per_run=args.gpus_per_run)


def _run(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    from benchmarks.run.pipeline import execute

    result = execute(cfg, force=args.force, latency=not args.no_latency)
    print(f"\n{cfg.method} on {cfg.model}/{cfg.dataset} (seed {cfg.seed}):")
    print(_summary(result))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface, including subcommands other packages register (`lorita_bench.commands`)."""
    parser = argparse.ArgumentParser(prog="lorita-bench", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _run_parser(sub).set_defaults(handler=_run)
    sweep = sub.add_parser("sweep", help="run a grid of benchmarks from a YAML sweep file (skips finished runs)")
    sweep.add_argument("config", help="sweep YAML (see benchmarks/configs/demo.yaml)")
    sweep.add_argument("--jobs", type=int, default=1, help="runs in parallel processes on this machine (default 1)")
    sweep.add_argument("--executor", default="local", choices=EXECUTORS,
                       help="local: processes on this machine (default); ray: each run a Ray task, on a local "
                            "instance or a cluster (needs the ray extra: pip install -e '.[ray]')")
    sweep.add_argument("--address", help="with --executor ray: join the Ray cluster at this address (default: "
                                         "RAY_ADDRESS when set, else start a local instance and stop it after)")
    sweep.add_argument("--local-cpus", type=int, metavar="N",
                       help="with --executor ray and no address: CPUs of the local instance (default all)")
    sweep.add_argument("--cpus-per-run", type=int, metavar="N",
                       help="with --executor ray: CPUs (and threads) each run asks for (default 1)")
    sweep.add_argument("--gpus-per-run", type=float, metavar="G",
                       help="with --executor ray: GPUs each run asks for, a fraction shares one (default 1 when the "
                            "cluster has GPUs, else 0; runs with device: cpu take none)")
    sweep.set_defaults(handler=_sweep)
    rep = sub.add_parser("reproduce", help="the paper's grid (benchmarks/configs/paper/): plan, then run")
    rep.add_argument("--preset", default="paper", help="paper (full budgets) or short (epochs cut 20x)")
    rep.add_argument("--data-root", help="folder holding the datasets (e.g. mnist-10k/, cifar10-jpeg/)")
    rep.add_argument("--blocks", help="comma-separated blocks (default all: see benchmarks/configs/paper/)")
    rep.add_argument("--jobs", type=int, default=1, help="runs in parallel processes (default 1)")
    rep.add_argument("--plan-only", action="store_true", help="print the plan and estimate, train nothing")
    rep.add_argument("--executor", default="local", choices=EXECUTORS,
                     help="local (default) or ray: each run a Ray task, one GPU each when there are GPUs")
    rep.add_argument("--address", help="with --executor ray: the Ray cluster to join (default: RAY_ADDRESS, else "
                                       "a local instance)")
    rep.set_defaults(handler=_reproduce)
    sub.add_parser("methods", help="list the registered methods").set_defaults(handler=_methods)
    sub.add_parser("sync", help="send the records kept while the tracking server was unreachable",
                   description=f"Runs keep what they measure in the outbox ({DEFAULT_CACHE_DIR}/outbox, or "
                               "$LORITA_BENCH_OUTBOX) while the tracking server is away; this sends it."
                   ).set_defaults(handler=_sync)
    ui = sub.add_parser("ui", help="serve the MLflow UI for the current tracking store")
    ui.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1: this machine only)")
    ui.add_argument("--port", type=int, default=5000)
    ui.set_defaults(handler=_ui)
    # Layers above the harness (reports) add their commands here without the harness importing them.
    for entry in sorted(entry_points(group=COMMANDS_GROUP), key=lambda e: e.name):
        entry.load()(sub)
    return parser


def config_from_args(args: argparse.Namespace):
    """The validated RunConfig that the flags, --config and --set describe."""
    data = load_yaml(args.config) if args.config else {}
    overrides = {key: getattr(args, dest) for dest, key in FLAG_KEYS.items() if getattr(args, dest) is not None}
    if args.target_flops_drop is not None:
        overrides.update(target_metric="flops_drop", target=args.target_flops_drop)
    if args.target_params_drop is not None:
        overrides.update(target_metric="params_drop", target=args.target_params_drop)
    overrides.update(parse_assignment(text) for text in args.set)
    return make_config(apply_overrides(data, overrides))


def _summary(result) -> str:
    from benchmarks.tracking import schema

    rows = [("run", result.run_id or "-"), ("status", result.status),
            ("trained model", "reused from cache" if result.cache_hit else "trained now")]
    m = result.metrics
    for name, fmt in [(schema.ACC_TRAINED, "{:.4f}"), (schema.ACC_COMPRESSED, "{:.4f}"),
                      (schema.ACC_FINETUNED, "{:.4f}"), (schema.FLOPS_BASE, "{:,.0f}"), (schema.FLOPS, "{:,.0f}"),
                      (schema.FLOPS_DROP, "{:.1%}"), (schema.PARAMS_BASE, "{:,.0f}"), (schema.PARAMS, "{:,.0f}"),
                      (schema.PARAMS_DROP, "{:.1%}"), (schema.LATENCY_MS_B1, "{:.3f} ms"),
                      (schema.LATENCY_MS_B128, "{:.3f} ms"), (schema.TRAIN_TIME_S, "{:.1f} s")]:
        if name in m:
            rows.append((name, fmt.format(m[name])))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"  {k:<{width}}  {v}" for k, v in rows)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `lorita-bench` console script."""
    for key, value in PROCESS_DEFAULTS.items():
        os.environ.setdefault(key, value)
    args = build_parser().parse_args(argv)
    try:
        # Ctrl-C during training finishes the batch and saves a checkpoint there before stopping.
        with interrupts.installed():
            return args.handler(args)
    except (ValueError, OSError) as err:  # ConfigError and DataError are ValueErrors: one line, no traceback
        print(f"lorita-bench: error: {one_line(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        resumable = args.command in RESUMABLE_COMMANDS
        print("lorita-bench: interrupted" + (": run the same command again to resume" if resumable else ""),
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
