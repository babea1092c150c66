"""Where a run runs: its device, a writable output folder, and the facts that make its timings comparable."""

from __future__ import annotations

import contextlib
import os
import platform
import subprocess
from pathlib import Path

import torch

from benchmarks.tracking import schema


def resolve_device(name: str) -> torch.device:
    """`auto` -> the first GPU when there is one, else the CPU; a GPU asked for but absent is a one-line error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"config: device {name!r} requested but no CUDA GPU is available; use auto or cpu")
    return device


def synchronize(device: torch.device | str) -> None:
    """Wait for queued GPU work, so that a wall-clock time covers it."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def check_writable(path: str | Path) -> Path:
    """Create `path` if needed and prove it is writable before any training starts."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-probe-{os.getpid()}"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as err:
        raise OSError(f"output directory {path} is not writable: {err.strerror}") from None
    return path


def git_commit() -> str:
    """The short commit of the suite's checkout, or "unknown"."""
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).parent)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo (platform.processor() elsewhere)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "unknown"


def environment_tags(device: torch.device) -> dict[str, str]:
    """Where and with what a run ran."""
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    return {schema.TAG_GIT_COMMIT: git_commit(), schema.TAG_TORCH_VERSION: torch.__version__,
            schema.TAG_CPU_MODEL: cpu_model(), schema.TAG_THREADS: str(torch.get_num_threads()),
            schema.TAG_GPU_NAME: gpu}
