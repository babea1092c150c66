"""`lorita-bench`: run one benchmark or a grid, reproduce the paper, import the authors' checkpoints, list methods,
open the MLflow UI."""

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
    "wait": "wait",
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
    p.add_argument("--wait", action="store_true", default=None,
                   help="if another process is running this config on the store, wait for it (default: exit 3)")
    return p


def _import_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("import-authors", help="load a checkpoint the LoRITa authors released, compress it per rank "
                       "policy and target, fine-tune, record (a report block of its own)",
                       description="Loads a checkpoint of XitongSystem/LoRITa (weights_only) exactly into the "
                                   "suite's composed network and records a LoRITa run per rank policy and target on "
                                   "it; nothing is trained. Flags override --config, --set overrides both.")
    p.add_argument("checkpoint", help="the .pt file, e.g. Compress_Code/base/cifar10/resnet20/...factor2.pt")
    p.add_argument("--model", required=True, help="resnet20 or vgg16 (the authors' architecture of the file)")
    p.add_argument("--factors", type=int, required=True, help="the file's N (factor2.pt: 2)")
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--target-flops-drop", type=float, nargs="+", metavar="T", dest="flops_targets",
                        help="a run per FLOPs drop T (and rank policy)")
    target.add_argument("--target-params-drop", type=float, nargs="+", metavar="T", dest="params_targets",
                        help="a run per parameter drop T (and rank policy)")
    p.add_argument("--rank-policies", metavar="P,Q",
                   help="LoRITa's rank_policy values to run, comma-separated (default every one: threshold,greedy)")
    p.add_argument("--config", help="YAML file of run settings (its budget's fine-tuning fields apply)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    p.add_argument("--experiment", help="MLflow experiment name (default lorita-bench)")
    p.add_argument("--dataset", help="the data the checkpoint was trained on: cifar10, cifar100, imagefolder:<path>")
    p.add_argument("--data-root", help="where torchvision datasets live")
    p.add_argument("--finetune-epochs", type=int, help="fine-tuning epochs after compression (0: none)")
    p.add_argument("--seed", type=int, help="seed of the fine-tuning")
    p.add_argument("--device", help="auto (default), cpu, cuda, cuda:N")
    p.add_argument("--cache-dir", help=f"where the imported model is cached (default {DEFAULT_CACHE_DIR})")
    p.add_argument("--force", action="store_true", help="run again even if a config already FINISHED")
    p.add_argument("--no-latency", action="store_true", help="skip the latency measurement")
    p.add_argument("--wait", action="store_true", default=None,
                   help="if another process is running one of these configs on the store, wait for it")
    return p


def _import_authors(args: argparse.Namespace) -> int:
    from pathlib import Path

    from benchmarks.authors.block import import_authors
    from benchmarks.methods import get_method
    from benchmarks.sweeps.schedule import EXIT_INCOMPLETE
    from benchmarks.tracking import schema

    metric, targets = (("flops_drop", args.flops_targets) if args.flops_targets is not None
                       else ("params_drop", args.params_targets))
    base = config_from_args(args, {"target_metric": metric})
    policies = None if args.rank_policies is None else [p.strip() for p in args.rank_policies.split(",") if p.strip()]
    results = import_authors(base, Path(args.checkpoint), targets, policies, force=args.force,
                             latency=not args.no_latency)
    for result in results:
        cfg = result.config
        label = get_method(cfg.method).display_label(cfg.factors, cfg.method_options, cfg.exclude)
        print(f"\n{label} on the imported {cfg.model}/{cfg.dataset}, {metric} target {cfg.target:g}:")
        print(_summary(result))
    return EXIT_INCOMPLETE if any(result.status == schema.STATUS_HELD for result in results) else 0


def _methods(args: argparse.Namespace) -> int:
    from benchmarks.methods import METHODS

    for method in METHODS.values():
        print(f"{method.name:<12} {method.description}")
    return 0


# How long `ui` gives the MLflow server to shut down cleanly after Ctrl-C or SIGTERM before it kills what is left.
UI_STOP_S = 10.0


def _ui_addresses(host: str, port: int) -> list[tuple]:
    """getaddrinfo's answers for where `ui` would listen; a one-line error for a bad port or an unknown host."""
    import socket

    if not 1 <= port <= 65535:
        raise ValueError(f"ui: --port must be between 1 and 65535; got {port}")
    try:
        return list(dict.fromkeys(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)))
    except socket.gaierror as err:
        raise OSError(f"ui: cannot listen on {host}: {err.strerror}") from None


