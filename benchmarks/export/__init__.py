"""Export and deployment: a run's compressed model as ONNX or a torch.export program, checked against PyTorch, and
ONNX Runtime sessions for latency (`command` holds the `lorita-bench export` subcommand's logic)."""

from benchmarks.export.formats import EXTRA, FORMATS, ExportError, exported, onnx_model
from benchmarks.export.ort import OrtSession, available, ort_session

__all__ = ["EXTRA", "FORMATS", "ExportError", "OrtSession", "available", "exported", "onnx_model", "ort_session"]
