"""Wall time of one small sweep through each executor: local (--jobs 1, --jobs 2) and Ray (a local instance).

Each measurement is the whole `lorita-bench sweep` command (interpreter start, imports, Ray's start and stop,
every run, the latency pass) on a fresh tracking store and cache, so nothing is skipped or reused; the
variants run interleaved and each cell is the median of --repeats. Needs the ray extra; not part of
`make bench` (it runs whole sweeps, minutes).

    python -m benchmarks.perf.executors [--out DIR] [--quick] [--repeats R] [--grids 1x2 4x30]
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from benchmarks.perf import common

NAME = "executors"
# tests/test_ray.py's grid: a 2-layer, 16-wide FCN on digits; per seed 4 runs, 2 of them training.
GRID = {"name": "executors", "models": [{"name": "fcn", "layers": 2, "width": 16}], "datasets": ["digits"],
        "methods": ["dense", "svd", "lorita", "l1"], "factors": [2], "targets": {"flops_drop": [0.5]},
        "budget": {"finetune_epochs": 1, "batch_size": 64, "lr": 0.05}, "device": "cpu"}
# Grid sizes, SEEDSxEPOCHS: the tests' tiny sweep, and one whose training outweighs starting processes.
GRIDS = ("1x2", "4x30")
CPUS = 2
VARIANTS = {"local, --jobs 1": ["--jobs", "1"], f"local, --jobs {CPUS}": ["--jobs", str(CPUS)],
            f"ray, local instance of {CPUS} CPUs": ["--executor", "ray", "--local-cpus", str(CPUS)]}


def _size(grid: str) -> tuple[int, int]:
    seeds, epochs = grid.split("x")
    return int(seeds), int(epochs)


def sweep_seconds(flags: list[str], grid: str) -> float:
    """Wall time of `lorita-bench sweep` with `flags` over GRID at size `grid` (SEEDSxEPOCHS), from a fresh store."""
    seeds, epochs = _size(grid)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "sweep.yaml"
        path.write_text(yaml.safe_dump({**GRID, "seeds": list(range(seeds)), "cache_dir": str(Path(tmp) / "cache"),
                                        "budget": {**GRID["budget"], "epochs": epochs}}))
        env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{Path(tmp) / 'mlflow.db'}", "TQDM_DISABLE": "1"}
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "benchmarks.cli", "sweep", str(path), *flags], cwd=tmp, env=env,
                              capture_output=True, text=True)
        seconds = time.perf_counter() - start
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr)[-3000:]
        raise SystemExit(f"sweep {' '.join(flags)} failed ({proc.returncode}):\n{tail}")
    return seconds


def markdown(result: dict[str, Any]) -> str:
    settings = result["settings"]
    lines = [f"#### Sweep wall time by executor (fcn 2x16 on digits; whole command, fresh store; "
             f"median of {settings['repeats']})", "", common.machine_line(result["machine"]), ""]
    headers = ["grid", *VARIANTS]
    rows = []
    for grid in settings["grids"]:
        seeds, epochs = _size(grid)
        cells = {r["variant"]: r["median_s"] for r in result["rows"] if r["grid"] == grid}
        base = cells["local, --jobs 1"]
        rows.append([f"{4 * seeds} runs, {2 * seeds} trainings of {epochs} epochs",
                     *(f"{cells[v]:.1f} s ({cells[v] / base:.2f}x)" for v in VARIANTS)])
    return "\n".join([*lines, common.table(headers, rows)])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3, help="measurements per cell, interleaved (default 3)")
    p.add_argument("--grids", nargs="+", default=list(GRIDS), metavar="SEEDSxEPOCHS",
                   help=f"grid sizes: seeds (of 4 runs each) x training epochs (default {' '.join(GRIDS)})")
    args = common.setup(p.parse_args(argv))
    repeats, grids = (1, GRIDS[:1]) if args.quick else (args.repeats, args.grids)
    times: dict[tuple[str, str], list[float]] = {}
    for index in range(repeats):
        for grid in grids:
            for variant, flags in VARIANTS.items():
                seconds = sweep_seconds(flags, grid)
                times.setdefault((grid, variant), []).append(seconds)
                print(f"[{index + 1}/{repeats}] grid {grid}, {variant}: {seconds:.1f} s", flush=True)
    rows = [{"grid": grid, "variant": variant, "median_s": common.median(values), "times_s": values}
            for (grid, variant), values in times.items()]
    settings = {"repeats": repeats, "grids": list(grids), "quick": args.quick, "cpus": CPUS}
    return common.finish(NAME, common.result(NAME, settings, rows), args.out, markdown)


if __name__ == "__main__":
    main()
