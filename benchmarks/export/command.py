"""`lorita-bench export RUN --format onnx|pt2 --out FILE`: a finished run's compressed model written in a deployable
format, and checked against the PyTorch model's outputs on a batch other than the one it was exported on."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from benchmarks import tracking
from benchmarks.export import formats, ort
from benchmarks.export.formats import EXTRA, FORMATS, ExportError
from benchmarks.run.pipeline import load_model
from benchmarks.tracking import schema

# The example the model is exported on, and the batch its file is checked on: another size, so that the check also
# shows the batch dimension left free.
EXAMPLE_SAMPLES, CHECK_SAMPLES = 2, 8
# Float32 rounding keeps an exported network's outputs this close to PyTorch's; a larger difference is reported.
TOLERANCE = {"onnx": 1e-4, "pt2": 1e-5}


@dataclass(frozen=True)
class Exported:
    """A written export and its check."""

    path: Path
    fmt: str
    max_abs_diff: float

    @property
    def within_tolerance(self) -> bool:
        """Whether the file's outputs are as close to PyTorch's as float32 rounding allows."""
        return self.max_abs_diff <= TOLERANCE[self.fmt]


def _check_request(run_id: str, fmt: str, out: Path, force: bool) -> dict:
    """The run's record, after every refusal a bad request gets (one line each), before anything is loaded."""
    if fmt not in FORMATS:
        raise ExportError(f"export: --format must be one of {', '.join(FORMATS)}; got {fmt!r}")
    if out.is_dir():
        raise ExportError(f"export: --out {out} is a folder; name the file to write")
    if out.exists() and not force:
        raise ExportError(f"export: --out {out} exists; pass --force to replace it")
    if fmt == "onnx" and not ort.available():
        raise ExportError(f"export: --format onnx needs onnx, onnxscript and onnxruntime, which are not installed: "
                          f"{EXTRA}")
    record = tracking.run_record(run_id)
    if record["status"] != schema.STATUS_FINISHED:
        raise ExportError(f"export: run {run_id} is {record['status']}, not {schema.STATUS_FINISHED}: only a finished "
                          "run's model is exported")
    reason = record["tags"].get(schema.TAG_NOT_APPLICABLE)
    if reason:
        raise ExportError(f"export: run {run_id} recorded no model: its method does not apply ({reason})")
    return record


def max_abs_diff(model: nn.Module, fmt: str, path: Path, batch: torch.Tensor) -> float:
    """Largest absolute difference between `model`'s outputs on `batch` and those of the file it was exported to."""
    with torch.no_grad():
        expected = model.cpu().eval()(batch.cpu()).double()
        if fmt == "onnx":
            got = ort.ort_session(path.read_bytes())(batch)
        else:
            got = formats.load_pt2(path)(batch.cpu())
    return float((got.double() - expected).abs().max())


def export_run(run_id: str, fmt: str, out: str | Path, *, force: bool = False,
               trust_code: bool = False) -> Exported:
    """Write run `run_id`'s compressed model to `out` as `fmt` (onnx or pt2), check it against PyTorch on a batch and
    record the largest absolute difference on the run (metric export_max_abs_diff_<fmt>).

    A run whose model is built by a `module:factory` is refused unless `trust_code` (load_model's rule).
    """
    out = Path(out)
    _check_request(run_id, fmt, out, force)
    model = load_model(run_id, trust_code=trust_code)
    in_shape = tuple(tracking.load_json(run_id, schema.ARTIFACT_STRUCTURE)["in_shape"])
    generator = torch.Generator().manual_seed(0)
    example = torch.randn(EXAMPLE_SAMPLES, *in_shape, generator=generator)
    batch = torch.randn(CHECK_SAMPLES, *in_shape, generator=generator)
    formats.write(model, example, fmt, out)
    diff = max_abs_diff(model, fmt, out, batch)
    tracking.log_metrics(run_id, {schema.export_max_abs_diff(fmt): diff})
    return Exported(out, fmt, diff)
