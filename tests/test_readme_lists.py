"""The README's model and dataset lists: complete, and every example a command the CLI takes."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import torch

from benchmarks import timeseries
from benchmarks.cli import build_parser, config_from_args
from benchmarks.data import DATASETS, load_dataset, normalize
from benchmarks.models import MODELS, create_model

README = Path(__file__).resolve().parents[1] / "README.md"
# Datasets an example can load here, offline and in well under a second.
OFFLINE = ("digits", "digits-seq", "karate", "uea:")


def _rows() -> list[tuple[list[str], str]]:
    """(names in the first cell, the example command) of each row of the section's two tables."""
    text = README.read_text()
    section = text.split("## Models and datasets\n", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[2].startswith("`R "):
            rows.append((re.findall(r"`([^`]+)`", cells[0]), cells[2].strip("`")))
    return rows


def _examples() -> list[str]:
    return [example for _, example in _rows()]


def test_every_model_and_dataset_is_listed():
    names = {name for names, _ in _rows() for name in names}
    assert set(MODELS) | {"tv:<name>", "module.path:factory"} <= names
    assert set(DATASETS) <= names
    assert {f"uea:{name}" for name in timeseries.available()} <= names


@pytest.mark.parametrize("example", _examples())
def test_every_example_is_a_valid_run(example):
    args = build_parser().parse_args(["run", *shlex.split(example)[1:]])
    cfg = config_from_args(args)
    assert cfg.model in MODELS or cfg.model.startswith("tv:") or ":" in cfg.model
    if not cfg.dataset.startswith(OFFLINE) or cfg.model not in MODELS:
        return
    data = load_dataset(cfg.dataset, options=cfg.dataset_kwargs)
    model = create_model(cfg.model, data.num_classes, data.in_shape, **cfg.model_kwargs).eval()
    with torch.no_grad():
        out = model(normalize(data.test_x[:2], data.mean, data.std))
    assert out.shape == (2, data.num_classes)


def test_run_help_names_every_model_and_dataset(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for name in [*MODELS, *DATASETS, "tv:<torchvision name>", "module:factory"]:
        assert name in text, name
