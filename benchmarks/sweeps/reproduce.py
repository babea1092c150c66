"""`make reproduce`: the paper's grid (benchmarks/configs/paper/), with a plan and a time estimate first."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

import lorita
from benchmarks.config import ConfigError, RunConfig, load_yaml
from benchmarks.data import DataError, check_available, load_dataset
from benchmarks.methods import get_method
from benchmarks.models import create_model
from benchmarks.run.environment import resolve_device
from benchmarks.run.measure import step_seconds, training_step
from benchmarks.run.pipeline import training_group
from benchmarks.sweeps.driver import run_grid
from benchmarks.sweeps.grid import Sweep, expand, parse_sweep

PAPER_DIR = Path(__file__).parent.parent / "configs" / "paper"
# How much each preset divides the budget's epoch counts (and the plateau patience with them).
PRESETS = {"paper": 1, "short": 20}
_SCALED = ("epochs", "finetune_epochs", "plateau_patience")


def blocks() -> list[str]:
    """Names of the paper's blocks (one sweep file each)."""
    return sorted(p.stem for p in PAPER_DIR.glob("*.yaml"))


def _scaled_budget(budget: dict[str, Any], divisor: int) -> dict[str, Any]:
    scaled = dict(budget)
    for key in _SCALED:
        if key in scaled:
            values = scaled[key] if isinstance(scaled[key], list) else [scaled[key]]
            cut = [max(1, round(v / divisor)) if v else v for v in values]
            scaled[key] = cut if isinstance(scaled[key], list) else cut[0]
    return scaled


def _local_copy(name: str, root: Path) -> dict[str, Any]:
    """Where under `root` a dataset lives: root itself, a `<name>*` folder (e.g. mnist-10k), or image folders."""
    for folder in [root, *sorted(p for p in root.glob(f"{name}*") if p.is_dir())]:
        if (folder / "train").is_dir() and (folder / "test").is_dir():
            return {"name": f"imagefolder:{folder.resolve()}"}
        try:
            check_available(name, str(folder))
        except DataError:
            continue
        return {"name": name, "data_root": str(folder)}
    return {"name": name, "data_root": str(root)}


def block_sweep(block: str, preset: str, data_root: str | None) -> Sweep:
    """One paper block as a sweep: its budget cut by the preset, its datasets looked up under data_root."""
    if preset not in PRESETS:
        raise ConfigError(f"reproduce: preset must be one of {', '.join(PRESETS)}; got {preset!r}")
    if block not in blocks():
        raise ConfigError(f"reproduce: block must be one of {', '.join(blocks())}; got {block!r}")
    data = load_yaml(PAPER_DIR / f"{block}.yaml")
    data["budget"] = _scaled_budget(data.get("budget", {}), PRESETS[preset])
    if preset != "paper":
        data["name"] = f"{data['name']}-{preset}"
    if data_root is not None:
        data["datasets"] = [_local_copy(d["name"] if isinstance(d, dict) else d, Path(data_root))
                            for d in data["datasets"]]
    return parse_sweep(data)


@dataclass(frozen=True)
class Estimate:
    """A block's planned work and its estimated wall time on this device."""

    runs: int
    trainings: int
    seconds: float


def _step_seconds(cfg: RunConfig, factors: int, in_shape: tuple[int, ...], num_classes: int) -> float:
    """Median wall time of one SGD step of the block's model at its batch size on the run's device."""
    device = resolve_device(cfg.device)
    torch.manual_seed(0)
    model = lorita.overparameterize(create_model(cfg.model, num_classes, in_shape, **cfg.model_kwargs), factors)
    x = torch.randn(cfg.budget.batch_size, *in_shape, device=device)
    y = torch.randint(0, num_classes, (cfg.budget.batch_size,), device=device)
    return step_seconds(training_step(model.to(device), x, y), device)


def estimate(sweep: Sweep) -> Estimate:
    """Measured time per training step x steps of every training and fine-tuning the block will run."""
    runs = expand(sweep)
    sizes: dict[tuple, tuple] = {}
    step_cost: dict[tuple, float] = {}
    trained: set[str] = set()
    seconds = 0.0

    def cost(cfg: RunConfig, factors: int) -> float:
        count, in_shape, num_classes = sizes[cfg.dataset, cfg.data_root]
        key = (cfg.model, repr(cfg.model_kwargs), in_shape, cfg.budget.batch_size, factors)
        if key not in step_cost:
            step_cost[key] = _step_seconds(cfg, factors, in_shape, num_classes)
        return step_cost[key] * math.ceil(count / cfg.budget.batch_size)

    for cfg in runs:
        if (cfg.dataset, cfg.data_root) not in sizes:
            data = load_dataset(cfg.dataset, data_root=cfg.data_root, cache_dir=cfg.cache_dir)
            sizes[cfg.dataset, cfg.data_root] = (len(data.train_y), data.in_shape, data.num_classes)
        if training_group(cfg) not in trained:
            trained.add(training_group(cfg))
            seconds += cost(cfg, cfg.factors) * cfg.budget.epochs
        if get_method(cfg.method).compresses:
            # A compressed model fine-tunes at most as slowly as the dense one trains.
            seconds += cost(cfg, 1) * cfg.budget.finetune_epochs
    return Estimate(len(runs), len(trained), seconds)


def _duration(seconds: float) -> str:
    hours, rest = divmod(int(seconds), 3600)
    return f"{hours} h {rest // 60:02d} min" if hours else f"{rest // 60} min {rest % 60:02d} s"


def reproduce(*, preset: str = "paper", data_root: str | None = None, only: list[str] | None = None,
              jobs: int = 1, plan_only: bool = False, executor: str = "local", address: str | None = None) -> int:
    """Print the plan of every requested block (data checked first), then run them one after another.

    `executor` and `address` are sweep's (see sweep.run_grid): executor ray runs each block's runs as Ray tasks.
    """
    names = only or blocks()
    sweeps = [block_sweep(name, preset, data_root) for name in names]
    device = resolve_device("auto")
    print(f"reproduce: preset {preset} (epochs / {PRESETS[preset]}), device {device}, {len(sweeps)} block(s)")
    total = 0.0
    for name, sweep in zip(names, sweeps, strict=True):
        est = estimate(sweep)  # loads each dataset: a missing one fails here, before anything trains
        total += est.seconds
        print(f"  {name}: {est.runs} runs, {est.trainings} trainings, about {_duration(est.seconds)} "
              f"of training (measured step time x steps; evaluation and bookkeeping add seconds per run) "
              f"-> experiment {sweep.name}")
    print(f"  total: about {_duration(total)} of training, one run at a time on this {device.type}"
          + ("" if jobs == 1 and executor == "local" else " (parallel runs divide it)"))
    if plan_only:
        return 0
    worst = 0
    for sweep in sweeps:
        code = run_grid(sweep, jobs=jobs, executor=executor, address=address)
        if code == 130:
            return code
        worst = max(worst, code)
    return worst
