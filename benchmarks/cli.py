"""`lorita-bench`: run one benchmark or a grid, reproduce the paper, import the authors' checkpoints, read results on
the terminal, clean up failed runs, export a run's model (ONNX, pt2), list methods, open the MLflow UI."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, entry_points, version

from benchmarks.config import (
    DEFAULT_CACHE_DIR,
    EXECUTORS,
    LATENCY_DROP,
    Budget,
    RunConfig,
    apply_overrides,
    load_yaml,
    make_config,
    parse_assignment,
    speedup_target,
)
from benchmarks.errors import one_line
from benchmarks.run import interrupts

# Set for this process (and the workers it starts) before MLflow and torch are imported, which read them then. A user's
# own setting wins. MLflow: usage telemetry would only add a background thread and failed calls to benchmarks that
# often run offline. OpenMP (torch's libgomp): its threads spin at every barrier by default; when other processes hold
# the other cores, a spinning thread waits for a descheduled one at each of the thousands of small ops of an epoch:
# measured on 2 busy cores, a LoRITa FCN epoch took 0.7 to 15 s (most in a process's first epoch) instead of 0.2 s
# with the threads sleeping while they wait, and train_time_s recorded that instead of the method's cost.
PROCESS_DEFAULTS = {"MLFLOW_DISABLE_TELEMETRY": "true", "OMP_WAIT_POLICY": "PASSIVE"}

COMMANDS_GROUP = "lorita_bench.commands"
# Commands that checkpoint what they train, so that running them again continues.
RESUMABLE_COMMANDS = ("run", "sweep", "reproduce")
# Flags that set a config key directly (flag dest -> dotted config key).
FLAG_KEYS = {
    "experiment": "experiment", "model": "model", "dataset": "dataset", "data_root": "data_root",
    "method": "method", "factors": "factors", "epochs": "budget.epochs",
    "finetune_epochs": "budget.finetune_epochs", "seed": "seed", "device": "device", "cache_dir": "cache_dir",
    "wait": "wait", "latency_batch": "latency_batch",
}

# The config's own defaults, which a flag left out leaves in place (shown in --help).
DEFAULTS, BUDGET_DEFAULTS = RunConfig(), Budget()


class _Formatter(argparse.HelpFormatter):
    """Help that shows each option's default, unless its text already says it (or it has none to show)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        quiet = action.default in (None, False, [], argparse.SUPPRESS) or not action.option_strings
        if quiet or "default" in text or "%(default)" in text:
            return text
        return f"{text} (default %(default)s)"


class _SubCommands(argparse._SubParsersAction):  # argparse's documented extension point, a private name
    """Subcommands, every one with a description (its help when none is given) and the defaults shown."""

    def add_parser(self, name: str, **kwargs):
        kwargs.setdefault("description", kwargs.get("help"))
        kwargs.setdefault("formatter_class", _Formatter)
        return super().add_parser(name, **kwargs)


def _version() -> str:
    try:
        return version("lorita-bench")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown (not installed)"


