"""Writing a model as ONNX (torch.onnx's dynamo exporter) or as a torch.export program (pt2), with a batch dimension
of any size, and reading a pt2 file back safely."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path

import torch
from torch import nn

from benchmarks.files import write_atomic

FORMATS = ("onnx", "pt2")
# The extra that installs what exporting to ONNX and running it needs (onnx, onnxscript, onnxruntime).
EXTRA = "pip install -e '.[export]'"


class ExportError(ValueError):
    """A model cannot be exported, or the export's tools are missing (one-line message)."""


def _batch_dims(example: torch.Tensor) -> tuple[dict[int, torch.export.Dim]]:
    # A batch of one would make torch.export fix the batch size: the example needs two samples or more.
    if example.shape[0] < 2:
        raise ValueError(f"an export example needs a batch of 2 or more samples; got {example.shape[0]}")
    return ({0: torch.export.Dim("batch")},)


def exported(model: nn.Module, example: torch.Tensor) -> torch.export.ExportedProgram:
    """`model` (eval mode, CPU) as a torch.export program taking any batch size of `example`'s sample shape."""
    model = model.cpu().eval()
    return torch.export.export(model, (example.cpu(),), dynamic_shapes=_batch_dims(example))


@contextlib.contextmanager
def _quiet():
    # The dynamo exporter prints its progress and warns about every decomposition; a sweep's log needs neither.
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        level = logging.getLogger("torch.onnx").level
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)
        try:
            yield
        finally:
            logging.getLogger("torch.onnx").setLevel(level)


def onnx_model(model: nn.Module, example: torch.Tensor, *, dynamic: bool = True):
    """`model` as an onnx.ModelProto (input "x", output "logits"): any batch size when `dynamic`, else `example`'s."""
    try:
        import onnxscript  # noqa: F401 - the dynamo exporter's dependency, named here so its absence is one line
    except ImportError:
        raise ExportError(f"exporting to ONNX needs onnx and onnxscript, which are not installed: {EXTRA}") from None
    model = model.cpu().eval()
    with _quiet():
        program = torch.onnx.export(model, (example.cpu(),), input_names=["x"], output_names=["logits"],
                                    dynamic_shapes=_batch_dims(example) if dynamic else None,
                                    dynamo=True, verbose=False)
    return program.model_proto


def write(model: nn.Module, example: torch.Tensor, fmt: str, path: Path) -> None:
    """Export `model` in format `fmt` (one of FORMATS) to `path`, atomically."""
    if fmt == "onnx":
        proto = onnx_model(model, example)
        write_atomic(path, lambda tmp: tmp.write_bytes(proto.SerializeToString()))
    elif fmt == "pt2":
        buffer = io.BytesIO()  # torch.export.save wants a name ending in .pt2, which the atomic write's is not
        torch.export.save(exported(model, example), buffer)
        write_atomic(path, lambda tmp: tmp.write_bytes(buffer.getvalue()))
    else:
        raise ExportError(f"export format must be one of {', '.join(FORMATS)}; got {fmt!r}")


def load_pt2(path: Path) -> nn.Module:
    """The module of a pt2 file, read only after every pickled record in it proved to hold tensors and plain
    containers alone (torch.export.load itself unpickles them without that check)."""
    from benchmarks.tracking import checked_program

    return checked_program(path).module()
