"""ONNX Runtime (CPU) sessions of a model: its outputs, and calls of a fixed input for timing beside PyTorch eager."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from benchmarks.export.formats import EXTRA, ExportError, onnx_model


def available() -> bool:
    """Whether onnxruntime and the ONNX exporter's dependencies are installed."""
    try:
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError:
        return False
    return True


def _runtime():
    try:
        import onnxruntime
    except ImportError:
        raise ExportError(f"ONNX Runtime is not installed: {EXTRA}") from None
    return onnxruntime


@dataclass
class OrtSession:
    """An ONNX Runtime session of one model with one input."""

    session: Any  # onnxruntime.InferenceSession
    input_name: str

    def call(self, x: torch.Tensor) -> Callable[[], object]:
        """A call running the session on `x` (converted once, outside the call), as the timing harness takes it."""
        feed = {self.input_name: np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)}
        return lambda: self.session.run(None, feed)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """The model's first output on `x`."""
        return torch.from_numpy(self.call(x)()[0])


def ort_session(model: bytes | nn.Module, example: torch.Tensor | None = None, *, dynamic: bool = True) -> OrtSession:
    """A CPU session of an ONNX file's bytes, or of `model` exported on `example` (any batch size when `dynamic`).

    It runs on as many threads as torch does here, one operator at a time, with its threads sleeping while they
    wait (as OMP_WAIT_POLICY=PASSIVE makes torch's: benchmarks.cli), so the two backends are timed alike.
    """
    runtime = _runtime()
    if isinstance(model, nn.Module):
        if example is None:
            raise ValueError("a session of a module needs an example input to export it on")
        model = onnx_model(model, example, dynamic=dynamic).SerializeToString()
    options = runtime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3  # errors only: its warnings about unused initializers are not ours to act on
    session = runtime.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    return OrtSession(session, session.get_inputs()[0].name)
