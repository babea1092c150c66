"""`make reproduce`: the paper's grid (benchmarks/configs/paper/) and the suite's own blocks beyond it, with a plan
and a time estimate first."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks.config import ConfigError, load_yaml
from benchmarks.data import SEQUENCES, DataError, check_available
from benchmarks.run.environment import resolve_device
from benchmarks.sweeps.driver import run_grid
from benchmarks.sweeps.estimate import duration, estimate
from benchmarks.sweeps.grid import Sweep, expand, parse_sweep

CONFIG_DIR = Path(__file__).parent.parent / "configs"
PAPER_DIR = CONFIG_DIR / "paper"
# Blocks beyond the paper's: the recurrent and attention models on sequence data (the authors have no recipe for them,
# so they keep the suite's budget).
SUITE_BLOCKS = {"sequences": CONFIG_DIR / "sequences.yaml"}
# How much each preset divides the budget's epoch counts (and the plateau patience with them).
PRESETS = {"paper": 1, "short": 20}
_SCALED = ("epochs", "finetune_epochs", "plateau_patience")


def paper_blocks() -> list[str]:
    """Names of the paper's blocks (one sweep file each)."""
    return sorted(p.stem for p in PAPER_DIR.glob("*.yaml"))


def blocks() -> list[str]:
    """Names of every block `reproduce` runs: the paper's, then the suite's own."""
    return [*paper_blocks(), *SUITE_BLOCKS]


def _block_path(block: str) -> Path:
    return SUITE_BLOCKS.get(block, PAPER_DIR / f"{block}.yaml")


def _scaled_budget(budget: dict[str, Any], divisor: int) -> dict[str, Any]:
    scaled = dict(budget)
    for key in _SCALED:
        if key in scaled:
            values = scaled[key] if isinstance(scaled[key], list) else [scaled[key]]
            cut = [max(1, round(v / divisor)) if v else v for v in values]
            scaled[key] = cut if isinstance(scaled[key], list) else cut[0]
    return scaled


def _local_copy(name: str, root: Path) -> dict[str, Any]:
    """Where under `root` a dataset lives: root itself, a `<name>*` folder (e.g. mnist-10k; for a sequence dataset
    its images' name), or image folders."""
    for folder in [root, *sorted(p for p in root.glob(f"{SEQUENCES.get(name, name)}*") if p.is_dir())]:
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
    data = load_yaml(_block_path(block))
    data["budget"] = _scaled_budget(data.get("budget", {}), PRESETS[preset])
    # A dataset's own budget (the sequences block gives each its epochs) is cut alike.
    data["datasets"] = [{**d, "budget": _scaled_budget(d["budget"], PRESETS[preset])}
                        if isinstance(d, dict) and "budget" in d else d for d in data["datasets"]]
    if preset != "paper":
        data["name"] = f"{data['name']}-{preset}"
    if data_root is not None:
        # The dataset's own keys (a budget of its own) stay; only where it lives is looked up.
        data["datasets"] = [{**{k: v for k, v in (d if isinstance(d, dict) else {}).items() if k != "data_root"},
                             **_local_copy(d["name"] if isinstance(d, dict) else d, Path(data_root))}
                            for d in data["datasets"]]
    return parse_sweep(data)


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
        est = estimate(expand(sweep))  # loads each dataset: a missing one fails here, before anything trains
        total += est.seconds
        print(f"  {name}: {est.runs} runs, {est.trainings} trainings, about {duration(est.seconds)} "
              f"of training (measured step time x steps; evaluation and bookkeeping add seconds per run) "
              f"-> experiment {sweep.name}")
    print(f"  total: about {duration(total)} of training, one run at a time on this {device.type}"
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