def _check_free(host: str, port: int, addresses: list[tuple]) -> None:
    """A one-line OSError unless every address can be listened on now (each bound briefly, as uvicorn binds it)."""
    import errno
    import socket

    for family, _, _, _, address in addresses:
        try:
            socket.create_server(address, family=family).close()  # with SO_REUSEADDR, as uvicorn
        except OSError as err:
            hint = " (choose another --port)" if err.errno == errno.EADDRINUSE else ""
            why = os.strerror(err.errno) if err.errno else str(err)  # create_server adds the address to strerror
            raise OSError(f"ui: cannot listen on {host} port {port}: {why}{hint}") from None


def _ui(args: argparse.Namespace) -> int:
    import contextlib
    import ipaddress
    import signal
    import subprocess

    # Checked before MLflow starts, which takes seconds and then fails in many lines.
    addresses = _ui_addresses(args.host, args.port)
    if not all(ipaddress.ip_address(address[0]).is_loopback for *_, address in addresses):
        print(f"lorita-bench: warning: the MLflow UI has no authentication and on {args.host} it is reachable from "
              f"the network: anyone who reaches port {args.port} can read, change and delete these runs",
              file=sys.stderr)
    _check_free(args.host, args.port, addresses)
    from benchmarks import tracking

    # A session of its own: the stop below then reaches every process MLflow starts (CLI, uvicorn, job runner), and
    # reaches it once (a terminal's Ctrl-C would reach the group too).
    server = subprocess.Popen(tracking.ui_command(args.host, args.port), start_new_session=True)
    try:
        code = server.wait()
    finally:  # Ctrl-C, SIGTERM, or MLflow ended by itself: stop what is left of it
        try:
            server.terminate()  # mlflow forwards it to uvicorn, which closes its connections and exits
            server.wait(timeout=UI_STOP_S)
        except (subprocess.TimeoutExpired, KeyboardInterrupt):
            pass  # no end in time, or asked again: kill now
        # Whatever outlives the CLI (MLflow's job runner is slower to go) goes with the group.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(server.pid, signal.SIGKILL)
        server.wait()
    if code != 0:
        print(f"lorita-bench: error: mlflow ui exited with status {code}", file=sys.stderr)
        return 1
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
                     local_cpus=args.local_cpus, cpus_per_run=args.cpus_per_run, gpus_per_run=args.gpus_per_run,
                     wait=args.wait)


