"""What several test modules share: the model families, the tiny sweep, and small store and network helpers."""

from __future__ import annotations

import re
import socket
import subprocess
from pathlib import Path

import pandas as pd
import torch
import torchvision
import yaml
from torch import nn

from benchmarks import tracking
from benchmarks.models import create_model
from benchmarks.tracking import schema

# One small instance of every model family the suite composes and compresses.
FAMILIES = {
    "fcn": lambda: create_model("fcn", 10, (1, 8, 8), layers=3, width=32),
    "cnn": lambda: create_model("cnn", 10, (3, 16, 16), channels=(8, 16), hidden=24),
    "vgg16": lambda: create_model("vgg16", 10, (3, 32, 32)),
    "resnet20_a": lambda: create_model("resnet20", 10, (3, 32, 32), shortcut="A"),
    "resnet20_b": lambda: create_model("resnet20", 10, (3, 32, 32), shortcut="B"),
    "vit": lambda: create_model("vit", 10, (3, 32, 32), dim=24, depth=2, heads=2, mlp_dim=32, patch_size=8),
    "tv_resnet18": lambda: torchvision.models.resnet18(num_classes=10),
}
# Input shape of one batch per family (the rest take CIFAR-sized images).
INPUT_SHAPES = {"fcn": (4, 1, 8, 8), "cnn": (2, 3, 16, 16)}
# tv_vit's test size: 32x32 images in 16 patches of 8x8, 2 blocks of width 16 with 2 heads.
TV_VIT = {"patch_size": 8, "num_layers": 2, "num_heads": 2, "hidden_dim": 16, "mlp_dim": 32}

# A sweep whose run is a few seconds: 2 epochs of a 2-layer, 16-wide FCN on digits and 1 epoch of fine-tuning.
TINY = {"models": [{"name": "fcn", "layers": 2, "width": 16}], "datasets": ["digits"],
        "methods": ["dense", "svd", "lorita", "l1"], "factors": [2], "targets": {"flops_drop": [0.5]},
        "seeds": [0], "budget": {"epochs": 2, "finetune_epochs": 1, "batch_size": 64, "lr": 0.05},
        "device": "cpu"}


def small_tv_vit() -> nn.Module:
    """torchvision's ViT at TV_VIT's size for 10 classes, its head drawn at random: torchvision starts it at 0, which
    makes every output 0 (and every comparison of outputs pass)."""
    model = create_model("tv_vit", 10, (3, 32, 32), **TV_VIT)
    nn.init.normal_(model.heads.head.weight)
    return model


def ci_for_vgg16(families) -> list:
    """`families` as parametrize values, vgg16's in CI only: its planning alone takes 10-20 s on two cores."""
    import pytest

    return [pytest.param(f, marks=pytest.mark.ci) if f == "vgg16" else f for f in families]


def input_shape(family: str, batch: int) -> tuple[int, ...]:
    """The family's input shape, at `batch` for the CIFAR-sized ones."""
    return INPUT_SHAPES.get(family, (batch, 3, 32, 32))


def write_sweep(store: Path, name: str, base: dict | None = None, **changes) -> str:
    """A sweep file `name` in `store` (TINY, or `base`, with `changes`), its cache in the store; its path."""
    path = store / f"{name}.yaml"
    path.write_text(yaml.safe_dump({**(base or TINY), "name": name, "cache_dir": str(store / "cache"), **changes}))
    return str(path)


def benchmark_runs(experiment: str) -> pd.DataFrame:
    """The experiment's benchmark runs (a sweep's parent run carries no method tag)."""
    runs = tracking.search_runs(experiment)
    column = f"tags.{schema.TAG_METHOD}"
    return runs[runs[column].notna()] if column in runs else runs.iloc[0:0]


def free_port() -> int:
    """A TCP port nothing listens on at 127.0.0.1 now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def table_width(standalone: str, folder: Path) -> tuple[float, float, bool]:
    """(natural width, \\columnwidth, any overfull box) in pt of a report's standalone LaTeX table, compiled by
    pdflatex in `folder` with adjustbox's shrinking left out."""
    measured = standalone.replace(r"\begin{adjustbox}{max width=\columnwidth}", r"\setbox0\hbox\bgroup").replace(
        r"\end{adjustbox}", r"\egroup\typeout{NATURAL=\the\wd0}\typeout{COLUMN=\the\columnwidth}\box0")
    (folder / "table.tex").write_text(measured, encoding="utf-8")
    result = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "table.tex"], cwd=folder,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout[-2000:]
    log = (folder / "table.log").read_text(errors="replace")
    width = [float(re.search(rf"{name}=([\d.]+)pt", log)[1]) for name in ("NATURAL", "COLUMN")]
    return width[0], width[1], "Overfull" in log


def outputs_and_grads_by_mode(model: nn.Module, x: torch.Tensor) -> dict[str, tuple[torch.Tensor, list]]:
    """Each LoRITa forward mode's output on `x` and the gradients of its squared sum, one per parameter (None where a
    parameter got none)."""
    from lorita.compose import set_mode

    results = {}
    for mode in ("activation", "weight", "auto"):
        set_mode(model, mode)
        model.zero_grad()
        out = model(x)
        out.square().sum().backward()
        results[mode] = (out.detach(), [None if p.grad is None else p.grad.clone() for p in model.parameters()])
    return results


def sgd_epochs(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, lr: float, epochs: int = 10) -> None:
    """Train `model` on (x, y) in place: SGD with momentum 0.9 and weight decay 1e-3 (the decay LoRITa needs),
    cross-entropy, batches of 64 in an order seeded 0."""
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=1e-3)
    order = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=order)
        for i in range(0, len(x), 64):
            idx = perm[i:i + 64]
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