def _run_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("run", help="train, compress, fine-tune, measure and record one benchmark run",
                       description="One method at one compression target under one budget. Flags override "
                                   "--config, --set overrides both.")
    p.add_argument("--config", help="YAML file of run settings (see benchmarks/configs/)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set budget.lr=0.05 (repeatable)")
    p.add_argument("--experiment", help=f"MLflow experiment name (default {DEFAULTS.experiment})")
    p.add_argument("--model", help="images: fcn, cnn, vgg16, vgg19, resnet20, resnet56, vit, tv_vit; sequences: lstm, "
                                   "gru, transformer; graphs: gcn; tv:<torchvision name> (options and weights: --set "
                                   "model_kwargs.weights=DEFAULT), module:factory (a function of num_classes, "
                                   "in_shape, **kwargs; the current folder is importable) (default "
                                   f"{DEFAULTS.model})")
    p.add_argument("--dataset", help="digits (offline), mnist, cifar10, cifar100, imagefolder:<path> (train/ and test/ "
                                     "of class folders; mixed sizes: --set dataset_kwargs.size=32); sequences: "
                                     "digits-seq, mnist-seq, uea:<Name> (UEA/UCR sets in sktime's wheel, e.g. "
                                     "uea:JapaneseVowels); graphs: karate (34 nodes, for tests) (default "
                                     f"{DEFAULTS.dataset})")
    p.add_argument("--data-root", help="where torchvision datasets live (default ./data)")
    p.add_argument("--method", help="dense, lorita, svd or a pruning method (see `lorita-bench methods`) (default "
                                    f"{DEFAULTS.method})")
    p.add_argument("--factors", type=int, help="LoRITa's N: layers trained as products of N maps (default 3)")
    target = p.add_mutually_exclusive_group()
    target.add_argument("--target-flops-drop", type=float, metavar="T", help="compress until FLOPs drop by T")
    target.add_argument("--target-params-drop", type=float, metavar="T", help="compress until params drop by T")
    target.add_argument("--target-speedup", type=float, metavar="S",
                        help="compress until measured latency at --latency-batch falls by 1 - 1/S (S > 1), planned "
                             "by the latency table")
    p.add_argument("--latency-batch", type=int, metavar="B",
                   help="batch size of the latency target and of the latency recorded beside batch 1 (default 128)")
    p.add_argument("--epochs", type=int, help=f"training epochs (budget.epochs; default {BUDGET_DEFAULTS.epochs})")
    p.add_argument("--finetune-epochs", type=int, help="fine-tuning epochs (budget.finetune_epochs; default "
                                                       f"{BUDGET_DEFAULTS.finetune_epochs})")
    p.add_argument("--seed", type=int, help="seed of the initialization, the shuffling, the augmentation and the "
                                            f"criteria's batches; runs of several seeds give the spread (default "
                                            f"{DEFAULTS.seed})")
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


def _results(args: argparse.Namespace) -> int:
    from benchmarks import tracking
    from benchmarks.results import finished_runs, results_table

    experiments = [args.experiment] if args.experiment else tracking.experiment_names()
    printed = False
    for name in experiments:
        frame = finished_runs(name)
        if len(frame) or args.experiment:
            print(f"{'' if not printed else chr(10)}experiment {name}:")
            print(results_table(frame))
            printed = True
    if not printed:
        print(f"no finished runs in the tracking store {tracking.tracking_uri()}")
    return 0


def _compare(args: argparse.Namespace) -> int:
    from benchmarks.results import comparison

    print(comparison(args.runs))
    return 0


def _runs_delete(args: argparse.Namespace) -> int:
    from benchmarks.cleanup import delete_failed

    if not args.failed:
        raise ValueError("runs delete: say which runs: --failed (failed and killed runs) is the one selection")
    print(delete_failed(args.experiment, dry_run=args.dry_run, purge=args.purge))
    return 0


def _results_parsers(sub) -> None:
    """`results`, `compare` and `runs delete`: reading a store on the terminal and cleaning it up."""
    res = sub.add_parser("results", help="print a table of the finished runs: per method and target, the drop "
                         "achieved and the accuracies, mean +- std over seeds",
                         description="Reads the tracking store (MLFLOW_TRACKING_URI, else ./mlflow.db); a table per "
                                     "experiment. The same table ends every sweep.")
    res.add_argument("--experiment", help="only this experiment (default: every one with finished runs)")
    res.set_defaults(handler=_results)
    cmp = sub.add_parser("compare", help="print two or more runs side by side: what differs in their configs, and "
                         "their final numbers")
    cmp.add_argument("runs", nargs="+", metavar="RUN", help="run ids (lorita-bench run prints its own)")
    cmp.set_defaults(handler=_compare)
    runs = sub.add_parser("runs", help="manage the runs in the tracking store (runs delete --failed)")
    verbs = runs.add_subparsers(dest="verb", required=True)
    delete = verbs.add_parser("delete", help="remove failed and killed runs (MLflow's soft delete)",
                              description="Soft-deletes (MLflow's delete: `mlflow gc` removes them for good) every "
                                          "FAILED or KILLED benchmark run; runs tagged not applicable are never "
                                          "touched. Checkpoints stay, so a killed config still resumes, unless "
                                          "--purge.")
    delete.add_argument("--failed", action="store_true", help="select the failed and killed runs")
    delete.add_argument("--experiment", help="only this experiment (default: every experiment)")
    delete.add_argument("--dry-run", action="store_true", help="list the runs it would delete, change nothing")
    delete.add_argument("--purge", action="store_true",
                        help="remove their checkpoints too (not while a process runs or trains the config)")
    delete.set_defaults(handler=_runs_delete)