def _run(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    from benchmarks.run.pipeline import execute
    from benchmarks.sweeps.schedule import EXIT_INCOMPLETE
    from benchmarks.tracking import schema

    result = execute(cfg, force=args.force, latency=not args.no_latency)
    print(f"\n{cfg.method} on {cfg.model}/{cfg.dataset} (seed {cfg.seed}):")
    print(_summary(result))
    return EXIT_INCOMPLETE if result.status == schema.STATUS_HELD else 0


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface, including subcommands other packages register (`lorita_bench.commands`)."""
    parser = argparse.ArgumentParser(prog="lorita-bench", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _run_parser(sub).set_defaults(handler=_run)
    sweep = sub.add_parser("sweep", help="run a grid of benchmarks from a YAML sweep file (skips finished runs); "
                           "with a tuning: block, tune every method alike on a validation split first")
    sweep.add_argument("config", help="sweep YAML (see benchmarks/configs/demo.yaml; tune_digits.yaml for tuning)")
    sweep.add_argument("--jobs", type=int, default=1, help="runs in parallel processes on this machine (default 1)")
    sweep.add_argument("--wait", action="store_true",
                       help="wait for runs another process is running on the store (default: count them held, exit 3)")
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
    _import_parser(sub).set_defaults(handler=_import_authors)
    sub.add_parser("methods", help="list the registered methods").set_defaults(handler=_methods)
    sub.add_parser("sync", help="send the records kept while the tracking server was unreachable",
                   description=f"Runs keep what they measure in the outbox ({DEFAULT_CACHE_DIR}/outbox, or "
                               "$LORITA_BENCH_OUTBOX) while the tracking server is away; this sends it."
                   ).set_defaults(handler=_sync)
    ui = sub.add_parser("ui", help="serve the MLflow UI for the current tracking store (Ctrl-C stops it)")
    ui.add_argument("--host", default="127.0.0.1",
                    help="bind address (default 127.0.0.1: this machine only; the UI has no authentication)")
    ui.add_argument("--port", type=int, default=5000, help="1-65535, free (default 5000)")
    ui.set_defaults(handler=_ui)
    # Layers above the harness (reports) add their commands here without the harness importing them.
    for entry in sorted(entry_points(group=COMMANDS_GROUP), key=lambda e: e.name):
        entry.load()(sub)
    return parser


def config_from_args(args: argparse.Namespace, fixed: dict | None = None):
    """The validated RunConfig that the flags, --config and --set describe (`fixed`: what the command sets)."""
    data = load_yaml(args.config) if args.config else {}
    # A command without a flag (import-authors has no --method) leaves its key to the config.
    overrides = {key: getattr(args, dest) for dest, key in FLAG_KEYS.items() if getattr(args, dest, None) is not None}
    overrides.update(fixed or {})
    if getattr(args, "target_flops_drop", None) is not None:
        overrides.update(target_metric="flops_drop", target=args.target_flops_drop)
    if getattr(args, "target_params_drop", None) is not None:
        overrides.update(target_metric="params_drop", target=args.target_params_drop)
    overrides.update(parse_assignment(text) for text in args.set)
    return make_config(apply_overrides(data, overrides))


def _summary(result) -> str:
    from benchmarks.tracking import schema

    trained = "imported" if result.config.trained_from else "reused from cache" if result.cache_hit else "trained now"
    rows = [("run", result.run_id or "-"), ("status", result.status), ("trained model", trained)]
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
    """Entry point of the `lorita-bench` console script.

    Exit codes: 0 done, 1 a run failed, 2 bad input (one line), 3 another process holds a run (run, sweep), 130 Ctrl-C,
    143 SIGTERM (resumable commands say so).
    """
    # First of all, so that a signal during start-up (parsing, importing torch and MLflow) also ends in one line.
    # Ctrl-C or SIGTERM during training finishes the batch and saves a checkpoint there before stopping.
    previous = interrupts.install()
    command = None
    try:
        try:
            for key, value in PROCESS_DEFAULTS.items():
                os.environ.setdefault(key, value)
            args = build_parser().parse_args(argv)
            command = args.command
            code = args.handler(args)
        except (ValueError, OSError) as err:  # ConfigError and DataError are ValueErrors: one line, no traceback
            print(f"lorita-bench: error: {one_line(err)}", file=sys.stderr)
            return 2
        # A sweep says 130 for any interrupt it caught (and has said so): the signal that came picks the code.
        return interrupts.exit_code() if code == 130 else code
    except KeyboardInterrupt:
        resume = ": run the same command again to resume" if command in RESUMABLE_COMMANDS else ""
        print(f"lorita-bench: {interrupts.stopped_by()}{resume}", file=sys.stderr)
        return interrupts.exit_code()
    finally:
        if argv is None and interrupts.received() is not None:
            # The program (argv from the command line) is on its way out after a signal: one more (a key held down, a
            # supervisor signalling twice) would print a traceback under the one line while Python shuts down, or
            # kill it with another exit code. A caller that passes argv gets its handlers back.
            interrupts.ignore()
        else:
            interrupts.restore(previous)


if __name__ == "__main__":
    sys.exit(main())
