"""What the perf benchmarks share: arguments, the machine description, interleaved timing, tables and output."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from benchmarks.run.environment import cpu_model, resolve_device, synchronize

DEFAULT_OUT = Path(__file__).resolve().parent / "results"


def parser(description: str) -> argparse.ArgumentParser:
    """An argument parser with the options every benchmark takes (--out, --quick)."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    p.add_argument("--quick", action="store_true", help="tiny sizes, for smoke tests (numbers mean nothing)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's own choice)")
    return p


def setup(args: argparse.Namespace) -> argparse.Namespace:
    """Apply the shared options (--threads) before anything is measured."""
    if args.threads is not None:
        if args.threads < 1:
            raise SystemExit(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    return args


def device_arg(value: str) -> torch.device:
    """'cpu', 'cuda' or 'auto' (cuda when available) as a torch.device."""
    try:
        return resolve_device(value)
    except (ValueError, RuntimeError) as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def machine() -> dict[str, Any]:
    """The facts that make a timing comparable: CPU, threads, torch version, GPU."""
    return {
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
    }


def machine_line(info: dict[str, Any]) -> str:
    """One markdown line naming the machine."""
    gpu = info.get("gpu") or "none"
    return (f"Machine: {info['cpu']} ({info['cpu_count']} logical CPUs, torch threads {info['torch_threads']}), "
            f"torch {info['torch']}, GPU: {gpu}.")


def interleaved(fns: Sequence[tuple[str, Callable[[], Any]]], *, warmup: int, repeats: int,
                device: torch.device | str = "cpu") -> dict[str, list[float]]:
    """Seconds per call of each function, called round-robin in the given order; the first `warmup` rounds dropped.

    A key given more than once (e.g. dense between every variant) collects all of its calls, in order.
    """
    times: dict[str, list[float]] = {key: [] for key, _ in fns}
    for index in range(warmup + repeats):
        for key, fn in fns:
            synchronize(device)
            start = time.perf_counter()
            fn()
            synchronize(device)
            if index >= warmup:
                times[key].append(time.perf_counter() - start)
    return times


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def timed(fn: Callable[[], Any], repeats: int = 1) -> tuple[float, Any]:
    """(median seconds over `repeats` calls, the last call's result)."""
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return median(times), result


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join("" if cell is None else str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def fmt(value: float | None, digits: int = 2, suffix: str = "") -> str:
    return "n/a" if value is None else f"{value:.{digits}f}{suffix}"


def finish(name: str, result: dict[str, Any], out: Path, markdown: Callable[[dict[str, Any]], str]) -> dict[str, Any]:
    """Print the result's table and write `<out>/<name>.json` and `<out>/<name>.md`; returns the result."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    text = markdown(result)
    (out / f"{name}.json").write_text(json.dumps(result, indent=2, allow_nan=False) + "\n")
    (out / f"{name}.md").write_text(text + "\n")
    print(text, flush=True)
    print(f"\nwrote {out / f'{name}.json'} and {out / f'{name}.md'}", flush=True)
    return result


def result(benchmark: str, settings: dict[str, Any], rows: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    """The JSON layout every benchmark writes."""
    return {"benchmark": benchmark, "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "machine": machine(), "settings": settings, "rows": rows, **extra}
