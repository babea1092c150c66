"""The benchmark harness: data, models, training, the run pipeline, tracking and the CLI."""

from typing import Any

__all__ = ["load_model"]


def __getattr__(name: str) -> Any:
    # Lazy so that importing a light module (benchmarks.models) does not pull in MLflow.
    if name == "load_model":
        from benchmarks.run.pipeline import load_model

        return load_model
    raise AttributeError(f"module 'benchmarks' has no attribute {name!r}")