def _export(args: argparse.Namespace) -> int:
    from benchmarks.export.command import CHECK_SAMPLES, TOLERANCE, export_run
    from benchmarks.tracking import schema

    done = export_run(args.run, args.format, args.out, force=args.force, trust_code=args.trust_code)
    print(f"wrote {done.path} ({done.fmt}); largest absolute difference from PyTorch's outputs on a batch of "
          f"{CHECK_SAMPLES}: {done.max_abs_diff:.3g} (metric {schema.export_max_abs_diff(done.fmt)} of run {args.run})")
    if not done.within_tolerance:
        print(f"lorita-bench: warning: that is above {TOLERANCE[done.fmt]:g}, more than float32 rounding explains",
              file=sys.stderr)
    return 0


def _export_parser(sub) -> None:
    p = sub.add_parser("export", help="write a finished run's compressed model as ONNX or a torch.export program "
                       "(pt2), checked against PyTorch",
                       description="Rebuilds the run's compressed model from the tracking store, writes it with a "
                                   "free batch size, runs the file (ONNX Runtime, or torch.export's loader) on a "
                                   "batch beside PyTorch and prints and records the largest absolute difference.")
    p.add_argument("run", metavar="RUN", help="the run's id (lorita-bench run prints it)")
    p.add_argument("--format", required=True, help="onnx (needs the export extra: pip install -e '.[export]') or pt2")
    p.add_argument("--out", required=True, metavar="FILE", help="the file to write")
    p.add_argument("--force", action="store_true", help="replace FILE if it exists")
    p.add_argument("--trust-code", action="store_true",
                   help="allow a run whose model a module:factory builds (imports and runs that module)")
    p.set_defaults(handler=_export)


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
    shown = f"[{args.host}]" if ":" in args.host else args.host
    # MLflow 3.17 opens every experiment on its GenAI overview, whatever its kind tag, until the browser has chosen
    # "Model training" once (it keeps the choice); a page opened at ui_page's address shows the runs.
    print(f"lorita-bench: the MLflow UI of {tracking.tracking_uri()} on http://{shown}:{args.port} (Ctrl-C stops "
          "it): choose \"Model training\" at its top left once per browser to see the runs tables, or open "
          f"{tracking.ui_page(f'http://{shown}:{args.port}', 'experiments/<id>/runs')}", flush=True)
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
    parser = argparse.ArgumentParser(prog="lorita-bench", description=__doc__, formatter_class=_Formatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    parser.register("action", "parsers", _SubCommands)
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
    _results_parsers(sub)
    _export_parser(sub)
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
    if getattr(args, "target_speedup", None) is not None:
        overrides.update(target_metric=LATENCY_DROP, target=speedup_target(args.target_speedup, "--target-speedup"))
    overrides.update(parse_assignment(text) for text in args.set)
    return make_config(apply_overrides(data, overrides))


def _summary(result) -> str:
    from benchmarks.tracking import schema

    if result.status == schema.STATUS_SKIPPED:
        trained = "not run again: the numbers below are the stored run's (--force runs it again)"
    elif result.status == schema.STATUS_HELD:
        trained = "not run here: another process runs it"
    elif result.not_applicable:
        trained = f"not trained: the method does not apply ({result.not_applicable})"
    else:
        trained = ("imported" if result.config.trained_from else "reused from cache" if result.cache_hit
                   else "trained now")
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
